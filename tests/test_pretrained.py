"""Tests for codec.pretrained (checkpoint loading/saving/validation, manifests) and the model CLI commands."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hf_errors
from safetensors.torch import load_file, save_file

from app.cli import main as cli_main
from codec.config import CodecConfig
from codec.model import FocalCodec
from codec.pretrained import (
    PUBLISHED_MODELS,
    CheckpointError,
    ManifestReport,
    check_manifest,
    load_pretrained,
    save_pretrained,
    sha256_file,
)

# the reference data vendored in tests/data (copies of ../shared/conformance)
VENDORED = Path(__file__).resolve().parent / "data" / "conformance"
SMALL = VENDORED / "focalcodec_stream_small" / "cb4096_w24"
MANIFESTS = VENDORED / "full_size_manifests"
MANIFEST_FILES = sorted(MANIFESTS.glob("focalcodec_*.json"))
needs_small = pytest.mark.skipif(not SMALL.is_dir(), reason="vendored conformance model missing")
needs_manifests = pytest.mark.skipif(len(MANIFEST_FILES) != 5, reason="vendored full-size manifests missing")

TINY = {
    "encoder_config": dict(hidden_dims=[8] * 7, num_layers=1, dim=16, ffn_dim=32, num_heads=2, num_buckets=8,
                           max_distance=16, max_cached_steps=16, conv_pos=4, conv_pos_groups=2, causal=True,
                           window_size=8, lookahead_size=3),
    "compressor_config": dict(input_dim=16, output_dim=4, hidden_dims=[8], downscale_factors=[1], focal_window=3,
                              focal_level=2, focal_factor=2, window_size=8),
    "quantizer_config": dict(codebook_size=16),
    "decompressor_config": dict(input_dim=4, output_dim=16, hidden_dims=[8], upscale_factors=[1], focal_window=3,
                                focal_level=2, focal_factor=2, window_size=8, last_window_size=8, lookahead_size=3),
    "decoder_config": dict(input_dim=16, num_layers=1, dim=8, ffn_dim=16, kernel_size=7, hop_length=480),
}


def tiny_model(seed: int = 0) -> FocalCodec:
    torch.manual_seed(seed)
    return FocalCodec(CodecConfig.from_dict(TINY))


def run(model: FocalCodec) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    sig = torch.randn(1, 2560, generator=g) * 0.1
    with torch.no_grad():
        return model(sig)


def assert_same_outputs(a: FocalCodec, b: FocalCodec) -> None:
    for x, y in zip(run(a), run(b)):
        assert torch.equal(x, y)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[FocalCodec, Path]:
    model = tiny_model()
    return model, save_pretrained(model, tmp_path / "tiny")


def resave(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(folder / "model.safetensors"))


def header_len(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


# ---------------------------------------------------------------------------------------------- round trips
def test_round_trip_identical_outputs(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(folder)
    assert loaded.config == model.config
    assert not loaded.training
    assert loaded.model_id == "tiny"
    assert loaded.weights_sha256 == sha256_file(folder / "model.safetensors")
    assert len(loaded.weights_sha256) == 64
    assert_same_outputs(model, loaded)
    # the FocalCodec classmethod / method delegate here
    again = FocalCodec.from_pretrained(folder / "config.json")
    assert_same_outputs(model, again)


def test_model_json_and_weights_path(saved, tmp_path):
    model, folder = saved
    other = tmp_path / "ref_layout"
    other.mkdir()
    shutil.copy(folder / "config.json", other / "model.json")
    shutil.copy(folder / "model.safetensors", other / "model.safetensors")
    assert_same_outputs(model, load_pretrained(other))  # folder with model.json only
    assert_same_outputs(model, load_pretrained(other / "model.json"))
    assert_same_outputs(model, load_pretrained(other / "model.safetensors"))


def test_json_path_with_same_stem_weights(saved, tmp_path):
    model, folder = saved
    d = tmp_path / "stem"
    d.mkdir()
    shutil.copy(folder / "config.json", d / "tiny.json")
    shutil.copy(folder / "model.safetensors", d / "tiny.safetensors")
    assert_same_outputs(model, load_pretrained(d / "tiny.json"))


def test_model_pt_fallback(saved, tmp_path):
    model, folder = saved
    d = tmp_path / "pt"
    d.mkdir()
    shutil.copy(folder / "config.json", d / "config.json")
    torch.save(model.state_dict(), d / "model.pt")
    assert_same_outputs(model, load_pretrained(d))


def test_fp16_save_is_half_size_and_loads(saved, tmp_path):
    model, folder = saved
    half = save_pretrained(model, tmp_path / "half", dtype=torch.float16)
    f32, f16 = folder / "model.safetensors", half / "model.safetensors"
    assert f16.stat().st_size - header_len(f16) == (f32.stat().st_size - header_len(f32)) // 2
    assert f16.stat().st_size < 0.7 * f32.stat().st_size
    assert all(t.dtype == torch.float16 for t in load_file(str(f16)).values())
    loaded = load_pretrained(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k].half().float()), k
    bf = load_pretrained(half, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())


def test_overrides_and_device(saved):
    _, folder = saved
    m = load_pretrained(folder, overrides={"encoder_config.window_size": 12}, device="cpu")
    assert m.config.encoder_config.window_size == 12
    with pytest.raises(CheckpointError, match="dtype"):
        load_pretrained(folder, dtype=torch.int32)


@needs_small
def test_conformance_folder_and_model_json():
    a = load_pretrained(SMALL)
    b = load_pretrained(SMALL / "model.json")
    assert a.model_id == b.model_id == "cb4096_w24"
    assert a.num_params() == 996_472
    assert a.weights_sha256 == b.weights_sha256 == sha256_file(SMALL / "model.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


# ---------------------------------------------------------------------------------------------- errors
def test_missing_config(saved):
    _, folder = saved
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing config.*config\.json or model\.json"):
        load_pretrained(folder)


def test_bad_json(saved):
    _, folder = saved
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_pretrained(folder)


def test_unknown_config_key(saved):
    _, folder = saved
    data = json.loads((folder / "config.json").read_text())
    data["encoder_config"]["bogus_option"] = 1
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"bad config.*bogus_option"):
        load_pretrained(folder)


def test_missing_weights(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing weights.*model\.safetensors or model\.pt"):
        load_pretrained(folder)


def test_no_such_source(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("cut", [0, 5, 200, -1])
def test_truncated_safetensors(saved, cut):
    _, folder = saved
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: cut % len(data)])
    with pytest.raises(CheckpointError, match=r"empty|truncated or corrupt") as exc:
        load_pretrained(folder)
    assert str(path) in str(exc.value)


def test_missing_key(saved):
    _, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    del sd["decoder.head.proj.bias"]
    resave(folder, sd)
    with pytest.raises(CheckpointError, match=r"1 missing key: decoder\.head\.proj\.bias") as exc:
        load_pretrained(folder)
    assert exc.value.missing == ["decoder.head.proj.bias"] and not exc.value.unexpected


def test_many_missing_keys_are_summarised(saved):
    _, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    dropped = [k for k in sd if k.startswith("encoder.")]
    for k in dropped:
        del sd[k]
    resave(folder, sd)
    with pytest.raises(CheckpointError, match=rf"{len(dropped)} missing keys: .*\.\.\. \({len(dropped) - 10} more\)"):
        load_pretrained(folder)


def test_extra_key(saved):
    _, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    sd["decoder.extra.weight"] = torch.zeros(3)
    resave(folder, sd)
    with pytest.raises(CheckpointError, match=r"1 unexpected key: decoder\.extra\.weight"):
        load_pretrained(folder)


def test_wrong_shape(saved):
    _, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    sd["decoder.head.proj.weight"] = torch.zeros(480, 9)
    resave(folder, sd)
    with pytest.raises(CheckpointError,
                       match=r"decoder\.head\.proj\.weight expected \(480, 8\) from the config, found \(480, 9\)") as exc:
        load_pretrained(folder)
    assert exc.value.mismatched == [("decoder.head.proj.weight", (480, 8), (480, 9))]


def test_non_float_dtype(saved):
    _, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    sd["decoder.head.proj.bias"] = sd["decoder.head.proj.bias"].to(torch.int32)
    resave(folder, sd)
    with pytest.raises(CheckpointError, match=r"non-float tensor.*decoder\.head\.proj\.bias is int32"):
        load_pretrained(folder)


def test_corrupt_model_pt(saved, tmp_path):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    (folder / "model.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="cannot be read as a torch state dict"):
        load_pretrained(folder)


# ---------------------------------------------------------------------------------------------- v0.0.1 remaps
def test_v001_qkv_remap(saved):
    model, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    for k in [k for k in sd if ".attention.qkv_proj." in k]:
        q, kk, v = sd.pop(k).chunk(3, dim=0)
        for name, t in zip("qkv", (q, kk, v)):
            sd[k.replace("qkv_proj", f"{name}_proj")] = t.clone()
    assert not any("qkv_proj" in k for k in sd)
    resave(folder, sd)
    assert_same_outputs(model, load_pretrained(folder))


def test_v001_incomplete_qkv_is_reported(saved):
    _, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    k = "encoder.encoder.layers.0.attention.qkv_proj.weight"
    sd["encoder.encoder.layers.0.attention.q_proj.weight"] = sd.pop(k)[:16].clone()
    resave(folder, sd)
    with pytest.raises(CheckpointError, match=r"missing key: .*qkv_proj\.weight.*unexpected key: .*q_proj\.weight"):
        load_pretrained(folder)


def test_v001_compressor_sorted_order_remap(saved):
    model, folder = saved
    sd = load_file(str(folder / "model.safetensors"))
    renamed = {k.replace("compressor.layers.", "compressor.blocks.") if k.startswith("compressor.") else k: v
               for k, v in sd.items()}
    assert renamed.keys() != sd.keys()
    resave(folder, renamed)
    assert_same_outputs(model, load_pretrained(folder))


# ---------------------------------------------------------------------------------------------- hub
def _fake_hub(folder: Path, calls: list):
    def fake(repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False, **kw):
        calls.append((repo_id, filename, revision, local_files_only))
        return str(folder / filename)

    return fake


def test_hub_id_download_is_wired(saved, monkeypatch):
    model, folder = saved
    calls: list = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(folder, calls))
    m = load_pretrained("someone/tiny_codec", revision="v1")
    assert m.model_id == "someone/tiny_codec"
    assert [c[1] for c in calls] == ["config.json", "model.safetensors"]
    assert all(c[2] == "v1" and c[3] is False for c in calls)
    assert_same_outputs(model, m)

    calls.clear()
    m = FocalCodec.from_pretrained("4k")
    assert m.model_id == PUBLISHED_MODELS["4k"] == "lucadellalib/focalcodec_50hz_4k_causal"
    assert calls[0][0] == PUBLISHED_MODELS["4k"]
    assert set(PUBLISHED_MODELS) == {"2k", "4k", "65k"}


def test_hub_offline_env_uses_cache(saved, monkeypatch):
    _, folder = saved
    calls: list = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fake_hub(folder, calls))
    load_pretrained("someone/tiny_codec")
    assert all(c[3] is True for c in calls)
    calls.clear()
    load_pretrained("someone/tiny_codec", local_files_only=False)  # explicit argument wins
    assert all(c[3] is False for c in calls)


def test_hub_unreachable_message(monkeypatch):
    def unreachable(repo_id, filename, *, local_files_only=False, **kw):
        assert not local_files_only
        raise hf_errors.LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub and we cannot find the requested files "
            "in the local cache.")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(CheckpointError, match=r"could not reach the Hugging Face Hub.*local folder"):
        load_pretrained("4k")


def test_hub_raw_connection_error_message(monkeypatch):
    def refused(*a, **kw):
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(CheckpointError, match=r"could not reach the Hugging Face Hub.*local folder"):
        load_pretrained("lucadellalib/focalcodec_50hz_2k_causal", local_files_only=False)


def test_hub_offline_not_cached_message(monkeypatch):
    def not_cached(repo_id, filename, *, local_files_only=False, **kw):
        assert local_files_only
        raise hf_errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    with pytest.raises(CheckpointError, match=r"not in the local Hugging Face cache.*HF_HUB_OFFLINE.*local folder"):
        load_pretrained("65k", local_files_only=True)


# ---------------------------------------------------------------------------------------------- manifests
def make_manifest(model: FocalCodec, path: Path) -> Path:
    sd = model.state_dict()
    manifest = {
        "model": "tiny",
        "config": model.config.to_dict(),
        "num_total_params": sum(v.numel() for v in sd.values()),
        "params_per_module": {m: sum(v.numel() for k, v in sd.items() if k.startswith(m + "."))
                              for m in ("encoder", "compressor", "quantizer", "decompressor", "decoder")},
        "causal": True,
        "state_dict": {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in sd.items()},
    }
    path.write_text(json.dumps(manifest))
    return path


def tamper(src: Path, dst: Path) -> tuple[str, str]:
    m = json.loads(src.read_text())
    keys = list(m["state_dict"])
    changed, removed = keys[3], keys[-1]
    m["state_dict"][changed]["shape"] = [s + 1 for s in m["state_dict"][changed]["shape"]]
    del m["state_dict"][removed]
    dst.write_text(json.dumps(m))
    return changed, removed


def test_manifest_of_tiny_model(tmp_path):
    path = make_manifest(tiny_model(), tmp_path / "tiny.json")
    report = check_manifest(path)
    assert isinstance(report, ManifestReport) and report.ok, report.format()
    assert "OK" in report.format()
    changed, removed = tamper(path, tmp_path / "bad.json")
    bad = check_manifest(tmp_path / "bad.json")
    assert not bad.ok
    assert [k for k, _, _ in bad.shape_mismatches] == [changed]
    assert bad.unexpected_keys == [removed] and not bad.missing_keys
    text = bad.format()
    assert "FAILED" in text and changed in text and removed in text


def test_manifest_bad_config_and_unreadable(tmp_path):
    path = make_manifest(tiny_model(), tmp_path / "tiny.json")
    m = json.loads(path.read_text())
    m["config"]["encoder_config"]["bogus"] = 1
    path.write_text(json.dumps(m))
    report = check_manifest(path)
    assert not report.ok and "bogus" in report.error
    with pytest.raises(CheckpointError, match="does not exist"):
        check_manifest(tmp_path / "absent.json")


@needs_manifests
def test_shared_manifests_pass():
    assert len(MANIFEST_FILES) == 5
    for path in MANIFEST_FILES:
        report = check_manifest(path)
        assert report.ok, report.format()
        assert report.num_params_found == json.loads(path.read_text())["num_total_params"]


@needs_manifests
def test_tampered_shared_manifest_fails(tmp_path):
    src = MANIFESTS / "focalcodec_50hz_4k_causal.json"
    changed, removed = tamper(src, tmp_path / "tampered.json")
    report = check_manifest(tmp_path / "tampered.json")
    assert not report.ok
    assert len(report.shape_mismatches) == 1 and report.shape_mismatches[0][0] == changed
    assert report.unexpected_keys == [removed]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_check_manifest(tmp_path, capsys):
    good = make_manifest(tiny_model(), tmp_path / "good.json")
    tamper(good, tmp_path / "bad.json")
    assert cli_main(["check-manifest", str(good)]) == 0
    assert capsys.readouterr().out.strip().endswith("1 passed, 0 failed")
    assert cli_main(["check-manifest", str(good), str(tmp_path / "bad.json"), str(tmp_path / "nope.json")]) == 1
    assert capsys.readouterr().out.strip().endswith("1 passed, 2 failed")


def test_cli_model_info(saved, capsys):
    _, folder = saved
    assert cli_main(["model-info", str(folder)]) == 0
    out = capsys.readouterr().out
    for word in ("tiny", "16000 Hz", "24000 Hz", "1280 samples", "80 ms", "4 bits per token", "200 bps",
                 sha256_file(folder / "model.safetensors")):
        assert word in out
    (folder / "model.safetensors").write_bytes(b"\x00" * 4)
    assert cli_main(["model-info", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
