"""The lockstep batch of QK / OV freezing with a shared prefix: one model call, B input rows.

Steering enters at block ``layer``, so below it the unsteered ("base") and steered runs are
the same computation on the same tokens. :class:`SharedPrefixLockstep` lets a forward call of
``B`` rows run blocks ``< layer`` once, and at block ``layer`` widens the batch to ``2B`` rows:
rows ``[0, B)`` the base run, rows ``[B, 2B)`` the steered run (``+ α·s`` on the residual).
From there on, at every block, the steered rows take the base rows'

- ``q_proj`` and ``k_proj`` outputs (``qk``): same queries and keys, so the same attention
  probabilities ``A_base`` (RoPE, q/k norms, scaling, soft-caps and masks act on both halves
  alike), and the attention output ``A_base · V_steered``, with the model's own kernel;
- ``v_proj`` outputs (``ov``): the base values.

The block inputs that carry a batch dimension (attention masks, rotary embeddings, position
ids) are widened alongside. The KV cache then holds ``B`` rows for blocks ``< layer`` and
``2B`` rows from ``layer`` on (each layer's cache is separate). The logits have ``2B`` rows;
the steered run's are ``[B, 2B)``. Compared with feeding ``2B`` identical rows, the blocks
below ``layer`` and their cache cost half.
"""

from __future__ import annotations

import torch

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ModelArch

SHARED_PREFIX_MODES = {"qk": ("q_proj", "k_proj"), "ov": ("v_proj",)}


def _copy_base_rows(module, args, output: torch.Tensor) -> None:
    """Forward hook: the second half of the rows takes the first half's output, in place."""
    half = output.shape[0] // 2  # output [2B, T, n·dh]
    output[half:].copy_(output[:half])


class SharedPrefixLockstep:
    """Context manager: hooks that run ``mode`` (``qk`` / ``ov``) freezing with steering
    ``alpha · vector`` at ``layer`` as a lockstep batch whose blocks below ``layer`` are
    shared (see the module docstring); ``alpha`` a float or [B] (one per row). Only for
    inference (the copies are in place)."""

    def __init__(self, arch: ModelArch, vector: torch.Tensor, layer: int,
                 alpha: float | torch.Tensor, mode: str):
        if mode not in SHARED_PREFIX_MODES:
            raise SteerscopeError(f"freezing mode '{mode}' has no shared-prefix lockstep",
                                  f"use one of {', '.join(SHARED_PREFIX_MODES)}")
        self.arch, self.layer, self.mode = arch, arch.check_layer(layer), mode
        vector = arch.check_vector(vector).detach()
        if isinstance(alpha, torch.Tensor):  # per-row alphas [B]: [B, 1, d]
            alpha = alpha.to(device=vector.device, dtype=vector.dtype)
            self.delta = (alpha.view(-1, 1) * vector).unsqueeze(1)
        else:
            self.delta = float(alpha) * vector  # [d]
        self.rows = 0  # B of the current forward call, set at block ``layer``
        self._handles: list = []

    # batch widening ------------------------------------------------------------------------
    def _widen(self, obj):
        """``obj`` with every tensor of batch size B (ndim >= 2) repeated to 2B rows."""
        if isinstance(obj, torch.Tensor):
            if obj.ndim >= 2 and obj.shape[0] == self.rows:
                return torch.cat([obj, obj], dim=0)
            return obj
        if isinstance(obj, tuple):
            return tuple(self._widen(o) for o in obj)
        if isinstance(obj, list):
            return [self._widen(o) for o in obj]
        if isinstance(obj, dict):
            return {k: self._widen(v) for k, v in obj.items()}
        return obj  # the cache, flags, None

    def _split_hook(self, module, args, kwargs):
        """Pre-hook of block ``layer``: [B, T, d] → [base; base + α·s] [2B, T, d]."""
        hidden = args[0] if args else kwargs["hidden_states"]
        self.rows = hidden.shape[0]
        steered = hidden + self.delta.to(device=hidden.device, dtype=hidden.dtype)
        wide = torch.cat([hidden, steered], dim=0)  # [2B, T, d]
        kwargs = {k: (wide if k == "hidden_states" else self._widen(v))
                  for k, v in kwargs.items()}
        args = (wide, *self._widen(args[1:])) if args else ()
        return args, kwargs

    def _later_block_hook(self, module, args, kwargs):
        """Pre-hook of blocks ``> layer``: widen the batch-sized inputs besides the residual."""
        kwargs = {k: (v if k == "hidden_states" else self._widen(v)) for k, v in kwargs.items()}
        args = (args[0], *self._widen(args[1:])) if args else ()
        return args, kwargs

    # attach / detach ------------------------------------------------------------------------
    def __enter__(self) -> SharedPrefixLockstep:
        arch = self.arch
        try:
            for lv in range(self.layer, arch.n_layers):
                hook = self._split_hook if lv == self.layer else self._later_block_hook
                self._handles.append(arch.block(lv).register_forward_pre_hook(
                    hook, with_kwargs=True))
                for proj in SHARED_PREFIX_MODES[self.mode]:
                    self._handles.append(
                        arch.component(lv, proj).register_forward_hook(_copy_base_rows))
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
