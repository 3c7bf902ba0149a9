"""The named choices where the paper / the authors' released code and steerscope's defaults
differ in activation patching (issue 12; docs/reproduce.md "Conventions").

Torch-free, so the CLI and the pipeline config can list the choices without importing the
patching code. The first entry of each tuple is steerscope's default; ``configs/paper-*.yaml``
pick the paper's.

- :data:`GRAD_AT`: where EAP-IG takes the gradient of the metric for an edge ``u → d``:
  ``"pre_norm"``, ``d``'s pre-norm residual (norm Jacobian included), or ``"post_norm"``,
  ``d``'s post-norm input (per-head query input, per-KV-head key/value inputs, MLP input,
  unembedding input; norm Jacobian ignored: the paper and the released code).
- :data:`LOGITS_AT`: on a model with a final-logit soft-cap (Gemma-2), whether the patching
  metric reads the logits after the cap (``"post_cap"``, the model's output) or before it
  (``"pre_cap"``, the ``lm_head`` output the released code reads).
- :data:`POOLING`: how per-example scores combine over datasets: ``"dataset_mean"`` (the
  position-weighted mean within each dataset, then the plain mean over datasets) or
  ``"positions"`` (one position-weighted mean over all examples: the released code's default).
- :data:`FAITHFULNESS_METRICS`: what a circuit's faithfulness is measured with (minimum
  circuit, complement, random control, interchange): ``"logit_diff"``, the ratio of the
  patching metric over the four datasets, or one of the released code's per-position
  measures on the steered responses (``kl_ratio``, ``dir_kl``, ``token_match``, ``logprob``;
  :mod:`steerscope.patching.faithfulness`).
"""

from __future__ import annotations

from collections.abc import Sequence

from steerscope.errors import SteerscopeError

GRAD_AT = ("pre_norm", "post_norm")
LOGITS_AT = ("post_cap", "pre_cap")
POOLING = ("dataset_mean", "positions")
POSITION_METRICS = ("kl_ratio", "dir_kl", "token_match", "logprob")
FAITHFULNESS_METRICS = ("logit_diff", *POSITION_METRICS)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a :class:`SteerscopeError` naming them."""
    if value not in choices:
        raise SteerscopeError(f"unknown {name} '{value}'", f"use one of {', '.join(choices)}")
    return value
