"""Learned steering vectors: NTP (language modelling) and PO (one-directional RePS), paper §3.

The losses and teacher forcing are in :mod:`steerscope.vectors.teacher_forcing`, the
hyperparameters, conventions and presets in :mod:`steerscope.vectors.train_config`, the
rankings in :mod:`steerscope.vectors.selection`.

Training: ``v`` = randn·init_scale (seeded) [d_model], AdamW (weight decay 0), a linear LR
decay to 0 (``lr_schedule``), gradient-norm clipping, ``epochs`` seeded shuffles of the
training set; each example is steered with ``c = sign·f``, ``f`` drawn per example and step
from ``config.factors``. The model's own parameters are frozen.

Validation (deterministic, on ``val_data``): the objective's loss (NTP: mean over examples of
−log p(y_w)/|y_w|; PO: the batch loss over all examples) and the token-match rate (argmax of
the steered teacher-forced logits = winner token; ``match`` pooled over tokens,
``match_mean`` averaged per example). ``validation="deployed"``: the vector at the scale it is
used at, rescaled to the DIM norm with α = ±1 (``c = sign·rescale_to/‖v‖``);
``"mean_factor"``: the raw vector at ``c = sign·f_val``.

Epoch choice (``keep``): ``"best_epoch"`` validates after every epoch and keeps the best
epoch by ``ranking`` (:func:`steerscope.vectors.selection.best_index`); ``"last_epoch"``
validates the final vector only. :func:`train_grid` then picks the best run by the same
ranking over each run's kept epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from steerscope.errors import SteerscopeError
from steerscope.models.archs import validate_model
from steerscope.vectors.selection import best_index, selection_key
from steerscope.vectors.teacher_forcing import (
    ResponseLogProbs,
    TeacherForcedBatch,
    beta_plus,
    collate_rows,
    encode_rows,
    encode_teacher_forced,
    ntp_loss,
    pad_token_id,
    po_loss,
    response_logprobs,
    score_responses,
    steering_edit,
)
from steerscope.vectors.train_config import (
    OBJECTIVES,
    PAPER_CONVENTIONS,
    PAPER_FACTORS,
    STEERSCOPE_CONVENTIONS,
    TrainConfig,
    lr_factors,
    paper_grid,
    quick_grid,
)
from steerscope.vectors.train_validation import (
    check_preference_data,
    encode_data,
    validate_vector,
)
from steerscope.vectors.training_data import PreferenceData
from steerscope.vectors.vector import SteeringVector


@dataclass
class TrainResult:
    """A trained vector, its config, the per-step history and the validation metrics of the
    kept epoch.

    ``history``: one dict per optimiser step (``step``, ``epoch``, ``loss``, ``lr``,
    ``grad_norm``); ``epochs``: one validation record per validated epoch (``epoch``,
    ``val_loss``, ``val_match``, ``val_match_mean``, ``coef``, ``trained_norm``,
    ``selected``); ``epoch_vectors``: the raw (unrescaled) vector after each epoch [d_model];
    ``best_epoch``: the kept epoch (0-based); ``grid``: for :func:`train_grid`, one summary
    per config (``index``, ``config``, ``val_loss``, ``val_match``, ``val_match_mean``,
    ``best_epoch``, ``final_loss``, ``selected``).
    """

    vector: SteeringVector
    config: TrainConfig
    history: list[dict[str, float]]
    val_loss: float | None = None
    val_match: float | None = None
    grid: list[dict[str, Any]] = field(default_factory=list)
    val_match_mean: float | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    epoch_vectors: list[torch.Tensor] = field(default_factory=list)
    best_epoch: int | None = None

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
@contextmanager
def _frozen(model):
    """Model parameters without gradients and the model in eval mode, restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _nan_error(config: TrainConfig, step: int, what: str = "loss") -> SteerscopeError:
    return SteerscopeError(
        f"{config.objective.upper()} training {what} became NaN or infinite at step {step} "
        f"(lr={config.lr})",
        f"use a lower learning rate than {config.lr:g} (the paper's grid: 0.01, 0.04)",
    )


def _curve_summary(losses: list[float]) -> dict[str, float]:
    q = max(1, len(losses) // 4)
    return {
        "steps": len(losses),
        "first": losses[0],
        "last": losses[-1],
        "min": min(losses),
        "first_quarter_mean": sum(losses[:q]) / q,
        "last_quarter_mean": sum(losses[-q:]) / q,
    }


def _ranking_match(record: dict[str, Any], ranking: str) -> float | None:
    """The match rate a ranking uses: per-example mean (released) or pooled (ours)."""
    return record.get("val_match_mean" if ranking == "released" else "val_match")


def _check_norm(rescale_to) -> None:
    if rescale_to is not None and not (math.isfinite(rescale_to) and rescale_to > 0):
        raise SteerscopeError(f"rescale_to must be a positive norm, got {rescale_to!r}",
                              "pass the DIM vector's norm")


def _train(model, tokenizer, data, *, layer, config, val_data, rescale_to, model_id,
           eval_batch_size, progress, cache) -> TrainResult:
    if not isinstance(config, TrainConfig):
        raise SteerscopeError(f"config must be a TrainConfig, got {type(config).__name__}")
    examples = check_preference_data(data, "training data")
    val_examples = check_preference_data(val_data, "validation data") if val_data is not None else None
    _check_norm(rescale_to)
    if val_examples is not None and config.validation == "deployed" and rescale_to is None:
        raise SteerscopeError("validation at the deployed scale needs the DIM norm",
                              "pass rescale_to (the DIM norm) or use validation='mean_factor'")
    arch = validate_model(model)
    arch.check_layer(layer)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    every_epoch = val_examples is not None and config.keep == "best_epoch"

    with _frozen(model):
        enc = encode_data(model, tokenizer, data, config, "training data", arch,
                           eval_batch_size, cache)
        val_enc = None
        if val_examples is not None:
            val_enc = encode_data(model, tokenizer, val_data, config, "validation data",
                                   arch, eval_batch_size, cache)
        beta_all = (beta_plus(enc.ref_w, enc.ref_l, config.phi)
                    if config.objective == "po" else None)  # [N]

        g = torch.Generator().manual_seed(config.seed)
        v = (torch.randn(arch.d_model, generator=g) * config.init_scale).to(device)  # [d]
        v.requires_grad_(True)
        opt = torch.optim.AdamW([v], lr=config.lr, weight_decay=config.weight_decay)
        n = len(examples)
        per_epoch = math.ceil(n / config.batch_size)
        schedule = lr_factors(config, per_epoch)  # [epochs·per_epoch]
        factors = torch.tensor(config.factors)  # [F]
        history: list[dict[str, float]] = []
        records: list[dict[str, Any]] = []
        snapshots: list[torch.Tensor] = []
        show = progress if progress is not None else len(schedule) > 1
        bar = tqdm(total=len(schedule), desc=f"training {config.objective} (layer {layer})",
                   disable=not show)
        step = 0
        try:
            for epoch in range(config.epochs):
                perm = torch.randperm(n, generator=g)  # [N]
                for i in range(0, n, config.batch_size):
                    idx = perm[i:i + config.batch_size].tolist()
                    b = len(idx)
                    f = factors[torch.randint(len(factors), (b,), generator=g)]  # [B]
                    coef = (enc.signs[idx] * f).to(device)  # [B]
                    if config.objective == "ntp":
                        batch = collate_rows([enc.winners[j] for j in idx], pad, device)
                        r = response_logprobs(model, batch, layer=layer, vector=v, coef=coef,
                                              arch=arch)
                        loss = ntp_loss(r.logprob, r.n_tokens)
                    else:
                        rows = [enc.winners[j] for j in idx] + [enc.losers[j] for j in idx]
                        batch = collate_rows(rows, pad, device)  # winners then losers: [2B, T]
                        r = response_logprobs(model, batch, layer=layer, vector=v,
                                              coef=torch.cat([coef, coef]), arch=arch)
                        loss = po_loss(r.logprob[:b], r.n_tokens[:b], r.logprob[b:],
                                       r.n_tokens[b:], beta_all[idx].to(device))
                    if not torch.isfinite(loss):
                        raise _nan_error(config, step)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_([v], config.grad_clip)
                    if not torch.isfinite(grad_norm):
                        raise _nan_error(config, step, "gradient")
                    lr = config.lr * schedule[step]
                    for group in opt.param_groups:
                        group["lr"] = lr
                    try:
                        opt.step()
                    except RuntimeError as exc:  # the step itself overflows float32
                        if "overflow" not in str(exc):
                            raise
                        raise _nan_error(config, step, "update") from exc
                    if not torch.isfinite(v).all():
                        raise _nan_error(config, step, "vector")
                    history.append({"step": step, "epoch": epoch,
                                    "loss": float(loss.detach()), "lr": lr,
                                    "grad_norm": float(grad_norm)})
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                snapshots.append(v.detach().float().cpu().clone())  # [d]
                if every_epoch or (val_enc is not None and epoch == config.epochs - 1):
                    rec = validate_vector(model, val_enc, v.detach(), config, layer, pad, arch,
                                    eval_batch_size, rescale_to)
                    records.append({"epoch": epoch, **rec})
        finally:
            bar.close()

    best = config.epochs - 1
    chosen: dict[str, Any] = {}
    if records:
        k = best_index([r["val_loss"] for r in records],
                       [_ranking_match(r, config.ranking) for r in records],
                       objective=config.objective, ranking=config.ranking)
        chosen = records[k]
        best = chosen["epoch"]
        for r in records:
            r["selected"] = r is chosen
    learned = snapshots[best]  # [d]
    losses = [h["loss"] for h in history]
    meta: dict[str, Any] = {
        "objective": config.objective,
        "loss_curve": _curve_summary(losses),
        "val": {"loss": chosen.get("val_loss"), "match": chosen.get("val_match"),
                "match_mean": chosen.get("val_match_mean"), "coef": chosen.get("coef"),
                "validation": config.validation,
                "factor": (config.validation_factor
                           if config.validation == "mean_factor" else None),
                "n": len(val_examples) if val_examples is not None else 0},
        "best_epoch": best,
        "epoch_choice": (config.keep if val_examples is not None
                         else "last_epoch (no validation data)"),
        "epochs_validated": records,
        "n_train": n,
        "train_counts": data.counts(),
        "trained_norm": float(learned.norm()),
    }
    if beta_all is not None:
        meta["beta_plus"] = {"mean": float(beta_all.mean()), "max": float(beta_all.max()),
                             "fraction_above_1": float((beta_all > 1).float().mean())}
    sv = SteeringVector(learned, layer, method=config.objective, model_id=model_id,
                        position=None, hyperparameters=config.to_dict(), metadata=meta)
    if rescale_to is not None:
        sv = sv.scaled_to(float(rescale_to))
    return TrainResult(sv, config, history, chosen.get("val_loss"), chosen.get("val_match"),
                       val_match_mean=chosen.get("val_match_mean"), epochs=records,
                       epoch_vectors=snapshots, best_epoch=best)


def train_vector(model, tokenizer, data: PreferenceData, *, layer: int,
                 config: TrainConfig | None = None, val_data: PreferenceData | None = None,
                 rescale_to: float | None = None, model_id: str | None = None,
                 eval_batch_size: int = 16, progress: bool | None = None) -> TrainResult:
    """Train one NTP or PO steering vector at ``layer`` on ``data`` (see the module
    docstring); validate on ``val_data`` when given and keep the epoch ``config.keep`` says
    (the last one without ``val_data``); rescale the result to L2 norm ``rescale_to`` (the
    DIM norm) when given, which ``validation="deployed"`` also validates at."""
    return _train(model, tokenizer, data, layer=layer, config=config or TrainConfig(),
                  val_data=val_data, rescale_to=rescale_to, model_id=model_id,
                  eval_batch_size=eval_batch_size, progress=progress, cache={})


def train_grid(model, tokenizer, data: PreferenceData, *, layer: int,
               configs: Sequence[TrainConfig], val_data: PreferenceData,
               rescale_to: float | None = None, model_id: str | None = None,
               eval_batch_size: int = 16, progress: bool | None = None) -> TrainResult:
    """Train one vector per config and return the best on ``val_data`` by the configs'
    ranking (each run contributes its kept epoch), rescaled to ``rescale_to`` when given.
    All configs must share one objective and one ranking; ``result.grid`` (and the vector's
    ``metadata["grid"]``) summarise every run."""
    configs = list(configs)
    if not configs:
        raise SteerscopeError("no training configs given", "pass at least one TrainConfig")
    for c in configs:
        if not isinstance(c, TrainConfig):
            raise SteerscopeError(f"configs must be TrainConfig objects, got {type(c).__name__}")
    objectives = {c.objective for c in configs}
    if len(objectives) > 1:
        raise SteerscopeError(f"a grid mixes objectives {sorted(objectives)}",
                              "train NTP and PO grids separately")
    rankings = {c.ranking for c in configs}
    if len(rankings) > 1:
        raise SteerscopeError(f"a grid mixes rankings {sorted(rankings)}",
                              "give every config of a grid the same ranking")
    if val_data is None:
        raise SteerscopeError("grid selection needs validation data",
                              "pass val_data (e.g. from PreferenceData.split)")
    _check_norm(rescale_to)
    ranking = configs[0].ranking
    cache: dict = {}
    results = [
        _train(model, tokenizer, data, layer=layer, config=c, val_data=val_data,
               rescale_to=rescale_to, model_id=model_id, eval_batch_size=eval_batch_size,
               progress=progress, cache=cache)
        for c in configs
    ]
    matches = [r.val_match_mean if ranking == "released" else r.val_match for r in results]
    best_i = best_index([r.val_loss for r in results], matches,
                        objective=configs[0].objective, ranking=ranking)
    grid = [{"index": i, "config": r.config.to_dict(), "val_loss": r.val_loss,
             "val_match": r.val_match, "val_match_mean": r.val_match_mean,
             "best_epoch": r.best_epoch, "final_loss": r.losses[-1], "selected": i == best_i}
            for i, r in enumerate(results)]
    best = results[best_i]
    sv = best.vector
    sv = sv.with_vector(sv.vector, metadata={**sv.metadata, "grid": grid,
                                             "selection": f"ranking={ranking}"})
    return replace(best, vector=sv, grid=grid)


__all__ = [
    "OBJECTIVES",
    "PAPER_FACTORS",
    "PAPER_CONVENTIONS",
    "STEERSCOPE_CONVENTIONS",
    "TrainConfig",
    "TrainResult",
    "TeacherForcedBatch",
    "ResponseLogProbs",
    "lr_factors",
    "paper_grid",
    "quick_grid",
    "encode_teacher_forced",
    "encode_rows",
    "steering_edit",
    "response_logprobs",
    "score_responses",
    "ntp_loss",
    "po_loss",
    "beta_plus",
    "train_vector",
    "train_grid",
    "selection_key",
]
