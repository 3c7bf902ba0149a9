"""The intervention runtime: attaches interventions to an unmodified Hugging Face model.

``with Runtime(model, [steer(s, 12, -1.0), Capture("pattern", 14)]) as rt: model(...)``

Residual, MLP, projection and per-head points are reached with PyTorch module hooks on the
modules named by the architecture table. Attention probabilities are reached through a
function registered in transformers' attention interface: while a runtime is attached the
model's ``_attn_implementation`` is switched from ``X`` to ``steerscope_X``, which calls
``X`` unchanged unless a ``pattern`` intervention is active at that layer (so a run with no
intervention gives exactly the plain model's logits). At a layer with a ``pattern``
intervention the probabilities are computed by the model's own eager attention (soft-caps,
sliding windows and scaling included) and the output is ``A · V`` with the (possibly replaced)
probabilities ``A``.

The step context (which absolute positions a forward call covers, the prompt length, the
left padding of each row) is read by a pre-hook on the decoder stack; see
:mod:`steerscope.runtime.scope` for the position contract.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from steerscope.errors import SteerscopeError
from steerscope.models.archs import ModelArch, validate_model
from steerscope.runtime.interventions import Capture, Intervention
from steerscope.runtime.scope import StepContext

_PREFIX = "steerscope_"
_PATTERN_ATTR = "_steerscope_pattern_ops"
_STATE_ATTR = "_steerscope_runtimes"
_SWAPPED_ATTR = "_steerscope_swapped_attention"


# ---------------------------------------------------------------------------------------
# attention interface
# ---------------------------------------------------------------------------------------
def _module_eager(module: nn.Module):
    """The eager attention function of the module's own modeling file."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise SteerscopeError(
            f"{type(module).__name__} has no eager attention function",
            "attention-pattern interventions need a model with eager attention",
        )
    return fn


def _additive_mask(mask, q_len: int, k_len: int, dtype, device) -> torch.Tensor:
    """Any transformers mask format → an additive float mask [B|1, 1, q_len, k_len]."""
    if mask is None:  # sdpa skipped the mask: plain causal over the last q_len keys
        q = torch.arange(q_len, device=device).view(-1, 1) + (k_len - q_len)
        allowed = torch.arange(k_len, device=device).view(1, -1) <= q
        mask = allowed.view(1, 1, q_len, k_len)
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    return mask[..., :k_len]


def _make_attention(base_name: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        ops = getattr(module, _PATTERN_ATTR, None)
        if not ops:
            base = ALL_ATTENTION_FUNCTIONS.get_interface(base_name, _module_eager(module))
            return base(module, query, key, value, attention_mask, **kwargs)
        # query [B, H, T, dh]; key/value [B, G, K, dh]
        mask = _additive_mask(attention_mask, query.shape[2], key.shape[2], query.dtype,
                              query.device)
        _, probs = _module_eager(module)(module, query, key, value, mask, **kwargs)
        for op, runtime in ops:
            probs = op.apply(probs, runtime.context)
        groups = query.shape[1] // value.shape[1]
        v = value.repeat_interleave(groups, dim=1)  # [B, H, K, dh]
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).contiguous()  # [B, T, H, dh]
        return out, probs

    return attention


def _registered_name(base_name: str) -> str:
    """Register (once) the steerscope wrapper of attention implementation ``base_name``."""
    name = _PREFIX + base_name
    if name not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        ALL_ATTENTION_FUNCTIONS.register(name, _make_attention(base_name))
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(base_name)
        if mask_fn is None:
            raise SteerscopeError(
                f"attention implementation '{base_name}' has no mask function",
                "load the model with attn_implementation='sdpa' or 'eager'",
            )
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask_fn)
    return name


# ---------------------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------------------
class Runtime:
    """Context manager that attaches a list of interventions to a model.

    Several runtimes may be attached to one model at once (nested ``with``); their
    interventions run outer first. Interventions can be added before entering with
    :meth:`add`; an item of ``interventions`` may itself be a list of interventions (what
    a multi-layer vector's ``intervention`` returns), expanded in order. ``prompt_len`` fixes the padded prompt length P for the position contract;
    by default a forward call that starts at position 0 sets P to its own length (right for
    prefill + KV-cached decoding; generation by full re-computation must pass P).
    """

    def __init__(
        self,
        model: nn.Module,
        interventions: Iterable[Intervention] = (),
        *,
        arch: ModelArch | None = None,
        prompt_len: int | None = None,
    ):
        self.model = model
        self.arch = arch if arch is not None else validate_model(model)
        self.interventions: list[Intervention] = []
        self.prompt_len = prompt_len
        self._auto_prompt_len: int | None = None
        self._handles: list = []
        self._ctx: StepContext | None = None
        self._next_start = 0
        self._pattern_modules: list[nn.Module] = []
        self._active = False
        self.rows: torch.Tensor | None = None  # [B] setting of each batch row (per-row ops)
        self.frame: RowFrame | None = None  # positions set by a compacting loop
        for op in interventions:
            # a list inside the list (a multi-layer vector's interventions) is expanded
            for one in (op if isinstance(op, (list, tuple)) else (op,)):
                self.add(one)

    # public ------------------------------------------------------------------------------
    def add(self, op: Intervention) -> Intervention:
        """Add an intervention (before entering); returns it (handy for captures)."""
        if self._active:
            raise SteerscopeError("cannot add interventions to an attached runtime",
                                  "add them before entering the 'with' block")
        if not isinstance(op, Intervention):
            raise SteerscopeError(f"{op!r} is not an Intervention")
        op.check(self.arch)
        self.interventions.append(op)
        return op

    def captures(self) -> list[Capture]:
        return [op for op in self.interventions if isinstance(op, Capture)]

    @property
    def context(self) -> StepContext:
        """The step context of the current forward call."""
        if self._ctx is None:
            raise SteerscopeError("no forward call is in progress")
        return self._ctx

    def reset(self, prompt_len: int | None = None) -> None:
        """Forget the position state (start a new sequence)."""
        self.prompt_len = prompt_len
        self._auto_prompt_len = None
        self._next_start = 0

    def __enter__(self) -> Runtime:
        if self._active:
            raise SteerscopeError("this runtime is already attached")
        self._active = True
        try:
            self._attach()
        except Exception:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()

    # hooks --------------------------------------------------------------------------------
    def _attach(self) -> None:
        arch = self.arch
        self._handles.append(arch.base.register_forward_pre_hook(self._on_model_call,
                                                                 with_kwargs=True))
        by_site: dict[tuple[str, int], list[Intervention]] = defaultdict(list)
        for op in self.interventions:
            by_site[(op.point, op.layer)].append(op)
        for (point, layer), ops in by_site.items():
            self._install(point, layer, ops)
        self.model.__dict__.setdefault(_STATE_ATTR, []).append(self)

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module in self._pattern_modules:
            others = [(op, rt) for op, rt in getattr(module, _PATTERN_ATTR, []) if rt is not self]
            if others:
                setattr(module, _PATTERN_ATTR, others)
            else:
                module.__dict__.pop(_PATTERN_ATTR, None)
        self._pattern_modules.clear()
        stack = self.model.__dict__.get(_STATE_ATTR, [])
        if self in stack:
            stack.remove(self)
        if not stack:  # the last runtime restores the attention implementation
            for config, name in self.model.__dict__.pop(_SWAPPED_ATTR, []):
                config._attn_implementation = name
        self._ctx = None
        self._active = False

    def _on_model_call(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        batch, length = int(x.shape[0]), int(x.shape[1])
        if self.frame is not None:
            f = self.frame
            self._ctx = StepContext(f.start, length, batch, f.prompt_len, f.pad_left, x.device,
                                    self.rows)
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        fresh = cache is None or cache.get_seq_length() == 0
        start = 0 if fresh else self._next_start
        mask = kwargs.get("attention_mask")
        if fresh:
            if isinstance(mask, torch.Tensor) and mask.ndim == 2:
                pad = (mask == 0).long().cumprod(-1).sum(-1)  # leading zeros per row
            else:
                pad = torch.zeros(batch, dtype=torch.long)
            self._pad_left = pad.to(x.device)
            self._auto_prompt_len = length
        prompt_len = self.prompt_len if self.prompt_len is not None else self._auto_prompt_len
        self._ctx = StepContext(start, length, batch, prompt_len, self._pad_left, x.device,
                                self.rows)
        self._next_start = start + length
        return None

    def _run(self, ops, x):
        ctx = self._ctx
        if ctx is None:
            raise SteerscopeError("hook fired outside a model call",
                                  "call the model itself (the CausalLM), not a submodule")
        for op in ops:
            x = op.apply(x, ctx)
        return x

    def _install(self, point: str, layer: int, ops: list[Intervention]) -> None:
        arch = self.arch
        reg = self._handles.append
        run = self._run

        def pre_hook_first_arg(name):
            def hook(module, args, kwargs):
                if args:
                    return (run(ops, args[0]), *args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs[name] = run(ops, kwargs[name])
                return args, kwargs
            return hook

        def out_hook(module, args, output):
            if isinstance(output, tuple):
                return (run(ops, output[0]), *output[1:])
            return run(ops, output)

        def head_hook(n_heads: int, pre: bool, arg: str = "input"):
            def reshape_run(t):
                b, s, _ = t.shape
                return run(ops, t.view(b, s, n_heads, -1)).reshape(b, s, -1)
            if pre:
                def hook(module, args, kwargs):
                    if args:
                        return (reshape_run(args[0]), *args[1:]), kwargs
                    kwargs = dict(kwargs)
                    kwargs[arg] = reshape_run(kwargs[arg])
                    return args, kwargs
                return hook
            return lambda module, args, output: reshape_run(output)

        module, site = arch.hook_module(point, layer)  # the architecture row's hook site
        if site.kind == "input":
            reg(module.register_forward_pre_hook(pre_hook_first_arg(site.arg), with_kwargs=True))
        elif site.kind == "output":
            reg(module.register_forward_hook(out_hook))
        elif site.kind == "heads_output":
            reg(module.register_forward_hook(head_hook(getattr(arch, site.heads), pre=False)))
        elif site.kind == "heads_input":
            reg(module.register_forward_pre_hook(
                head_hook(getattr(arch, site.heads), pre=True, arg=site.arg), with_kwargs=True))
        elif site.kind == "pattern":
            self._swap_attention(module)
            existing = getattr(module, _PATTERN_ATTR, [])
            setattr(module, _PATTERN_ATTR, existing + [(op, self) for op in ops])
            self._pattern_modules.append(module)
        else:
            raise SteerscopeError(f"unknown hook site kind '{site.kind}' for point '{point}'",
                                  "use input, output, heads_input, heads_output or pattern")

    def _swap_attention(self, attn: nn.Module) -> None:
        config = attn.config
        current = config._attn_implementation or "eager"
        if current.startswith(_PREFIX):
            return
        config._attn_implementation = _registered_name(current)
        self.model.__dict__.setdefault(_SWAPPED_ATTR, []).append((config, current))


def attached_runtimes(model: nn.Module) -> list[Runtime]:
    """The runtimes currently attached to ``model`` (outermost first)."""
    return list(model.__dict__.get(_STATE_ATTR, []))


@dataclass
class RowFrame:
    """The positions of the next forward call, set by a loop that moves rows in and out of
    the batch (compacted generation): ``start`` (the first query position in the batch's
    frame), per-row ``prompt_len`` [B] (where each row's prompt ends in the frame, or one
    int) and ``pad_left`` [B] (where its first real token is)."""

    start: int
    prompt_len: int | torch.Tensor
    pad_left: torch.Tensor  # [B] long


@contextmanager
def batch_rows(model: nn.Module, rows: torch.Tensor | None,
               frame: RowFrame | None = None) -> Iterator[None]:
    """Within the block, the forward calls of ``model`` are batches whose row ``i`` is setting
    ``rows[i]`` of every attached per-row intervention ([B] long; None: row i is setting i);
    ``frame`` (optional) fixes their positions instead of the runtime's own bookkeeping."""
    runtimes = attached_runtimes(model)
    saved = [(rt.rows, rt.frame) for rt in runtimes]
    for rt in runtimes:
        rt.rows, rt.frame = rows, frame
    try:
        yield
    finally:
        for rt, (r, f) in zip(runtimes, saved):
            rt.rows, rt.frame = r, f
