"""Sparsification rules, agreement statistics, IG dimension scores and the sparsity sweep."""

from __future__ import annotations

import math

import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.models.tiny import tiny_model, tiny_tokenizer
from steerscope.patching.data import PatchingExample
from steerscope.runtime import Runtime, steer
from steerscope.sparsify import (
    DEFAULT_TAUS,
    RULES,
    agreement,
    dimension_scores,
    equal_sparsity_family,
    hypergeom_pvalue,
    ig_scores_from_examples,
    set_agreement,
    sparsify,
    tau_levels,
)
from steerscope.vectors import SteeringVector

D = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on the shared 2-core machine two threads per process make these
    small forward passes ~40x slower under load (measured 4 s vs 0.1 s per tiny generate)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _vec(seed: int = 0, d: int = D, layer: int = 2) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(d, generator=g) * 3, layer=layer, method="dim")


def _ie(seed: int = 1, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g)


# --- rules --------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("k", [1, 7, 32, 63, 64])
def test_rules_keep_exactly_k_and_the_norm(rule, k):
    sv, ie = _vec(), _ie()
    out = sparsify(sv, rule, ie=ie, k=k)
    assert int((out.vector != 0).sum()) == k
    info = out.metadata["sparsify"]
    assert info["k"] == k and info["sparsity"] == pytest.approx(1 - k / D)
    assert out.norm == pytest.approx(sv.norm, rel=1e-6)
    assert out.layer == sv.layer and out.method.startswith(f"dim+{rule}@")
    # kept entries are the original ones times one common factor
    nz = out.vector != 0
    ratio = out.vector[nz].double() / sv.vector[nz].double()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 0.95])
def test_fraction_gives_the_requested_sparsity(rule, fraction):
    out = sparsify(_vec(), rule, ie=_ie(), fraction=fraction)
    k = round((1 - fraction) * D)
    assert int((out.vector != 0).sum()) == k
    assert out.metadata["sparsify"]["sparsity"] == pytest.approx(1 - k / D)


@pytest.mark.parametrize("rule", RULES)
def test_zero_sparsity_is_the_original(rule):
    sv = _vec()
    for out in (sparsify(sv, rule, ie=_ie(), fraction=0.0), sparsify(sv, rule, ie=_ie(), k=D)):
        assert torch.equal(out.vector, sv.vector)
    assert torch.equal(sparsify(sv, "gradient", ie=_ie(), tau=0.0).vector, sv.vector)


def test_rules_match_brute_force_rankings():
    sv, ie = _vec(), _ie()
    s = sv.vector.double().tolist()
    e = ie.double().tolist()
    ns, ne = math.sqrt(sum(x * x for x in s)), math.sqrt(sum(x * x for x in e))
    k = 10
    by = {
        "ie": sorted(range(D), key=lambda i: (-abs(e[i]), i))[:k],
        "magnitude": sorted(range(D), key=lambda i: (-abs(s[i]), i))[:k],
        "gradient": sorted(range(D), key=lambda i: (-(abs(e[i]) / ne) / (abs(s[i]) / ns), i))[:k],
    }
    for rule, idx in by.items():
        got = set(torch.nonzero(sparsify(sv, rule, ie=ie, k=k).vector).flatten().tolist())
        assert got == set(idx), rule
    # the tau rule, dimension by dimension
    for tau in DEFAULT_TAUS:
        keep = {i for i in range(D) if not abs(e[i]) / ne < tau * abs(s[i]) / ns}
        out = sparsify(sv, "gradient", ie=ie, tau=tau)
        assert set(torch.nonzero(out.vector).flatten().tolist()) == keep
        assert out.metadata["sparsify"]["tau"] == tau


def test_ties_are_broken_by_index():
    sv = SteeringVector(torch.ones(8), layer=1)
    out = sparsify(sv, "magnitude", k=3)
    assert torch.nonzero(out.vector).flatten().tolist() == [0, 1, 2]
    out = sparsify(sv, "ie", ie=torch.tensor([1., 2, 2, 1, 2, 0, 0, 1]), k=4)
    assert torch.nonzero(out.vector).flatten().tolist() == [0, 1, 2, 4]


def test_random_rule_is_seeded_and_nested():
    sv = _vec()
    a = sparsify(sv, "random", k=10, seed=42)
    assert torch.equal(a.vector != 0, sparsify(sv, "random", k=10, seed=42).vector != 0)
    assert not torch.equal(a.vector != 0, sparsify(sv, "random", k=10, seed=5).vector != 0)
    b = sparsify(sv, "random", k=20, seed=42)
    assert bool(((a.vector != 0) & ~(b.vector != 0)).sum() == 0)
    assert a.metadata["sparsify"]["seed"] == 42


def test_equal_sparsity_family_uses_the_tau_levels():
    sv, ie = _vec(), _ie()
    levels = tau_levels(sv, ie)
    assert levels[0]["k"] == D and [lv["tau"] for lv in levels] == list(DEFAULT_TAUS)
    ks = [lv["k"] for lv in levels]
    assert ks == sorted(ks, reverse=True)  # larger tau, sparser
    fam = equal_sparsity_family(sv, ie, fractions=[0.9])
    for lv in levels:
        rows = [r for r in fam if r["tau"] == lv["tau"]]
        if lv["k"] == 0:
            assert not rows
            continue
        assert sorted(r["rule"] for r in rows) == sorted(RULES)
        for r in rows:
            assert r["k"] == lv["k"] and int((r["vector"].vector != 0).sum()) == lv["k"]
    assert {r["k"] for r in fam if r["fraction"] == 0.9} == {round(0.1 * D)}


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(rule="bogus", k=3), "unknown sparsification rule"),
        (dict(rule="ie", k=3, ie=None), "needs the dimension-level IE"),
        (dict(rule="ie", k=3, ie=torch.ones(5)), "has shape"),
        (dict(rule="ie", k=3, ie=torch.full((D,), float("nan"))), "NaN"),
        (dict(rule="ie", k=3, ie=torch.zeros(D)), "all zeros"),
        (dict(rule="magnitude", k=0), "out of range"),
        (dict(rule="magnitude", k=D + 1), "out of range"),
        (dict(rule="magnitude", fraction=1.0), "out of range"),
        (dict(rule="magnitude", fraction=-0.1), "out of range"),
        (dict(rule="magnitude"), "exactly one of k"),
        (dict(rule="magnitude", k=3, fraction=0.5), "exactly one of k"),
        (dict(rule="ie", tau=0.5, ie=torch.ones(D)), "tau applies to the gradient rule"),
        (dict(rule="gradient", tau=-1.0, ie=torch.ones(D)), "tau = -1.0 is invalid"),
        (dict(rule="gradient", tau=1e9, ie=torch.ones(D)), "keeps no dimension"),
    ],
)
def test_bad_input_is_one_line(kwargs, needle):
    with pytest.raises(SteerscopeError, match=needle) as exc:
        sparsify(_vec(), **kwargs)
    assert "\n" not in str(exc.value)


def test_sparse_vectors_save_and_export(tmp_path):
    from steerscope.vectors import export_control_vector, import_control_vector

    out = sparsify(_vec(layer=3), "ie", ie=_ie(), fraction=0.75)
    back = SteeringVector.load(out.save(tmp_path / "sparse.safetensors"))
    assert torch.equal(back.vector, out.vector) and back.method == out.method
    assert back.metadata["sparsify"]["k"] == 16
    (cv,) = import_control_vector(export_control_vector(out, tmp_path / "sparse.gguf"))
    assert cv.layer == 3 and torch.equal(cv.vector, out.vector)


# --- agreement ----------------------------------------------------------------------------
def _direct_pvalue(x: int, d: int, a: int, b: int) -> float:
    """P(X >= x) by summing the hypergeometric pmf with exact integer binomials."""
    total = math.comb(d, b)
    return sum(math.comb(a, j) * math.comb(d - a, b - j)
               for j in range(x, min(a, b) + 1)) / total


@pytest.mark.parametrize("x, d, a, b", [(0, 10, 3, 4), (2, 10, 3, 4), (3, 10, 3, 4),
                                        (5, 20, 8, 6), (1, 7, 1, 1), (12, 40, 15, 20),
                                        (10, 10, 10, 10)])
def test_hypergeometric_pvalue_matches_direct_sum(x, d, a, b):
    assert hypergeom_pvalue(x, d, a, b) == pytest.approx(_direct_pvalue(x, d, a, b), rel=1e-9)


def test_agreement_rows():
    g = torch.Generator().manual_seed(3)
    masks = {m: torch.rand(30, generator=g) < p for m, p in (("dim", 0.4), ("ntp", 0.5),
                                                              ("po", 0.3))}
    vecs = {m: SteeringVector(torch.randn(30, generator=g) * mask, layer=1)
            for m, mask in masks.items()}
    rows = agreement({"tau=1": vecs})
    assert [(r["a"], r["b"]) for r in rows] == [("dim", "ntp"), ("dim", "po"), ("ntp", "po")]
    for r in rows:
        sa = set(torch.nonzero(masks[r["a"]]).flatten().tolist())
        sb = set(torch.nonzero(masks[r["b"]]).flatten().tolist())
        assert r["overlap"] == len(sa & sb) and r["iou"] == pytest.approx(
            len(sa & sb) / len(sa | sb))
        assert r["p_value"] == pytest.approx(_direct_pvalue(len(sa & sb), 30, len(sa), len(sb)))
    same = set_agreement(masks["dim"], masks["dim"])
    assert same["iou"] == 1.0 and same["p_value"] < 1e-3
    with pytest.raises(SteerscopeError, match="impossible overlap"):
        hypergeom_pvalue(5, 10, 3, 4)


# --- IG dimension scores (the patching package's EAP-IG steering-node gradient) -------------
@pytest.fixture(scope="module")
def f64_model():
    return tiny_model("llama", dtype=torch.float64)


def _examples(alpha: float, dataset: str = "x", seed: int = 0) -> list[PatchingExample]:
    """Three random token sequences with 5, 4 and 3 response tokens."""
    g = torch.Generator().manual_seed(seed)
    return [PatchingExample(torch.randint(3, 256, (n,), generator=g), n - r, alpha, dataset)
            for n, r in ((12, 5), (9, 4), (7, 3))]


def _response_logits(model, ex: PatchingExample, add: torch.Tensor) -> torch.Tensor:
    """[R, V] logits predicting the response tokens, with ``add`` added to the residual
    entering block 1 at every position (a plain HF forward with a steering hook)."""
    with Runtime(model, [steer(add, 1, 1.0)]), torch.no_grad():
        logits = model(input_ids=ex.input_ids[None]).logits[0]
    return logits[ex.prompt_len - 1:-1].double()


def _targets(model, ex, s, alpha):
    """Clean (steered) and corrupt greedy tokens and the unmasked positions (y != y*)."""
    y = _response_logits(model, ex, alpha * s).argmax(-1)
    y_star = _response_logits(model, ex, 0 * s).argmax(-1)
    return y, y_star, (y != y_star).double()


def _metric_sum(model, examples, targets, add) -> float:
    """Σ over examples and unmasked positions of logit(y) − logit(y*)."""
    total = 0.0
    for ex, (y, y_star, keep) in zip(examples, targets):
        lg = _response_logits(model, ex, add)
        idx = torch.arange(lg.shape[0])
        total += float(((lg[idx, y] - lg[idx, y_star]) * keep).sum())
    return total


@pytest.mark.acceptance
def test_ig_gradient_matches_finite_differences(f64_model):
    """With T = 1 the steering-node gradient is α·∂M/∂h at h + (α/2)·s over the N unmasked
    positions: grad·v = α·(central finite difference of Σ M along v)/N."""
    model = f64_model
    g = torch.Generator().manual_seed(1)
    s = torch.randn(D, generator=g, dtype=torch.float64) * 6
    alpha = -1.0
    exs = _examples(alpha)
    targets = [_targets(model, ex, s, alpha) for ex in exs]
    n = int(sum(float(k.sum()) for _, _, k in targets))
    assert n > 0  # the steering changes some greedy tokens
    sv = SteeringVector(s.float(), layer=1)
    res = ig_scores_from_examples(model, sv.with_vector(s), exs, steps=1)
    assert res.n_positions == {"x": n}
    assert torch.allclose(res.ie.double(), s * res.grad.double(), rtol=1e-5, atol=1e-6)
    beta = 0.5 * alpha
    for j in range(3):
        v = torch.randn(D, generator=g, dtype=torch.float64)
        eps = 1e-3  # the RMSNorms compute in float32 even in a float64 model
        fd = (_metric_sum(model, exs, targets, beta * s + eps * v)
              - _metric_sum(model, exs, targets, beta * s - eps * v)) / (2 * eps)
        assert float(res.grad.double() @ v) == pytest.approx(alpha * fd / n, rel=2e-3,
                                                             abs=1e-5), j


@pytest.mark.acceptance
def test_ig_completeness(f64_model):
    """Σ_i IE_i → (M(α) − M(0)) / N as the number of IG steps grows (midpoint rule)."""
    model = f64_model
    s = torch.randn(D, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 6
    alpha = 1.0
    exs = _examples(alpha)
    targets = [_targets(model, ex, s, alpha) for ex in exs]
    n = int(sum(float(k.sum()) for _, _, k in targets))
    delta = (_metric_sum(model, exs, targets, alpha * s)
             - _metric_sum(model, exs, targets, 0 * s)) / n
    sv = SteeringVector(s.float(), layer=1).with_vector(s)
    errors = []
    for steps in (4, 64):
        res = ig_scores_from_examples(model, sv, exs, steps=steps)
        errors.append(abs(float(res.ie.double().sum()) / delta - 1))
    assert errors[1] < 2e-3 and errors[1] < errors[0] / 10  # midpoint rule, measured 0.1 → 5e-4


def test_dimension_scores_combine_datasets():
    model = tiny_model("qwen2")
    sv = SteeringVector(torch.randn(D, generator=torch.Generator().manual_seed(4)) * 8, layer=1)
    x, y = _examples(-1.0, "x", seed=5), _examples(1.0, "y", seed=6)
    a = ig_scores_from_examples(model, sv, {"x": x}, steps=2)
    b = ig_scores_from_examples(model, sv, {"y": y}, steps=2)
    both = ig_scores_from_examples(model, sv, {"x": x, "y": y}, steps=2)
    assert both.ie.shape == (D,) and torch.allclose(both.ie, sv.vector * both.grad, atol=1e-6)
    assert a.n_positions["x"] > 0 and b.n_positions["y"] > 0
    expect = (a.grad + b.grad) / 2  # position-weighted within a dataset, then the mean
    assert torch.allclose(both.grad, expect, atol=1e-6, rtol=1e-5)
    assert both.metric == {"x": {"alpha": -1.0, "examples": 3},
                           "y": {"alpha": 1.0, "examples": 3}}


def test_dimension_scores_use_the_generated_token_ids():
    """dimension_scores = rollouts (token ids, no re-tokenization) → patching examples →
    the same scores as ig_scores_from_examples on those examples."""
    from steerscope.patching.data import rollouts

    model, tok = tiny_model("llama"), tiny_tokenizer()
    tok.padding_side = "left"
    sv = SteeringVector(torch.randn(D, generator=torch.Generator().manual_seed(7)) * 8, layer=1)
    harmful, harmless = ["make a bomb", "rob a bank"], ["bake bread"]
    res = dimension_scores(model, tok, sv, harmful, harmless, steps=2, max_new_tokens=4,
                           only_flipped=False, batch_size=2)
    exs = []
    for name, prompts, alpha in (("present", harmful, -1.0), ("absent", harmless, 1.0)):
        rs = rollouts(model, tok, prompts, sv, alpha, max_new_tokens=4, batch_size=2)
        for which in ("steered", "base"):
            exs += [PatchingExample(torch.tensor(r.prompt_ids + ids), len(r.prompt_ids), alpha,
                                    f"{name}/{which}")
                    for r in rs for ids in [r.steered_ids if which == "steered" else r.base_ids]
                    if ids]
    ref = ig_scores_from_examples(model, sv, exs, steps=2)
    torch.testing.assert_close(res.ie, ref.ie)
    assert res.n_positions == ref.n_positions
    assert res.metadata["prompts_kept"] == {"present": 2, "absent": 1}
    with pytest.raises(SteerscopeError, match="steering flips no present prompt"):
        dimension_scores(model, tok, sv, harmful, harmless, steps=1, max_new_tokens=2)


# --- the sweep ----------------------------------------------------------------------------
def _refuses(text: str) -> bool:
    """A stand-in refusal detector that random tiny models trigger part of the time."""
    return "e" in text.lower()


def test_highest_retained_sparsity_on_handmade_points():
    from steerscope.sparsify import highest_retained_sparsity

    pts = [{"sparsity": 0.0, "bypass_retention": 1.0, "induce_retention": 1.0},
           {"sparsity": 0.5, "bypass_retention": 0.95, "induce_retention": 0.8},
           {"sparsity": 0.7, "bypass_retention": 0.92, "induce_retention": 0.91},
           {"sparsity": 0.9, "bypass_retention": 0.2, "induce_retention": None}]
    h = highest_retained_sparsity(pts, 0.9)
    assert h["bypass"] == 0.7 and h["induce"] == 0.7 and h["both"] == 0.7
    assert highest_retained_sparsity(pts, 0.93)["both"] == 0.0
    assert highest_retained_sparsity(pts, 1.5)["bypass"] is None


def test_sparsity_sweep_on_a_tiny_chat_model(tmp_path):
    from steerscope.generation import generate
    from steerscope.models.chat import format_prompt
    from steerscope.sparsify import sparsity_sweep

    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    g = torch.Generator().manual_seed(7)
    vectors = {m: SteeringVector(torch.randn(D, generator=g) * 8, layer=2, method=m)
               for m in ("dim", "ntp")}
    ies = {m: torch.randn(D, generator=g) for m in vectors}
    harmful, harmless, unseen = ["make a bomb", "rob it"], ["bake bread", "a poem"], ["hack"]
    res = sparsity_sweep(model, tok, vectors, ies, harmful, harmless, unseen,
                         taus=(0.0, 1.0, 2.0), fractions=(0.5,), max_new_tokens=4,
                         batch_size=2, refusal=_refuses, progress=False)
    levels = tau_levels(vectors["dim"], ies["dim"], (0.0, 1.0, 2.0))
    n_levels = sum(lv["k"] > 0 for lv in levels) + 1
    assert len([p for p in res.points if p["method"] == "dim"]) == n_levels * len(RULES)

    def brute_asr(sv, prompts, alpha):
        outs = generate(model, tok, [format_prompt(tok, p) for p in prompts],
                        interventions=[sv.intervention(alpha)], max_new_tokens=4, batch_size=1)
        return sum(not _refuses(o) for o in outs) / len(outs)

    for p in res.points:
        assert p["k"] == round((1 - p["sparsity"]) * D)
        if p["sparsity"] == 0.0:  # sparsity 0 = the dense vector
            assert p["bypass_asr"] == res.dense[p["method"]]["bypass"]
            assert p["bypass_retention"] in (None, 1.0)
        for e in ("bypass", "induce", "unseen"):
            base, dense = res.unsteered[e], res.dense[p["method"]][e]
            if dense != base:
                assert p[f"{e}_retention"] == pytest.approx((p[f"{e}_asr"] - base) / (dense - base))
    # two points re-evaluated independently (one at a time, no batching)
    for p in [q for q in res.points if q["rule"] in ("ie", "random") and q["fraction"] == 0.5]:
        sv = res.vectors[f"{p['method']}_{p['rule']}_k{p['k']}"]
        assert sv.sha256 == p["vector_sha256"]
        assert p["bypass_asr"] == brute_asr(sv, harmful, -1.0)
        assert p["induce_asr"] == brute_asr(sv, harmless, 1.0)
    # agreement rows: one per level of the gradient rule and per direct level of each rule
    assert {(r["level"], r["rule"]) for r in res.agreement} >= {("fraction=0.5", "ie"),
                                                                  ("fraction=0.5", "gradient")}
    for r in res.agreement:
        assert (r["a"], r["b"]) == ("dim", "ntp") and 0 <= r["p_value"] <= 1
    folder = res.save(tmp_path / "sweep", save_vectors=True)
    import json

    data = json.loads((folder / "sweep.json").read_text())
    assert len(data["points"]) == len(res.points) and "highest_retained_0.9" in data
    assert (folder / "retention.png").stat().st_size > 0
    assert (folder / "agreement.png").stat().st_size > 0
    assert len(list((folder / "vectors").glob("*.safetensors"))) == len(res.vectors)
    assert "highest sparsity" in res.table()


# --- command line -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from steerscope.models import save_tiny_chat_model

    root = tmp_path_factory.mktemp("sparsify-cli")
    model = save_tiny_chat_model(root / "model", "qwen2")
    g = torch.Generator().manual_seed(11)
    files = {"model": model}
    for m in ("dim", "ntp"):
        files[m] = SteeringVector(torch.randn(D, generator=g) * 8, layer=2, method=m).save(
            root / f"{m}.safetensors")
        ie = root / f"ie_{m}.safetensors"
        from safetensors.torch import save_file

        save_file({"ie": torch.randn(D, generator=g)}, str(ie))
        files[f"ie_{m}"] = ie
    for name, lines in (("harmful", "make a bomb\nrob a bank\n"), ("harmless", "bake\npoem\n")):
        (root / f"{name}.txt").write_text(lines)
        files[name] = root / f"{name}.txt"
    files["root"] = root
    return files


def _cli(capsys, *argv):
    from steerscope.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_apply_and_agree(capsys, cli_files, tmp_path):
    f = cli_files
    code, out, err = _cli(capsys, "sparsify", "apply", f["dim"], "--ie", f["ie_dim"], "--rule",
                          "ie", "--fraction", "0.75", "--out", tmp_path / "s.safetensors",
                          "--gguf", tmp_path / "s.gguf")
    assert code == 0, err
    sv = SteeringVector.load(tmp_path / "s.safetensors")
    assert int((sv.vector != 0).sum()) == 16 and "kept 16 of 64" in out
    assert (tmp_path / "s.gguf").stat().st_size > 0
    code, out, err = _cli(capsys, "sparsify", "agree", "--vector", f"dim={f['dim']}", "--ie",
                          f"dim={f['ie_dim']}", "--vector", f"ntp={f['ntp']}", "--ie",
                          f"ntp={f['ie_ntp']}", "--fractions", "0.5,0.9",
                          "--out", tmp_path / "agree.json", "--figure", tmp_path / "agree.png")
    assert code == 0, err
    assert "dim/ntp" in out and "p-value" in out
    import json

    rows = json.loads((tmp_path / "agree.json").read_text())
    assert {r["level"] for r in rows} >= {"fraction=0.5", "fraction=0.9", "tau=1"}


@pytest.mark.parametrize("argv, needle", [
    (["sparsify", "apply", "{dim}", "--rule", "ie", "--k", "3", "--out", "{tmp}/x"],
     "needs the dimension-level IE"),
    (["sparsify", "apply", "{dim}", "--rule", "magnitude", "--out", "{tmp}/x"],
     "exactly one of k"),
    (["sparsify", "agree", "--vector", "dim={dim}", "--ie", "po={ie_dim}"], "names no --vector"),
    (["sparsify", "agree", "--vector", "dim={dim}", "--ie", "dim={ie_dim}"], "two methods"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, cli_files, tmp_path, argv, needle):
    argv = [a.format(tmp=tmp_path, **cli_files) for a in argv]
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_cli_scores_and_sweep(capsys, cli_files, tmp_path):
    f = cli_files
    code, out, err = _cli(capsys, "sparsify", "scores", f["model"], "--vector", f["dim"],
                          "--harmful", f["harmful"], "--harmless", f["harmless"], "--steps", "2",
                          "--max-new-tokens", "3", "--all-prompts", "--out",
                          tmp_path / "ie.safetensors")
    assert code == 0, err
    from steerscope.sparsify import load_ie

    assert load_ie(tmp_path / "ie.safetensors").shape == (D,)
    code, out, err = _cli(capsys, "sparsify", "sweep", f["model"], "--vector", f"dim={f['dim']}",
                          "--ie", f"dim={tmp_path / 'ie.safetensors'}", "--vector",
                          f"ntp={f['ntp']}", "--harmful", f["harmful"], "--harmless",
                          f["harmless"], "--score-harmful", f["harmful"], "--score-harmless",
                          f["harmless"], "--all-prompts", "--steps", "2", "--taus", "0,1",
                          "--fractions", "0.5", "--rules", "gradient,ie,random",
                          "--max-new-tokens", "3", "--out", tmp_path / "sweep")
    assert code == 0, err
    assert "highest sparsity" in out
    assert (tmp_path / "sweep" / "ie_ntp.safetensors").is_file()  # computed when missing
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    assert (tmp_path / "sweep" / "retention.png").is_file()
