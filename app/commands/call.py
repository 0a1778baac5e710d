"""``focalchat call``: a voice call from the command line (headless :class:`app.session.CallSession`).

Four ways to connect::

    focalchat call offer                 prints an offer code, then reads the answer code from stdin
    focalchat call answer                reads the offer code from stdin, prints the answer code
    focalchat call host [HOST:]PORT      listens (TCP) for one peer; PORT 0 = any free port
    focalchat call connect HOST:PORT     calls a peer that listens

Talking: ``--transmit continuous`` (default) sends all the time, ``vad`` only while the voice activity detector
hears speech (``--vad-threshold DBFS``, RMS of 20 ms frames), ``ptt`` only while talking is switched on: press
Enter to switch it on and off (stdin, once the call is up). ``--mute`` starts muted; type ``m`` and Enter to
mute / unmute. ``--volume GAIN`` (0..2) scales what you hear.

Codes and ``listening on HOST:PORT`` go to stdout (one line each, for scripts); everything else (state
changes, a stats line every 2 s, errors) goes to stderr. Exit status: 0 the call ended normally (we or the
peer hung up, ``--duration`` reached, Ctrl-C), 2 bad arguments / audio device / model, 3 could not connect
(signaling, connect timeout, no handshake), 4 the call was refused (incompatible peer), 5 the peer was lost,
1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import queue
import select
import sys
import time

from app.precision import MODE_HELP, MODES

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONNECT, EXIT_REFUSED, EXIT_LOST = 0, 1, 2, 3, 4, 5
_END_CODES = {"hangup": EXIT_OK, "peer-hangup": EXIT_OK, "refused": EXIT_REFUSED, "peer-lost": EXIT_LOST,
              "connect-failed": EXIT_CONNECT, "handshake-timeout": EXIT_CONNECT, "error": EXIT_ERROR}
_STATS_PERIOD_S = 2.0


log = logging.getLogger(__name__)


def _at_codec_rate(open_device, rate: int):
    """Open an audio device at the codec's own rate when it accepts it (no resampling, and measured
    ~140 ms less mouth-to-ear through PulseAudio than at 44.1 kHz: scripts/bench_latency.py), else at the
    device's default rate."""
    try:
        return open_device(rate)
    except Exception as exc:  # noqa: BLE001 - PortAudio reports an unsupported rate in several ways
        log.info("device refused %d Hz (%s); using its default rate", rate, exc)
        return open_device(None)


def register(sub) -> None:
    p = sub.add_parser(
        "call", help="voice call: copy-paste codes (offer/answer) or direct TCP (host/connect)",
        description="A peer-to-peer voice call over a WebRTC data channel. offer: print an offer code and read "
                    "the answer code from stdin. answer: read the offer code from stdin, print the answer code. "
                    "host [HOST:]PORT: wait for a peer on a TCP port (LAN). connect HOST:PORT: call a host.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("how", choices=("offer", "answer", "host", "connect"), help="how to connect")
    p.add_argument("address", nargs="?", default=None,
                   help="host: [HOST:]PORT to listen on; connect: HOST:PORT to call")
    p.add_argument("--model", default="default", help="default | 2k | 4k | 65k | hub id | checkpoint folder "
                                                      "(both sides need the same model)")
    p.add_argument("--mode", default="auto", choices=MODES, help=MODE_HELP)
    audio = p.add_argument_group("audio (files or devices)")
    audio.add_argument("--input", metavar="WAV", help="send this audio file instead of the microphone")
    audio.add_argument("--output", metavar="WAV",
                       help="write what you hear to this WAV instead of the speakers ('none': discard)")
    audio.add_argument("--mic", help="input device (PortAudio index or name)")
    audio.add_argument("--speaker", help="output device (PortAudio index or name)")
    audio.add_argument("--pulse-source", help="PulseAudio source for the microphone")
    audio.add_argument("--pulse-sink", help="PulseAudio sink for the speakers")
    pk = p.add_argument_group("packets and network")
    pk.add_argument("--preset", default="default", choices=("default", "low-latency", "low-bandwidth"),
                    help="low-latency: 1 chunk/packet, 1-chunk jitter buffer, 1 redundant chunk, a short speaker "
                         "buffer; "
                         "low-bandwidth: 6 chunks (480 ms) per compact packet, bundled acks, <= 3 kbps on the wire")
    pk.add_argument("--chunks-per-packet", type=int, default=None, choices=range(1, 9), metavar="{1..8}",
                    help="80 ms chunks per packet: more = less wire overhead, more latency "
                         "(default: the preset's; 5..8 need the low-bandwidth preset's compact packets)")
    pk.add_argument("--redundancy", type=int, default=None, choices=(0, 1, 2, 3),
                    help="previous chunks repeated in every packet (recovers single losses; default: the preset's)")
    pk.add_argument("--ice", action="append", default=[], metavar="URL",
                    help="STUN/TURN server (stun:host:port, turn:host:port); repeatable; none by default")
    pk.add_argument("--local", action="store_true", help="offer only 127.0.0.1 (both peers on this machine)")
    pk.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to connect")
    pk.add_argument("--wait", type=float, default=300.0, metavar="S",
                    help="host: seconds to wait for a peer; offer/answer: seconds to wait for a code")
    pk.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="simulated packet loss (percent)")
    pk.add_argument("--burst", type=float, default=1.0, help="simulated mean loss-burst length (packets)")
    pk.add_argument("--jitter-ms", type=float, default=0.0, help="simulated jitter (standard deviation, ms)")
    pk.add_argument("--delay-ms", type=float, default=0.0, help="simulated one-way delay (ms)")
    pk.add_argument("--seed", type=int, default=0, help="seed of the simulated network")
    talk = p.add_argument_group("talking and listening")
    talk.add_argument("--transmit", default="continuous", choices=("continuous", "ptt", "vad"),
                      help="when audio is sent: all the time; push-to-talk (Enter switches talking on/off); "
                           "while the voice activity detector hears speech")
    talk.add_argument("--vad-threshold", type=float, default=-45.0, metavar="DBFS",
                      help="voice activity threshold, -100..0 dBFS (RMS of 20 ms frames): gates 'vad' mode, flags "
                           "silent packets in every mode")
    talk.add_argument("--volume", type=float, default=1.0, metavar="GAIN",
                      help="gain on what you hear, 0..2 (1 = unchanged)")
    talk.add_argument("--mute", action="store_true",
                      help="start with the microphone muted (type m and Enter to unmute)")
    p.add_argument("--nickname", default="", help="your name, shown to the peer")
    p.add_argument("--record", metavar="FILE.fcr", help="record the call (both directions' tokens)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="hang up S seconds after the call is up")
    p.set_defaults(func=run)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def _info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parse_address(how: str, address: str | None, local: bool) -> tuple[str, int]:
    if address is None:
        raise ValueError(f"'call {how}' needs an address: " +
                         ("[HOST:]PORT to listen on" if how == "host" else "HOST:PORT of the host"))
    host, sep, port = address.rpartition(":")
    if not sep:
        if how == "connect":
            raise ValueError(f"give HOST:PORT, not {address!r}")
        host, port = ("127.0.0.1" if local else "0.0.0.0"), address
    host = host.strip("[]") or ("127.0.0.1" if local else "0.0.0.0")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"bad port in {address!r}") from None
    if not 0 <= p <= 65535 or (how == "connect" and p == 0):
        raise ValueError(f"bad port in {address!r}")
    return host, p


def _read_code(prompt: str, expect: str, timeout: float) -> str:
    """Read a code from stdin (it may arrive wrapped over several lines); bounded in lines and time.

    Reads the file descriptor directly (``select`` + ``os.read``): a buffered ``readline`` would swallow
    the following lines where ``select`` cannot see them."""
    import os

    from app.signaling import SignalingError, decode_code

    _info(prompt)
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        fd = None
    text = ""
    pending = b""
    deadline = time.monotonic() + timeout
    for _ in range(200):
        if fd is None:
            line = sys.stdin.readline()
            if not line:
                break
        else:
            if b"\n" not in pending:
                left = deadline - time.monotonic()
                ready = select.select([fd], [], [], left)[0] if left > 0 else []
                if not ready:
                    break
                data = os.read(fd, 65536)
                if not data:  # end of input: whatever is left is the last line
                    line, pending = pending.decode("utf-8", "replace"), b""
                    if not line:
                        break
                else:
                    pending += data
                    if len(pending) > 1 << 16:
                        raise SignalingError("that is far too long for a code")
                    continue
            else:
                raw, _, pending = pending.partition(b"\n")
                line = raw.decode("utf-8", "replace") + "\n"
        text += line
        if not text.strip():
            continue
        try:
            decode_code(text, expect=expect)
            return text
        except SignalingError as exc:
            if "incomplete" not in str(exc) and "cut off" not in str(exc):
                raise
    if not text.strip():
        raise SignalingError(f"no {expect} code received")
    return text


def _open_audio(args: argparse.Namespace, timing=None):
    """Source and sink for the call; devices are opened with ``timing`` (the preset's
    ``CallConfig.device_timing``; None: the default)."""
    from app.audio_io import (
        ROBUST_TIMING,
        FileMicSource,
        FileSpeakerSink,
        MicSource,
        NullSpeakerSink,
        SpeakerSink,
    )

    timing = timing or ROBUST_TIMING
    source = sink = None
    try:
        if args.input:
            source = FileMicSource(args.input, realtime=False)  # paced by the session from call start
        else:
            source = _at_codec_rate(lambda sr: MicSource(args.mic, sr, pulse_source=args.pulse_source,
                                                         **timing.source_options()), 16000)
        if args.output and args.output.lower() == "none":
            sink = NullSpeakerSink()
        elif args.output:
            sink = FileSpeakerSink(args.output)
        else:
            sink = _at_codec_rate(lambda sr: SpeakerSink(args.speaker, sr, pulse_sink=args.pulse_sink,
                                                          prebuffer_ms=0.0, **timing.sink_options()), 24000)
    except Exception:
        if source is not None:
            source.close()
        raise
    return source, sink


def _describe(ev) -> str | None:
    from app import session as s

    if isinstance(ev, s.StateChanged):
        return f"{ev.layer}: {ev.state}" + (f" ({ev.detail})" if ev.detail else "")
    if isinstance(ev, s.HandshakeOk):
        who = f"{ev.peer_nickname!r}" if ev.peer_nickname else "the peer"
        return (f"connected with {who}: model {ev.peer_model_id}, {ev.peer_chunks_per_packet} chunk(s)/packet, "
                f"redundancy {ev.peer_redundancy}")
    if isinstance(ev, s.HandshakeRefused):
        return (f"call refused: {ev.reason}" if ev.by == "us" else f"the peer refused the call: {ev.reason}")
    if isinstance(ev, s.PeerLost):
        return f"peer lost: {ev.reason}"
    if isinstance(ev, s.TextReceived):
        return f"<{ev.nickname or 'peer'}> {ev.text}"
    if isinstance(ev, s.Error):
        return f"error ({ev.kind}): {ev.message}"
    if isinstance(ev, s.SourceEnded):
        return f"input finished after {ev.chunks_sent} chunks"
    if isinstance(ev, s.CallEnded):
        return f"call ended: {ev.reason}" + (f" ({ev.message})" if ev.message else "")
    return None


_FATAL_ERRORS = ("connect-timeout", "ice-failed", "connection-lost", "handshake-timeout")


def _important(ev) -> bool:
    """Shown without -v. Events that end the call are summed up by one final line instead."""
    from app import session as s

    if isinstance(ev, s.StateChanged):
        return ev.layer in ("call", "channel") and ev.state != "ended"
    if isinstance(ev, s.Error):
        return ev.kind not in _FATAL_ERRORS
    return not isinstance(ev, s.HandshakeRefused | s.PeerLost | s.CallEnded)


def run(args: argparse.Namespace) -> int:
    import logging

    verbose = logging.getLogger().getEffectiveLevel() <= logging.INFO
    try:
        address = _parse_address(args.how, args.address, args.local) if args.how in ("host", "connect") else None
        if args.address is not None and args.how in ("offer", "answer"):
            raise ValueError(f"'call {args.how}' takes no address (codes go through stdin/stdout)")
        if not 0 <= args.loss < 100:
            raise ValueError("--loss is a percentage in [0, 100)")
        if not -100.0 <= args.vad_threshold <= 0.0:  # also NaN
            raise ValueError(f"--vad-threshold must be in [-100, 0] dBFS, got {args.vad_threshold:g}")
        if not 0.0 <= args.volume <= 2.0:
            raise ValueError(f"--volume must be in [0, 2], got {args.volume:g}")
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE

    from app.audio_io import AudioDeviceError
    from app.modelref import load_model
    from app.session import CallConfig, CallEnded, CallSession, HandshakeOk, NetSimSettings
    from app.signaling import SignalingError
    from app.transport import TransportError
    from codec.pretrained import CheckpointError

    try:
        model = load_model(args.model, allow_untrained=args.model == "default", mode=args.mode)
    except (CheckpointError, OSError, ValueError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    make = {"default": CallConfig, "low-latency": CallConfig.low_latency,
            "low-bandwidth": CallConfig.low_bandwidth}[args.preset]
    try:
        source, sink = _open_audio(args, make().device_timing)  # the devices as the preset wants them
    except AudioDeviceError as exc:
        _err(f"{exc} (use --input/--output to call with files)")
        return EXIT_USAGE

    netsim = None
    if args.loss or args.jitter_ms or args.delay_ms:
        netsim = NetSimSettings(loss=args.loss / 100.0, burst=args.burst, jitter_ms=args.jitter_ms,
                                delay_ms=args.delay_ms, seed=args.seed)
    try:
        chosen = {k: v for k, v in (("chunks_per_packet", args.chunks_per_packet),
                                    ("redundancy", args.redundancy)) if v is not None}
        config = make(connect_timeout_s=args.connect_timeout, ice_servers=tuple(args.ice),
                      local_only=args.local, nickname=args.nickname, record_path=args.record, netsim=netsim,
                      name=args.how, transmit_mode=args.transmit, vad_threshold_dbfs=args.vad_threshold,
                      output_volume=args.volume, **chosen)
        session = CallSession(model, source, sink, config)
        session.set_muted(bool(args.mute))
    except (ValueError, OSError) as exc:
        source.close()
        sink.close()
        _err(str(exc))
        return EXIT_USAGE

    code = EXIT_OK
    try:
        session.start()
        if args.how == "offer":
            print(session.create_offer_code(), flush=True)
            session.accept_answer_code(_read_code("send this offer code to your peer, then paste their answer "
                                                  "code here and press Enter:", "answer", args.wait))
        elif args.how == "answer":
            offer = _read_code("paste the offer code and press Enter:", "offer", args.wait)
            print(session.accept_offer_code(offer), flush=True)
            _info("send this answer code to your peer")
        elif args.how == "host":
            host, port = address  # type: ignore[misc]
            session.host(host, port, timeout=args.wait,
                         on_listening=lambda p: print(f"listening on {host}:{p}", flush=True))
        else:
            host, port = address  # type: ignore[misc]
            session.connect(host, port, timeout=args.connect_timeout)
        code = _run_call(session, args, verbose, CallEnded, HandshakeOk)
    except SignalingError as exc:
        _err(str(exc))
        code = EXIT_CONNECT
    except (ValueError, OSError) as exc:  # a bad --ice URL, an unwritable --record path
        _err(str(exc))
        code = EXIT_USAGE
    except (TransportError, TimeoutError) as exc:
        _err(f"could not connect: {exc}")
        code = EXIT_CONNECT
    except KeyboardInterrupt:
        _info("hanging up")
        code = EXIT_OK
    finally:
        session.stop()
        source.close()
        sink.close()
    return code


class _Keys:
    """Talk controls on stdin once the call is up (lines, read without blocking): an empty line switches
    push-to-talk on/off (``--transmit ptt``), ``m`` mutes / unmutes. Nothing when stdin is closed or absent."""

    def __init__(self, session, ptt: bool) -> None:
        import os

        self.session = session
        self.ptt = ptt
        self.talking = False
        self._os = os
        try:
            self.fd: int | None = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            self.fd = None
        self._pending = b""

    def poll(self) -> None:
        for _ in range(16):  # bounded per call
            if self.fd is None or not select.select([self.fd], [], [], 0)[0]:
                return
            try:
                data = self._os.read(self.fd, 4096)
            except OSError:
                data = b""
            if not data:  # end of input: no more keys
                self.fd = None
                return
            self._pending += data
            while b"\n" in self._pending:
                line, _, self._pending = self._pending.partition(b"\n")
                self._command(line.decode("utf-8", "replace").strip().lower())

    def _command(self, cmd: str) -> None:
        if cmd in ("m", "mute"):
            self.session.set_muted(not self.session.muted)
            _info("muted" if self.session.muted else "unmuted")
        elif cmd == "" and self.ptt:
            self.talking = not self.talking
            self.session.set_ptt(self.talking)
            _info("talking (Enter to stop)" if self.talking else "not talking (Enter to talk)")


def _run_call(session, args: argparse.Namespace, verbose: bool, CallEnded, HandshakeOk) -> int:
    keys = _Keys(session, ptt=args.transmit == "ptt")
    deadline: float | None = None
    next_stats = time.monotonic() + _STATS_PERIOD_S
    ended = None
    hung_up = False
    while ended is None:
        try:
            ev = session.events.get(timeout=0.2)
        except queue.Empty:
            ev = None
        if ev is not None:
            text = _describe(ev)
            if text is not None and (verbose or _important(ev)):
                _info(text)
            if isinstance(ev, HandshakeOk):
                if args.duration is not None:
                    deadline = time.monotonic() + args.duration
                if args.transmit == "ptt" or args.mute:
                    _info(("push-to-talk: press Enter to talk, Enter again to stop" if args.transmit == "ptt"
                           else "") + ("; " if args.transmit == "ptt" and args.mute else "")
                          + ("muted: type m and Enter to unmute" if args.mute else ""))
            if isinstance(ev, CallEnded):
                ended = ev
                break
        if session.in_call:
            keys.poll()
        now = time.monotonic()
        if session.in_call and now >= next_stats:
            next_stats = now + _STATS_PERIOD_S
            st = session.stats()
            _info(st.line())
            if verbose:
                lat = st.latency
                _info(f"  latency: chunk {lat.chunk_ms:.0f} + encode {lat.encode_ms:.1f} + packetisation "
                      f"{lat.packetization_ms:.0f} + network {lat.network_ms:.1f} + buffer {lat.jitter_ms:.0f} + "
                      f"decode {lat.decode_ms:.1f} + device {lat.device_ms:.0f} = {lat.total_ms:.0f} ms; "
                      f"played {st.played} dup {st.duplicates} underruns {st.underruns} "
                      f"malformed {st.malformed_by_kind} send drops {st.send_drops}")
        if deadline is not None and now >= deadline and not hung_up:
            hung_up = True
            _info(f"--duration {args.duration:g} s reached: hanging up")
            final = session.stats()
            session.stop()
            _info("final: " + final.line())
    if ended is None:
        return EXIT_ERROR
    code = _END_CODES.get(ended.reason, EXIT_ERROR)
    if code == EXIT_OK:
        if not verbose:
            _info(_describe(ended))
    else:
        prefix = "peer lost: " if ended.reason == "peer-lost" else ""
        _err(prefix + (ended.message or ended.reason))
    return code
