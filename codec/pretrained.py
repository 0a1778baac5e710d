"""Checkpoints: load / save FocalCodec models, validate them, and check key/shape manifests.

A checkpoint is a ``config.json`` (the :class:`~codec.config.CodecConfig` schema; the reference's local
name ``model.json`` is accepted too) plus ``model.safetensors`` (or a ``model.pt`` state dict). It can be
given as a local folder, as the path of its JSON file, or as a Hugging Face Hub id (or one of the short
aliases of :data:`PUBLISHED_MODELS`), which is downloaded with :func:`huggingface_hub.hf_hub_download`.

Every problem with a checkpoint raises one error type, :class:`CheckpointError`, with a message that says
what is wrong and where. Weights are validated against the model built from the config (missing /
unexpected keys, shapes, dtypes) before any of them is copied.

:func:`check_manifest` builds a model on the meta device (no weights allocated) and compares its
state-dict keys, shapes, dtypes and parameter counts with a manifest of the reference implementation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import CodecConfig, ConfigError
from .model import FocalCodec

log = logging.getLogger(__name__)

PUBLISHED_MODELS: dict[str, str] = {
    "2k": "lucadellalib/focalcodec_50hz_2k_causal",
    "4k": "lucadellalib/focalcodec_50hz_4k_causal",
    "65k": "lucadellalib/focalcodec_50hz_65k_causal",
}

CONFIG_NAMES = ("config.json", "model.json")  # HF layout name first, then the reference's local name
WEIGHTS_NAMES = ("model.safetensors", "model.pt")
HUB_CONFIG_NAME = "config.json"
HUB_WEIGHTS_NAME = "model.safetensors"

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_QKV_RE = re.compile(r"^(?P<prefix>.*\.attention)\.(?P<which>[qkv])_proj\.(?P<param>weight|bias)$")
_MAX_LISTED = 10

# safetensors dtype codes -> torch dtype names (used for messages and the float check)
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
_FLOAT_NAMES = {"float64", "float32", "float16", "bfloat16"}


class CheckpointError(ValueError):
    """A checkpoint (or manifest) cannot be found, read, or does not match its config."""

    def __init__(self, message: str, *, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


# ---------------------------------------------------------------------------------------------- helpers
def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _shape_str(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _env_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE")
    if v is not None:
        return v.strip().upper() in {"1", "ON", "YES", "TRUE"}
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub missing or changed
        return False


# ---------------------------------------------------------------------------------------------- config
def _read_config(path: Path, overrides: dict[str, Any] | None) -> CodecConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"missing config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read config {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"invalid JSON in config {path}: {e}") from None
    try:
        return CodecConfig.from_dict(data, overrides)
    except ConfigError as e:
        raise CheckpointError(f"bad config {path}: {e}") from None


# ---------------------------------------------------------------------------------------------- weights sources
class _WeightsReader:
    """Uniform, lazy access to the tensors of a safetensors or torch file (shape/dtype without loading)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._st = None
        self._sd: dict[str, torch.Tensor] | None = None
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"missing weights: {path} does not exist") from None
        if size == 0:
            raise CheckpointError(f"weights file {path} is empty (0 bytes): the download or save was interrupted")
        if path.suffix == ".safetensors":
            self._open_safetensors()
        else:
            self._open_torch()

    def _corrupt(self, e: Exception) -> CheckpointError:
        return CheckpointError(
            f"weights file {self.path} is truncated or corrupt and cannot be read as safetensors "
            f"({type(e).__name__}: {e}); re-download it or save the model again"
        )

    def _open_safetensors(self) -> None:
        from safetensors import safe_open

        try:
            self._st = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = list(self._st.keys())
            self._meta = {}
            for k in self._keys:
                sl = self._st.get_slice(k)
                code = sl.get_dtype()
                self._meta[k] = (tuple(int(s) for s in sl.get_shape()), _ST_DTYPES.get(code, code.lower()))
        except Exception as e:  # SafetensorError, OSError, ... (the rust error type is not a stable import)
            raise self._corrupt(e) from None
        # Tensors are then read with plain reads rather than through the memory map: mapped file pages
        # count in the process's resident memory, so a 1 GB checkpoint would briefly double it.
        with open(self.path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        self._data_start = 8 + n
        self._offsets = {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
        self._st = None

    def _open_torch(self) -> None:
        try:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # old (non-zip) format files cannot be memory-mapped
                    raise
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"weights file {self.path} cannot be read as a torch state dict ({type(e).__name__}: {e}); "
                "it may be truncated, corrupt, or contain non-tensor objects"
            ) from None
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in ("state_dict", "model", "model_state_dict"):
                if isinstance(obj.get(k), dict):
                    obj = obj[k]
                    break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"weights file {self.path} does not hold a state dict (a dict of tensors)")
        self._sd = obj
        self._keys = list(obj)
        self._meta = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in obj.items()}

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][0]

    def dtype(self, key: str) -> str:
        return self._meta[key][1]

    def get(self, key: str) -> torch.Tensor:
        if self._sd is not None:
            return self._sd[key]
        begin, end = self._offsets[key]
        shape, dtype = self._meta[key]
        buf = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if f.readinto(buf) != len(buf):
                raise self._corrupt(EOFError(f"tensor {key} runs past the end of the file"))
        if not buf:
            return torch.empty(shape, dtype=getattr(torch, dtype))
        return torch.frombuffer(buf, dtype=getattr(torch, dtype)).reshape(shape)


@dataclass
class _Entry:
    """Where a model key comes from: one file key, or several concatenated along dim 0 (v0.0.1 q/k/v)."""

    sources: list[str]
    shape: tuple[int, ...]
    dtype: str


def _plan(reader: _WeightsReader, model_keys: dict[str, torch.Tensor]) -> dict[str, _Entry]:
    """Map checkpoint keys to model keys, applying the reference's v0.0.1 remaps."""
    entries: dict[str, _Entry] = {}
    qkv: dict[tuple[str, str], dict[str, str]] = {}
    for k in reader.keys():
        m = _QKV_RE.match(k)
        if m:
            qkv.setdefault((m["prefix"], m["param"]), {})[m["which"]] = k
        else:
            entries[k] = _Entry([k], reader.shape(k), reader.dtype(k))
    for (prefix, param), parts in qkv.items():
        target = f"{prefix}.qkv_proj.{param}"
        srcs = [parts.get(w) for w in "qkv"]
        shapes = [reader.shape(s) for s in srcs if s]
        if all(srcs) and target not in entries and len({s[1:] for s in shapes}) == 1:
            dts = [reader.dtype(s) for s in srcs]
            dtype = next((d for d in dts if d not in _FLOAT_NAMES), dts[0])  # report a non-float part
            entries[target] = _Entry(srcs, (sum(s[0] for s in shapes), *shapes[0][1:]), dtype)
        else:  # incomplete or inconsistent: leave as is, reported as unexpected keys
            for s in srcs:
                if s:
                    entries[s] = _Entry([s], reader.shape(s), reader.dtype(s))
    if any(len(e.sources) > 1 for e in entries.values()):
        log.info("%s: remapped v0.0.1 attention q_proj/k_proj/v_proj into qkv_proj", reader.path)

    # v0.0.1 compressor/decompressor names differ from the current ones; the reference matches them in
    # sorted order. Only done when a module's keys do not match by name, the counts agree and every pair
    # has the same shape.
    for prefix in ("compressor.", "decompressor."):
        ck = sorted(k for k in entries if k.startswith(prefix))
        mk = sorted(k for k in model_keys if k.startswith(prefix))
        if not ck or set(ck) == set(mk) or len(ck) != len(mk):
            continue
        if all(entries[a].shape == tuple(model_keys[b].shape) for a, b in zip(ck, mk)):
            moved = {b: entries.pop(a) for a, b in zip(ck, mk)}
            entries.update(moved)
            log.info("%s: matched %d %s keys by sorted order (v0.0.1 names)", reader.path, len(mk), prefix[:-1])
    return entries


def _validate(entries: dict[str, _Entry], model_sd: dict[str, torch.Tensor], weights: Path,
              config_path: Path | str) -> None:
    missing = [k for k in model_sd if k not in entries]
    unexpected = [k for k in entries if k not in model_sd]
    mismatched = [(k, tuple(model_sd[k].shape), e.shape) for k, e in entries.items()
                  if k in model_sd and tuple(model_sd[k].shape) != e.shape]
    bad_dtype = [(k, e.dtype) for k, e in entries.items() if e.dtype not in _FLOAT_NAMES]
    problems = []
    if missing:
        problems.append(f"{_plural(len(missing), 'missing key')}: {_listing(missing)}")
    if unexpected:
        problems.append(f"{_plural(len(unexpected), 'unexpected key')}: {_listing(unexpected)}")
    if mismatched:
        shown = [f"{k} expected {_shape_str(a)} from the config, found {_shape_str(b)}" for k, a, b in mismatched]
        problems.append(f"{_plural(len(mismatched), 'shape mismatch')}: {_listing(shown)}")
    if bad_dtype:
        shown = [f"{k} is {d}" for k, d in bad_dtype]
        problems.append(f"{_plural(len(bad_dtype), 'non-float tensor')} (weights must be float32/float16/"
                        f"bfloat16): {_listing(shown)}")
    if problems:
        hint = ""
        if mismatched and not missing and not unexpected:
            hint = " (are the weights from a different model than the config, e.g. another codebook size?)"
        raise CheckpointError(
            f"weights {weights} do not match the model built from {config_path}: " + "; ".join(problems) + hint,
            missing=missing, unexpected=unexpected, mismatched=mismatched,
        )


def _load_weights(config: CodecConfig, weights: Path, config_path: Path | str, mode: str) -> FocalCodec:
    """Validate the checkpoint against the config (no weights allocated), then build the model in ``mode``
    layer by layer from it (see :func:`codec.fastpath.build`)."""
    from .fastpath import build

    reader = _WeightsReader(weights)
    with torch.device("meta"):
        model_sd = FocalCodec(config).state_dict()
    entries = _plan(reader, model_sd)
    _validate(entries, model_sd, weights, config_path)

    def get(key: str) -> torch.Tensor:
        e = entries[key]
        return reader.get(e.sources[0]) if len(e.sources) == 1 else torch.cat([reader.get(s) for s in e.sources])

    return build(config, mode, weights=get)


# ---------------------------------------------------------------------------------------------- resolving sources
def _first_existing(folder: Path, names: Iterable[str]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def _resolve_local(p: Path) -> tuple[Path, Path, str]:
    """-> (config path, weights path, model id) for a local folder, JSON file or weights file."""
    if p.is_dir():
        cfg = _first_existing(p, CONFIG_NAMES)
        if cfg is None:
            raise CheckpointError(f"missing config: folder {p} has no {' or '.join(CONFIG_NAMES)}")
        weights = _first_existing(p, WEIGHTS_NAMES)
        if weights is None:
            raise CheckpointError(f"missing weights: folder {p} has no {' or '.join(WEIGHTS_NAMES)}")
        return cfg, weights, p.resolve().name
    folder = p.parent
    if p.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        cfg = _first_existing(folder, [p.with_suffix(".json").name, *CONFIG_NAMES])
        if cfg is None:
            raise CheckpointError(f"missing config: no {p.stem}.json, {' or '.join(CONFIG_NAMES)} beside {p}")
        return cfg, p, folder.resolve().name
    names = [p.with_suffix(".safetensors").name, "model.safetensors", p.with_suffix(".pt").name, "model.pt"]
    weights = _first_existing(folder, dict.fromkeys(names))
    if weights is None:
        raise CheckpointError(f"missing weights: no {' or '.join(dict.fromkeys(names))} beside config {p}")
    return p, weights, folder.resolve().name


def _hub_download(repo_id: str, *, revision: str | None, cache_dir, local_files_only: bool | None) -> tuple[Path, Path]:
    import huggingface_hub

    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # pragma: no cover - older huggingface_hub re-exports them from utils only
        from huggingface_hub import utils as hf_errors

    offline = _env_offline() if local_files_only is None else bool(local_files_only)
    where = repo_id + (f"@{revision}" if revision else "")
    local_hint = ("the model can also be loaded from a local folder holding config.json and model.safetensors "
                  "(e.g. `FocalCodec.from_pretrained('path/to/folder')`)")
    paths = []
    for filename in (HUB_CONFIG_NAME, HUB_WEIGHTS_NAME):
        try:
            path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                                   local_files_only=offline)
        except hf_errors.LocalEntryNotFoundError:
            if offline:
                raise CheckpointError(
                    f"{filename} of {where} is not in the local Hugging Face cache and hub access is disabled "
                    f"(HF_HUB_OFFLINE or local_files_only): download it once while online, or note that "
                    f"{local_hint}") from None
            raise CheckpointError(
                f"could not reach the Hugging Face Hub to download {filename} of {where}, and it is not in the "
                f"local cache (check the network connection or proxy settings); {local_hint}") from None
        except hf_errors.GatedRepoError:
            raise CheckpointError(f"{where} is gated: log in (`hf auth login`) with an account that has access"
                                  ) from None
        except hf_errors.RepositoryNotFoundError:
            raise CheckpointError(f"hub repository {repo_id!r} does not exist or is private (known models: "
                                  f"{', '.join(f'{k} = {v}' for k, v in PUBLISHED_MODELS.items())})") from None
        except hf_errors.RevisionNotFoundError:
            raise CheckpointError(f"revision {revision!r} does not exist in hub repository {repo_id!r}") from None
        except hf_errors.EntryNotFoundError:
            kind = "config" if filename == HUB_CONFIG_NAME else "weights"
            raise CheckpointError(f"missing {kind}: hub repository {where} has no {filename}") from None
        except hf_errors.HfHubHTTPError as e:
            raise CheckpointError(f"the Hugging Face Hub returned an error for {filename} of {where}: {e}; "
                                  f"{local_hint}") from None
        except (OSError, ConnectionError, TimeoutError) as e:  # network errors not wrapped by huggingface_hub
            raise CheckpointError(
                f"could not reach the Hugging Face Hub to download {filename} of {where} "
                f"({type(e).__name__}: {e}); {local_hint}") from None
        paths.append(Path(path))
    return paths[0], paths[1]


def resolve_source(source: str | Path, *, revision: str | None = None, cache_dir=None,
                   local_files_only: bool | None = None) -> tuple[Path, Path, str]:
    """Find (config path, weights path, model id) for a folder, JSON/weights path, hub id or alias."""
    if isinstance(source, str) and source in PUBLISHED_MODELS:
        source = PUBLISHED_MODELS[source]
    p = Path(source).expanduser()
    if p.exists():
        return _resolve_local(p)
    s = str(source)
    if isinstance(source, str) and _HUB_ID_RE.match(s) and not s.startswith(".") and not s.endswith(".json"):
        cfg, weights = _hub_download(s, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return cfg, weights, s
    raise CheckpointError(
        f"{s}: no such file or folder, and not a hub id of the form 'owner/name' "
        f"(known models: {', '.join(PUBLISHED_MODELS)} = {', '.join(PUBLISHED_MODELS.values())})")


# ---------------------------------------------------------------------------------------------- public API
def load_pretrained(source: str | Path, *, overrides: dict | None = None, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu", revision: str | None = None, cache_dir=None,
                    local_files_only: bool | None = None, mode: str = "fp32") -> FocalCodec:
    """Load a FocalCodec checkpoint (see the module docstring for what ``source`` may be).

    ``mode`` (fp32 | bf16 | int8, see :mod:`codec.fastpath`) builds the model directly in that form.

    ``overrides`` patches the config (dotted paths, see :meth:`CodecConfig.from_dict`); ``dtype`` is the
    floating dtype of the model (default float32; fp16/bf16 files are cast to it). The model is returned in
    eval mode with ``model_id`` (hub id or folder name) and ``weights_sha256`` (hex digest of the weights file)
    set. Raises :class:`CheckpointError` on any problem.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise CheckpointError(f"dtype must be a floating torch dtype, got {dtype!r}")
    cfg_path, weights, model_id = resolve_source(source, revision=revision, cache_dir=cache_dir,
                                                 local_files_only=local_files_only)
    config = _read_config(cfg_path, overrides)
    model = _load_weights(config, weights, cfg_path, mode)
    if dtype is not None and dtype != torch.float32:
        if mode != "fp32":
            raise CheckpointError(f"dtype={dtype} cannot be combined with mode={mode!r}")
        model.to(dtype)
        model.compute_dtype = dtype
    model.model_id = model_id
    model.weights_sha256 = sha256_file(weights)
    model.eval()
    return model.to(device)


def save_pretrained(model: FocalCodec, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created); returns the folder.

    ``dtype`` (e.g. ``torch.float16`` / ``torch.bfloat16``) casts the floating weights to make a compact file.
    """
    from safetensors.torch import save_file

    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors that share memory
            v = v.clone()
        seen.add(ptr)
        tensors[k] = v
    tmp_weights, tmp_config = folder / "model.safetensors.tmp", folder / "config.json.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    model.config.to_json(tmp_config)
    # safetensors creates its file with mode 0600; give it the umask-based mode of the config file
    os.chmod(tmp_weights, stat.S_IMODE(tmp_config.stat().st_mode))
    os.replace(tmp_weights, folder / "model.safetensors")
    os.replace(tmp_config, folder / "config.json")
    return folder


# ---------------------------------------------------------------------------------------------- manifests
@dataclass
class ManifestReport:
    """Result of :func:`check_manifest`: this implementation's state dict vs a reference manifest."""

    path: str
    model: str
    num_keys_expected: int = 0
    num_keys_found: int = 0
    num_params_expected: int | None = None
    num_params_found: int = 0
    missing_keys: list[str] = field(default_factory=list)  # in the manifest, not in our state dict
    unexpected_keys: list[str] = field(default_factory=list)  # in our state dict, not in the manifest
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, exp, ours
    dtype_mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # key, expected, ours
    module_mismatches: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (expected, ours)
    property_mismatches: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (expected, ours)
    params_per_module: dict[str, int] = field(default_factory=dict)  # ours
    error: str | None = None  # the config could not be built

    @property
    def ok(self) -> bool:
        return (self.error is None and not self.missing_keys and not self.unexpected_keys
                and not self.shape_mismatches and not self.dtype_mismatches and not self.module_mismatches
                and not self.property_mismatches
                and (self.num_params_expected is None or self.num_params_expected == self.num_params_found))

    def format(self, limit: int = 20) -> str:
        name = Path(self.path).name
        lines = [f"{name} ({self.model}): {'OK' if self.ok else 'FAILED'}"]
        if self.error:
            lines.append(f"  error: {self.error}")
            return "\n".join(lines)
        exp = "?" if self.num_params_expected is None else f"{self.num_params_expected:,}"
        lines.append(f"  state-dict keys: {self.num_keys_found} (manifest {self.num_keys_expected}); "
                     f"parameters: {self.num_params_found:,} (manifest {exp})")
        if self.params_per_module:
            lines.append("  per module: " + ", ".join(f"{k} {v:,}" for k, v in self.params_per_module.items()))

        def block(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {s}" for s in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... {len(items) - limit} more")

        block("missing keys (in the manifest, not built here)", self.missing_keys)
        block("unexpected keys (built here, not in the manifest)", self.unexpected_keys)
        block("shape mismatches (manifest vs here)",
              [f"{k}: {_shape_str(a)} vs {_shape_str(b)}" for k, a, b in self.shape_mismatches])
        block("dtype mismatches (manifest vs here)", [f"{k}: {a} vs {b}" for k, a, b in self.dtype_mismatches])
        block("parameter-count mismatches (manifest vs here)",
              [f"{k}: {a:,} vs {b:,}" for k, (a, b) in self.module_mismatches.items()])
        block("property mismatches (manifest vs here)",
              [f"{k}: {a!r} vs {b!r}" for k, (a, b) in self.property_mismatches.items()])
        return "\n".join(lines)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def check_manifest(manifest_path: str | Path) -> ManifestReport:
    """Compare the model built (on the meta device) from a manifest's ``config`` with the manifest.

    Raises :class:`CheckpointError` if the manifest cannot be read; a config this implementation rejects is
    reported in ``ManifestReport.error``.
    """
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict) \
            or not isinstance(manifest.get("state_dict"), dict):
        raise CheckpointError(f"manifest {path} needs a 'config' object and a 'state_dict' object")
    expected: dict[str, dict[str, Any]] = manifest["state_dict"]
    report = ManifestReport(str(path), str(manifest.get("model", path.stem)), num_keys_expected=len(expected),
                            num_params_expected=manifest.get("num_total_params"))
    try:
        config = CodecConfig.from_dict(manifest["config"])
        with torch.device("meta"):  # shapes only: no storage is allocated
            model = FocalCodec(config)
    except (ConfigError, ValueError, TypeError, RuntimeError) as e:
        report.error = f"cannot build the model from the manifest config: {type(e).__name__}: {e}"
        return report
    sd = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    report.num_keys_found = len(sd)
    report.num_params_found = sum(_numel(s) for s, _ in sd.values())
    report.missing_keys = [k for k in expected if k not in sd]
    report.unexpected_keys = [k for k in sd if k not in expected]
    for k, e in expected.items():
        if k not in sd:
            continue
        shape, dtype = sd[k]
        if tuple(e.get("shape", ())) != shape:
            report.shape_mismatches.append((k, tuple(e.get("shape", ())), shape))
        if "dtype" in e and e["dtype"] != dtype:
            report.dtype_mismatches.append((k, e["dtype"], dtype))

    def count(prefix: str) -> int:
        return sum(_numel(s) for k, (s, _) in sd.items() if k == prefix or k.startswith(prefix + "."))

    modules = manifest.get("params_per_module") or {}
    report.params_per_module = {m: count(m) for m in (modules or sorted({k.split(".")[0] for k in sd}))}
    for group in ("params_per_module", "params_per_submodule"):
        for m, n in (manifest.get(group) or {}).items():
            if count(m) != n:
                report.module_mismatches[m] = (n, count(m))
    if report.num_params_expected is not None and report.num_params_expected != report.num_params_found:
        report.module_mismatches["total"] = (report.num_params_expected, report.num_params_found)
    if "num_state_dict_keys" in manifest and manifest["num_state_dict_keys"] != len(expected):
        report.property_mismatches["num_state_dict_keys (manifest self-check)"] = (
            manifest["num_state_dict_keys"], len(expected))
    props = {"causal": config.causal, "sample_rate_input": config.sample_rate_input,
             "sample_rate_output": config.sample_rate_output, "latency_ms": config.latency_ms}
    if config.causal:
        props["chunk_size"] = config.chunk_size
    for k, ours in props.items():
        if k in manifest and manifest[k] != ours:
            report.property_mismatches[k] = (manifest[k], ours)
    return report
