"""The paper's computation of the freezing ablations, the reference of :mod:`.freeze`.

At every decoding step the unsteered model and then the steered model run over the whole
sequence with no KV cache (quadratic in the length), the steered pass with the unsteered
pass's attention probabilities / values, or with the steering term removed from the value
or MLP inputs by plain module hooks. The test oracle and the benchmark baseline of
:func:`~steerscope.mechanisms.freeze.frozen_generate_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch

from steerscope.generation import eos_token_ids, position_ids_from_mask
from steerscope.mechanisms.freeze import FrozenGeneration, check_mode
from steerscope.models.archs import ModelArch, validate_model
from steerscope.runtime import Intervention, Runtime, steer


class _DirectRemoval:
    """Reference SVV / direct-MLP removal with plain module hooks: a pre-hook on the norm
    keeps its input ``x``; a pre-hook on ``v_proj`` (svv) or on the MLP (mlp) subtracts
    ``α·s ⊙ γ_eff · rsqrt(mean(x²) + ε)`` from that module's input."""

    def __init__(self, arch: ModelArch, vector: torch.Tensor, layer: int, alpha: float, mode: str):
        self.arch, self.vector, self.layer, self.alpha, self.mode = arch, vector, layer, alpha, mode
        self._handles: list = []
        self._x: dict[int, torch.Tensor] = {}

    def __enter__(self):
        arch = self.arch
        norm_name, target = (("attn_norm", "v_proj") if self.mode == "svv" else ("mlp_norm", "mlp"))
        for lv in range(self.layer, arch.n_layers):
            norm = arch.component(lv, norm_name)

            def keep(mod, args, lv=lv):
                self._x[lv] = args[0]

            def remove(mod, args, lv=lv, norm=norm):
                x = self._x[lv].float()
                r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + arch.norm_eps(norm))
                term = self.alpha * self.vector.float() * arch.norm_weight(norm).float() * r
                return ((args[0].float() - term).to(args[0].dtype), *args[1:])

            self._handles.append(norm.register_forward_pre_hook(keep))
            self._handles.append(arch.component(lv, target).register_forward_pre_hook(remove))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._x.clear()


@torch.no_grad()
def frozen_generate_reference(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    vector: torch.Tensor,
    layer: int,
    alpha: float,
    mode: str,
    *,
    max_new_tokens: int = 64,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_at_eos: bool = True,
    arch: ModelArch | None = None,
) -> FrozenGeneration:
    """The paper's computation, no KV cache: at every step run the unsteered model over the
    whole sequence (capturing its attention probabilities / values at layers ``>= layer``),
    then the steered model over the whole sequence with those replaced; ``svv`` / ``mlp`` edit
    the module inputs directly with plain hooks. Cost quadratic in the length; the test
    oracle and the benchmark baseline of :func:`frozen_generate_ids`.
    """
    from steerscope.runtime import Capture, Replace

    check_mode(mode)
    arch = arch if arch is not None else validate_model(model)
    device = next(model.parameters()).device
    vector = arch.check_vector(vector).to(device)
    ids = input_ids.to(device)
    mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)).long()
    batch, prompt_len = ids.shape
    eos = torch.tensor(eos_token_ids(model, eos_token_id), device=device, dtype=torch.long)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    layers = range(layer, arch.n_layers)
    point = {"qk": "pattern", "ov": "v"}.get(mode)

    new = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    first_logits = None
    for step in range(max_new_tokens):
        pos = position_ids_from_mask(mask)
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                  logits_to_keep=1)
        ops: list[Intervention] = [steer(vector, layer, alpha)]
        if point is not None:
            caps = [Capture(point, lv) for lv in layers]
            with Runtime(model, caps, arch=arch, prompt_len=prompt_len):
                model(**kw)  # the unsteered pass
            ops += [Replace(point, lv, value=c.value) for lv, c in zip(layers, caps)]
        with ExitStack() as stack:
            stack.enter_context(Runtime(model, ops, arch=arch, prompt_len=prompt_len))
            if mode in ("svv", "mlp"):
                stack.enter_context(_DirectRemoval(arch, vector, layer, float(alpha), mode))
            logits = model(**kw).logits[:, -1]  # [B, V]
        if step == 0:
            first_logits = logits.float().clone()
        token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        new[:, step] = token
        lengths += (~done).long()
        if len(eos):
            done |= torch.isin(token, eos)
        if (stop_at_eos and bool(done.all())) or step == max_new_tokens - 1:
            new = new[:, : step + 1]
            break
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return FrozenGeneration(torch.cat([input_ids.to(device), new], dim=1), new, lengths,
                            prompt_len, first_logits, mode)
