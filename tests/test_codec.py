"""Tiny random-weight models: shapes, streaming == one-shot, state isolation, config handling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec.config import CodecConfig, ConfigError, VocosConfig
from codec.model import FocalCodec
from codec.presets import full_config, tiny_config


def make(cfg: CodecConfig, seed: int = 0) -> FocalCodec:
    torch.manual_seed(seed)
    m = FocalCodec(cfg)
    # random (not default) values for the scalars a default init leaves at 1, so bugs show
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("alpha", "gru_rel_pos_const", "gamma")):
                p.uniform_(0.5, 1.5)
            if name == "decoder.source.proj.bias":  # harmonics at -26 dB rather than the quiet start
                p[2:] = -3.0
    return m


def variant(base: CodecConfig, **parts) -> CodecConfig:
    kw = {k: dataclasses.replace(getattr(base, k), **v) for k, v in parts.items()}
    return dataclasses.replace(base, **kw)


CONFIGS = {
    "tiny12": tiny_config(12),
    "tiny16-window8": tiny_config(16, window=8),
    "tiny11-window13": tiny_config(11, window=13),
    "lookahead1": variant(tiny_config(12), encoder_config={"lookahead_size": 1},
                          decompressor_config={"lookahead_size": 1}),
    "downscale2": variant(tiny_config(12), compressor_config={"downscale_factors": (2, 1)},
                          decompressor_config={"upscale_factors": (1, 2)}),
    "heads2-level3": variant(tiny_config(12), encoder_config={"num_heads": 2, "num_layers": 3},
                             compressor_config={"focal_level": 3, "focal_window": 5, "focal_factor": 2},
                             decompressor_config={"focal_level": 1, "normalize_modulator": True}),
    "logmel": variant(tiny_config(12), encoder_config={"frontend": "logmel", "mel_bins": 24}),
    "logmel-hop80-fft400": variant(tiny_config(12), encoder_config={"frontend": "logmel", "mel_bins": 20,
                                                                    "mel_hop": 80, "mel_stack": 4,
                                                                    "mel_fft": 400}),
    "istft-head": variant(tiny_config(12), decoder_config={"head": "istft", "head_hop": 120, "head_fft": 480}),
    "istft-head-hop60-fft960": variant(tiny_config(16), decoder_config={"head": "istft", "head_hop": 60,
                                                                        "head_fft": 960}),
    "istft-harmonic": variant(tiny_config(12), decoder_config={"head": "istft", "source": "harmonic",
                                                               "source_harmonics": 24, "source_bands": 12}),
}


def signal(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 180 * t) * torch.sin(2 * torch.pi * 3 * t)
            + 0.05 * torch.randn(n, generator=g))[None].float()


def stream(m: FocalCodec, x: torch.Tensor, chunks_per_call: int = 1):
    step = m.chunk_size * chunks_per_call
    est = dst = None
    toks, outs = [], []
    for i in range(0, x.shape[1], step):
        t, est = m.encode_step(x[:, i : i + step], est)
        y, dst = m.decode_step(t, dst)
        toks.append(t)
        outs.append(y)
    return torch.cat(toks, 1), torch.cat(outs, 1), est, dst


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.inference_mode()
def test_streaming_equals_oneshot(name):
    m = make(CONFIGS[name])
    n_chunks = 11 if "window8" not in name else 20  # longer than the attention window
    x = signal(n_chunks * m.chunk_size)
    toks_1, rec_1, est, dst = stream(m, x)
    toks_os = m.sig_to_toks(x)
    rec_os = m.toks_to_sig(toks_os)
    assert toks_1.shape == (1, n_chunks * m.tokens_per_chunk)
    assert rec_1.shape == (1, n_chunks * m.output_chunk_size)
    assert torch.equal(toks_1, toks_os)
    torch.testing.assert_close(rec_1, rec_os, atol=2e-5, rtol=1e-4)
    # several chunks per call give the same result
    toks_3, rec_3, _, _ = stream(m, x, chunks_per_call=3)
    assert torch.equal(toks_3, toks_os)
    torch.testing.assert_close(rec_3, rec_os, atol=2e-5, rtol=1e-4)
    # features agree too (not just the signs)
    f_os = m.sig_to_feats(x)
    f_st = torch.cat([m.sig_to_feats(x[:, : 5 * m.chunk_size]),
                      m.sig_to_feats(x[:, 5 * m.chunk_size :], m.sig_to_feats(x[:, : 5 * m.chunk_size],
                                                                              return_state=True)[1])], 1)
    torch.testing.assert_close(f_st, f_os, atol=2e-5, rtol=1e-4)


@torch.inference_mode()
def test_state_is_bounded_by_window():
    from codec.stream import SPARE, History

    m = make(tiny_config(12, window=8))
    x = signal(40 * m.chunk_size)
    _, _, est, dst = stream(m, x)
    w = m.config.encoder_config.window_size
    for k, v in est.encoder.kv:
        assert k.length == v.length == w - 4
        assert k.buf.shape[2] <= w - 4 + SPARE
    hists = [h for block in est.compressor + dst.decompressor for h in block if h is not None]
    assert all(isinstance(h, History) for h in hists)
    assert max(h.length for h in hists) == max(w, 18) - 1  # global conv (window) or the widest focal level
    assert max(h.buf.shape[-1] for h in hists) <= max(w, 18) - 1 + SPARE
    assert est.num_samples == x.shape[1] and dst.num_tokens == 40 * m.tokens_per_chunk


def test_oneshot_is_differentiable():
    m = make(tiny_config(12))
    x = signal(2 * m.chunk_size).requires_grad_(True)
    lats = m.feats_to_lats(m.sig_to_feats(x))
    y = m.codes_to_qfeats(lats)
    (m.feats_to_sig(y).square().mean() + lats.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters())


@torch.inference_mode()
def test_two_streams_do_not_share_state():
    m = make(tiny_config(12))
    a, b = signal(8 * m.chunk_size, seed=1), signal(8 * m.chunk_size, seed=2) * 0.5
    ta, ya, _, _ = stream(m, a)
    tb, yb, _, _ = stream(m, b)
    ea = eb = da = db = None
    outs_a, outs_b = [], []
    for i in range(8):
        s = slice(i * m.chunk_size, (i + 1) * m.chunk_size)
        t, ea = m.encode_step(a[:, s], ea)
        y, da = m.decode_step(t, da)
        outs_a.append(y)
        t, eb = m.encode_step(b[:, s], eb)
        y, db = m.decode_step(t, db)
        outs_b.append(y)
    torch.testing.assert_close(torch.cat(outs_a, 1), ya, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(outs_b, 1), yb, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["tiny12", "tiny16-window8", "lookahead1", "downscale2", "heads2-level3"])
def test_streaming_with_kept_weight_views(name):
    """Weights made outside inference mode, so that the views and biases kept between steps are used:
    streaming still equals one-shot, and interleaved streams equal separate ones."""
    m = make(CONFIGS[name])
    n_chunks = 11 if "window8" not in name else 20
    a, b = signal(n_chunks * m.chunk_size, seed=1), signal(n_chunks * m.chunk_size, seed=2) * 0.5
    with torch.inference_mode():
        ta, ya, _, _ = stream(m, a)
        assert torch.equal(ta, m.sig_to_toks(a))
        torch.testing.assert_close(ya, m.toks_to_sig(ta), atol=2e-5, rtol=1e-4)
        tb, yb, _, _ = stream(m, b)
        ea = eb = da = db = None
        outs = {"a": [], "b": []}
        for i in range(n_chunks):
            s = slice(i * m.chunk_size, (i + 1) * m.chunk_size)
            t, ea = m.encode_step(a[:, s], ea)
            y, da = m.decode_step(t, da)
            outs["a"].append((t, y))
            t, eb = m.encode_step(b[:, s], eb)
            y, db = m.decode_step(t, db)
            outs["b"].append((t, y))
    for (t_ref, y_ref), key in ((ta, ya), "a"), ((tb, yb), "b"):
        assert torch.equal(torch.cat([t for t, _ in outs[key]], 1), t_ref)
        assert torch.equal(torch.cat([y for _, y in outs[key]], 1), y_ref)


def test_streaming_follows_weight_changes():
    """What a model keeps between steps (relative position bias, derived weights) follows new weights."""
    a, b = make(tiny_config(12), seed=0), make(tiny_config(12), seed=1)  # plain (not inference) weights
    x = signal(8 * a.chunk_size)
    with torch.inference_mode():
        stream(a, x)  # fills the caches
    a.load_state_dict(b.state_dict())
    with torch.inference_mode():
        ta, ya, _, _ = stream(a, x)
        tb, yb, _, _ = stream(b, x)
    assert torch.equal(ta, tb) and torch.equal(ya, yb)
    with torch.no_grad():  # in-place updates too
        for m in (a, b):
            m.encoder.encoder.relative_embedding.weight.mul_(-1.5)
            for mod in m.modules():
                if hasattr(mod, "alpha"):
                    mod.alpha.mul_(0.5)
    with torch.inference_mode():
        ta, ya, _, _ = stream(a, x)
        tb, yb, _, _ = stream(b, x)
    b2 = FocalCodec(b.config)
    b2.load_state_dict(b.state_dict())
    with torch.inference_mode():
        tc, yc, _, _ = stream(b2, x)
    assert torch.equal(ta, tb) and torch.equal(ya, yb) and torch.equal(ta, tc) and torch.equal(ya, yc)


@torch.inference_mode()
def test_reset_and_clone():
    m = make(tiny_config(12))
    x = signal(6 * m.chunk_size)
    t1, y1, est, dst = stream(m, x)
    # a fresh state (reset) reproduces the first run exactly
    t2, y2, _, _ = stream(m, x)
    assert torch.equal(t1, t2) and torch.equal(y1, y2)
    # a cloned state continues identically to the original
    nxt = signal(m.chunk_size, seed=9)
    c = est.clone()
    ta, _ = m.encode_step(nxt, est)
    tb, _ = m.encode_step(nxt, c)
    assert torch.equal(ta, tb)


@torch.inference_mode()
def test_flush_partial_chunk():
    m = make(tiny_config(12))
    x = signal(3 * m.chunk_size + 123)
    est = None
    toks = []
    for i in range(3):
        t, est = m.encode_step(x[:, i * m.chunk_size : (i + 1) * m.chunk_size], est)
        toks.append(t)
    t, est = m.encode_flush(x[:, 3 * m.chunk_size :], est)
    toks.append(t)
    padded = torch.nn.functional.pad(x, (0, m.chunk_size - 123))
    assert torch.equal(torch.cat(toks, 1), m.sig_to_toks(padded))
    with pytest.raises(ValueError, match="encode_step takes"):
        m.encode_step(x[:, :100], None)
    with pytest.raises(ValueError, match="decode_step takes"):
        m.decode_step(torch.zeros(1, 3, dtype=torch.long), None)


@pytest.mark.parametrize("length", [1, 319, 320, 321, 1280, 5000])
@torch.inference_mode()
def test_oneshot_shapes(length):
    m = make(tiny_config(11))
    x = signal(length)
    n = -(-length // 320)
    feats = m.sig_to_feats(x)
    lats = m.feats_to_lats(feats)
    toks, codes = m.lats_to_toks(lats), m.lats_to_codes(lats)
    assert feats.shape == (1, n, 96) and lats.shape == (1, n, 11)
    torch.testing.assert_close(lats.norm(dim=-1), torch.ones(1, n))
    assert toks.dtype == torch.int64 and int(toks.max()) < 2048
    q = m.codes_to_qfeats(codes)
    assert q.shape == (1, n, 96)
    y = m.feats_to_sig(q)
    assert y.shape == (1, n * 480) and float(y.abs().max()) <= 1.0
    ft, fc, fy = m(x)
    assert torch.equal(ft, toks) and fy.shape == (1, length * 3 // 2)


def test_batch_matches_single():
    m = make(tiny_config(12))
    x = torch.cat([signal(4 * 1280, 1), signal(4 * 1280, 2)])
    with torch.inference_mode():
        tb = m.sig_to_toks(x)
        assert torch.equal(tb[1:], m.sig_to_toks(x[1:]))


def test_quantizer_bit_order_and_round_trip():
    m = make(tiny_config(12))
    lats = torch.zeros(1, 3, 12)
    lats[0, 0, 0] = 1.0  # dim 0 positive -> MSB
    lats[0, 1, 11] = 1.0  # last dim -> LSB
    lats[0, 2] = -1.0
    toks = m.lats_to_toks(lats)
    assert toks.tolist() == [[2048, 1, 0]]  # exact zero maps to the negative code
    codes = m.toks_to_codes(toks)
    assert torch.equal(codes, m.lats_to_codes(lats))
    assert torch.allclose(codes.abs(), torch.full_like(codes, 12 ** -0.5))
    allt = torch.arange(4096)[None]
    assert torch.equal(m.codes_to_toks(m.toks_to_codes(allt)), allt)
    assert m.codebook.shape == (4096, 12)
    with pytest.raises(ValueError, match="tokens must lie"):
        m.toks_to_codes(torch.tensor([[4096]]))


def test_non_causal_model_oneshot_only():
    base = full_config(13)
    cfg = CodecConfig.from_dict({
        **tiny_config(13).to_dict(),
        "encoder_config": {**tiny_config(13).to_dict()["encoder_config"], "causal": False},
        "compressor_config": {**tiny_config(13).to_dict()["compressor_config"], "causal": False},
        "decompressor_config": {**tiny_config(13).to_dict()["decompressor_config"], "causal": False},
        "decoder_name": "Vocos",
        "decoder_config": {"input_dim": 96, "num_layers": 2, "dim": 64, "ffn_dim": 128, "n_fft": 1024,
                           "hop_length": 320, "causal": False},
    })
    assert isinstance(cfg.decoder_config, VocosConfig) and base.causal
    m = make(cfg)
    assert not m.causal and m.sample_rate_output == 16000 and m.latency is None
    x = signal(16000)
    with torch.inference_mode():
        toks, codes, y = m(x)
    assert y.shape == (1, 16000) and torch.isfinite(y).all()
    with pytest.raises(RuntimeError, match="cannot stream"):
        m.encode_step(x[:, :1280])


def test_config_json_round_trip_and_errors(tmp_path):
    cfg = tiny_config(16)
    p = tmp_path / "config.json"
    cfg.to_json(p)
    assert CodecConfig.from_json(p) == cfg
    assert cfg.bitrate == 800 and cfg.chunk_size == 1280 and cfg.sample_rate_output == 24000
    assert full_config(11).bitrate == 550 and full_config(12).bitrate == 600
    d = cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown keys"):
        CodecConfig.from_dict({**d, "encoder_config": {**d["encoder_config"], "bogus": 1}})
    with pytest.raises(ConfigError, match="output_dim"):
        CodecConfig.from_dict({**d, "quantizer_config": {"codebook_size": 4096}})
    with pytest.raises(ConfigError, match="power of two"):
        CodecConfig.from_dict({**d, "quantizer_config": {"codebook_size": 1000}})
    with pytest.raises(ConfigError, match="unsupported decoder_name"):
        CodecConfig.from_dict({**d, "decoder_name": "HiFiGAN"})
    assert CodecConfig.from_dict(d, overrides={"encoder_config.window_size": 16}).encoder_config.window_size == 16
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        CodecConfig.from_json(tmp_path / "bad.json")


def test_full_size_param_count_on_meta():
    with torch.device("meta"):
        m = FocalCodec(full_config(12))
    assert m.num_params() == 249_038_490
    assert np.isclose(m.config.bitrate, 600)


def test_history_buffers_shrink_after_a_big_step():
    from codec.stream import SPARE, History

    h = History(10, dim=-1)
    x = torch.arange(500, dtype=torch.float32).view(1, 1, 500)
    v = h.extend(x)
    assert v.shape[-1] == 510 and torch.equal(h.frames()[0, 0], x[0, 0, -10:])
    for i in range(40):  # small steps afterwards: the buffer goes back to size + SPARE
        v = h.extend(torch.full((1, 1, 4), float(i)))
        assert torch.equal(v[0, 0, -4:], torch.full((4,), float(i)))
    assert h.buf.shape[-1] <= 10 + SPARE and h.length == 10
    assert torch.equal(h.frames()[0, 0], torch.tensor([37, 37, 38, 38, 38, 38, 39, 39, 39, 39.0]))
