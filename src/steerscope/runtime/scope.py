"""Token positions: which positions of a forward call an intervention touches.

Position contract
-----------------
A *sequence* is one row of a (left-padded) batch: ``pad`` padding tokens, then ``P - pad``
prompt tokens, then generated tokens. Positions are counted in the padded frame: the prompt
occupies absolute positions ``[0, P)`` of the batch (``P`` = padded prompt length) and the
``n``-th generated token (0-based) is fed back at absolute position ``P + n``.

Every forward call covers the absolute positions ``[start, start + T)``: a prefill has
``start = 0``; a KV-cached decoding step has ``start`` = the number of positions already in
the cache and ``T = 1``; a full re-computation has ``start = 0`` and ``T`` = the whole
sequence. An intervention in scope is applied exactly once to each of its positions in each
forward call that covers it, so KV-cached generation and full re-computation see the same
edits.

Scopes:
- ``"all"`` (default): every position, prompt and generated;
- ``"prompt"``: absolute positions ``< P``;
- ``"generated"``: absolute positions ``>= P`` (the generated tokens fed back to the model);
- a sequence of ints: explicit positions per row. ``p >= 0`` counts from the row's first real
  (non-pad) token; ``p < 0`` counts back from the prompt end (``-1`` is the last prompt token,
  whatever the padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerscope.errors import SteerscopeError

ScopeSpec = str | Sequence[int] | torch.Tensor

_NAMED = ("all", "prompt", "generated")


def check_scope(scope: ScopeSpec) -> ScopeSpec:
    """Return ``scope`` if valid, else raise a one-line error."""
    if isinstance(scope, str):
        if scope not in _NAMED:
            raise SteerscopeError(
                f"unknown token scope '{scope}'",
                "use 'all', 'prompt', 'generated' or a list of positions",
            )
        return scope
    if isinstance(scope, torch.Tensor):
        scope = scope.tolist()
    try:
        positions = [int(p) for p in scope]
    except (TypeError, ValueError) as exc:
        raise SteerscopeError(
            f"token scope {scope!r} is not a list of integer positions",
            "use 'all', 'prompt', 'generated' or a list of ints",
        ) from exc
    if not positions:
        raise SteerscopeError("token scope is an empty list of positions", "give at least one")
    return tuple(positions)


@dataclass
class StepContext:
    """What one forward call covers.

    ``start``: absolute position of its first query token; ``length``: number of query tokens
    T; ``prompt_len``: padded prompt length P (``None`` when no prompt boundary is known: every
    position counts as prompt), or a [B] long tensor of per-row prompt ends when the rows of a
    batch sit in one frame at different offsets (compacted generation); ``pad_left``: [B]
    long, padding tokens per row; ``rows``: [B] long, which row of the per-row interventions'
    settings each batch row is (``None``: batch row ``i`` is setting ``i``).
    """

    start: int
    length: int
    batch: int
    prompt_len: int | torch.Tensor | None
    pad_left: torch.Tensor  # [B] long
    device: torch.device
    rows: torch.Tensor | None = None  # [B] long

    @property
    def positions(self) -> torch.Tensor:
        """[T] long: absolute positions covered by this call."""
        return torch.arange(self.start, self.start + self.length, device=self.device)

    def mask(self, scope: ScopeSpec) -> torch.Tensor | None:
        """[B, T] bool mask of the positions in ``scope``; ``None`` means every position."""
        if scope == "all":
            return None
        pos = self.positions  # [T]
        prompt_len = self.prompt_len if self.prompt_len is not None else self.start + self.length
        if isinstance(prompt_len, torch.Tensor):  # per-row prompt ends [B] -> [B, 1]
            prompt_len = prompt_len.to(self.device).view(-1, 1)
        if scope == "prompt":
            m = (pos < prompt_len).view(-1, self.length)  # [1 | B, T]
            return None if bool(m.all()) else m.expand(self.batch, -1)
        if scope == "generated":
            return (pos >= prompt_len).view(-1, self.length).expand(self.batch, -1)
        targets = torch.as_tensor(list(scope), device=self.device)  # [K]
        pad = self.pad_left.to(self.device).unsqueeze(1)  # [B, 1]
        absolute = torch.where(targets < 0, prompt_len + targets, pad + targets)  # [B, K]
        return (pos.view(1, -1, 1) == absolute.unsqueeze(1)).any(-1)  # [B, T]
