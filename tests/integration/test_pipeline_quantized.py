"""The pipeline on an int8-quantized tiny chat model (``model.quantization: int8``): every stage
(model, data, vectors/DIM, trained/NTP, evaluation, patching, circuits, freeze, svv, sparsify)
runs,
results.json passes its check and records the quantization, and the svv section's tokens are
those of the dequantized int8 weights computed here by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_pipeline_workdir

from steerscope.errors import SteerscopeError
from steerscope.pipeline import check_results, config_from_dict, run_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import tiny_config  # noqa: E402

pytest.importorskip("torchao", reason="the int8 backend (pip install 'steerscope[quant]')")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _config(root: Path) -> dict:
    """The tiny model quantized; DIM and NTP; 4 patched prompts; every stage."""
    return tiny_config(root, name="quant", model={"quantization": "int8"},
                       vectors={"methods": ["dim", "ntp"]},
                       patching={"n_prompts": 4, "batch_size": 4},
                       svv={"top_tokens": 6, "n_heads": 4})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("quant"))


@pytest.fixture(scope="module")
def run(root):
    res = run_pipeline(_config(root), root / "runs", progress=False)
    return res, json.loads(res.results_path.read_text())


def test_the_stages_run_on_the_int8_model(run):
    res, results = run
    for stage in ("model", "data", "vectors", "trained", "evaluation", "patching", "circuits",
                  "freeze", "svv", "sparsify"):
        assert results["run"]["stages"][stage] == "done", stage
    assert {"model", "vectors", "steering", "circuits", "freeze", "svv", "sparsify"} <= set(
        check_results(results))
    assert results["model"]["quantization"] == "int8"
    assert set(results["svv"]) == set(res.outputs["patching"].outputs["methods"]) != set()
    for e in results["freeze"].values():
        assert 0.0 <= e["present"]["behaviour_rate"] <= 1.0


def test_svv_tokens_are_those_of_the_dequantized_int8_weights(root, run):
    """Each row's tokens: top-6 of the final norm and the unembedding applied to
    ±(s ⊙ γ) W_V^h W_O^h with W_V, W_O the int8 weights dequantized here (qdata · scale)."""
    from steerscope.models import load_model
    from steerscope.vectors import SteeringVector

    res, results = run
    lm = load_model(root / "model", quantization="int8")
    arch = lm.arch
    for method, rows in results["svv"].items():
        sv = SteeringVector.load(res.run_dir / results["vectors"][method]["path"], arch)
        for r in rows:
            layer, head = (int(x) for x in r["node"][1:].split(".h"))
            attn = lm.model.model.layers[layer].self_attn
            w_v, w_o = (w.qdata.float() * w.scale.float()
                        for w in (attn.v_proj.weight, attn.o_proj.weight))
            dh, g = arch.d_head, head // arch.group_size
            gamma = lm.model.model.layers[layer].input_layernorm.weight.float()
            svv = w_o[:, head * dh:(head + 1) * dh] @ (
                w_v[g * dh:(g + 1) * dh] @ (sv.vector.float() * gamma))  # [d]
            if r["flipped"]:
                svv = -svv
            with torch.no_grad():
                logits = lm.model.lm_head(lm.model.model.norm(svv[None, None]))[0, 0]
            assert r["tokens"] == [lm.tokenizer.decode([i]) for i in logits.topk(6).indices]


@pytest.mark.parametrize("value, message", [
    ("int3", r"config key 'model.quantization': unknown quantization 'int3'"),
    (8, r"model\.quantization"),
])
def test_a_bad_quantization_fails_the_config_check_in_one_line(root, value, message):
    cfg = _config(root)
    cfg["model"]["quantization"] = value
    with pytest.raises(SteerscopeError, match=message) as info:
        config_from_dict(cfg)
    assert "\n" not in str(info.value)


# --- the command line ----------------------------------------------------------------------
def test_cli_loads_int8_and_refuses_an_unknown_quantization_in_one_line(root, capsys):
    from steerscope.cli import main

    assert main(["info", str(root / "model"), "--quantization", "int8"]) == 0
    assert "llama: 4 layers" in capsys.readouterr().out
    assert main(["generate", str(root / "model"), "--quantization", "int8", "--prompt", "hi",
                 "--max-new-tokens", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["info", str(root / "model"), "--quantization", "int3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown quantization 'int3'" in err and len(err.splitlines()) == 1


def test_the_demo_passes_its_quantization_to_the_model_section():
    from steerscope.pipeline.demo import demo_run_config

    assert demo_run_config(quantization="int8").model.quantization == "int8"
    assert demo_run_config().model.quantization is None
