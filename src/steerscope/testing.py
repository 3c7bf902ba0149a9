"""Tiny models and inputs for writing your own tests against steerscope (CPU, no download).

Everything here is deterministic for a seed and small enough to run a forward pass in
milliseconds, so a test can compare steerscope against a plain Hugging Face computation on
every supported architecture (this is how steerscope's own test-suite works; docs/testing.md):

- :data:`TINY_ARCHS` names one tiny configuration per supported architecture family;
- :func:`tiny_config` / :func:`tiny_model`: a 4-layer, d=64 randomly initialised causal LM
  (4 query heads, 2 KV heads, vocabulary 256) of one of them;
- :func:`tiny_tokenizer`: a character-level tokenizer for those models, with a minimal chat
  template (:data:`TINY_CHAT_TEMPLATE`);
- :func:`save_tiny_chat_model`: both saved into a folder that ``load_model`` and every CLI
  command accept;
- :func:`random_left_padded_batch`: a left-padded batch of random prompts of given lengths.

The model builders live in :mod:`steerscope.models.tiny` (still importable); this module is
their public face for tests.
"""

from __future__ import annotations

import torch

from steerscope.errors import SteerscopeError
from steerscope.models.tiny import (
    TINY_ARCHS,
    TINY_CHAT_TEMPLATE,
    save_tiny_chat_model,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)

__all__ = [
    "TINY_ARCHS",
    "TINY_CHAT_TEMPLATE",
    "random_left_padded_batch",
    "save_tiny_chat_model",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
]

FIRST_ORDINARY_ID = 3  # ids 0-2 are <pad>, <s>, </s> in the tiny models' vocabulary


def random_left_padded_batch(seed: int = 0, lengths=(9, 6, 4), vocab: int = 256):
    """A left-padded batch of random prompts, one per entry of ``lengths``.

    Token ids are drawn uniformly from ``[3, vocab)`` (never pad, BOS or EOS) with a
    generator seeded by ``seed``. Returns ``(ids [B, P], mask [B, P], prompts)`` where
    ``P = max(lengths)``, padding is id 0 with mask 0 on the left, and ``prompts`` is the list
    of the B unpadded id tensors (``[lengths[b]]`` each), for running them one at a time.
    """
    lengths = tuple(lengths)
    if not lengths or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in lengths):
        raise SteerscopeError(f"lengths {lengths} must be one or more positive integers",
                              "pass e.g. lengths=(9, 6, 4)")
    if vocab <= FIRST_ORDINARY_ID:
        raise SteerscopeError(f"vocab {vocab} leaves no ordinary token ids",
                              f"pass vocab > {FIRST_ORDINARY_ID}")
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(FIRST_ORDINARY_ID, vocab, (n,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, P]
    mask = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, P]
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    return ids, mask, seqs
