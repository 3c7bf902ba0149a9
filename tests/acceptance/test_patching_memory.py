"""The bounded-memory EAP-IG backward (checkpointed attention/MLP calls, gradients summed by
hooks) gives the same gradients and scores as the one-graph path it replaces."""

from __future__ import annotations

import pytest
import torch

from steerscope.patching.data import PatchingExample
from steerscope.patching.forward import GraphModel
from steerscope.patching.gradients import batched_ig_gradients, ig_gradients, ig_path
from steerscope.patching.scores import eap_ig, eap_ig_batch, eap_ig_example, prepare_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


def _example(seed=0, length=90, prompt_len=6, alpha=1.0):
    g = torch.Generator().manual_seed(seed)
    return PatchingExample(torch.randint(3, 256, (length,), generator=g), prompt_len, alpha,
                           "absent/steered")


@pytest.mark.parametrize("grad_at", ["pre_norm", "post_norm"])
def test_low_memory_gradients_equal_the_one_graph_path(tiny, grad_at):
    """Every architecture (GQA, q/k norms, Gemma post-norms and soft-caps), both gradient
    locations, both metrics: same averaged gradients at every target and same scores."""
    gm = GraphModel(tiny, 1)
    s = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 3
    for metric in ("logit_diff", "kl"):
        ctx = prepare_example(gm, _example(seed=2, alpha=-1.0), s, metric=metric)
        assert ctx.weight > 0
        args = (gm, ctx.prep, s, ctx.corrupt_alpha, ctx.clean_alpha, ctx.metric,
                ctx.metric.positions, 3)
        up_a, down_a = ig_gradients(*args, grad_at=grad_at, low_memory=False)
        up_b, down_b = ig_gradients(*args, grad_at=grad_at, low_memory=True)
        assert down_a.abs().max() > 0 and up_a.abs().max() > 0
        torch.testing.assert_close(up_b, up_a, rtol=1e-4, atol=1e-5 * float(up_a.abs().max()))
        torch.testing.assert_close(down_b, down_a, rtol=1e-4,
                                   atol=1e-5 * float(down_a.abs().max()))
        r_a = eap_ig_example(gm, ctx, 3, grad_at, low_memory=False)
        r_b = eap_ig_example(gm, ctx, 3, grad_at)
        for k in ("edges", "nodes", "steer_grad"):
            scale = float(r_a[k].abs().max())
            torch.testing.assert_close(r_b[k], r_a[k], rtol=1e-4, atol=1e-5 * scale)


def test_ig_path_is_the_midpoint_rule():
    assert ig_path(0.0, 2.0, 4) == [0.25, 0.75, 1.25, 1.75]
    assert ig_path(-1.0, 0.0, 2) == [-0.75, -0.25]


@pytest.mark.parametrize("grad_at", ["pre_norm", "post_norm"])
def test_batched_eap_ig_equals_one_example_at_a_time(tiny, grad_at):
    """Examples of different lengths, coefficients and datasets, right-padded into batches:
    every example's record equals its unbatched one (the padding is masked out of the
    metric and, attention being causal, never reaches a real position; the gradient after
    each example's last position is zero)."""
    gm = GraphModel(tiny, 1)
    s = torch.randn(64, generator=torch.Generator().manual_seed(5)) * 3
    exs = [_example(seed=i, length=n, alpha=a) for i, (n, a) in
           enumerate([(12, 1.0), (17, -1.0), (9, 1.0), (14, -1.0)])]
    ctxs = [prepare_example(gm, ex, s) for ex in exs]
    assert all(c.weight for c in ctxs)
    one = [eap_ig_example(gm, c, 2, grad_at) for c in ctxs]
    batch = eap_ig_batch(gm, ctxs, 2, grad_at)
    for a, b in zip(one, batch):
        for k in ("edges", "nodes", "steer_grad", "steer_ie"):
            scale = float(a[k].abs().max())
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5 * scale)
        assert (a["weight"], a["dataset"]) == (b["weight"], b["dataset"])
    prep = gm.prepare_batch([c.prep.input_ids[0] for c in ctxs[:2]])
    _, g_down = batched_ig_gradients(
        gm, prep, s, [(0.0, c.alpha) for c in ctxs[:2]], [c.metric for c in ctxs[:2]],
        [c.metric.positions for c in ctxs[:2]], 2, grad_at=grad_at)
    assert g_down[:, 0, 12:].abs().max() == 0  # the shorter row's padding gets no gradient
    whole = eap_ig(gm, exs, s, steps=2, grad_at=grad_at)
    batched = eap_ig(gm, exs, s, steps=2, grad_at=grad_at, batch_size=3)
    torch.testing.assert_close(batched.edges, whole.edges, rtol=1e-4,
                               atol=1e-5 * float(whole.edges.abs().max()))
