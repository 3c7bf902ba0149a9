"""The released code's per-position faithfulness metrics, the paper's size grid and the
pruned random-circuit control, each against an independent computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steerscope.models.tiny import tiny_model
from steerscope.patching.circuits import build_circuit, prune, random_circuit
from steerscope.patching.data import PatchingExample
from steerscope.patching.faithfulness import (
    evaluate_position_metrics,
    grid_sizes,
    minimal_sizes,
    position_scores,
)
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import Graph

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread

LAYER = 1


def reference_scores(ls, lb, lc):
    """The released code's formulas, written out with ``F.kl_div`` on [N, V] logits."""
    ps, pb = F.softmax(ls, -1), F.softmax(lb, -1)
    log_s, log_b, log_c = (F.log_softmax(x, -1) for x in (ls, lb, lc))

    def kl(p, logq):  # KL(p ‖ q), per position
        return F.kl_div(logq, p, reduction="none").sum(-1)

    kl1 = 1 - kl(ps, log_c) / kl(ps, log_b)
    m_b, m_s = -kl(ps, log_b), kl(pb, log_s)
    m_c = kl(pb, log_c) - kl(ps, log_c)
    kl2 = (m_c - m_b) / (m_s - m_b + 1e-7)
    ys, yb = ls.argmax(-1), lb.argmax(-1)
    match = (lc.argmax(-1) == ys).double()

    def d(logp):
        return (logp[torch.arange(len(ys)), ys].sum() - logp[torch.arange(len(yb)), yb].sum())

    lp = (d(log_c) - d(log_b)) / (d(log_s) - d(log_b))
    return kl1, kl2, match, ys == yb, lp


def test_position_scores_match_the_released_formulas():
    g = torch.Generator().manual_seed(0)
    ls, lb, lc = (torch.randn(7, 50, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    lb[2] = ls[2] * 0.8  # a position where base and steered greedy tokens agree
    out = position_scores(ls, lb, lc)
    kl1, kl2, match, same, lp = reference_scores(ls, lb, lc)
    torch.testing.assert_close(out["kl_ratio"], kl1)
    torch.testing.assert_close(out["dir_kl"], kl2)
    torch.testing.assert_close(out["token_match"], match)
    assert torch.equal(out["base_match"], same) and bool(same[2])
    torch.testing.assert_close(out["logprob"], lp)


def hf_logits(model, ids, vector, alpha, positions):
    """[N, V] logits of the plain HF model with ``alpha·vector`` added to the residual
    entering block ``LAYER`` (a forward pre-hook), at ``positions``."""
    def hook(_module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = kwargs["hidden_states"] + alpha * vector
            return args, kwargs
        return (args[0] + alpha * vector, *args[1:]), kwargs

    h = model.model.layers[LAYER].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(ids[None]).logits[0]
    finally:
        h.remove()
    return logits[positions].double()


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", n_layers=3)
    gm = GraphModel(model, LAYER)
    s = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4
    g = torch.Generator().manual_seed(0)
    exs = [PatchingExample(torch.randint(3, 256, (14,), generator=g), 6, a, name)
           for a, name in ((-1.0, "present/steered"), (-1.0, "present/steered"),
                           (1.0, "absent/steered"), (1.0, "present/base"))]
    return model, gm, s, exs


@pytest.mark.acceptance
def test_full_and_empty_circuits_against_the_hf_model(setup):
    model, gm, s, exs = setup
    E = gm.graph.n_edges
    full, empty = torch.ones(E, dtype=torch.bool), torch.zeros(E, dtype=torch.bool)
    out_full, out_empty = evaluate_position_metrics(gm, exs, s, [full, empty])
    for name, ds in (("present", "present/steered"), ("absent", "absent/steered")):
        mine = [e for e in exs if e.dataset == ds]
        steer = [hf_logits(model, e.input_ids, s, e.alpha, e.response_positions) for e in mine]
        base = [hf_logits(model, e.input_ids, s, 0.0, e.response_positions) for e in mine]
        same = torch.cat([a.argmax(-1) == b.argmax(-1) for a, b in zip(steer, base)])
        for out in (out_full[name], out_empty[name]):
            assert out["n_sequences"] == len(mine) and out["n_positions"] == same.numel()
            assert out["base_match"] == pytest.approx(float(same.double().mean()))
        f, e = out_full[name], out_empty[name]
        for metric in ("kl_ratio", "dir_kl", "token_match", "logprob"):
            assert f[metric]["overall"] == pytest.approx(1.0, abs=1e-5), metric
        for metric in ("kl_ratio", "dir_kl", "logprob"):
            assert e[metric]["overall"] == pytest.approx(0.0, abs=1e-4), metric
        # the empty circuit is the base model: its greedy tokens match the steered ones
        # exactly where the base ones do
        assert e["token_match"]["overall"] == pytest.approx(float(same.double().mean()))
        if (~same).any():
            assert e["token_match"]["differ"] == 0.0
        if same.any():
            assert e["token_match"]["same"] == 1.0


def test_partial_circuit_pools_positions_over_the_set(setup):
    """A partial circuit: the pooled means equal the reference formulas applied to the circuit
    run's logits, averaged over all positions of the set (not per example)."""
    model, gm, s, exs = setup
    g = gm.graph
    scores = torch.randn(g.n_edges, generator=torch.Generator().manual_seed(5))
    circuit = build_circuit(g, scores, g.n_edges // 3)
    (out,) = evaluate_position_metrics(gm, exs, s, [circuit])
    mine = [e for e in exs if e.dataset == "present/steered"]
    kl1s, same_all, lps = [], [], []
    adj = g.adjacency
    for e in mine:
        prep = gm.prepare(e.input_ids)
        pos = e.response_positions
        base = gm.run(prep, s, 0.0, positions=pos)
        lc = gm.run(prep, s, e.alpha, reverted=adj & ~g.to_matrix(circuit, False),
                    base=base.upstream, positions=pos).logits[0].double()
        ls = hf_logits(model, e.input_ids, s, e.alpha, pos)
        lb = hf_logits(model, e.input_ids, s, 0.0, pos)
        kl1, _, _, same, lp = reference_scores(ls, lb, lc)
        kl1s.append(kl1)
        same_all.append(same)
        lps.append(lp)
    kl1, same = torch.cat(kl1s), torch.cat(same_all)
    h = out["present"]
    assert h["kl_ratio"]["overall"] == pytest.approx(float(kl1.mean()), abs=1e-5)
    if (~same).any():
        assert h["kl_ratio"]["differ"] == pytest.approx(float(kl1[~same].mean()), abs=1e-5)
    assert h["logprob"]["overall"] == pytest.approx(float(torch.stack(lps).mean()), abs=1e-5)
    assert 0.0 < h["kl_ratio"]["overall"] < 1.0


def test_minimal_sizes_per_metric_and_set():
    entry = lambda v: {"kl_ratio": {"overall": v}, "dir_kl": {"overall": v - 0.2},  # noqa: E731
                       "token_match": {"overall": None}, "logprob": {"overall": 1.0}}
    per = [{"present": entry(0.5), "absent": entry(0.9)},
           {"present": entry(0.9), "absent": entry(1.1)}]
    got = minimal_sizes([10, 20], per, 0.85)
    assert got["kl_ratio"] == {"present": 20, "absent": 10}
    assert got["dir_kl"] == {"present": None, "absent": 20}
    assert got["token_match"] == {"present": None, "absent": None}
    assert got["logprob"] == {"present": 10, "absent": 10}


def test_grid_sizes_are_multiples_of_the_step():
    assert grid_sizes(8790, 300 / 8790, 0.35) == [300 * k for k in range(1, 11)]
    assert grid_sizes(100, 0.25) == [25, 50, 75, 100]
    with pytest.raises(Exception, match="grid step"):
        grid_sizes(100, 0.0)


def _on_paths(graph: Graph, circuit: torch.Tensor) -> bool:
    """Every circuit edge lies on a steer→logits path inside the circuit (a plain BFS over
    node names, independent of :func:`prune`)."""
    names = [graph.edge_names[i] for i in circuit.nonzero().flatten().tolist()]
    edges = [n.split("->") for n in names]

    def down_node(d: str) -> list[str]:  # the upstream nodes an input feeds
        if d == "logits":
            return ["logits"]
        parts = d.split(".")
        if parts[-1] == "in":
            return [parts[0]]
        if parts[1].startswith("h"):
            return [f"{parts[0]}.{parts[1]}"]
        grp = int(parts[1][1:])
        per = graph.n_heads // graph.n_kv_heads
        return [f"{parts[0]}.h{h}" for h in range(grp * per, (grp + 1) * per)]

    fwd = {"steer"}
    changed = True
    while changed:
        changed = False
        for u, d in edges:
            if u in fwd:
                for n in down_node(d):
                    if n not in fwd:
                        fwd.add(n)
                        changed = True
    bwd = {"logits"}
    changed = True
    while changed:
        changed = False
        for u, d in edges:
            if any(n in bwd for n in down_node(d)) and u not in bwd:
                bwd.add(u)
                changed = True
    return all(u in fwd and any(n in bwd for n in down_node(d)) for u, d in edges)


@pytest.mark.parametrize("graph", [Graph(3, 1, 4, 2), Graph(5, 1, 4, 2)])
def test_pruned_random_circuits_are_connected_and_exactly_sized(graph):
    for n in (5, 12, 30, graph.n_edges // 2):
        for seed in (42, 43, 44):
            c = random_circuit(graph, n, seed=seed)
            assert int(c.sum()) == n, (n, seed)
            assert _on_paths(graph, c), (n, seed)
            assert torch.equal(prune(graph, c), c)
            assert torch.equal(random_circuit(graph, n, seed=seed), c)  # seeded
    assert not _on_paths(graph, graph.edge_mask(["a1.h0->logits"]))  # the checker can fail


def test_unpruned_random_circuit_is_the_old_uniform_draw():
    g = Graph(3, 1, 4, 2)
    expect = torch.zeros(g.n_edges, dtype=torch.bool)
    expect[torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(7))[:20]] = True
    assert torch.equal(random_circuit(g, 20, seed=7, kind="unpruned"), expect)
    with pytest.raises(Exception, match="random-circuit kind"):
        random_circuit(g, 20, kind="dangling")
