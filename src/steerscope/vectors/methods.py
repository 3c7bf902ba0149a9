"""Extraction methods: pure functions from activations to a steering direction.

Every method has one signature, ``fn(positive [N, d], negative [M, d], **hp) -> [d]``, and is
called through :func:`extract` (input checks, float64 maths). Every way to make a vector is
one :class:`VectorMethod` record in :data:`VECTOR_METHODS` (extraction methods and the trained
objectives NTP and PO alike); :data:`METHODS` maps each extraction method to its function.
Add one with :func:`register_method` (or :func:`register_vector_method`): the pipeline's
``vectors.methods``, ``extract_vector`` and the CLI then accept it.

Built-in methods (``μ⁺``, ``μ⁻`` the class means; "DIM norm" = ``‖μ⁺ − μ⁻‖``):

``dim``
    Difference in means ``μ⁺ − μ⁻`` (Arditi et al. 2024).
``caa``
    Mean of paired differences ``mean_i(p_i − n_i)`` (contrastive activation addition,
    Rimsky et al. 2024). Needs N == M with row i of ``positive`` paired with row i of
    ``negative``. (Equal to ``dim`` up to rounding; kept as its own method for provenance.)
``pca``
    First principal component of the paired differences ``δ_i = p_i − n_i`` (RepE, Zou et al.
    2023). By default uncentred (top right singular vector of the [N, d] difference matrix):
    with row-aligned pairs the signal is the mean of ``δ``, which centring would remove
    (RepE shuffles the pair order, so its centring is nearly a no-op); ``center=True`` centres
    ``δ`` first (as repeng's ``pca_diff``). The sign is chosen so that the component points
    along ``mean(δ)``; it is scaled to the DIM norm by default (``scale="dim"``) so it can be
    used with α = ±1 like the DIM vector, or ``scale="unit"``.
``probe``
    L2-regularised logistic regression (positive = 1, negative = 0) on standardised features
    (per-feature mean and standard deviation of the pooled data), fitted in float64 with
    L-BFGS from zero weights (deterministic). Objective, as in scikit-learn:
    ``C · Σ_n BCE_n + ½‖w‖²``. The direction is the weight mapped back to raw activation
    space (``w / std``), signed toward the positive class, scaled to the DIM norm by default
    (``scale="dim"``) or ``scale="unit"``.

:func:`extract_vector` runs a model on two lists of formatted prompts and returns a
:class:`~steerscope.vectors.SteeringVector` (a
:class:`~steerscope.vectors.SteeringVectorSet` for a list of layers).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steerscope.errors import ShapeError, SteerscopeError
from steerscope.models.archs import validate_model
from steerscope.vectors.activations import collect_activations
from steerscope.vectors.train_config import OBJECTIVES
from steerscope.vectors.vector import SteeringVector
from steerscope.vectors.vector_set import SteeringVectorSet, check_steering_layers

MethodFn = Callable[..., torch.Tensor]
METHOD_KINDS = ("extraction", "trained")


@dataclass(frozen=True)
class VectorMethod:
    """One way to make a steering vector, as a record (like auto-circuit's ``PruneAlgo``).

    ``key``: its name in configs, the CLI and file names; ``name``: for display; ``kind``:
    ``"extraction"`` (``function(positive [N, d], negative [M, d], **hp) -> [d]``, read from
    activations; ``dim`` is one, and the pipeline's selection also picks the layer and
    position with it) or ``"trained"`` (an objective of the trainer
    :mod:`steerscope.vectors.trained`, chosen by ``TrainConfig.objective``; no ``function``).
    """

    key: str
    name: str
    kind: str = "extraction"
    function: MethodFn | None = None


#: key -> record, every vector method (extraction methods, then the trained objectives)
VECTOR_METHODS: dict[str, VectorMethod] = {}
#: key -> ``fn(positive [N, d], negative [M, d], **hp) -> [d]``, every extraction method
METHODS: dict[str, MethodFn] = {}


def register_vector_method(method: VectorMethod, *, overwrite: bool = False) -> VectorMethod:
    """Add ``method`` to :data:`VECTOR_METHODS` (and its function to :data:`METHODS` for an
    extraction method). Re-registering a key needs ``overwrite=True``."""
    if not isinstance(method.key, str) or not method.key:
        raise SteerscopeError(f"method name must be a non-empty string, got {method.key!r}")
    if method.kind not in METHOD_KINDS:
        raise SteerscopeError(f"method '{method.key}' has kind {method.kind!r}",
                              f"use one of {', '.join(METHOD_KINDS)}")
    if method.kind == "extraction" and not callable(method.function):
        raise SteerscopeError(f"method '{method.key}' is not callable")
    if method.key in VECTOR_METHODS and not overwrite:
        raise SteerscopeError(f"method '{method.key}' is already registered",
                              "pass overwrite=True to replace it")
    VECTOR_METHODS[method.key] = method
    if method.kind == "extraction":
        METHODS[method.key] = method.function
    else:
        METHODS.pop(method.key, None)
    return method


def register_method(name: str, fn: MethodFn | None = None, *, overwrite: bool = False,
                    display_name: str | None = None):
    """Register an extraction method ``fn(positive, negative, **hp) -> [d]`` under ``name``
    (a :class:`VectorMethod` of kind ``"extraction"``).

    Usable as a decorator (``@register_method("mine")``). Re-registering a name needs
    ``overwrite=True``.
    """
    if not isinstance(name, str) or not name:
        raise SteerscopeError(f"method name must be a non-empty string, got {name!r}")

    def add(f: MethodFn) -> MethodFn:
        register_vector_method(VectorMethod(name, display_name or name.upper(), "extraction", f),
                               overwrite=overwrite)
        return f

    return add if fn is None else add(fn)


def vector_method(key: str) -> VectorMethod:
    """The :class:`VectorMethod` registered under ``key`` (a one-line error naming the known
    ones otherwise)."""
    if key not in VECTOR_METHODS:
        raise SteerscopeError(f"unknown vector method {key!r}",
                              f"use one of {', '.join(VECTOR_METHODS)} or register_method")
    return VECTOR_METHODS[key]


def method_keys(kind: str) -> tuple[str, ...]:
    """The keys of the registered methods of ``kind`` (``"extraction"`` or ``"trained"``), in
    registration order."""
    return tuple(k for k, m in VECTOR_METHODS.items() if m.kind == kind)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _paired(positive: torch.Tensor, negative: torch.Tensor, method: str) -> torch.Tensor:
    """Row-aligned differences [N, d] float64; needs N == M."""
    if positive.shape[0] != negative.shape[0]:
        raise SteerscopeError(
            f"method '{method}' needs paired examples but got {positive.shape[0]} positive and "
            f"{negative.shape[0]} negative",
            "pass as many positive as negative rows, row i of each forming a pair")
    return positive.double() - negative.double()  # [N, d]


def _mean_diff(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    return positive.double().mean(0) - negative.double().mean(0)  # [d] float64


def _orient_and_scale(direction: torch.Tensor, reference: torch.Tensor, scale: str,
                      method: str) -> torch.Tensor:
    """Unit ``direction`` signed to agree with ``reference``, scaled per ``scale``."""
    if scale not in ("dim", "unit"):
        raise SteerscopeError(f"scale must be 'dim' or 'unit', got {scale!r}",
                              "use scale='dim' (DIM norm) or scale='unit'")
    n = direction.norm()
    if not torch.isfinite(n) or float(n) == 0.0:
        raise SteerscopeError(f"method '{method}' found no direction (zero or non-finite)",
                              "check that the two sets of activations differ")
    if scale == "dim" and float(reference.norm()) == 0.0:
        raise SteerscopeError(f"method '{method}': the two classes have the same mean, so the "
                              "DIM norm is 0", "pass scale='unit' or activations that differ")
    direction = direction / n
    if float(direction @ reference) < 0:
        direction = -direction
    if scale == "dim":
        direction = direction * reference.norm()
    return direction  # [d] float64


# ---------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------
@register_method("dim")
def dim_direction(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Difference in means ``μ⁺ − μ⁻`` [d], float64."""
    return _mean_diff(positive, negative)


@register_method("caa")
def caa_direction(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean of the paired differences ``mean_i(p_i − n_i)`` [d], float64 (N == M)."""
    return _paired(positive, negative, "caa").mean(0)


@register_method("pca")
def pca_direction(positive: torch.Tensor, negative: torch.Tensor, *, center: bool = False,
                  scale: str = "dim") -> torch.Tensor:
    """First principal component of the paired differences [d], float64 (N == M).

    Uncentred unless ``center``; signed along the mean difference; scaled to the DIM norm
    (``scale="dim"``) or unit length (``scale="unit"``).
    """
    diffs = _paired(positive, negative, "pca")  # [N, d]
    reference = diffs.mean(0)  # [d] (= μ⁺ − μ⁻)
    x = diffs - reference if center else diffs  # [N, d]
    if float(x.abs().max()) == 0.0:
        raise SteerscopeError("method 'pca' found no direction: every paired difference is 0",
                              "check that the two sets of activations differ")
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh [min(N, d), d]
    return _orient_and_scale(vh[0], reference, scale, "pca")


@register_method("probe")
def probe_direction(positive: torch.Tensor, negative: torch.Tensor, *, C: float = 1.0,
                    max_iter: int = 500, tol: float = 1e-10, scale: str = "dim") -> torch.Tensor:
    """Logistic-regression direction [d], float64 (positive = class 1).

    Minimises ``C · Σ_n BCE(σ(w·z_n + b), y_n) + ½‖w‖²`` over standardised features
    ``z = (x − mean) / std`` with L-BFGS (strong Wolfe line search) from zero; returns
    ``w / std`` (the weight in raw activation space) signed toward the positive class and
    scaled to the DIM norm (``scale="dim"``) or unit length.
    """
    if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
        raise SteerscopeError(f"probe C must be a positive number, got {C!r}",
                              "pass e.g. C=1.0 (smaller = stronger regularisation)")
    x = torch.cat([positive.double(), negative.double()])  # [N + M, d]
    y = torch.cat([torch.ones(positive.shape[0], dtype=torch.float64),
                   torch.zeros(negative.shape[0], dtype=torch.float64)])  # [N + M]
    mu = x.mean(0)  # [d]
    sd = x.std(0, unbiased=False)  # [d]
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    z = (x - mu) / sd  # [N + M, d]
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)  # [d]
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(max_iter), tolerance_grad=tol,
                            tolerance_change=tol * 1e-2, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = z @ w + b  # [N + M]
        loss = C * torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, reduction="sum") + 0.5 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    direction = w.detach() / sd  # [d] raw-space weight
    reference = _mean_diff(positive, negative)  # [d]
    # signed along μ⁺ − μ⁻: the positive class projects higher on average
    return _orient_and_scale(direction, reference, scale, "probe")


# the trained objectives (NTP, PO): records without a function (the trainer implements them)
for _objective in OBJECTIVES:
    register_vector_method(VectorMethod(_objective, _objective.upper(), "trained"))


# ---------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------
def _check_acts(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise SteerscopeError(f"{what} activations must be a torch.Tensor, got "
                              f"{type(t).__name__}")
    if t.ndim != 2:
        raise ShapeError(f"{what} activations must be [N, d], got shape {tuple(t.shape)}",
                         "select one layer and one position first")
    if t.shape[0] == 0:
        raise SteerscopeError(f"no {what} activations (0 rows)", "pass at least one example")
    if not torch.isfinite(t).all():
        raise SteerscopeError(f"{what} activations contain NaN or infinite values")
    return t.detach().cpu()


def extract(method: str, positive: torch.Tensor, negative: torch.Tensor, **hp) -> torch.Tensor:
    """The steering direction [d] (float64, CPU) of ``method`` from activations.

    ``positive`` [N, d] and ``negative`` [M, d]: activations of the two classes at one layer
    and position (the vector points from negative toward positive). ``hp``: the method's
    hyperparameters.
    """
    if method not in METHODS:
        raise SteerscopeError(f"unknown extraction method {method!r}",
                              f"use one of {', '.join(sorted(METHODS))} or register_method")
    positive = _check_acts(positive, "positive")
    negative = _check_acts(negative, "negative")
    if positive.shape[1] != negative.shape[1]:
        raise ShapeError(f"positive activations have width {positive.shape[1]} but negative "
                         f"ones {negative.shape[1]}", "take both from the same model and layer")
    fn = METHODS[method]
    try:
        inspect.signature(fn).bind(positive, negative, **hp)
    except TypeError as exc:
        raise SteerscopeError(f"method '{method}' does not take hyperparameters "
                              f"{sorted(hp)} ({exc})",
                              f"see help(steerscope.vectors.methods.METHODS['{method}'])") from exc
    out = fn(positive, negative, **hp)
    if not isinstance(out, torch.Tensor) or out.shape != (positive.shape[1],):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ShapeError(f"method '{method}' returned {shape}, expected [{positive.shape[1]}]")
    return out.double()  # [d] float64


def _jsonable(hp: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in hp.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        else:
            out[k] = repr(v)
    return out


def extract_vector(
    model,
    tokenizer,
    positive_prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    method: str,
    layer: int | Sequence[int],
    position: int = -1,
    batch_size: int = 16,
    model_id: str | None = None,
    revision: str | None = None,
    arch=None,
    progress: bool | None = None,
    **hp,
) -> SteeringVector | SteeringVectorSet:
    """Extract a steering vector with ``method`` from two lists of **formatted** prompts.

    Reads the residual entering block ``layer`` at prompt position ``position`` (negative,
    from the prompt end) for every prompt (:func:`collect_activations`), then calls
    :func:`extract`; the vector points from ``negative_prompts`` toward ``positive_prompts``.
    ``layer`` a list ``[l1, l2, ...]``: a :class:`~steerscope.vectors.SteeringVectorSet`, each
    layer's direction extracted on its own from that layer's activations at ``position`` (one
    forward pass per batch reads every layer).
    """
    if method not in METHODS:
        raise SteerscopeError(f"unknown extraction method {method!r}",
                              f"use one of {', '.join(sorted(METHODS))} or register_method")
    multi = isinstance(layer, (list, tuple))
    if multi:
        arch = arch if arch is not None else validate_model(model)
        layers = check_steering_layers(list(layer), arch.n_layers, "extract_vector layers")
    else:
        layers = [layer]
    kw = dict(layers=layers, positions=[position], batch_size=batch_size, arch=arch,
              progress=progress)
    pos = collect_activations(model, tokenizer, positive_prompts, **kw)[:, :, 0]  # [N, nL, d]
    neg = collect_activations(model, tokenizer, negative_prompts, **kw)[:, :, 0]  # [M, nL, d]
    vecs = [extract(method, pos[:, j], neg[:, j], **hp) for j in range(len(layers))]  # [d] each
    fields = dict(method=method, model_id=model_id, revision=revision, position=int(position),
                  hyperparameters=_jsonable(hp),
                  metadata={"n_positive": int(pos.shape[0]), "n_negative": int(neg.shape[0])})
    if multi:
        return SteeringVectorSet(vector=torch.stack(vecs), layers=layers, **fields)  # [nL, d]
    return SteeringVector(vector=vecs[0], layer=int(layer), **fields)


__all__ = [
    "METHODS",
    "METHOD_KINDS",
    "VECTOR_METHODS",
    "VectorMethod",
    "method_keys",
    "register_vector_method",
    "vector_method",
    "caa_direction",
    "dim_direction",
    "extract",
    "extract_vector",
    "pca_direction",
    "probe_direction",
    "register_method",
]
