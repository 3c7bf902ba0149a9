"""The freeze, svv and sparsify pipeline stages on a tiny random chat model: their artifacts
and results.json sections equal the library functions called directly (and hand-written
checks of the head naming, the IE convention, the τ rule and the IoU statistics), results.json
passes check_results, the report renders the three sections, and reruns are byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PIPELINE_HARMFUL, PIPELINE_HARMLESS, write_pipeline_workdir

from steerscope.errors import SteerscopeError
from steerscope.pipeline import check_results, config_from_dict, run_pipeline
from steerscope.pipeline import registry as reg
from steerscope.pipeline.stages.freeze import freeze_section
from steerscope.pipeline.stages.sparsify import RULE_NAMES, sparsify_section
from steerscope.pipeline.stages.svv import results_head_name, svv_section

HARMFUL, HARMLESS = PIPELINE_HARMFUL, PIPELINE_HARMLESS
RULES = ["grad", "ie", "dropout", "bottomk"]
TAUS = [0.0, 0.5, 1.0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _config(root: Path, **changes) -> dict:
    """Tiny model, 4 test prompts per set, 4-token generations, no circuits."""
    cfg = {
        "name": "mech",
        "model": {"source": str(root / "model")},
        "data": {k: str(root / ("harmful.txt" if "harmful" in k else "harmless.txt"))
                 for k in ("harmful_train", "harmless_train", "harmful_val", "harmless_val",
                           "harmful_test", "harmless_test")}
        | {"n_train": 4, "n_val": 3, "n_test": 4},
        "vectors": {
            "methods": ["dim", "pca", "ntp"],
            "batch_size": 4,
            "dim": {"filter": False, "kl_threshold": 1e9, "induce_threshold": -1e9,
                    "positions": [-1]},
            "preference": {"max_new_tokens": 4, "val_fraction": 0.25},
            "ntp": {"lr": [0.04], "epochs": 1, "max_response_tokens": 4},
        },
        "evaluation": {"max_new_tokens": 4, "batch_size": 3},
        # a random model never refuses: keep the prompts whose steered tokens differ
        "patching": {"flip": "tokens", "n_prompts": 4, "max_new_tokens": 4, "ig_steps": 2,
                     "batch_size": 4},
        "circuits": {"enabled": False},
        "freeze": {"n_prompts": 3, "max_new_tokens": 5},
        "svv": {"top_tokens": 6, "n_heads": 4},
        "sparsify": {"rules": RULES, "taus": TAUS, "n_prompts": 3, "max_new_tokens": 4,
                     "seed": 7},
    }
    for k, v in changes.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("mech"))


@pytest.fixture(scope="module")
def run(root):
    if not reg.get_stage("patching").available:
        pytest.skip("the patching stage is not registered yet (svv/sparsify need its output)")
    res = run_pipeline(_config(root), root / "runs", progress=False)
    results = json.loads(res.results_path.read_text())
    for v in results.get("vectors", {}).values():  # results.json paths: relative to the run
        v["path"] = str(res.run_dir / v["path"])
    return res, results


@pytest.fixture(scope="module")
def lm(root):
    from steerscope.models import load_model

    return load_model(str(root / "model"))


def _prompts(res) -> dict[str, list[str]]:
    return json.loads(res.outputs["data"].path("prompts.json").read_text())


def _vector(results, method, arch):
    from steerscope.vectors import SteeringVector

    return SteeringVector.load(results["vectors"][method]["path"], arch)


def _patched(res) -> list[str]:
    return list(res.outputs["patching"].outputs["methods"])


def _patching_result(res, method):
    from steerscope.patching import PatchingResult

    return PatchingResult.load(res.outputs["patching"].path(method))


# --- the whole run -------------------------------------------------------------------------------
def test_stages_run_and_results_pass_the_check(run):
    res, results = run
    assert res.ran[-4:] == ["freeze", "svv", "sparsify", "report"]
    for stage in ("freeze", "svv", "sparsify"):
        assert results["run"]["stages"][stage] == "done"
    assert {"freeze", "svv", "sparsify"} <= set(check_results(results))
    patched = _patched(res)
    assert patched and set(patched) <= {"dim", "ntp"}  # pca is not a patched method
    assert list(results["svv"]) == patched
    assert [m for m in results["sparsify"] if m != "iou"] == patched


def test_report_renders_the_three_sections(run):
    res, results = run
    html = (res.run_dir / "report.html").read_text()
    for title in ("Freezing ablations", "Steering value vectors", "Sparsification"):
        start = html.index(title)
        nxt = html.find("<h2>", start)
        body = html[start:nxt if nxt > 0 else None]
        assert "not run" not in body, title
    for m, heads in results["svv"].items():
        assert f"<h3>{m}</h3>" in html
        assert all(h["head"] in html for h in heads)
    figs = res.run_dir / "figures"
    assert (figs / "freeze.png").is_file()
    for m in _patched(res):
        assert (figs / f"sparsify_{m}.png").is_file()
    if results["sparsify"]["iou"]:
        assert (figs / "iou.png").is_file()


# --- freeze --------------------------------------------------------------------------------------
def test_freeze_equals_freeze_evaluation(run, lm):
    from steerscope.mechanisms import freeze_evaluation

    res, results = run
    p = _prompts(res)
    direct = freeze_evaluation(lm.model, lm.tokenizer, _vector(results, "dim", lm.arch),
                               p["present_test"][:3], p["absent_test"][:3],
                               max_new_tokens=5, batch_size=3, vector_name="dim")
    from steerscope.evaluate.coherence import COHERENCE_KEYS

    saved = json.loads(res.outputs["freeze"].path("freeze.json").read_text())
    assert saved["completions"] == direct.completions
    # the stage adds the coherence columns to every row (pipeline.stages.freeze)
    assert all(set(COHERENCE_KEYS) <= set(r) for r in saved["rows"])
    plain = [{k: v for k, v in r.items() if k not in COHERENCE_KEYS} for r in saved["rows"]]
    assert plain == json.loads(json.dumps(direct.to_json()["rows"]))
    def without_coherence(section: dict) -> dict:
        return {m: {k: {c: x for c, x in v.items() if c != "coherence"}
                    if isinstance(v, dict) else v for k, v in e.items()}
                for m, e in section.items()}

    assert all(set(COHERENCE_KEYS) <= set(e[side]["coherence"])
               for e in results["freeze"].values() for side in ("present", "absent"))
    expected = json.loads(json.dumps(freeze_section(direct.to_json())))
    assert without_coherence(results["freeze"]) == without_coherence(expected)
    assert (res.outputs["freeze"].path("freeze.png")).is_file()


def test_freeze_section_follows_the_drop_rule(run):
    """mean_drop = mean over the two sides of 100·(success_none − success_mode), success =
    1 − behaviour rate on present prompts (refusal: the ASR) and the behaviour rate on absent
    ones (absolute points)."""
    _, results = run
    f = results["freeze"]
    assert list(f) == ["none", "qk", "ov", "svv", "mlp"]
    base = f["none"]
    assert base["mean_drop"] == 0.0
    for e in f.values():
        h, b = e["present"], e["absent"]
        assert h["n"] == b["n"] == 3
        assert (h["alpha"], b["alpha"]) == (-1.0, 1.0)
        dh = 100 * ((1 - base["present"]["behaviour_rate"]) - (1 - h["behaviour_rate"]))
        db = 100 * (base["absent"]["behaviour_rate"] - b["behaviour_rate"])
        assert h["drop"] == pytest.approx(dh, abs=1e-9)
        assert b["drop"] == pytest.approx(db, abs=1e-9)
        assert e["mean_drop"] == pytest.approx((dh + db) / 2, abs=1e-9)
        assert 0.0 <= h["repetition_rate"] <= 1.0
        assert 0.0 <= b["repetition_rate"] <= 1.0


def test_freeze_section_reads_loops_from_completions_of_older_tables():
    loop, answer = "I I I I I I I I I I I I I I", "Flour, water, salt and yeast make bread."
    rows = [{"mode": m, "side": s, "behaviour_rate": 0.0, "drop": None if m == "none" else 0.0,
             "alpha": a, "n": 2} for m in ("none", "qk") for s, a in (("present", -1.0),
                                                                     ("absent", 1.0))]
    rows[0]["repetition_rate"] = 0.25  # a row that carries it keeps it
    table = {"rows": rows, "mean_drop": {"qk": 0.0},
             "completions": {m: {"present": [loop, answer], "absent": [loop, loop]}
                             for m in ("none", "qk")}}
    f = freeze_section(table)
    assert f["none"]["present"]["repetition_rate"] == 0.25
    assert f["none"]["absent"]["repetition_rate"] == 1.0
    assert (f["qk"]["present"]["repetition_rate"], f["qk"]["absent"]["repetition_rate"]) == \
        (0.5, 1.0)


# --- svv -----------------------------------------------------------------------------------------
def test_svv_equals_svv_report_with_the_patching_head_scores(run, lm):
    from steerscope.mechanisms import svv_report

    res, results = run
    for m in _patched(res):
        scores = _patching_result(res, m).tables["head_scores"]
        sv = _vector(results, m, lm.arch)
        direct = svv_report(lm.model, lm.tokenizer, sv.vector, sv.layer, head_scores=scores,
                            top_k=6, arch=lm.arch, vector_name=m)
        saved = json.loads(res.outputs["svv"].path(f"{m}.json").read_text())
        assert saved == json.loads(json.dumps(direct.to_json()))
        assert results["svv"][m] == json.loads(json.dumps(svv_section(direct.to_json(), 4)))
        assert res.outputs["svv"].path(f"{m}.png").is_file()


def test_svv_rows_rank_name_and_decode_heads(run, lm):
    """Rows: the 4 heads with the largest |node score| (from the patching result), named
    L{layer}H{head} with ' (−)' when the score is negative; tokens = top-6 of the final norm
    and unembedding applied to ±(s ⊙ γ) W_V^h W_O^h, computed here head by head."""
    res, results = run
    arch = lm.arch
    for m, rows in results["svv"].items():
        scores = _patching_result(res, m).tables["head_scores"]
        sv = _vector(results, m, arch)
        ranked = sorted((k for k in scores if int(k[1:].split(".h")[0]) >= sv.layer),
                        key=lambda k: -abs(scores[k]))[:4]
        assert [r["node"] for r in rows] == ranked
        for r in rows:
            layer, head = (int(x) for x in r["node"][1:].split(".h"))
            neg = scores[r["node"]] < 0
            assert r["head"] == f"L{layer}H{head}" + (" (\u2212)" if neg else "")
            assert r["score"] == pytest.approx(scores[r["node"]])
            assert r["flipped"] == neg
            # the head's svv by hand: GQA value slice, output slice, pre-attention norm
            block = lm.model.model.layers[layer]  # the HF Llama block itself
            attn = block.self_attn
            dh, g = arch.d_head, head // arch.group_size
            gamma = block.input_layernorm.weight.detach().float()
            w_v = attn.v_proj.weight.detach().float()[g * dh:(g + 1) * dh]  # [dh, d]
            w_o = attn.o_proj.weight.detach().float()[:, head * dh:(head + 1) * dh]  # [d, dh]
            svv = w_o @ (w_v @ (sv.vector.float() * gamma))  # [d]
            if neg:
                svv = -svv
            with torch.no_grad():
                logits = lm.model.lm_head(lm.model.model.norm(svv[None, None]))[0, 0]
            ids = logits.topk(6).indices.tolist()
            assert r["tokens"] == [lm.tokenizer.decode([i]) for i in ids]


def test_head_names():
    assert results_head_name("a16.h1", False) == "L16H1"
    assert results_head_name("a3.h12", True) == "L3H12 (\u2212)"


# --- sparsify ------------------------------------------------------------------------------------
def test_sparsify_ie_is_the_patching_steering_node_score(run, lm):
    """The IE used is s ⊙ steer_grad of the patching run (no IG recomputed)."""
    from safetensors.torch import load_file

    res, results = run
    for m in _patched(res):
        sc = _patching_result(res, m).scores["eap_ig"]
        s = _vector(results, m, lm.arch).vector.float()
        ie = load_file(str(res.outputs["sparsify"].path(f"ie_{m}.safetensors")))["ie"]
        torch.testing.assert_close(ie, s * sc.steer_grad.float(), rtol=1e-5, atol=1e-7)
        assert float(ie.abs().max()) > 0


def test_sparsify_equals_sparsity_sweep(run, lm):
    from steerscope.patching.scores import steer_dimension_scores
    from steerscope.sparsify.sweep import sparsity_sweep

    res, results = run
    p = _prompts(res)
    methods = _patched(res)
    vectors = {m: _vector(results, m, lm.arch) for m in methods}
    ies = {m: steer_dimension_scores(_patching_result(res, m).scores["eap_ig"])[1]
           for m in methods}
    direct = sparsity_sweep(lm.model, lm.tokenizer, vectors, ies, p["present_test"][:3],
                            p["absent_test"][:3], taus=TAUS,
                            rules=[RULE_NAMES[r] for r in RULES], seed=7, max_new_tokens=4,
                            batch_size=3, arch=lm.arch, progress=False)
    saved = json.loads(res.outputs["sparsify"].path("sweep.json").read_text())
    # the stage adds each point's coherence columns (pipeline.stages.sparsify)
    assert all(set(pt["coherence"]) == {"bypass", "induce"} for pt in saved["points"])
    for pt in saved["points"]:
        del pt["coherence"]
    assert saved == json.loads(json.dumps(direct.to_json()))
    got = {m: v if m == "iou" else {r: [{k: x for k, x in q.items() if k != "coherence"}
                                        for q in pts] for r, pts in v.items()}
           for m, v in results["sparsify"].items()}
    want = json.loads(json.dumps(sparsify_section(direct.to_json(), RULES)))
    want = {m: v if m == "iou" else {r: [{k: x for k, x in q.items() if k != "coherence"}
                                         for q in pts] for r, pts in v.items()}
            for m, v in want.items()}
    assert got == want
    by_key = {(q["method"], q["rule"], q["tau"]): q for q in direct.points}
    for m in methods:
        assert list(results["sparsify"][m]) == RULES
        for rule, pts in results["sparsify"][m].items():
            for pt in pts:
                q = by_key[m, RULE_NAMES[rule], pt["tau"]]
                assert (pt["present_behaviour_rate"], pt["absent_behaviour_rate"]) == (
                    1 - q["bypass_asr"], 1 - q["induce_asr"])


def _tau_kept(s: torch.Tensor, ie: torch.Tensor, tau: float) -> set[int]:
    """Dimensions the gradient rule keeps, by hand: |ie_i|/‖ie‖ >= τ·|s_i|/‖s‖."""
    s, ie = s.double(), ie.double()
    return {i for i in range(s.numel())
            if abs(float(ie[i])) / float(ie.norm()) >= tau * abs(float(s[i])) / float(s.norm())}


def test_sparsify_points_and_iou_by_hand(run, lm):
    """Kept counts of the τ rule, sparsity = 1 − k/d, the other rules at the same k, and IoU /
    hypergeometric p-values from the kept sets computed here."""
    from scipy.stats import hypergeom

    res, results = run
    sp = results["sparsify"]
    methods = _patched(res)
    kept = {}
    for m in methods:
        s = _vector(results, m, lm.arch).vector
        sc = _patching_result(res, m).scores["eap_ig"]
        ie = s.float() * sc.steer_grad.float()
        d = s.numel()
        for tau in TAUS:
            k = len(_tau_kept(s, ie, tau))
            kept[m, tau] = _tau_kept(s, ie, tau)
            for rule in RULES:
                pts = [q for q in sp[m][rule] if q["tau"] == tau]
                if k == 0:
                    assert not pts
                    continue
                (pt,) = pts
                assert pt["k"] == k and pt["d"] == d
                assert pt["sparsity"] == pytest.approx(1 - k / d)
        dense = [q for q in sp[m]["grad"] if q["tau"] == 0.0][0]
        assert dense["sparsity"] == 0.0
    rows = {(r["level"], tuple(r["pair"])): r for r in sp["iou"]}
    expected = 0
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for tau in TAUS:
                A, B = kept[a, tau], kept[b, tau]
                if not A or not B:
                    continue
                expected += 1
                r = rows[tau, (a, b)]
                d = r["d"]
                assert r["iou"] == pytest.approx(len(A & B) / len(A | B))
                p = float(hypergeom.sf(len(A & B) - 1, d, len(A), len(B)))
                assert r["p_value"] == pytest.approx(p, rel=1e-9, abs=1e-300)
    assert len(sp["iou"]) == expected


# --- determinism and config ----------------------------------------------------------------------
def test_forced_rerun_is_byte_identical(run, root):
    res, _ = run
    again = run_pipeline(_config(root), root / "runs", force=["freeze", "svv", "sparsify"],
                         progress=False)
    assert again.ran == ["freeze", "svv", "sparsify"]  # same files: the report is kept
    for stage in ("freeze", "svv", "sparsify"):
        assert again.outputs[stage].digest == res.outputs[stage].digest, stage


@pytest.mark.parametrize("changes, match", [
    ({"freeze": {"method": "ntp"}}, r"'freeze.method' 'ntp' is not an extracted vector"),
    ({"freeze": {"method": "probe"}}, r"'freeze.method' 'probe' is not an extracted vector"),
    ({"sparsify": {"max_new_tokens": 0}}, r"'sparsify.max_new_tokens' must be a positive"),
    ({"sparsify": {"taus": []}}, r"'sparsify.taus' is empty"),
    ({"sparsify": {"rules": ["grad", "top"]}}, r"'sparsify.rules' has unknown value 'top'"),
    ({"svv": {"n_heads": 0}}, r"'svv.n_heads' must be a positive integer"),
])
def test_bad_section_values_fail_in_one_line(root, changes, match):
    with pytest.raises(SteerscopeError, match=match) as info:
        config_from_dict(_config(root, **changes))
    assert "\n" not in str(info.value)


def test_freeze_method_may_be_an_extraction_method_and_off_when_disabled(root):
    assert config_from_dict(_config(root, freeze={"method": "pca"})).freeze.method == "pca"
    cfg = config_from_dict(_config(root, freeze={"method": "ntp", "enabled": False}))
    assert not cfg.freeze.enabled
