"""Circuits, pruning and faithfulness by real reverted-edge runs."""

from __future__ import annotations

import pytest
import torch

from steerscope.models.tiny import tiny_model
from steerscope.patching.circuits import (
    build_circuit,
    complement,
    edge_type_shares,
    evaluate_circuits,
    faithfulness_curve,
    interchange_matrix,
    jaccard,
    matched_size_overlap,
    minimal_faithful_circuit,
    overlap,
    overlap_matrix,
    prune,
    random_circuit,
    top_k_edges,
)
from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import Graph
from steerscope.patching.scores import eap_ig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _examples(n=2, alpha=1.0):
    g = torch.Generator().manual_seed(0)
    return [PatchingExample(torch.randint(3, 256, (12,), generator=g), 5, alpha,
                            "absent/steered" if i % 2 == 0 else "present/base")
            for i in range(n)]


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("gemma2", n_layers=3)
    gm = GraphModel(model, 1)
    s = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3
    exs = _examples()
    scores = eap_ig(gm, exs, s, steps=3)
    return gm, s, exs, scores


@pytest.mark.acceptance
def test_full_graph_is_faithful_and_empty_circuit_is_not(setup):
    gm, s, exs, _ = setup
    g = gm.graph
    full = torch.ones(g.n_edges, dtype=torch.bool)
    ev = evaluate_circuits(gm, exs, s, [full, ~full])
    assert ev.m_full != ev.m_empty
    torch.testing.assert_close(ev.faithfulness, torch.tensor([1.0, 0.0], dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_prune_keeps_only_paths_from_steer_to_logits():
    g = Graph(3, 0, 2, 1)
    keep = g.edge_mask(["steer->a0.h0.q", "a0.h0->m0.in", "m0->logits",
                        "a0.h1->a1.h0.q",  # a0.h1 is not reached from steer
                        "steer->a1.g0.v"])  # a1 heads do not reach the logits
    pruned = prune(g, keep)
    names = {g.edge_names[i] for i in pruned.nonzero().flatten().tolist()}
    assert names == {"steer->a0.h0.q", "a0.h0->m0.in", "m0->logits"}
    # a KV input reaches every head of its group
    kv = g.edge_mask(["steer->a0.g0.k", "a0.h1->logits"])
    assert int(prune(g, kv).sum()) == 2
    assert int(prune(g, torch.ones(g.n_edges, dtype=torch.bool)).sum()) == g.n_edges


def test_build_circuit_sizes_and_order():
    g = Graph(3, 1, 4, 2)
    scores = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0))
    prev = torch.zeros(g.n_edges, dtype=torch.bool)
    for n in (1, 5, 20, 60, g.n_edges):
        c = build_circuit(g, scores, n)
        assert n <= int(c.sum()) <= n + 8
        assert bool((prune(g, c) == c).all())
        assert bool((c | ~prev).all())  # nested: a larger circuit contains a smaller one
        prev = c
    assert int(build_circuit(g, scores, 0).sum()) == 0
    top = scores.abs().argmax()
    assert build_circuit(g, scores, 40)[top] or not prune(g, top_k_edges(scores, 1)).any()


def test_curve_minimal_circuit_complement_random(setup):
    gm, s, exs, scores = setup
    g = gm.graph
    curve = faithfulness_curve(gm, exs, s, scores.edges, sizes=[5, 20, g.n_edges])
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
    c, f = minimal_faithful_circuit(gm, exs, s, scores.edges, curve=curve, refine_steps=2)
    assert f >= 0.85 and int(c.sum()) <= g.n_edges
    comp = complement(g, c)
    assert int((comp & c).sum()) == 0 and int((comp | c).sum()) == g.n_edges
    r = random_circuit(g, 10, seed=3)
    assert int(r.sum()) == 10 and bool((r == random_circuit(g, 10, seed=3)).all())
    ev = evaluate_circuits(gm, exs, s, [comp, r])
    assert torch.isfinite(ev.faithfulness).all()


def test_overlaps_interchange_and_edge_types(setup):
    gm, s, exs, scores = setup
    g = gm.graph
    a, b = build_circuit(g, scores.edges, 10), build_circuit(g, scores.edges, 30)
    assert overlap(a, b) == 1.0 and jaccard(a, b) == pytest.approx(a.sum() / b.sum())
    m = overlap_matrix({"A": a, "B": b}, "jaccard")
    assert m["A"]["A"] == 1.0 and m["A"]["B"] == m["B"]["A"]
    rows = matched_size_overlap(g, scores.edges, -scores.edges, [5, 10])
    assert all(r["overlap"] == 1.0 for r in rows)
    s2 = torch.randn(64, generator=torch.Generator().manual_seed(9)) * 3
    full = torch.ones(g.n_edges, dtype=torch.bool)
    inter = interchange_matrix(gm, {"A": a, "full": full}, {"A": (exs, s), "B": (exs[:1], s2)})
    assert inter["full"]["B"] == pytest.approx(1.0, abs=1e-5)
    assert set(inter["A"]) == {"A", "B"}
    shares = edge_type_shares(g, b)
    assert sum(shares["incoming"].values()) == pytest.approx(1.0)
    assert sum(shares["outgoing"].values()) == pytest.approx(1.0)
    one = edge_type_shares(g, g.edge_mask(["steer->logits"]))
    assert one["incoming"]["logits"] == 1.0 and one["outgoing"]["steer"] == 1.0
