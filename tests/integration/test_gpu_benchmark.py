"""Smoke test of benchmarks/gpu.py --small: tiny Gemma-2 and Llama configs on CPU in seconds."""

from __future__ import annotations

import json
import math

import pytest
from conftest import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _load():
    return load_script("benchmarks/gpu.py", "bench_gpu")


def _numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v


def test_small_run_writes_every_section(tmp_path, capsys):
    gpu = _load()
    out = tmp_path / "gpu.json"
    gpu.main(["--small", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["small"] is True
    assert set(res["models"]) == {"gemma-2-2b", "llama-3.2-3b"}
    for name, m in res["models"].items():
        for section in ("generation", "freeze", "eap_ig", "exact", "paper_estimate",
                        "packed_sweep", "refill", "compiled", "bandwidth", "eap_ig_batch",
                        "paper_estimate_new_paths"):
            assert section in m and "error" not in m[section], (name, section, m.get(section))
        pack = m["packed_sweep"]
        assert pack["packed_vs_separate_throughput"] > 0 and pack["packed_tokens_per_s"] > 0
        assert pack["settings"] == 3 and pack["prompts"] == 3
        assert pack["packed_slots_tokens_per_s"] > 0 and pack["slots_steps"] >= 6
        assert pack["packed_slots_rows_equal_share"] == 1.0  # same tokens as packed refill
        assert pack["packed_slots_cudagraph_skips"] == 0 and pack["slots"] == 2
        assert m["bandwidth"]["slots_bandwidth_ratio"] > 0
        assert m["paper_estimate_new_paths"]["generation_path"] in ("packed", "packed_slots")
        assert m["refill"]["refill_vs_fixed_throughput"] > 0
        assert m["compiled"]["tokens_equal"] is True
        assert m["bandwidth"]["copy_bandwidth_gb_s"] > 0
        assert 0 < m["bandwidth"]["eager_bandwidth_ratio"]
        assert m["eap_ig_batch"]["batch"] == 2
        assert m["paper_estimate_new_paths"]["total_h"] > 0
        gen, frz = m["generation"], m["freeze"]
        assert gen["batch"] == 2 and gen["new_tokens"] == 6
        assert {"hf_generate_s", "steered_s", "steered_vs_hf_throughput"} <= set(gen)
        for mode in ("qk", "ov", "svv", "mlp"):
            assert frz[f"{mode}_vs_plain_throughput"] > 0
        assert {"seconds_per_example", "peak_memory_gb", "extra_memory_gb"} <= set(m["eap_ig"])
        assert m["eap_ig"]["sequence_tokens"] == 8 + 12
        assert -1 <= m["exact"]["spearman_sampled_edges"] <= 1
        assert m["paper_estimate"]["total_h"] > 0
        assert all(math.isfinite(v) for v in _numbers(m)), name
    assert res["paper_estimate_total_h"] == pytest.approx(
        sum(m["paper_estimate"]["total_h"] for m in res["models"].values()))
    assert res["paper_estimate_new_paths_total_h"] == pytest.approx(
        sum(m["paper_estimate_new_paths"]["total_h"] for m in res["models"].values()))
    printed = capsys.readouterr().out
    assert "EAP-IG s / example" in printed and "paper study estimate" in printed
    assert "packed sweep (tok/s)" in printed and "new paths" in printed


def test_only_the_named_sections_run(tmp_path):
    gpu = _load()
    out = tmp_path / "gpu.json"
    gpu.main(["--small", "--models", "llama-3.2-3b", "--sections", "packed_sweep",
              "--out", str(out)])
    m = json.loads(out.read_text())["models"]["llama-3.2-3b"]
    assert "packed_sweep" in m and "generation" not in m and "compiled" not in m


def test_unknown_section_is_a_one_line_error(tmp_path, capsys):
    gpu = _load()
    with pytest.raises(SystemExit):
        gpu.main(["--small", "--sections", "warp", "--out", str(tmp_path / "x.json")])
    assert "error: no section 'warp'" in capsys.readouterr().err


def test_unknown_model_is_a_one_line_error(tmp_path, capsys):
    gpu = _load()
    with pytest.raises(SystemExit):
        gpu.main(["--small", "--models", "gpt-9", "--out", str(tmp_path / "x.json")])
    assert "error: no config 'gpt-9'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
