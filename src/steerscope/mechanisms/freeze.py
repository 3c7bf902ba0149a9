"""Freezing ablations during steered generation (paper section 5), KV-cached and in lockstep.

Steering adds ``α·s`` to the residual entering block ``ℓ`` at every position. A freezing
ablation keeps the steering but, at every layer ``l >= ℓ`` and for the whole response, cuts
one path through which it acts:

``qk``   QK freeze: the steered run uses the *unsteered* run's attention probabilities,
         ``out^h = A^h_base · V^h_steered`` (GQA: query head h reads KV head ``h // (H/G)``).
         The probabilities are a function of the queries and keys only (RoPE, q/k norms,
         scaling, soft-caps and masks act identically on both halves), so the lockstep loop
         gives the steered rows the base rows' ``q_proj`` / ``k_proj`` outputs and keeps the
         model's fused attention kernel (``qk_impl="keys"``, the default);
         ``qk_impl="pattern"`` replaces the probabilities themselves through the runtime's
         eager decomposition ``A · V`` (slower; the two agree to float rounding).
``ov``   OV freeze: the steered run uses the unsteered run's value activations
         (``v_proj`` outputs, which is what the KV cache stores).
``svv``  SVV removal: the value-projection input loses the normalised steering term,
         ``v ← v − W_V (α·s ⊙ γ_eff · rsqrt(mean(x²) + ε))`` with ``x`` the current steered
         residual entering block ``l`` (pre-norm), ``γ_eff`` the effective weight of the
         pre-attention norm ((1+γ) for Gemma). Queries and keys are unchanged. ``v_proj`` is
         linear, so this equals editing its input (a bias is unaffected).
``mlp``  Direct-MLP removal: every MLP input loses ``α·s ⊙ γ_eff · rsqrt(mean(x²) + ε)`` with
         ``x`` the residual entering the pre-MLP norm and ``γ_eff`` that norm's weight.

``qk`` and ``ov`` need the unsteered run on the *same tokens* as the steered one. Instead of
re-running both models over the whole sequence at every step (the paper's code: quadratic in
the length), :func:`frozen_generate_ids` runs one batch of ``2B`` rows, rows ``[0, B)``
unsteered ("base") and rows ``[B, 2B)`` steered, with one KV cache: at every step both halves
are fed the steered half's greedy token, so the base rows' cache holds base activations of
the steered tokens. ``use_cache=False`` re-runs both halves over the whole sequence at every
step: the reference the cached loop is tested against token for token. The two halves are
identical below ``layer``, so by default the model is fed ``B`` rows and the batch is widened
to ``2B`` at ``layer`` (:mod:`steerscope.mechanisms.lockstep`). ``svv`` / ``mlp`` need no
base run and use ``B`` rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from steerscope.errors import SteerscopeError
from steerscope.generation import greedy_loop, prepare_greedy_inputs
from steerscope.mechanisms.lockstep import SharedPrefixLockstep
from steerscope.models.archs import ModelArch, validate_model
from steerscope.models.chat import encode_prompts
from steerscope.models.quantization import linear_weight
from steerscope.runtime import Edit, Intervention, Runtime, steer
from steerscope.runtime.interventions import as_alpha

MODES = ("none", "qk", "ov", "svv", "mlp")
LOCKSTEP_MODES = ("qk", "ov")
MODE_NAMES = {
    "none": "plain steering",
    "qk": "QK freeze",
    "ov": "OV freeze",
    "svv": "SVV removal",
    "mlp": "direct-MLP removal",
}


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known freezing mode, else raise a one-line error."""
    if mode not in MODES:
        raise SteerscopeError(f"unknown freezing mode '{mode}'", f"use one of {', '.join(MODES)}")
    return mode


QK_IMPLS = ("keys", "pattern")


def check_qk_options(qk_source: str, qk_impl: str) -> None:
    """Raise a one-line error unless ``qk_source`` / ``qk_impl`` are known and compatible."""
    if qk_source not in ("base", "steered"):
        raise SteerscopeError(f"unknown qk_source '{qk_source}'", "use 'base' or 'steered'")
    if qk_impl not in QK_IMPLS:
        raise SteerscopeError(f"unknown qk_impl '{qk_impl}'", f"use one of {', '.join(QK_IMPLS)}")
    if qk_source == "steered" and qk_impl != "pattern":
        raise SteerscopeError("qk_source='steered' replaces probabilities",
                              "pass qk_impl='pattern' with it")


# ---------------------------------------------------------------------------------------
# norm-input recorder: rsqrt(mean(x²) + ε) of the pre-norm residual, per layer, per call
# ---------------------------------------------------------------------------------------
class NormScaleRecorder:
    """Forward pre-hooks on the pre-attention (``attn_norm``) or pre-MLP (``mlp_norm``) norms
    of ``layers`` that record ``rsqrt(mean(x²) + ε)`` [B, T, 1] (float32) of the norm's input
    on every call, so an intervention later in the same block can use it."""

    def __init__(self, arch: ModelArch, layers: Iterable[int], norm: str):
        if norm not in ("attn_norm", "mlp_norm"):
            raise SteerscopeError(f"unknown norm '{norm}'", "use 'attn_norm' or 'mlp_norm'")
        self.arch, self.layers, self.norm = arch, list(layers), norm
        self.scale: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> NormScaleRecorder:
        for layer in self.layers:
            module = self.arch.component(layer, self.norm)
            eps = self.arch.norm_eps(module)

            def hook(mod, args, kwargs, layer=layer, eps=eps):
                x = args[0] if args else next(iter(kwargs.values()))
                x = x.float()
                self.scale[layer] = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return None

            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.scale.clear()


# ---------------------------------------------------------------------------------------
# the interventions of each mode
# ---------------------------------------------------------------------------------------
def _steer_half(vector: torch.Tensor, layer: int, alpha: float) -> Edit:
    """Steering of the second half of the batch only (the steered rows of a lockstep batch)."""

    def fn(x, ctx):  # x [2B, T, d]
        half = x.shape[0] // 2
        rows = torch.zeros(x.shape[0], 1, 1, dtype=x.dtype, device=x.device)
        rows[half:] = 1
        return x + rows * (alpha * vector).to(device=x.device, dtype=x.dtype)

    return Edit("resid_pre", layer, fn=fn)


def _copy_base_half(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """[2B, ...] → the base half [0, B) repeated: the steered rows get the base values."""
    half = x.shape[dim] // 2
    base = x.narrow(dim, 0, half)
    return torch.cat([base, base], dim=dim)


def _per_row(alpha: float | torch.Tensor, like: torch.Tensor, ndim: int):
    """``alpha`` as is, or a [B] tensor of per-row alphas shaped [B, 1, ...] (``ndim`` dims)
    in float32 on ``like``'s device."""
    if isinstance(alpha, torch.Tensor):
        return alpha.to(device=like.device, dtype=torch.float32).view(-1, *[1] * (ndim - 1))
    return alpha


def freeze_interventions(
    arch: ModelArch,
    vector: torch.Tensor,
    layer: int,
    alpha: float,
    mode: str,
    *,
    recorder: NormScaleRecorder | None = None,
    qk_source: str = "base",
    qk_impl: str = "keys",
) -> list[Intervention]:
    """The interventions that implement steering with freezing ``mode`` (see module doc).

    For ``qk`` / ``ov`` the batch is a lockstep batch (base half, steered half); ``svv`` /
    ``mlp`` need ``recorder``, a :class:`NormScaleRecorder` over the layers ``>= layer`` of the
    matching norm, attached during the run. ``qk_impl`` chooses how ``qk`` freezes the
    probabilities: ``"keys"`` copies the base rows' queries and keys into the steered rows,
    ``"pattern"`` copies the probabilities. ``qk_source="steered"`` (pattern path only)
    replaces the steered rows' probabilities by their own (a check of the replacement path:
    equals plain steering).
    """
    check_mode(mode)
    check_qk_options(qk_source, qk_impl)
    arch.check_layer(layer)
    arch.check_vector(vector)
    alpha = as_alpha(alpha)
    if isinstance(alpha, torch.Tensor) and mode in LOCKSTEP_MODES:
        raise SteerscopeError("per-row alpha in a lockstep mode needs the shared-prefix path",
                              "use frozen_generate_ids with shared_prefix=True")
    layers = range(layer, arch.n_layers)
    if mode == "none":
        return [steer(vector, layer, alpha)]
    if mode in LOCKSTEP_MODES:
        ops: list[Intervention] = [_steer_half(vector, layer, alpha)]
        if mode == "qk" and qk_impl == "keys":
            for lv in layers:  # q [2B, T, H, dh], k [2B, T, G, dh]: before RoPE / q-k norms
                ops += [Edit("q", lv, fn=lambda q, ctx: _copy_base_half(q)),
                        Edit("k", lv, fn=lambda k, ctx: _copy_base_half(k))]
        elif mode == "qk":
            fn = (lambda p, ctx: _copy_base_half(p)) if qk_source == "base" else (lambda p, ctx: p)
            ops += [Edit("pattern", lv, fn=fn) for lv in layers]  # p [2B, H, T, K]
        else:
            ops += [Edit("v", lv, fn=lambda v, ctx: _copy_base_half(v)) for lv in layers]
        return ops
    if recorder is None:
        raise SteerscopeError(f"freezing mode '{mode}' needs a NormScaleRecorder",
                              "use frozen_generate_ids, which attaches one")
    ops = [steer(vector, layer, alpha)]
    s = vector.detach().float()
    for lv in layers:
        if mode == "svv":
            norm = arch.component(lv, "attn_norm")
            w_v = linear_weight(arch.component(lv, "v_proj"))  # [G*dh, d] (dequantized)
            g = arch.norm_weight(norm).detach().float()  # [d]
            # W_V (s ⊙ γ_eff) per KV head: [G, dh]
            term = F.linear(s.to(w_v.device) * g.to(w_v.device), w_v.detach().float())
            term = term.view(arch.n_kv_heads, arch.d_head)

            def fn(v, ctx, lv=lv, term=term):  # v [B, T, G, dh]
                r = recorder.scale[lv]  # [B, T, 1]
                return (v.float() - _per_row(alpha, r, 4) * r.unsqueeze(-1) * term).to(v.dtype)

            ops.append(Edit("v", lv, fn=fn))
        else:
            norm = arch.component(lv, "mlp_norm")
            term = (s.to(norm.weight.device) * arch.norm_weight(norm).detach().float())  # [d]

            def fn(x, ctx, lv=lv, term=term):  # x [B, T, d] post-norm MLP input
                r = recorder.scale[lv]  # [B, T, 1]
                return (x.float() - _per_row(alpha, r, 3) * r * term).to(x.dtype)

            ops.append(Edit("mlp_in", lv, fn=fn))
    return ops


# ---------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------
@dataclass
class FrozenGeneration:
    """Output of :func:`frozen_generate_ids` (steered rows only).

    ``sequences`` [B, P + N]; ``new_tokens`` [B, N]; ``lengths`` [B] generated tokens up to
    and including the EOS; ``first_logits`` [B, V] float32: the next-token logits at the last
    prompt position under the ablation (the refusal score's input).
    """

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    lengths: torch.Tensor
    prompt_len: int
    first_logits: torch.Tensor
    mode: str


@torch.no_grad()
def frozen_generate_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    vector: torch.Tensor,
    layer: int,
    alpha: float | torch.Tensor,
    mode: str,
    *,
    max_new_tokens: int = 64,
    use_cache: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_at_eos: bool = True,
    arch: ModelArch | None = None,
    qk_source: str = "base",
    qk_impl: str = "keys",
    shared_prefix: bool = True,
) -> FrozenGeneration:
    """Greedy steered decoding of a left-padded batch ([B, P] ids and mask) with freezing
    ``mode`` at every layer ``>= layer`` (see the module docstring).

    ``qk`` / ``ov`` run the base and steered rows in lockstep in one ``2B``-row batch; the
    tokens are the steered rows' greedy choices, fed to both halves. With ``shared_prefix``
    (the default; ``qk_impl="keys"``) the blocks below ``layer`` run once on ``B`` rows and
    the batch is widened at ``layer`` (:mod:`.lockstep`); ``shared_prefix=False`` feeds
    ``2B`` identical rows through the intervention runtime. ``alpha``: a float or [B], one
    coefficient per row (lockstep modes: shared-prefix path only). ``use_cache=False`` re-runs
    everything over the whole sequence at every step (the reference).
    """
    check_mode(mode)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise SteerscopeError(f"input_ids must be a non-empty [batch, length] tensor, got shape "
                              f"{tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise SteerscopeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    arch = arch if arch is not None else validate_model(model)
    input_ids, attention_mask, eos, pad_token_id = prepare_greedy_inputs(
        model, input_ids, attention_mask, eos_token_id, pad_token_id)
    device = input_ids.device
    vector = arch.check_vector(vector).to(device)
    batch, prompt_len = input_ids.shape
    alpha = as_alpha(alpha)
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != batch:
            raise SteerscopeError(f"alpha has {alpha.numel()} values for a batch of {batch} rows:"
                                  f" alpha of shape [{batch}] is expected",
                                  "give one alpha per row, or one float")

    check_qk_options(qk_source, qk_impl)
    lockstep = mode in LOCKSTEP_MODES
    shared = shared_prefix and lockstep and qk_impl == "keys"
    copies = 2 if lockstep and not shared else 1  # the shared prefix widens at ``layer``
    ids = input_ids.repeat(copies, 1)  # [cB, P]
    mask = attention_mask.repeat(copies, 1)  # [cB, P]
    steered = slice(batch, 2 * batch) if lockstep else slice(0, batch)

    with ExitStack() as stack:
        if shared:
            stack.enter_context(SharedPrefixLockstep(arch, vector, layer, alpha, mode))
        else:
            recorder = None
            if mode in ("svv", "mlp"):
                norm = "attn_norm" if mode == "svv" else "mlp_norm"
                recorder = stack.enter_context(
                    NormScaleRecorder(arch, range(layer, arch.n_layers), norm))
            ops = freeze_interventions(arch, vector, layer, alpha, mode, recorder=recorder,
                                       qk_source=qk_source, qk_impl=qk_impl)
            stack.enter_context(Runtime(model, ops, arch=arch, prompt_len=prompt_len))
        new, lengths, first_logits = greedy_loop(
            model, ids, mask, batch=batch, max_new_tokens=max_new_tokens, use_cache=use_cache,
            eos=eos, pad_token_id=pad_token_id, stop_at_eos=stop_at_eos, rows=steered,
            copies=copies)
    return FrozenGeneration(torch.cat([input_ids, new], dim=1), new, lengths, prompt_len,
                            first_logits, mode)


def frozen_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    vector: torch.Tensor,
    layer: int,
    alpha: float | Sequence[float],
    mode: str,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    arch: ModelArch | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> tuple[list[str], torch.Tensor]:
    """Greedy completions of already chat-formatted ``prompts`` under steering with freezing
    ``mode``, in input order, and the last-prompt-position logits [N, V] (float32, CPU).

    Prompts are batched by length (left-padded; ``qk`` / ``ov`` batches hold ``2·batch_size``
    rows); decoding stops at EOS; texts exclude the prompt and special tokens. ``alpha``: one
    float, or one per prompt (settings packed into shared batches; each row = its run alone).
    """
    if isinstance(prompts, str):
        raise SteerscopeError("prompts must be a list of strings, not one string")
    if len(prompts) == 0:
        raise SteerscopeError("no prompts to generate from", "pass a non-empty list")
    check_mode(mode)
    arch = arch if arch is not None else validate_model(model)
    alpha = as_alpha(alpha)
    per_row = alpha if isinstance(alpha, torch.Tensor) else None  # [N]
    if per_row is not None and per_row.numel() != len(prompts):
        raise SteerscopeError(f"alpha has {per_row.numel()} values for {len(prompts)} prompts: "
                              f"alpha of shape [{len(prompts)}] is expected",
                              "give one alpha per prompt, or one float")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = [len(i) for i in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    texts: list[str | None] = [None] * len(prompts)
    logits: list[torch.Tensor | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    show = progress if progress is not None else len(batches) > 1
    for idx in tqdm(batches, desc=desc or MODE_NAMES[mode], disable=not show):
        enc = encode_prompts(tokenizer, [prompts[i] for i in idx], device=device)
        row_alpha = alpha if per_row is None else per_row[idx]  # [b]
        gen = frozen_generate_ids(model, enc["input_ids"], enc["attention_mask"], vector, layer,
                                  row_alpha, mode, max_new_tokens=max_new_tokens, arch=arch,
                                  pad_token_id=pad_id)
        for row, i in enumerate(idx):
            toks = gen.new_tokens[row, : int(gen.lengths[row])].tolist()
            texts[i] = tokenizer.decode(toks, skip_special_tokens=True)
            logits[i] = gen.first_logits[row].cpu()
    return texts, torch.stack(logits)  # type: ignore[arg-type]
