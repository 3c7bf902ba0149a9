"""Reverse clean/corrupt roles and the coarse graph, end to end (scores, circuits, results)."""

from __future__ import annotations

import pytest
import torch

from steerscope.errors import DataError
from steerscope.models.tiny import tiny_model
from steerscope.patching.circuits import (
    build_circuit,
    evaluate_circuits,
    faithfulness_curve,
    minimal_faithful_circuit,
)
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel
from steerscope.patching.metrics import LogitDiff
from steerscope.patching.result import PatchingResult
from steerscope.patching.run import add_circuits, compare_vectors, score_vector
from steerscope.patching.scores import (
    coarsen,
    eap_ig,
    eap_ig_example,
    exact_example,
    prepare_example,
)
from steerscope.runtime import Runtime, steer
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _examples(n=2, alpha=1.0, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [PatchingExample(torch.randint(3, 256, (length,), generator=g), 5,
                            alpha if i % 2 == 0 else -alpha,
                            "absent/steered" if i % 2 == 0 else "present/base")
            for i in range(n)]


def _vector(seed=1, scale=3.0):
    return torch.randn(64, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def gemma():
    model = tiny_model("gemma2", n_layers=3)
    return model, GraphModel(model, 1)


# --- reverse roles --------------------------------------------------------------------------
@pytest.mark.acceptance
def test_reverse_context_swaps_clean_and_corrupt_against_hf(gemma):
    """Reverse roles: m(M) is the metric of the unsteered HF model, m(∅) of the steered one,
    and the patched run with every edge reverted is the steered HF model."""
    model, gm = gemma
    ex = _examples(1, alpha=-1.0)[0]
    s = _vector()
    ctx = prepare_example(gm, ex, s, reverse=True)
    fwd = prepare_example(gm, ex, s)
    ids = ex.input_ids[None]
    pos = ex.response_positions
    with torch.no_grad():
        base_hf = model(ids).logits[:, pos]
        with Runtime(model, [steer(s, 1, -1.0)]):
            steered_hf = model(ids).logits[:, pos]
    # y = the clean (here: unsteered) greedy token, y* = the steered one
    keep = base_hf[0].argmax(-1) != steered_hf[0].argmax(-1)
    assert keep.any()
    torch.testing.assert_close(ctx.metric.y, base_hf[0].argmax(-1)[keep])
    torch.testing.assert_close(ctx.metric.y_star, steered_hf[0].argmax(-1)[keep])
    m_hf = LogitDiff(pos[keep], ctx.metric.y, ctx.metric.y_star)
    assert ctx.m_clean == pytest.approx(float(m_hf(base_hf[:, keep])), abs=1e-4)
    assert ctx.m_corrupt == pytest.approx(float(m_hf(steered_hf[:, keep])), abs=1e-4)
    assert ctx.m_clean == pytest.approx(-fwd.m_corrupt, abs=1e-5)
    assert ctx.m_corrupt == pytest.approx(-fwd.m_clean, abs=1e-5)
    everything = gm.run(ctx.prep, s, ctx.clean_alpha, reverted=gm.graph.adjacency,
                        base=ctx.corrupt_up, positions=pos)
    torch.testing.assert_close(everything.logits, steered_hf, atol=2e-5, rtol=1e-5)
    # reverting only the steering node's edges injects α·s downstream: the steered model too
    mask = torch.zeros_like(gm.graph.adjacency)
    mask[0] = gm.graph.adjacency[0]
    only_steer = gm.run(ctx.prep, s, 0.0, reverted=mask, base=ctx.corrupt_up, positions=pos)
    torch.testing.assert_close(only_steer.logits, steered_hf, atol=2e-5, rtol=1e-5)


def test_reverse_full_graph_is_faithful_and_empty_circuit_is_not(gemma):
    _, gm = gemma
    g, s, exs = gm.graph, _vector(), _examples()
    full = torch.ones(g.n_edges, dtype=torch.bool)
    ev = evaluate_circuits(gm, exs, s, [full, ~full], reverse=True)
    fwd = evaluate_circuits(gm, exs, s, [full], reverse=False)
    assert ev.m_full == pytest.approx(-fwd.m_empty, abs=1e-5)
    assert ev.m_empty == pytest.approx(-fwd.m_full, abs=1e-5)
    torch.testing.assert_close(ev.faithfulness, torch.tensor([1.0, 0.0], dtype=torch.float64),
                               atol=1e-5, rtol=0)


@pytest.mark.acceptance
@pytest.mark.parametrize("metric, tau", [("logit_diff", 0.0), ("kl", 0.0), ("kl", 0.5)])
def test_reverse_eap_ig_equals_forward_roles_but_exact_patching_differs(gemma, metric, tau):
    """Swapping the roles negates both the metric (antisymmetric for both metrics, same
    masked positions) and the activation differences, and the midpoint points of the α path
    are symmetric: EAP-IG scores are identical. Exact patching is not: it patches the other
    run (necessity vs sufficiency), and so is faithfulness."""
    _, gm = gemma
    s, exs = _vector(), _examples()
    fwd = eap_ig(gm, exs, s, steps=3, metric=metric, tau=tau)
    rev = eap_ig(gm, exs, s, steps=3, metric=metric, tau=tau, reverse=True)
    assert fwd.weights == rev.weights
    for key in ("edges", "nodes", "steer_grad", "steer_ie"):
        a, b = getattr(fwd, key), getattr(rev, key)
        torch.testing.assert_close(a, b, atol=1e-5 * float(a.abs().max()), rtol=1e-4)
    assert rev.meta["reverse"] is True
    ctx_f = prepare_example(gm, exs[0], s, metric=metric, tau=tau)
    ctx_r = prepare_example(gm, exs[0], s, metric=metric, tau=tau, reverse=True)
    assert ctx_r.m_clean == pytest.approx(-ctx_f.m_corrupt, abs=1e-5)
    assert ctx_r.m_corrupt == pytest.approx(-ctx_f.m_clean, abs=1e-5)
    nodes = list(range(gm.graph.n_up))
    ef = exact_example(gm, ctx_f, nodes=nodes, edges=[])["nodes"]
    er = exact_example(gm, ctx_r, nodes=nodes, edges=[])["nodes"]
    # the steering node reverts everything: the total effect is the same in both roles
    assert float(er[0]) == pytest.approx(float(ef[0]), rel=1e-4, abs=1e-5)
    assert not torch.allclose(ef[1:], er[1:], atol=1e-4)
    # and the reverse steering-node IG still converges to its exact effect
    ig = float(eap_ig_example(gm, ctx_r, 24)["nodes"][0])
    assert abs(ig - float(er[0])) < 0.01 * abs(float(er[0])) + 1e-4


# --- coarse graph ---------------------------------------------------------------------------
@pytest.mark.acceptance
def test_coarse_eap_ig_scores_approach_exact_coarse_edge_patching():
    """Linear regime (float64, tiny α, fixed tokens): a coarse edge's score equals exact
    patching of that edge, i.e. reverting every fine edge it groups at once."""
    model = tiny_model("llama", seed=3, n_layers=3, dtype=torch.float64)
    gm = GraphModel(model, 0)
    ex = PatchingExample(torch.randint(3, 256, (12,), generator=torch.Generator().manual_seed(5)),
                         5, 1e-5, "absent/steered")
    s = _vector(6).double()
    ctx = prepare_example(gm, ex, s, metric="kl")
    pos = ex.response_positions
    ctx.metric = LogitDiff(pos, torch.arange(3, 3 + len(pos)), torch.arange(40, 40 + len(pos)))
    ctx.m_clean = float(ctx.metric(gm.run(ctx.prep, s, ex.alpha, positions=pos).logits))
    fine = gm.graph
    coarse = fine.coarsened()
    ig = coarse.from_matrix(fine.coarsen_scores(eap_ig_example(gm, ctx, steps=2)["edges"]))
    ids = [i for i, n in enumerate(coarse.edge_names) if n.split("->")[1].endswith((".q", ".k", ".v"))]
    exact = []
    for e in ids:
        cm = torch.zeros(coarse.n_up, coarse.n_down, dtype=torch.bool)
        u, d = coarse.edge_index[e].tolist()
        cm[u, d] = True
        reverted = fine.coarse_to_fine(cm)
        assert int(reverted.sum()) > 1  # a coarse q/k/v edge groups several fine edges
        run = gm.run(ctx.prep, s, ex.alpha, reverted=reverted, base=ctx.base_up, positions=pos)
        exact.append(ctx.m_clean - float(ctx.metric(run.logits)))
    a, b = ig[ids].double(), torch.tensor(exact, dtype=torch.float64)
    assert (a - b).abs().max() < 0.01 * b.abs().max()


def test_coarse_circuits_are_evaluated_through_their_fine_edges(gemma):
    _, gm = gemma
    s, exs = _vector(), _examples()
    fine_scores = eap_ig(gm, exs, s, steps=2)
    sc = coarsen(fine_scores, gm.graph)
    coarse = gm.graph.coarsened()
    assert sc.edges.shape == (coarse.n_edges,)
    torch.testing.assert_close(sc.nodes, fine_scores.nodes)
    for per in sc.per_dataset.values():
        assert per["edges"].shape == (coarse.n_edges,)
    full = torch.ones(coarse.n_edges, dtype=torch.bool)
    circuit = build_circuit(coarse, sc.edges, 12)
    ev = evaluate_circuits(gm, exs, s, [full, ~full, circuit], graph=coarse)
    torch.testing.assert_close(ev.faithfulness[:2], torch.tensor([1.0, 0.0], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    # the same circuit spelled out on the fine graph, edge by edge
    fine_mask = gm.graph.coarse_to_fine(coarse.to_matrix(circuit, False))
    by_fine = evaluate_circuits(gm, exs, s, [gm.graph.from_matrix(fine_mask)])
    assert float(ev.faithfulness[2]) == pytest.approx(float(by_fine.faithfulness[0]), abs=1e-9)
    assert ev.sizes == [coarse.n_edges, 0, int(circuit.sum())]
    curve = faithfulness_curve(gm, exs, s, sc.edges, [4, coarse.n_edges], graph=coarse)
    c, f = minimal_faithful_circuit(gm, exs, s, sc.edges, graph=coarse, curve=curve,
                                    refine_steps=2)
    assert c.shape == (coarse.n_edges,) and f >= 0.85
    with pytest.raises(Exception, match="not a graph of this model"):
        evaluate_circuits(gm, exs, s, [full], graph=GraphModel(tiny_model("gemma2", n_layers=3),
                                                                0).graph.coarsened())


def _sv(seed, layer=1):
    return SteeringVector(_vector(seed), layer, method=f"m{seed}")


def test_score_vector_coarse_and_reverse_round_trip(gemma, tmp_path):
    model, gm = gemma
    exs = _examples(2)
    results, data = {}, {}
    for name, seed in (("A", 1), ("B", 2)):
        v = _sv(seed)
        res = score_vector(model, v, exs, steps=2, reverse=True, coarse=True, top_k=10)
        assert res.graph.coarse and res.meta["reverse"] is True
        add_circuits(model, v, exs, res, sizes=[4, 20, res.graph.n_edges], refine_steps=1,
                     n_random=1)
        assert res.circuits["eap_ig.min"].shape == (res.graph.n_edges,)
        summary = res.tables["summary"]
        assert summary["n_edges"] == gm.graph.coarsened().n_edges
        assert summary["reverse"] is True and summary["graph"] == "coarse"
        res.save(tmp_path / name)
        back = PatchingResult.load(tmp_path / name)
        assert back.graph.coarse and back.meta["reverse"] is True
        torch.testing.assert_close(back.scores["eap_ig"].edges, res.scores["eap_ig"].edges)
        results[name], data[name] = back, (exs, v)
    cmp = compare_vectors(model, results, data, sizes=[10])
    assert cmp["interchange"]["A"]["A"] == pytest.approx(
        results["A"].tables["summary"]["min_faithfulness"], abs=1e-6)
    # a fine result cannot be compared with a coarse one
    fine = score_vector(model, _sv(3), exs, steps=1, top_k=10)
    fine.circuits["eap_ig.min"] = torch.ones(fine.graph.n_edges, dtype=torch.bool)
    with pytest.raises(DataError, match="different graphs"):
        compare_vectors(model, {"A": results["A"], "C": fine},
                        {"A": data["A"], "C": (exs, _sv(3))})


def test_a_patching_result_of_earlier_versions_loads_in_todays_words(gemma, tmp_path):
    """A patching result and its examples saved before the present/absent names (datasets
    ``harmful/...`` / ``harmless/...``, position metrics keyed by refusal's side words) load
    with today's names and the same numbers."""
    import json

    from safetensors.torch import load_file, save_file

    from steerscope.patching.example_files import load_examples, save_examples

    model, _ = gemma
    exs = _examples(4)
    exs[2].dataset = "absent/steered"
    v = _sv(1)
    res = score_vector(model, v, exs, steps=1, top_k=10)
    add_circuits(model, v, exs, res, sizes=[4, res.graph.n_edges], refine_steps=0,
                 n_random=1, position_metrics=True)
    today = tmp_path / "today"
    res.save(today)
    save_examples(today, {"absent/steered": exs[:1], "present/base": exs[1:2]})

    def old_words(text: str) -> str:
        for new, old in (("present", "harmful"), ("absent", "harmless")):
            text = text.replace(f'"{new}/', f'"{old}/').replace(f'"{new}":', f'"{old}":')
            text = text.replace(f"@{new}/", f"@{old}/")
        return text

    old = tmp_path / "old"
    old.mkdir()
    for f in ("result.json", "examples.json"):
        text = (today / f).read_text()
        assert old_words(text) != text
        (old / f).write_text(old_words(text))
    tensors = load_file(str(today / "scores.safetensors"))
    save_file({old_words(k): t for k, t in tensors.items()}, str(old / "scores.safetensors"))
    for f in ("circuits.safetensors",):
        (old / f).write_bytes((today / f).read_bytes())
    back, now = PatchingResult.load(old), PatchingResult.load(today)
    sc, sc_now = back.scores["eap_ig"], now.scores["eap_ig"]
    assert set(sc.per_dataset) == set(sc_now.per_dataset) == {"absent/steered", "present/base"}
    assert sc.weights == sc_now.weights
    for ds, vals in sc_now.per_dataset.items():
        for k, t in vals.items():
            torch.testing.assert_close(sc.per_dataset[ds][k], t)
    assert back.curves["eap_ig"].positions == now.curves["eap_ig"].positions
    assert set(now.curves["eap_ig"].positions[0]) == {"present", "absent"}
    assert back.tables == now.tables
    assert json.dumps(now.tables["summary"]["min_size_by_metric"]).count("present") == 4
    loaded = load_examples(old)
    assert list(loaded) == ["absent/steered", "present/base"]
    assert [e.dataset for e in loaded["present/base"]] == ["present/base"]
