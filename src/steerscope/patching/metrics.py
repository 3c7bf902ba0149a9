"""Patching metrics over the response positions of one teacher-forced sequence.

The clean run is the steered model (``H + α·S``), the corrupt run the unsteered model (``H``),
on the same tokens. A metric maps the logits of a (patched) run at its positions to a scalar:

- :class:`LogitDiff`: ``m = mean_p logit_p(y_p) − logit_p(y*_p)`` with ``y`` the clean greedy
  token and ``y*`` the corrupt greedy token at position ``p``; positions with ``y = y*`` are
  masked out.
- :class:`DirectionalKL`: ``m = mean_p KL(P_corrupt ‖ P_patched) − KL(P_clean ‖ P_patched)``;
  positions whose ``KL(P_clean ‖ P_corrupt) < τ`` are masked out.

Both are ``m(clean) > m(corrupt)``-oriented: patching toward the steered run raises ``m``.
With the reverse roles (clean = unsteered) the metric is built in the forward roles, so the
masked positions are the same, and then ``swapped()``; both metrics are antisymmetric under
the swap (``m_reverse = −m``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerscope.errors import SteerscopeError

METRICS = ("logit_diff", "kl")
CHUNK = 64  # positions per block where a metric is evaluated block by block (bounded memory)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class LogitDiff:
    """``positions`` [N] long, ``y`` / ``y_star`` [N] long."""

    positions: torch.Tensor
    y: torch.Tensor
    y_star: torch.Tensor

    @property
    def weight(self) -> int:
        return int(self.positions.numel())

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [1, N, V] at ``positions`` → scalar."""
        lg = _wide(logits[0])
        idx = torch.arange(lg.shape[0], device=lg.device)
        return (lg[idx, self.y.to(lg.device)] - lg[idx, self.y_star.to(lg.device)]).mean()

    def swapped(self) -> LogitDiff:
        """The metric with the clean and corrupt runs' roles swapped (same positions)."""
        return LogitDiff(self.positions, self.y_star, self.y)

    def part(self, i: int, j: int) -> LogitDiff:
        """The metric restricted to its positions ``i:j`` (the mean over those)."""
        return LogitDiff(self.positions[i:j], self.y[i:j], self.y_star[i:j])


@dataclass
class DirectionalKL:
    """``positions`` [N]; ``logp_clean`` / ``logp_corrupt`` [N, V] log-probabilities."""

    positions: torch.Tensor
    logp_clean: torch.Tensor
    logp_corrupt: torch.Tensor

    @property
    def weight(self) -> int:
        return int(self.positions.numel())

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [1, N, V] at ``positions`` → scalar (without autograd: block by block
        of :data:`CHUNK` positions, the same per-position values in less memory)."""
        if torch.is_grad_enabled() and logits.requires_grad:
            return self._per_position(logits[0], 0, logits.shape[1]).mean()
        n = logits.shape[1]
        return torch.cat([self._per_position(logits[0, i:i + CHUNK], i, i + CHUNK)
                          for i in range(0, n, CHUNK)]).mean()

    def _per_position(self, lg: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """[j − i] KL(P_corrupt ‖ Q) − KL(P_clean ‖ Q) for the [j − i, V] logits ``lg``."""
        logq = torch.log_softmax(_wide(lg), -1)  # [n, V]
        pc = self.logp_clean[i:j].to(logq.device)
        pk = self.logp_corrupt[i:j].to(logq.device)
        kl_corrupt = (pk.exp() * (pk - logq)).sum(-1)
        kl_clean = (pc.exp() * (pc - logq)).sum(-1)
        return kl_corrupt - kl_clean

    def swapped(self) -> DirectionalKL:
        """The metric with the clean and corrupt runs' roles swapped (same positions)."""
        return DirectionalKL(self.positions, self.logp_corrupt, self.logp_clean)

    def part(self, i: int, j: int) -> DirectionalKL:
        """The metric restricted to its positions ``i:j`` (the mean over those)."""
        return DirectionalKL(self.positions[i:j], self.logp_clean[i:j], self.logp_corrupt[i:j])


def make_metric(kind: str, positions: torch.Tensor, clean_logits: torch.Tensor,
                corrupt_logits: torch.Tensor, *, tau: float = 0.0):
    """Build a metric from the clean and corrupt logits [1, N, V] at ``positions`` [N].

    Masked positions are dropped; the metric's ``weight`` is the number left (0: the example
    carries no signal).
    """
    if kind not in METRICS:
        raise SteerscopeError(f"unknown patching metric '{kind}'", f"use one of {', '.join(METRICS)}")
    clean, corrupt = clean_logits[0].float(), corrupt_logits[0].float()  # [N, V]
    positions = positions.to(clean.device)
    if kind == "logit_diff":
        y, y_star = clean.argmax(-1), corrupt.argmax(-1)
        keep = y != y_star
        return LogitDiff(positions[keep], y[keep], y_star[keep])
    if tau < 0:
        raise SteerscopeError(f"KL threshold must be >= 0, got {tau}")
    lc, lk = torch.log_softmax(clean, -1), torch.log_softmax(corrupt, -1)
    kl = torch.cat([(lc[i:i + CHUNK].exp() * (lc[i:i + CHUNK] - lk[i:i + CHUNK])).sum(-1)
                    for i in range(0, lc.shape[0], CHUNK)])  # KL(P_steer ‖ P_base) per position
    keep = kl >= tau if tau > 0 else kl > 0
    if bool(keep.all()):  # no copies
        return DirectionalKL(positions, lc, lk)
    return DirectionalKL(positions[keep], lc[keep], lk[keep])
