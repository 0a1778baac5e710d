"""``focalchat export`` / ``focalchat play``: recorded calls (.fcr) to a WAV file, or to the speakers."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

_AHEAD_S = 0.25  # play: decode at most this far ahead of what the speakers play
_PREBUFFER_MS = 150.0  # play: start (and restart after a stall) with this much queued: no latency to save here


def register(sub) -> None:
    p = sub.add_parser("export", help="decode a recorded call (.fcr) to a WAV file",
                       description="Decode both directions of a recorded call; missing chunks are concealed as in "
                                   "the call; a damaged recording is exported up to the damage.")
    p.add_argument("input", help="recording (.fcr)")
    p.add_argument("output", help="WAV file to write")
    p.add_argument("--layout", default="stereo", choices=("stereo", "mix", "sent", "received"),
                   help="stereo: left = me, right = peer (default); mix: mono sum; or one direction")
    p.add_argument("--model", default="default", help="the model the call used (default: the embedded one)")
    p.add_argument("--force", action="store_true", help="decode even if the recording names another model")
    p.set_defaults(func=export)

    p = sub.add_parser("play", help="play a recorded call (.fcr) through the speakers",
                       description="Decode a recorded call chunk by chunk, paced in real time, and play it through "
                                   "the speakers (both directions mixed on the recording's clock, or one of them). "
                                   "Missing chunks are concealed as in the call; a damaged recording plays up to "
                                   "the damage.")
    p.add_argument("input", help="recording (.fcr)")
    p.add_argument("--direction", default="both", choices=("both", "sent", "received"),
                   help="both (mixed, default), sent (what you said) or received (what you heard)")
    p.add_argument("--speaker", default=None, help="output device (PortAudio index or name)")
    p.add_argument("--pulse-sink", default=None, help="PulseAudio sink for the speakers")
    p.add_argument("--model", default="default", help="the model the call used (default: the embedded one)")
    p.add_argument("--force", action="store_true", help="decode even if the recording names another model")
    p.set_defaults(func=play)


def _open(args: argparse.Namespace):
    """(reader, model) for a recording, checked against the model (RecordingError / CheckpointError)."""
    from app.modelref import load_model
    from app.recording import RecordingError, RecordingReader

    reader = RecordingReader(args.input)
    model = load_model(args.model)
    h = reader.header
    if h.bits != model.bits_per_token:
        raise RecordingError(f"the recording holds {h.bits}-bit tokens; model {model.model_id} makes "
                             f"{model.bits_per_token}-bit tokens")
    if not args.force and h.model_hash != model.fingerprint():
        raise RecordingError(f"the call used model {h.model_id!r} (hash {h.model_hash[:12]}), not "
                             f"{model.model_id!r}; pass --model, or --force")
    return reader, model


def export(args: argparse.Namespace) -> int:
    from app.recording import RecordingError, export_wav
    from codec.pretrained import CheckpointError

    try:
        reader, model = _open(args)
        summary = export_wav(reader, model, args.output, layout=args.layout)
    except (RecordingError, CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.get("damage"):
        print(f"warning: {summary['damage']}", file=sys.stderr)
    parts = ", ".join(f"{k}: {v['chunks']} chunks ({v['concealed']} concealed)"
                      for k, v in summary.items() if isinstance(v, dict))
    print(f"{args.input} -> {args.output}: {summary['seconds']:.2f} s, {parts}")
    return 0


class _Track:
    """One direction of a recording, decoded lazily on the recording's clock (as :func:`export_wav` lays it
    out: the first chunk at its recorded time, then chunk after chunk, missing ones concealed)."""

    def __init__(self, model, chunks: dict[int, tuple[int, np.ndarray]]) -> None:
        from app.conceal import StreamDecoder

        self.chunks = chunks
        self.first, self.last = min(chunks), max(chunks)
        self.n = model.output_chunk_size
        self.start = int(chunks[self.first][0] * model.sample_rate_output / 1000)
        self.end = self.start + (self.last - self.first + 1) * self.n
        self.dec = StreamDecoder(model)
        self._next = self.first  # next chunk to decode
        self._buf = np.zeros(0, np.float32)
        self._buf_pos = self.start  # timeline position of _buf[0]

    def read(self, pos: int, n: int) -> np.ndarray:
        """Samples [pos, pos + n) of the timeline (zeros outside the track); ``pos`` only moves forward."""
        out = np.zeros(n, np.float32)
        lo, hi = max(pos, self.start), min(pos + n, self.end)
        if lo >= hi:
            return out
        while self._buf_pos + len(self._buf) < hi and self._next <= self.last:
            c = self.chunks.get(self._next)
            y = np.asarray(self.dec.decode(c[1] if c is not None else None), np.float32)
            self._buf = np.concatenate([self._buf, y])
            self._next += 1
        out[lo - pos:hi - pos] = self._buf[lo - self._buf_pos:hi - self._buf_pos]
        drop = max(0, min(pos + n, self._buf_pos + len(self._buf)) - self._buf_pos)
        self._buf, self._buf_pos = self._buf[drop:], self._buf_pos + drop
        return out


def play(args: argparse.Namespace) -> int:
    from app.audio_io import AudioDeviceError, SpeakerSink
    from app.recording import CHUNK, RECEIVED, SENT, RecordingError
    from codec.pretrained import CheckpointError

    try:
        reader, model = _open(args)
        streams: dict[int, dict[int, tuple[int, np.ndarray]]] = {SENT: {}, RECEIVED: {}}
        for r in reader:
            if r.kind == CHUNK:
                streams[r.direction][r.chunk_index] = (r.time_ms, r.tokens)
        wanted = {"both": (SENT, RECEIVED), "sent": (SENT,), "received": (RECEIVED,)}[args.direction]
        tracks = [_Track(model, streams[d]) for d in wanted if streams[d]]
        if not tracks:
            raise RecordingError(f"{args.input}: the recording holds no audio"
                                 + ("" if args.direction == "both" else f" for direction {args.direction!r}"))
    except (RecordingError, CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if reader.damage is not None:
        print(f"warning: {reader.damage}; playing up to the damage", file=sys.stderr)
    elif not reader.complete:
        print("warning: the recording has no end marker (the call was cut off); playing what is there",
              file=sys.stderr)
    device = int(args.speaker) if args.speaker and args.speaker.isdigit() else args.speaker
    try:
        sink = SpeakerSink(device, pulse_sink=args.pulse_sink, prebuffer_ms=_PREBUFFER_MS)
    except AudioDeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    sr, block = model.sample_rate_output, model.output_chunk_size
    begin, end = min(t.start for t in tracks), max(t.end for t in tracks)
    h = reader.header
    names = {SENT: h.directions[0], RECEIVED: h.directions[1]}
    what = ", ".join(f"{names[d]}: {len(streams[d])} chunks" for d in wanted if streams[d])
    print(f"playing {args.input}: {(end - begin) / sr:.2f} s ({what}) on {sink.device.name}"
          f"{f' -> {args.pulse_sink}' if args.pulse_sink else ''}", flush=True)
    t0 = time.monotonic()
    try:
        for pos in range(begin, end, block):  # bounded by the recording's length
            y = tracks[0].read(pos, block)
            for t in tracks[1:]:
                y = y + t.read(pos, block)
            sink.write_chunk(np.clip(y, -1.0, 1.0))
            ahead = (pos + block - begin) / sr - (time.monotonic() - t0)
            if ahead > _AHEAD_S:
                time.sleep(ahead - _AHEAD_S)
        sink.drain(timeout=_AHEAD_S + 2.0)
        time.sleep(sink.stream_latency_ms / 1000.0)  # what PortAudio still holds
    finally:
        sink.close()
    concealed = ", ".join(f"{names[d]} {t.dec.concealed}" for d, t in zip([d for d in wanted if streams[d]], tracks,
                                                                           strict=True))
    print(f"played {(end - begin) / sr:.2f} s in {time.monotonic() - t0:.2f} s (chunks concealed: {concealed})")
    return 0
