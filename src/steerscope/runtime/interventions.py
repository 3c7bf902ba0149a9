"""Interventions: what to do at a hook point, as small composable objects.

Hook points (TransformerLens-like names; shapes per forward call of T query tokens):

==============  ======================  ===================================================
point           shape                   what it is
==============  ======================  ===================================================
``resid_pre``   [B, T, d]               residual entering block ``layer`` (``layer = L`` is
                                        the residual entering the final norm)
``attn_in``     [B, T, d]               post-norm input of the attention block
``attn_out``    [B, T, d]               attention output (o_proj output; before the post-norm
                                        of Gemma 2/3)
``mlp_in``      [B, T, d]               post-norm input of the MLP
``mlp_out``     [B, T, d]               MLP output (before the post-norm of Gemma 2/3)
``q``           [B, T, H, d_head]       q_proj output per query head (before q_norm / RoPE)
``k``, ``v``    [B, T, G, d_head]       k_proj / v_proj output per KV head (what the KV cache
                                        stores, before k_norm / RoPE)
``z``           [B, T, H, d_head]       per-head attention output, the input of o_proj
``pattern``     [B, H, T, T_keys]       attention probabilities (post-softmax) of the T query
                                        tokens over every key in the cache
==============  ======================  ===================================================

Every intervention has a ``scope`` (see :mod:`steerscope.runtime.scope`) and, for per-head
points, optional ``heads``. Interventions at one point run in the order they were given, so
a :class:`Capture` listed after an :class:`Add` sees the edited value.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from steerscope.errors import ShapeError, SteerscopeError
from steerscope.runtime.scope import ScopeSpec, StepContext, check_scope
from steerscope.validation import check_alpha

RESIDUAL_POINTS = ("resid_pre", "attn_in", "attn_out", "mlp_in", "mlp_out")
HEAD_POINTS = ("q", "k", "v", "z")
POINTS = RESIDUAL_POINTS + HEAD_POINTS + ("pattern",)


def _check_point(point: str) -> str:
    if point not in POINTS:
        raise SteerscopeError(f"unknown hook point '{point}'", f"use one of {', '.join(POINTS)}")
    return point


def _time_dim(point: str) -> int:
    return 2 if point == "pattern" else 1


def _expand_mask(mask: torch.Tensor, x: torch.Tensor, point: str) -> torch.Tensor:
    """Broadcast a [B, T] position mask to the shape of ``x`` at ``point``."""
    if point == "pattern":  # [B, H, T, K]
        return mask[:, None, :, None]
    return mask.reshape(*mask.shape, *([1] * (x.ndim - 2)))


@dataclass
class Intervention:
    """Base class: an operation at ``point`` of block ``layer`` over positions ``scope``."""

    point: str
    layer: int
    scope: ScopeSpec = "all"
    heads: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _check_point(self.point)
        self.scope = check_scope(self.scope)
        if self.heads is not None:
            if self.point not in HEAD_POINTS + ("pattern",):
                raise SteerscopeError(
                    f"'heads' was given for the residual point '{self.point}'",
                    f"heads apply to {', '.join(HEAD_POINTS + ('pattern',))}",
                )
            self.heads = tuple(int(h) for h in self.heads)

    def check(self, arch) -> None:
        """Validate against a model (layer range, head range, shapes)."""
        arch.check_layer(self.layer, allow_final=self.point == "resid_pre")
        if self.point != "resid_pre" and self.layer == arch.n_layers:
            raise SteerscopeError(f"layer {self.layer} has no '{self.point}'")
        if self.heads is not None:
            n = arch.n_kv_heads if self.point in ("k", "v") else arch.n_heads
            bad = [h for h in self.heads if not 0 <= h < n]
            if bad:
                raise SteerscopeError(
                    f"head index {bad[0]} is out of range for '{self.point}' ({n} heads)",
                    f"use heads 0..{n - 1}",
                )

    def apply(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Return the edited activation (out of place, so gradients flow)."""
        raise NotImplementedError

    # helpers ---------------------------------------------------------------------------
    def _select(self, x: torch.Tensor, new: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``new`` at the positions (and heads) in scope, ``x`` elsewhere."""
        mask = ctx.mask(self.scope)
        if self.heads is not None:
            head_dim = 1 if self.point == "pattern" else 2
            hm = torch.zeros(x.shape[head_dim], dtype=torch.bool, device=x.device)
            hm[list(self.heads)] = True
            shape = [1] * x.ndim
            shape[head_dim] = -1
            hm = hm.view(shape)
            full = hm if mask is None else hm & _expand_mask(mask, x, self.point)
            return torch.where(full, new, x)
        if mask is None:
            return new
        return torch.where(_expand_mask(mask, x, self.point), new, x)


@dataclass
class Add(Intervention):
    """Add ``alpha * vector`` (broadcast over the trailing dims) at every position in scope.

    Steering = ``Add("resid_pre", layer, vector=s, alpha=α)``. At a residual point the
    setting may differ per batch row: ``vector`` [N, d] and/or ``alpha`` [N] (a tensor or a
    sequence; a 1-D ``vector`` is then shared) give row ``r`` of the batch the addition
    ``alpha[r] * vector[r]``, where ``r`` is the step context's ``rows`` (which setting each
    batch row is; by default batch row ``i`` is setting ``i``, so N must equal the batch).
    """

    vector: torch.Tensor | None = None
    alpha: float | torch.Tensor = 1.0
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = as_alpha(self.alpha)

    @property
    def n_rows(self) -> int | None:
        """N, the number of per-row settings (None when one setting serves every row)."""
        if isinstance(self.alpha, torch.Tensor):
            return int(self.alpha.numel())
        if isinstance(self.vector, torch.Tensor) and self.vector.ndim == 2 \
                and self.point in RESIDUAL_POINTS:
            return int(self.vector.shape[0])
        return None

    def check(self, arch) -> None:
        super().check(arch)
        n = self.n_rows
        if n is None:
            check_alpha(self.alpha)
        if self.point in RESIDUAL_POINTS:
            check_row_vectors(arch, self.vector, n)
        elif n is not None:
            raise SteerscopeError(f"per-row settings need a residual point, not '{self.point}'",
                                  "give one vector and one float alpha at head points")
        elif not torch.isfinite(self.vector).all():
            raise SteerscopeError("added vector contains NaN or infinite values")

    def row_delta(self, ctx: StepContext, like: torch.Tensor) -> torch.Tensor:
        """[B, d] in ``like``'s dtype and device: ``alpha[r] * vector[r]`` for the setting r
        of each batch row (the [N, d] table is computed once per device and dtype)."""
        n = self.n_rows
        if ctx.rows is None and ctx.batch != n:
            raise ShapeError(f"per-row steering has {n} settings but the batch has {ctx.batch} "
                             f"rows", f"give vector [{ctx.batch}, d] and alpha [{ctx.batch}]")
        key = (like.device, like.dtype)
        table = self._tables.get(key)
        if table is None:
            vec = self.vector
            alpha = self.alpha if isinstance(self.alpha, torch.Tensor) else \
                torch.full((n,), float(self.alpha))
            alpha = alpha.to(device=vec.device, dtype=vec.dtype).unsqueeze(-1)  # [N, 1]
            rows_vec = vec if vec.ndim == 2 else vec.unsqueeze(0)  # [N | 1, d]
            table = (alpha * rows_vec).to(device=like.device, dtype=like.dtype)  # [N, d]
            self._tables[key] = table
        rows = ctx.rows if ctx.rows is not None else torch.arange(ctx.batch)
        return table[rows.to(like.device)]  # [B, d]

    def apply(self, x, ctx):
        if self.n_rows is not None:  # residual point, x [B, T, d]
            delta = self.row_delta(ctx, x).unsqueeze(1)  # [B, 1, d]
        else:
            delta = (self.alpha * self.vector).to(device=x.device, dtype=x.dtype)
        if self.heads is None and self.point in RESIDUAL_POINTS:
            mask = ctx.mask(self.scope)
            if mask is None:
                return x + delta
            return x + mask.unsqueeze(-1).to(x.dtype) * delta
        return self._select(x, x + delta, ctx)


def as_alpha(alpha) -> float | torch.Tensor:
    """One coefficient (a number or a 0-d tensor) as a float, unchecked; anything else as
    per-row coefficients (:func:`check_alphas`)."""
    if isinstance(alpha, numbers.Real) or (isinstance(alpha, torch.Tensor) and alpha.ndim == 0):
        return float(alpha)
    return check_alphas(alpha)


def check_alphas(alpha) -> torch.Tensor:
    """Per-row steering coefficients as a [N] float64 tensor; a one-line error when it is not
    1-D, empty, or holds a non-finite value."""
    try:
        values = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise SteerscopeError(f"alpha must be a float or a [B] sequence of floats, got "
                              f"{alpha!r}", "pass e.g. -1.0 or [-1.0, 1.0]") from None
    if values.ndim != 1 or values.numel() == 0:
        raise ShapeError(f"per-row alpha must have shape [B], got {tuple(values.shape)}",
                         "pass one coefficient per batch row, or one float")
    for i, a in enumerate(values.tolist()):
        check_alpha(a, f"alpha[{i}]")
    return values


def check_row_vectors(arch, vector, n_rows: int | None) -> None:
    """A one-line error unless ``vector`` is a finite [d] or [N, d] tensor (N = ``n_rows``,
    the number of per-row settings, when it is known)."""
    d = arch.d_model
    if not isinstance(vector, torch.Tensor) or vector.ndim != 2:
        arch.check_vector(vector)
        return
    if vector.shape[1] != d or (n_rows is not None and vector.shape[0] != n_rows):
        rows = "B" if n_rows is None else str(n_rows)
        raise ShapeError(f"steering vectors have shape {tuple(vector.shape)} but [{rows}, {d}] "
                         f"is expected (one row per batch row, the model's width {d})",
                         "give one d_model vector per batch row and alpha of the same length")
    if not torch.isfinite(vector).all():
        raise SteerscopeError("steering vectors contain NaN or infinite values", "re-extract them")


@dataclass
class Ablate(Intervention):
    """Directional ablation: ``x ← x − (x·r̂) r̂`` with r̂ the unit ``direction``."""

    direction: torch.Tensor | None = None

    def check(self, arch) -> None:
        super().check(arch)
        if self.point not in RESIDUAL_POINTS:
            raise SteerscopeError(
                f"directional ablation needs a residual-width point, not '{self.point}'",
                f"use one of {', '.join(RESIDUAL_POINTS)}",
            )
        arch.check_vector(self.direction, "ablation direction")
        if float(self.direction.norm()) == 0.0:
            raise SteerscopeError("ablation direction is the zero vector", "give a non-zero one")

    def apply(self, x, ctx):
        r = self.direction.to(device=x.device, dtype=torch.float32)
        r = r / r.norm()
        proj = (x.float() @ r).unsqueeze(-1) * r  # [B, T, d]
        return self._select(x, (x.float() - proj).to(x.dtype), ctx)


@dataclass
class Replace(Intervention):
    """Replace the activation at the positions in scope.

    ``value`` is either a tensor covering whole sequences in absolute positions (shape of the
    point with the time axis = total length; each call takes its slice ``[start, start+T)``,
    and for ``pattern`` also the first ``T_keys`` keys), or a callable
    ``value(x, ctx) -> tensor`` shaped like ``x``.
    """

    value: torch.Tensor | Callable[[torch.Tensor, StepContext], torch.Tensor] | None = None

    def check(self, arch) -> None:
        super().check(arch)
        if isinstance(self.value, torch.Tensor) and not torch.isfinite(self.value).all():
            raise SteerscopeError("replacement value contains NaN or infinite values")

    def apply(self, x, ctx):
        if callable(self.value) and not isinstance(self.value, torch.Tensor):
            new = self.value(x, ctx)
        else:
            tdim = _time_dim(self.point)
            new = self.value.narrow(tdim, ctx.start, ctx.length)
            if self.point == "pattern":
                new = new[..., : x.shape[-1]]
        if new.shape != x.shape:
            raise ShapeError(
                f"replacement for '{self.point}' at layer {self.layer} has shape "
                f"{tuple(new.shape)} for this call but the activation has {tuple(x.shape)}",
                "give a value shaped like the activation over the whole sequence",
            )
        return self._select(x, new.to(device=x.device, dtype=x.dtype), ctx)


@dataclass
class Edit(Intervention):
    """Apply an arbitrary function ``fn(x, ctx) -> tensor`` at the positions in scope."""

    fn: Callable[[torch.Tensor, StepContext], torch.Tensor] | None = None

    def apply(self, x, ctx):
        return self._select(x, self.fn(x, ctx), ctx)


@dataclass
class Capture(Intervention):
    """Record the activation (as seen at this point of the chain) on every forward call.

    ``steps`` holds one tensor per call; a call that starts at position 0 (a new prefill or
    a full re-computation) starts a new record. ``value`` concatenates the steps along the
    time axis, restricted to the scope's positions when the scope is explicit. With
    ``detach=False`` the captured tensors keep their autograd graph.
    """

    detach: bool = True
    steps: list[torch.Tensor] = field(default_factory=list, repr=False)
    _masks: list[torch.Tensor | None] = field(default_factory=list, repr=False)

    def apply(self, x, ctx):
        if ctx.start == 0:
            self.steps.clear()
            self._masks.clear()
        self.steps.append(x.detach().clone() if self.detach else x)
        self._masks.append(ctx.mask(self.scope))
        return x

    def clear(self) -> None:
        self.steps.clear()
        self._masks.clear()

    @property
    def value(self) -> torch.Tensor:
        """All recorded positions, concatenated along time.

        ``pattern`` steps are zero-padded on the key axis to [B, H, T_total, T_total]. With a
        named scope the full time axis is returned; with explicit positions, a [B, K, ...]
        tensor of just those positions (K the number of positions, in order).
        """
        if not self.steps:
            raise SteerscopeError(
                f"nothing was captured at '{self.point}' layer {self.layer}",
                "run the model inside the runtime first",
            )
        steps = self.steps
        if self.point == "pattern":
            k = max(s.shape[-1] for s in steps)
            steps = [torch.nn.functional.pad(s, (0, k - s.shape[-1])) for s in steps]
        full = torch.cat(steps, dim=_time_dim(self.point))
        if isinstance(self.scope, str):
            return full
        mask = torch.cat([m for m in self._masks], dim=1)  # [B, T_total]
        if self.point == "pattern":
            raise SteerscopeError("explicit positions are not supported for pattern captures")
        counts = mask.sum(1)
        if not bool((counts == counts[0]).all()):
            raise SteerscopeError("captured positions differ between rows")
        return full[mask].view(full.shape[0], int(counts[0]), *full.shape[2:])


def steer(vector: torch.Tensor, layer: int, alpha: float | Sequence[float] | torch.Tensor = 1.0,
          scope: ScopeSpec = "all") -> Add:
    """The steering intervention: ``h^layer ← h^layer + alpha * vector`` at ``resid_pre``.

    ``vector`` [d] or [B, d] (one per batch row) and ``alpha`` a float or [B]: batch row ``i``
    is steered with ``alpha[i] * vector[i]``, exactly as a separate run with that setting.
    """
    alpha = as_alpha(alpha)
    if isinstance(alpha, float):
        check_alpha(alpha)
    else:
        if isinstance(vector, torch.Tensor) and vector.ndim == 2 and \
                vector.shape[0] != alpha.numel():
            raise ShapeError(f"alpha has {alpha.numel()} values but the steering vectors have "
                             f"{vector.shape[0]} rows: alpha of shape [{vector.shape[0]}] "
                             "is expected", "give one alpha per vector row, or one float")
    return Add("resid_pre", layer, scope=scope, vector=vector, alpha=alpha)


def check_row_count(interventions: Sequence[Intervention], n: int, what: str = "batch") -> None:
    """A one-line error, before any compute, when a per-row intervention's number of settings
    is not ``n`` (the rows of the batch, or the prompts of a list)."""
    for op in interventions:
        rows = getattr(op, "n_rows", None)
        if rows is not None and rows != n:
            raise ShapeError(f"per-row steering has {rows} settings (vector rows / alpha values)"
                             f" but the {what} has {n} rows: vector [{n}, d] and alpha [{n}] "
                             "are expected", "give one vector row and one alpha per row")


def ablate_direction(
    direction: torch.Tensor,
    layers: Sequence[int],
    points: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    scope: ScopeSpec = "all",
) -> list[Ablate]:
    """Directional ablation of ``direction`` at every given layer and point (Arditi et al.)."""
    return [Ablate(p, layer, scope=scope, direction=direction) for layer in layers for p in points]
