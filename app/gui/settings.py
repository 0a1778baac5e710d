"""The GUI's settings: one JSON file (``--config PATH``, else ``$XDG_CONFIG_HOME/focalchat/settings.json``).

Plain data, no Qt: :class:`Settings` is a dataclass; :func:`load_settings` tolerates a missing file, unknown
keys and values of the wrong type (each falls back to its default and is reported in ``problems``), and
:func:`save_settings` writes atomically (temporary file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.precision import MODES

#: Payload bitrate of the published checkpoints (kbps): one token every 20 ms of 11 / 12 / 16 bits.
PUBLISHED_KBPS = {"2k": 0.55, "4k": 0.60, "65k": 0.80}
PRESETS = ("default", "low-latency", "low-bandwidth")
TRANSMIT_MODES = ("continuous", "ptt", "vad")
#: 2: precision "auto" (int8 for the embedded model) is the default; files without a version are 1, whose
#: default precision was "fp32"
SETTINGS_VERSION = 2


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "focalchat"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "focalchat"


def default_config_path() -> Path:
    return config_home() / "settings.json"


@dataclass
class Settings:
    """Everything the GUI remembers between runs."""

    nickname: str = ""
    #: default | 2k | 4k | 65k | a hub id | a checkpoint folder (as ``--model`` of the CLI)
    model: str = "default"
    mode: str = "auto"  # model precision (app.precision.MODES)
    preset: str = "default"
    stun_url: str = ""
    turn_url: str = ""
    turn_username: str = ""
    turn_password: str = ""
    #: Offer only 127.0.0.1 (two instances on one machine, tests).
    local_only: bool = False
    connect_timeout_s: float = 10.0
    #: "" = system default; "pulse:NAME" = a PulseAudio source/sink; "pa:NAME" = a PortAudio device.
    input_device: str = ""
    output_device: str = ""
    transmit_mode: str = "continuous"
    ptt_key: str = "F8"
    vad_threshold_dbfs: float = -45.0
    output_volume: float = 1.0
    #: Folder of call recordings (.fcr); "" = ``$XDG_DATA_HOME/focalchat/recordings``.
    recordings_dir: str = ""
    host_address: str = "0.0.0.0:7000"
    connect_address: str = "127.0.0.1:7000"
    demo_loss_pct: float = 5.0
    demo_burst: float = 1.0
    demo_jitter_ms: float = 0.0
    window_geometry: str = ""
    window_tab: int = 0
    version: int = SETTINGS_VERSION
    problems: list[str] = field(default_factory=list, repr=False, compare=False)

    def recordings_path(self) -> Path:
        return Path(self.recordings_dir).expanduser() if self.recordings_dir else data_home() / "recordings"

    def ice_servers(self) -> tuple[Any, ...]:
        """STUN/TURN servers for :class:`app.session.CallConfig` (empty: host candidates only)."""
        from app.transport import IceServer

        out: list[Any] = []
        if self.stun_url.strip():
            out.append(self.stun_url.strip())
        if self.turn_url.strip():
            out.append(IceServer(urls=self.turn_url.strip(), username=self.turn_username or None,
                                 credential=self.turn_password or None))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("problems", None)
        return d


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TypeError
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise TypeError
    return value


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the settings file; a missing file gives the defaults. Never raises for bad content."""
    p = Path(path) if path is not None else default_config_path()
    s = Settings()
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return s
    except (OSError, ValueError) as exc:
        s.problems.append(f"{p}: unreadable settings ({exc}); using the defaults")
        return s
    if not isinstance(raw, dict):
        s.problems.append(f"{p}: not a JSON object; using the defaults")
        return s
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        if f.name == "problems" or f.name not in raw:
            continue
        default = getattr(defaults, f.name)
        try:
            setattr(s, f.name, _coerce(f.name, raw[f.name], default))
        except TypeError:
            s.problems.append(f"{p}: {f.name} = {raw[f.name]!r} is not a {type(default).__name__}; using "
                              f"{default!r}")
    if s.preset not in PRESETS:
        s.problems.append(f"{p}: unknown preset {s.preset!r}; using 'default'")
        s.preset = "default"
    if s.transmit_mode not in TRANSMIT_MODES:
        s.problems.append(f"{p}: unknown transmit mode {s.transmit_mode!r}; using 'continuous'")
        s.transmit_mode = "continuous"
    if "version" not in raw and s.mode == "fp32":  # the old default, not a choice: fp32 misses real time
        s.mode = "auto"
    if s.mode not in MODES:
        s.problems.append(f"{p}: unknown model precision {s.mode!r}; using 'auto'")
        s.mode = "auto"
    s.output_volume = min(2.0, max(0.0, s.output_volume))
    return s


def save_settings(settings: Settings, path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else default_config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({**settings.to_dict(), "version": SETTINGS_VERSION}, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
