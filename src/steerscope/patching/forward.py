"""The graph forward pass: the model from the steering layer on, one residual per input.

:class:`GraphModel` re-runs a Hugging Face decoder from block ``ℓ`` on with its own modules
(norms, attention modules, MLPs, post-norms, final norm, unembedding) but gives every
downstream input of the patching graph its own pre-norm residual, so that each edge can be
reverted on its own:

- the residual entering a downstream input ``d`` is the sum of the outputs of every upstream
  node that writes before ``d`` (the steering input, the heads, the MLPs);
- reverting an edge ``u → d`` adds ``base_u − cur_u`` (the unsteered value of ``u`` minus its
  value in this run) to that residual before ``d``'s norm is applied.

Attention is the model's own attention module, called with the keyword arguments (position
embeddings, mask, ...) that the model itself passed to it in a plain forward pass over the same
tokens (captured by :meth:`GraphModel.prepare`), with ``q_proj``, ``k_proj`` and ``v_proj``
temporarily swapped for stand-ins returning per-head projections of the per-input residuals (so q/k norms,
RoPE, GQA, scaling, soft-caps and sliding windows are the model's own). A head's output is its
slice of ``o_proj`` (for Gemma's post-attention norm: that slice times the norm's per-position
scale and weight, so heads still sum to the block output). With no edge reverted the logits
equal the steered HF model's, with every edge reverted the unsteered model's (tested on all
six tiny architectures).

``logits_at`` picks the logits the metric reads on models with a final-logit soft-cap
(Gemma-2): ``"post_cap"`` (the model's output, ``cap·tanh(z/cap)``) or ``"pre_cap"`` (the
unembedding output ``z``, as the authors' released code reads ``lm_head``'s output). With a
tracked run, ``post_norm=True`` also returns the post-norm inputs of every downstream input
(what EAP-IG differentiates with ``grad_at="post_norm"``).

Multi-layer steering (``layer`` a list ``[ℓ1, ℓ2, ...]``, vectors [K, d]): the graph starts
at ``ℓ1``; ``α·s_k`` joins the running residual entering block ``ℓk`` as output of the ``steer``
node, whose value at an input of block ``L`` is the unsteered residual entering ``ℓ1`` plus
``α·Σ_{ℓk ≤ L} s_k``: reverting ``steer → d`` removes every steering term that reached ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ModelArch, get_module, validate_model
from steerscope.models.quantization import linear_weight
from steerscope.patching.graph import Graph
from steerscope.patching_conventions import LOGITS_AT, check_choice


@dataclass
class Prepared:
    """What the graph forward needs for one token sequence.

    ``input_ids`` [B, S] (B = 1, or a batch right-padded by :meth:`GraphModel.prepare_batch`);
    ``resid`` [B, S, d] the unsteered residual entering block ``layer``;
    ``attn_kwargs``: per block ``L >= layer`` the keyword arguments the model passed to its
    attention module (position embeddings, mask, ...).
    """

    input_ids: torch.Tensor
    resid: torch.Tensor
    attn_kwargs: dict[int, dict]

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass
class GraphRun:
    """Output of :meth:`GraphModel.run`.

    ``logits`` [1, N, V] at the requested positions (all positions when none were given);
    ``upstream`` [U, 1, S, d] the output of every upstream node in graph order (detached, only
    without ``track``); with ``track``: ``up_parts`` / ``down_parts`` lists of tensors in
    the autograd graph whose concatenation along dim 0 is the [U, 1, S, d] upstream outputs /
    the [D, 1, S, d] pre-norm downstream residuals; with ``post_norm`` also ``post_parts``,
    whose concatenation is the [D, 1, S, d] post-norm downstream inputs (each residual after
    its own norm: the q/k/v projection inputs, the MLP input, the unembedding input).
    ``inject_parts`` (tracked multi-layer runs): the [1, 1, S, d] residual entering each
    later steered layer, just after its ``α·s_k`` was added.
    """

    logits: torch.Tensor
    upstream: torch.Tensor | None = None
    up_parts: list[torch.Tensor] | None = None
    down_parts: list[torch.Tensor] | None = None
    post_parts: list[torch.Tensor] | None = None
    inject_parts: list[torch.Tensor] | None = None


class _Fixed(nn.Module):
    """Stand-in projection: returns a precomputed tensor whatever its input."""
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value


class _Record(nn.Module):
    """Stand-in output projection: records its input and returns it."""
    def __init__(self, store: list):
        super().__init__()
        self.store = store

    def forward(self, x):
        self.store.append(x)
        return x


@contextmanager
def frozen_parameters(model: nn.Module):
    """Temporarily turn off ``requires_grad`` on every parameter (activation gradients only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class GraphModel:
    """A model seen as the patching graph from steering layer ``layer`` on (fine graph);
    ``layer`` a list of ascending layers: multi-layer steering (module doc)."""

    def __init__(self, model: nn.Module, layer: int | Sequence[int], *,
                 arch: ModelArch | None = None, logits_at: str = LOGITS_AT[0]):
        self.logits_at = check_choice("logits_at", logits_at, LOGITS_AT)
        self.model = model
        self.arch = arch if arch is not None else validate_model(model)
        layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        if not layers or any(b <= a for a, b in zip(layers, layers[1:])):
            raise SteerscopeError(f"steered layers {layers} are not ascending and distinct",
                                  "pass each layer once, in increasing order")
        for x in layers:
            self.arch.check_layer(x)
        layer = layers[0]
        self.graph = Graph.from_arch(self.arch, layer)
        self.layer = layer
        self.steer_layers = tuple(layers)  # ℓ1 < ℓ2 < ...: where α·s_k is added
        a = self.arch
        self.H, self.G, self.dh, self.d = a.n_heads, a.n_kv_heads, a.d_head, a.d_model

    # offsets in graph order -------------------------------------------------------------
    def up_offset(self, L: int) -> int:
        """Upstream index of head 0 of block ``L`` (the MLP is at ``+ H``)."""
        return 1 + (L - self.layer) * (self.H + 1)

    def down_offset(self, L: int) -> int:
        """Downstream index of the query input of head 0 of block ``L``."""
        return (L - self.layer) * (self.H + 2 * self.G + 1)

    @property
    def device(self) -> torch.device:
        return self.arch.embed.weight.device

    def steering_rows(self, vector: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``vector`` as [K, d] rows (row k added at ``steer_layers[k]``; a [d] vector is one
        row) on the model's device in ``dtype``."""
        rows = vector if isinstance(vector, torch.Tensor) and vector.ndim == 2 else [vector]
        if len(rows) != len(self.steer_layers):
            raise SteerscopeError(f"a steering vector of {len(rows)} row(s) for the steered "
                                  f"layers {list(self.steer_layers)}", "pass one row per layer")
        rows = [self.arch.check_vector(v) for v in rows]
        return torch.stack(rows).to(device=self.device, dtype=dtype)  # [K, d]

    def later_injections(self) -> dict[int, int]:
        """block ``L`` -> row ``k`` for every steered layer after the first (where ``α·s_k`` is
        added to the running residual)."""
        return {L: k for k, L in enumerate(self.steer_layers) if k}

    # preparation -------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor) -> Prepared:
        """Run the unsteered model once over ``input_ids`` ([S] or [1, S]) and keep what the
        graph forward needs (the residual entering the steering layer and the attention
        modules' keyword arguments)."""
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
            raise SteerscopeError(f"graph forward takes one non-empty sequence, got ids of shape "
                                  f"{tuple(input_ids.shape)}", "pass a [S] or [1, S] tensor")
        return self._prepare(input_ids)

    @torch.no_grad()
    def prepare_batch(self, sequences: list[torch.Tensor], pad_id: int = 0) -> Prepared:
        """:meth:`prepare` for several [S_b] sequences at once, right-padded to the longest
        with ``pad_id``. Causal attention keeps every real position exactly as in its own
        sequence (padding only follows it); only gradient runs (``patching.gradients``) take a
        batch."""
        if not sequences or any(x.ndim != 1 or x.numel() == 0 for x in sequences):
            raise SteerscopeError("a patching batch takes one or more non-empty [S] sequences")
        S = max(int(x.numel()) for x in sequences)
        ids = torch.full((len(sequences), S), pad_id, dtype=sequences[0].dtype)
        for b, x in enumerate(sequences):
            ids[b, :x.numel()] = x
        return self._prepare(ids)

    def _prepare(self, input_ids: torch.Tensor) -> Prepared:
        input_ids = input_ids.to(self.device)
        arch = self.arch
        captured: dict[int, dict] = {}
        resid: list[torch.Tensor] = []
        handles = []

        def block_hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            resid.append(x.detach().clone())

        def attn_hook(L):
            def hook(module, args, kwargs):
                kw = dict(kwargs)
                kw.pop("hidden_states", None)
                if len(args) > 1:
                    raise SteerscopeError("attention module was called with positional "
                                          "arguments steerscope cannot forward")
                captured[L] = kw
            return hook

        handles.append(arch.block(self.layer).register_forward_pre_hook(block_hook,
                                                                        with_kwargs=True))
        for L in range(self.layer, arch.n_layers):
            handles.append(arch.component(L, "attn").register_forward_pre_hook(
                attn_hook(L), with_kwargs=True))
        try:
            self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        return Prepared(input_ids, resid[0], captured)

    # the forward pass -----------------------------------------------------------------------
    def run(
        self,
        prep: Prepared,
        vector: torch.Tensor,
        alpha: float,
        *,
        reverted: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        track: bool = False,
        post_norm: bool = False,
        base_alpha: float = 0.0,
    ) -> GraphRun:
        """The forward pass steered with ``alpha·vector`` at the steering layer(s).

        ``reverted`` [U, D] bool (graph order): edges that carry their unsteered value; needs
        ``base`` [U, 1, S, d] (the upstream outputs of an unsteered run, ``alpha = 0``; for
        multi-layer steering ``base_alpha`` is the coefficient ``base`` was run with, which
        gives the ``steer`` node's base value at later steered layers).
        ``positions`` [N] long: positions whose logits are returned. ``track``: keep the
        autograd graph (for gradients w.r.t. upstream outputs and downstream residuals); not
        combinable with ``reverted``. ``post_norm`` (needs ``track``): also keep the post-norm
        downstream inputs (``GraphRun.post_parts``). A tracked multi-layer run also keeps the
        residual entering each later steered layer (``GraphRun.inject_parts``).
        """
        arch, g = self.arch, self.graph
        if track and reverted is not None:
            raise SteerscopeError("a tracked run cannot revert edges")
        if post_norm and not track:
            raise SteerscopeError("post-norm inputs are kept by tracked runs only")
        if reverted is not None:
            if reverted.shape != (g.n_up, g.n_down):
                raise SteerscopeError(f"reverted-edge mask has shape {tuple(reverted.shape)}, "
                                      f"expected ({g.n_up}, {g.n_down})")
            if base is None:
                raise SteerscopeError("reverting edges needs the unsteered upstream outputs",
                                      "pass base=run(prep, vector, 0.0).upstream")
            reverted = (reverted.to(self.device) & g.adjacency.to(self.device))
            if not bool(reverted.any()):
                reverted = None
        rows = self.steering_rows(vector, prep.resid.dtype)  # [K, d]
        later = self.later_injections()
        H, G, d = self.H, self.G, self.d
        S = prep.seq_len
        grad_ctx = torch.enable_grad() if track else torch.no_grad()
        with grad_ctx:
            steer_out = (prep.resid + float(alpha) * rows[0]).unsqueeze(0)  # [1, 1, S, d]
            if track:
                steer_out.requires_grad_(True)
            up_parts: list[torch.Tensor] = [steer_out]
            inject_parts: list[torch.Tensor] = []
            # the steer node's base − current value beyond row 0 of base/cur: the later
            # steering terms, (base_alpha − alpha)·Σ_{k ≥ 1, ℓk ≤ L} s_k [d]
            steer_extra = torch.zeros_like(rows[0])
            down_parts: list[torch.Tensor] = []
            post_parts: list[torch.Tensor] | None = [] if post_norm else None
            cur = None
            if not track:
                cur = steer_out.new_empty((g.n_up, 1, S, d))  # upstream outputs, graph order
                cur[0] = steer_out[0]
            r = steer_out[0]  # [1, S, d] running residual of this run

            delta = None  # base − cur of the upstream nodes computed so far, [U, 1, S, d]
            filled = 0

            def corrections(n_avail: int, cols: slice) -> torch.Tensor | None:
                """[n_cols, 1, S, d] sum of (base − cur) over the reverted edges."""
                nonlocal delta, filled
                if reverted is None:
                    return None
                m = reverted[:n_avail, cols]
                if not bool(m.any()):
                    return None
                if delta is None:
                    delta = torch.empty_like(cur)
                if filled < n_avail:  # outputs of finished nodes no longer change
                    torch.sub(base[filled:n_avail], cur[filled:n_avail],
                              out=delta[filled:n_avail])
                    filled = n_avail
                flat = delta[:n_avail].reshape(n_avail, -1)  # [n, S*d]
                out = (m.to(flat.dtype).T @ flat).view(-1, 1, S, d)
                if later:  # the steer edges also carry the later steering terms
                    out = out + m[0].to(out.dtype).view(-1, 1, 1, 1) * steer_extra
                return out

            for L in range(self.layer, arch.n_layers):
                if L in later:  # α·s_k enters the residual of block L (part of "steer")
                    k = later[L]
                    r = r + float(alpha) * rows[k]
                    steer_extra = steer_extra + (float(base_alpha) - float(alpha)) * rows[k]
                    if track:
                        inj = r.unsqueeze(0)  # [1, 1, S, d]
                        inject_parts.append(inj)
                        r = inj[0]
                uo, do = self.up_offset(L), self.down_offset(L)
                # attention inputs: H query residuals, G key residuals, G value residuals
                n_attn = H + 2 * G
                res_attn = r.unsqueeze(0).expand(n_attn, -1, -1, -1)  # [H+2G, 1, S, d]
                corr = corrections(uo, slice(do, do + n_attn))
                res_attn = res_attn + corr if corr is not None else res_attn.clone()
                if track:
                    down_parts.append(res_attn)
                x = arch.component(L, "attn_norm")(res_attn)  # [H+2G, 1, S, d]
                if post_parts is not None:
                    post_parts.append(x)
                heads = self.attention_heads(L, prep, x)  # [H, 1, S, d]
                if track:
                    up_parts.append(heads)
                else:
                    cur[uo:uo + H] = heads
                r_mid = r + heads.sum(0)
                # MLP input
                corr = corrections(uo + H, slice(do + n_attn, do + n_attn + 1))
                res_m = r_mid.unsqueeze(0)
                res_m = res_m + corr if corr is not None else res_m.clone()  # [1, 1, S, d]
                if track:
                    down_parts.append(res_m)
                x = arch.component(L, "mlp_norm")(res_m)  # [1, 1, S, d]
                if post_parts is not None:
                    post_parts.append(x)
                mlp_out = self.mlp_output(L, x)  # [1, 1, S, d]
                if track:
                    up_parts.append(mlp_out)
                else:
                    cur[uo + H] = mlp_out[0]
                r = r_mid + mlp_out[0]
            corr = corrections(g.n_up, slice(g.n_down - 1, g.n_down))
            res_out = r.unsqueeze(0)
            res_out = res_out + corr if corr is not None else res_out.clone()  # [1, 1, S, d]
            if track:
                down_parts.append(res_out)
            x = res_out[0]
            if post_parts is not None:  # the unembedding input at every position
                xp = arch.final_norm(x).unsqueeze(0)  # [1, 1, S, d]
                post_parts.append(xp)
                x = xp[0]
                if positions is not None:
                    x = x[:, positions.to(self.device)]
                logits = self.logits(x)  # [1, N, V]
            else:
                if positions is not None:
                    x = x[:, positions.to(self.device)]
                logits = self.logits(arch.final_norm(x))  # [1, N, V]
        if track:
            return GraphRun(logits, up_parts=up_parts, down_parts=down_parts,
                            post_parts=post_parts, inject_parts=inject_parts)
        return GraphRun(logits, upstream=cur)

    # components ------------------------------------------------------------------------------
    def attention_heads(self, L: int, prep: Prepared, x: torch.Tensor) -> torch.Tensor:
        """Per-head outputs [H, B, S, d] of block ``L`` from the [H+2G, B, S, d] post-norm
        inputs of its query, key and value projections (one per head / KV head)."""
        arch = self.arch
        H, G, dh, d = self.H, self.G, self.dh, self.d
        xq, xk, xv = x[:H], x[H:H + G], x[H + G:]
        B, S = x.shape[1], x.shape[2]

        def project(name: str, xs: torch.Tensor, n: int) -> torch.Tensor:
            proj = arch.component(L, name)
            w = linear_weight(proj).to(xs.dtype).view(n, dh, d)  # dequantized when quantized
            out = torch.einsum("nbsd,ned->bsne", xs, w)  # [B, S, n, dh]
            if proj.bias is not None:
                out = out + proj.bias.view(n, dh)
            return out.reshape(B, S, n * dh)

        attn = arch.component(L, "attn")
        o_proj = arch.component(L, "o_proj")
        z: list[torch.Tensor] = []
        # the attention module's projections are swapped for stand-ins while it runs: q/k/v
        # return the per-head projections, o_proj records its input z (its output is unused)
        stand_ins = {"q_proj": _Fixed(project("q_proj", xq, H)),
                     "k_proj": _Fixed(project("k_proj", xk, G)),
                     "v_proj": _Fixed(project("v_proj", xv, G)), "o_proj": _Record(z)}
        originals = {}
        try:
            for name, module in stand_ins.items():
                path = getattr(arch.spec, name)
                owner = get_module(arch.block(L), path.rsplit(".", 1)[0])
                attr = path.rsplit(".", 1)[1]
                originals[(owner, attr)] = getattr(owner, attr)
                setattr(owner, attr, module)
            attn(hidden_states=xq[0], **prep.attn_kwargs[L])
        finally:
            for (owner, attr), module in originals.items():
                setattr(owner, attr, module)
        zh = z[0].view(B, S, H, dh)
        w_o = linear_weight(o_proj).to(zh.dtype).view(d, H, dh)  # [d, H, dh]
        heads = torch.einsum("bshe,dhe->hbsd", zh, w_o)  # [H,B,S,d]
        if o_proj.bias is not None:
            heads = heads + o_proj.bias / H
        post = arch.component(L, "attn_post_norm")
        if post is not None:  # per-head share of the post-norm output
            total = heads.sum(0).float()  # [B, S, d]
            scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + arch.norm_eps(post))
            heads = (heads.float() * scale * arch.norm_weight(post).float()).to(heads.dtype)
        return heads

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[1, N, V] logits the metric reads from the [1, N, d] post-final-norm residual (the
        soft-cap applied with ``logits_at="post_cap"``)."""
        logits = self.arch.unembed(x)
        cap = self.arch.final_logit_softcap
        if cap is not None and self.logits_at == "post_cap":
            logits = torch.tanh(logits / cap) * cap
        return logits

    def mlp_output(self, L: int, x: torch.Tensor) -> torch.Tensor:
        """MLP output [1, 1, S, d] of block ``L`` (after Gemma's post-norm) from its
        [1, 1, S, d] post-norm input."""
        arch = self.arch
        out = arch.component(L, "mlp")(x)
        post = arch.component(L, "mlp_post_norm")
        return post(out) if post is not None else out
