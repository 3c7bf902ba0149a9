"""``circuits.metric``: the minimum circuit, the controls and interchange measured with the
released code's per-position measures, against the reference formulas on HF logits."""

from __future__ import annotations

import pytest
import test_patching_faithfulness
import torch
from test_patching_faithfulness import LAYER, hf_logits, reference_scores

from steerscope.errors import SteerscopeError
from steerscope.patching.circuits import build_circuit, complement, evaluate_circuits
from steerscope.patching.faithfulness import set_faithfulness
from steerscope.patching.run import add_circuits, compare_vectors, score_vector
from steerscope.pipeline.config import load_config
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


setup = test_patching_faithfulness.setup  # the same tiny model, vector and examples


def _reference(model, gm, s, exs, circuit):
    """Per steered set, the released measures of ``circuit`` from the reference formulas:
    kl_ratio / token_match pooled over positions, logprob over sequences."""
    g, out = gm.graph, {}
    for name in ("present/steered", "absent/steered"):
        kl1s, matches, lps = [], [], []
        for e in (e for e in exs if e.dataset == name):
            pos = e.response_positions
            prep = gm.prepare(e.input_ids)
            base = gm.run(prep, s, 0.0, positions=pos)
            lc = gm.run(prep, s, e.alpha, reverted=g.adjacency & ~g.to_matrix(circuit, False),
                        base=base.upstream, positions=pos).logits[0].double()
            kl1, _, match, _, lp = reference_scores(
                hf_logits(model, e.input_ids, s, e.alpha, pos),
                hf_logits(model, e.input_ids, s, 0.0, pos), lc)
            kl1s.append(kl1)
            matches.append(match)
            lps.append(lp)
        out[name] = {"kl_ratio": float(torch.cat(kl1s).mean()),
                     "token_match": float(torch.cat(matches).mean()),
                     "logprob": float(torch.stack(lps).mean())}
    return out


@pytest.mark.parametrize("metric", ["logprob", "kl_ratio", "token_match"])
def test_position_metric_faithfulness_is_the_lower_steered_set(setup, metric):
    model, gm, s, exs = setup
    scores = torch.randn(gm.graph.n_edges, generator=torch.Generator().manual_seed(5))
    circuit = build_circuit(gm.graph, scores, gm.graph.n_edges // 3)
    ref = _reference(model, gm, s, exs, circuit)
    ev = evaluate_circuits(gm, exs, s, [circuit], faithfulness_metric=metric)
    expected = min(ref["present/steered"][metric], ref["absent/steered"][metric])
    assert float(ev.faithfulness[0]) == pytest.approx(expected, abs=1e-5)
    # the full circuit is faithful under every measure
    full = torch.ones(gm.graph.n_edges, dtype=torch.bool)
    assert float(evaluate_circuits(gm, exs, s, [full], faithfulness_metric=metric)
                 .faithfulness[0]) == pytest.approx(1.0, abs=1e-5)


def test_add_circuits_measures_everything_with_the_chosen_metric(setup):
    model, gm, s, exs = setup
    v = SteeringVector(s, LAYER, method="m")
    res = score_vector(model, v, exs, steps=2, top_k=10)
    add_circuits(model, v, exs, res, sizes=[20, 60, 120, gm.graph.n_edges], n_random=2,
                 refine_steps=2, position_metrics=True, faithfulness_metric="logprob")
    summary, curve = res.tables["summary"], res.curves["eap_ig"]
    assert summary["faithfulness_metric"] == "logprob"
    # the curve is the lower set's logprob at each size; the same as a fresh evaluation
    assert curve.faithfulness == pytest.approx(
        [set_faithfulness(p, "logprob") for p in curve.positions])
    built = [res.circuits[f"eap_ig.n{n}"] for n in curve.sizes]
    again = evaluate_circuits(gm, exs, s, built, faithfulness_metric="logprob").faithfulness
    assert curve.faithfulness == pytest.approx(again.tolist(), abs=1e-9)
    # the complement of the minimum circuit is measured with logprob too
    circuit = res.circuits["eap_ig.min"]
    comp = evaluate_circuits(gm, exs, s, [complement(gm.graph, circuit)],
                             faithfulness_metric="logprob").faithfulness[0]
    assert summary["complement_faithfulness"] == pytest.approx(float(comp), abs=1e-9)
    ref = _reference(model, gm, s, exs, circuit)
    assert summary["min_faithfulness"] == pytest.approx(
        min(r["logprob"] for r in ref.values()), abs=1e-5)
    # interchange with the chosen metric: records it, diagonal = own circuit's faithfulness
    cmp = compare_vectors(model, {"a": res}, {"a": (exs, v)}, sizes=[20],
                          faithfulness_metric="logprob")
    assert cmp["faithfulness_metric"] == "logprob"
    assert cmp["interchange"]["a"]["a"] == pytest.approx(summary["min_faithfulness"], abs=1e-9)


def test_unknown_metric_is_one_line_before_compute(setup):
    model, gm, s, exs = setup
    v = SteeringVector(s, LAYER, method="m")
    with pytest.raises(SteerscopeError, match="unknown faithfulness metric 'kl'"):
        add_circuits(model, v, exs, None, faithfulness_metric="kl")
    with pytest.raises(SteerscopeError, match="'circuits.metric' has unknown value 'kl'") as e:
        load_config({"circuits": {"metric": "kl"}})
    assert "\n" not in str(e.value)
