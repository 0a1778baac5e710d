"""Smoke test of the streaming benchmark (codec.bench / ``focalchat bench``): fields only, no timings."""

from __future__ import annotations

import json

from app.cli import main


def test_bench_small_config(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--config", "small", "--chunks", "3", "--threads", "1", "--modes", "fp32,bf16",
               "--clip-seconds", "2", "--quiet", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| mode | threads |" in printed and "reference implementation" in printed

    res = json.loads(out.read_text())
    assert set(res) >= {"meta", "results", "quality", "reference"}
    assert res["meta"]["chunks"] == 3 and res["meta"]["warmup_chunks"] == 8  # 24-frame windows / 4 frames
    rows = {r["mode"]: r for r in res["results"]}
    assert set(rows) == {"fp32", "bf16"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["threads"] == 1 and r["torch_threads"] == 1 and r["chunks"] == 3
        assert (r["samples_in"], r["tokens_out"], r["samples_out"]) == (1280, 4, 1920)
        for key in ("encode_ms", "decode_ms", "encdec_ms"):
            assert set(r[key]) >= {"p50", "p90", "max"} and r[key]["p50"] > 0
        assert r["rtf"] > 0 and r["peak_rss_mb"] > 0 and r["weight_bytes"] > 0
    assert rows["bf16"]["weight_bytes"] < rows["fp32"]["weight_bytes"]

    q = res["quality"]
    assert "error" not in q, q
    bf16 = q["modes"]["bf16"]
    assert set(bf16) >= {"token_agreement", "bit_agreement", "snr_db", "max_abs"}
    assert 0.0 <= bf16["token_agreement"] <= 100.0
