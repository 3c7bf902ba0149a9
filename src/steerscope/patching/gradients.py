"""The integrated gradients EAP-IG needs: the metric's gradient at every upstream output and
at every downstream input (pre- or post-norm), averaged over the IG steps.

Two computations of the same numbers:

- ``low_memory=False``: one tracked graph forward (:meth:`GraphModel.run` with ``track``)
  and ``torch.autograd.grad`` w.r.t. all targets at once, each step; the whole autograd graph
  and every target's gradient are alive together.
- ``low_memory=True`` (default): each attention and MLP call is checkpointed (its internals
  are recomputed during the backward pass instead of being kept), the q/k/v copies of the
  residual (and, post-norm, of the normed residual) are expanded views rather than copies, and
  each target's gradient is added into the running sums by a hook as soon as the backward pass
  produces it, and the logits and the metric are computed (and recomputed) block by block of
  positions. Tested equal to the first to float tolerance on every tiny architecture.

Multi-layer steering (:class:`~steerscope.patching.forward.GraphModel` over K steered
layers, ``vector`` [K, d]): ``g_up`` has K − 1 extra rows after the U graph nodes, the
gradient at the residual entering each later steered layer (where ``α·s_k`` is added); with
row 0 (the steering input at the first layer) they give ``dm/dα = Σ_k s_k · g_k``.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from steerscope.errors import SteerscopeError
from steerscope.patching.forward import GraphModel, Prepared, frozen_parameters
from steerscope.patching.metrics import CHUNK
from steerscope.patching_conventions import GRAD_AT, check_choice


def ig_path(a0: float, a1: float, steps: int) -> list[float]:
    """Steering coefficients of the midpoint rule from ``a0`` to ``a1``:
    ``a0 + (a1 − a0)·(i + ½)/T``."""
    return [a0 + (a1 - a0) * (i + 0.5) / steps for i in range(steps)]


def _ckpt(fn, *args):
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


def _block_metric(gm: GraphModel, part):
    """``x`` [1, n, d] (post-final-norm residual at n positions) → n · (the metric ``part``
    of their logits): summed over blocks and divided by N, the metric's mean."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        return part(gm.logits(x)) * x.shape[1]
    return fn


def _low_memory_step(gm: GraphModel, prep: Prepared, vector: torch.Tensor,
                     coeffs: torch.Tensor, metrics: list, positions: list, post: bool,
                     g_up: torch.Tensor, g_down: torch.Tensor) -> None:
    """One IG step over a batch of B right-padded sequences: adds the gradient of
    ``Σ_b metrics[b]`` (each reading its own row at ``positions[b]``) w.r.t. every upstream
    output to ``g_up`` [U (+ K − 1), B, S, d] and w.r.t. every downstream input to ``g_down``
    [D, B, S, d] (float32 sums), with bounded memory. ``vector`` [K, d]: the steering rows;
    ``coeffs`` [B]: each row's steering coefficient. Rows do not interact, so row b's
    gradients are those of its own metric."""
    arch = gm.arch
    H, G = gm.H, gm.G
    n_attn = H + 2 * G
    later = gm.later_injections()
    n_up = gm.graph.n_up

    def add_to(buf: torch.Tensor, start: int):
        def hook(grad):
            buf[start:start + grad.shape[0]] += grad.float()
        return hook

    with torch.enable_grad():
        c = coeffs.to(device=gm.device, dtype=prep.resid.dtype)[:, None, None]  # [B, 1, 1]
        steer = (prep.resid + c * vector[0]).unsqueeze(0).requires_grad_(True)  # [1, B, S, d]
        r = steer[0]  # [B, S, d]
        for L in range(gm.layer, arch.n_layers):
            if L in later:  # α·s_k enters here; its gradient row follows the graph's nodes
                inj = (r + c * vector[later[L]]).unsqueeze(0)  # [1, B, S, d]
                inj.register_hook(add_to(g_up, n_up + later[L] - 1))
                r = inj[0]
            uo, do = gm.up_offset(L), gm.down_offset(L)
            attn_norm, mlp_norm = arch.component(L, "attn_norm"), arch.component(L, "mlp_norm")
            res_attn = r.unsqueeze(0).expand(n_attn, -1, -1, -1)  # [H+2G, B, S, d] view
            if post:  # one norm, expanded: each copy's gradient is its own
                x = _ckpt(attn_norm, r.unsqueeze(0)).expand(n_attn, -1, -1, -1)
                x.register_hook(add_to(g_down, do))
                heads = _ckpt(lambda xs, L=L: gm.attention_heads(L, prep, xs), x)
            else:
                res_attn.register_hook(add_to(g_down, do))
                heads = _ckpt(lambda rs, L=L, n=attn_norm: gm.attention_heads(L, prep, n(rs)),
                              res_attn)
            heads.register_hook(add_to(g_up, uo))  # [H, B, S, d]
            r_mid = r + heads.sum(0)
            res_m = r_mid.unsqueeze(0)  # [1, B, S, d]
            if post:
                xm = _ckpt(mlp_norm, res_m)
                xm.register_hook(add_to(g_down, do + n_attn))
                mlp_out = _ckpt(lambda xs, L=L: gm.mlp_output(L, xs), xm)
            else:
                res_m.register_hook(add_to(g_down, do + n_attn))
                mlp_out = _ckpt(lambda rs, L=L, n=mlp_norm: gm.mlp_output(L, n(rs)), res_m)
            mlp_out.register_hook(add_to(g_up, uo + H))  # [1, B, S, d]
            r = r_mid + mlp_out[0]
        res_out = r.unsqueeze(0)  # [1, B, S, d]
        last = g_down.shape[0] - 1
        if post:
            x = arch.final_norm(res_out)
            x.register_hook(add_to(g_down, last))
        else:
            res_out.register_hook(add_to(g_down, last))
            x = arch.final_norm(res_out)
        m = 0
        for b, (metric, pos) in enumerate(zip(metrics, positions)):
            xb = x[0, b:b + 1, pos.to(gm.device)]  # [1, N_b, d]
            n = xb.shape[1]
            # the logits and the metric block by block: no [N, V] tensor is kept for backward
            m = m + sum(_ckpt(_block_metric(gm, metric.part(i, i + CHUNK)), xb[:, i:i + CHUNK])
                        for i in range(0, n, CHUNK)) / n
        (gs,) = torch.autograd.grad(m, [steer])  # the hooks collect the other gradients
        g_up[0:1] += gs.float()


def batched_ig_gradients(gm: GraphModel, prep: Prepared, vector: torch.Tensor,
                         paths: list[tuple[float, float]], metrics: list, positions: list,
                         steps: int, *, grad_at: str = GRAD_AT[0]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ig_gradients` for B sequences at once (``prep`` from
    :meth:`GraphModel.prepare_batch`; ``paths[b] = (a0, a1)``, ``metrics[b]``,
    ``positions[b]`` [N_b] per row): ``(g_up [U (+ K − 1), B, S, d], g_down [D, B, S, d])``
    float32, row
    b equal to row b's unbatched gradients on its first S_b positions (zero after them)."""
    post = check_choice("grad_at", grad_at, GRAD_AT) == "post_norm"
    if not (len(paths) == len(metrics) == len(positions) == prep.input_ids.shape[0]):
        raise SteerscopeError("a patching batch needs one IG path, metric and position list "
                              "per sequence")
    g = gm.graph
    B, S, d = prep.input_ids.shape[0], prep.seq_len, gm.d
    vector = gm.steering_rows(vector, prep.resid.dtype)  # [K, d]
    g_up = torch.zeros((g.n_up + len(vector) - 1, B, S, d), device=gm.device)
    g_down = torch.zeros((g.n_down, B, S, d), device=gm.device)
    coeffs = torch.tensor([ig_path(a0, a1, steps) for a0, a1 in paths],
                          dtype=torch.float64)  # [B, T]
    with frozen_parameters(gm.model):
        for i in range(steps):
            _low_memory_step(gm, prep, vector, coeffs[:, i], metrics, positions, post,
                             g_up, g_down)
    g_up /= steps
    g_down /= steps
    return g_up, g_down


def ig_gradients(gm: GraphModel, prep: Prepared, vector: torch.Tensor, a0: float, a1: float,
                 metric, positions, steps: int, *, grad_at: str = GRAD_AT[0],
                 low_memory: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Average gradients of ``metric`` along the IG path from coefficient ``a0`` to ``a1``:
    ``(g_up [U, 1, S, d], g_down [D, 1, S, d])`` float32, at the upstream outputs and at the
    downstream inputs' pre- or post-norm activations (``grad_at``); multi-layer steering:
    ``g_up`` [U + K − 1, 1, S, d] (module doc)."""
    post = check_choice("grad_at", grad_at, GRAD_AT) == "post_norm"
    g = gm.graph
    S, d = prep.seq_len, gm.d
    vector = gm.steering_rows(vector, prep.resid.dtype)  # [K, d]
    g_up = torch.zeros((g.n_up + len(vector) - 1, 1, S, d), device=gm.device)
    g_down = torch.zeros((g.n_down, 1, S, d), device=gm.device)
    with frozen_parameters(gm.model):
        for a in ig_path(a0, a1, steps):
            if low_memory:
                _low_memory_step(gm, prep, vector, torch.tensor([a], dtype=torch.float64),
                                 [metric], [positions], post, g_up, g_down)
                continue
            run = gm.run(prep, vector, a, positions=positions, track=True, post_norm=post)
            m = metric(run.logits)
            down = run.post_parts if post else run.down_parts
            ups = run.up_parts + run.inject_parts
            grads = torch.autograd.grad(m, ups + down)
            n_up = len(ups)
            g_up += torch.cat(grads[:n_up]).float()
            g_down += torch.cat(grads[n_up:]).float()
            del run, grads, m
    g_up /= steps
    g_down /= steps
    return g_up, g_down
