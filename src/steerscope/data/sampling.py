"""The authors' released prompt sampling (``refusal_direction/pipeline/run_pipeline.py``,
``load_and_sample_datasets``, and ``generate_train_data.py``, ``load_data``, of
github.com/step-cheng/steer-interp), as pure functions of the prompt pools.

The released pipeline seeds Python's ``random`` once (``random.seed(42)``) and then draws, on
that one stream and in this order, ``random.sample(pool, n)`` from the instruction strings of
harmful train (n_train), harmless train (n_train), harmful val (n_val) and harmless val
(n_val) (:data:`RELEASED_ORDER`); after DIM, steering and evaluation (which draw nothing from
``random``) it draws ``random.sample(harmless_test, n_test)`` from the same stream. The
NTP/PO training data (``generate_train_data.py``) is made in another process: it repeats the
four draws from a fresh ``random.seed(42)`` and then draws ``n_total − n_train`` more prompts
per class, harmful then harmless, from the train prompts not already drawn (compared by
value, in file order).

``random.sample`` depends only on the pool's length and the generator's state, so these
functions give the released prompts for any pool with the split file's length and order.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from steerscope.errors import SteerscopeError

RELEASED_ORDER = ("harmful_train", "harmless_train", "harmful_val", "harmless_val")
RELEASED_TEST_KEY = "harmless_test"  # drawn after the four, on the same stream
# the six splits under the released code's names (the sampler's pools)
RELEASED_SPLITS = (*RELEASED_ORDER, "harmful_test", RELEASED_TEST_KEY)
RELEASED_SEED = 42


def _sizes(n_train: int, n_val: int) -> dict[str, int]:
    return {"harmful_train": n_train, "harmless_train": n_train,
            "harmful_val": n_val, "harmless_val": n_val}


def _draw(rng: random.Random, pools: Mapping[str, Sequence[str]], key: str, n: int) -> list[str]:
    pool = list(pools[key])
    if n > len(pool):
        raise SteerscopeError(f"the released sampling draws {n} prompts from {key}, which has "
                              f"{len(pool)}", f"lower the sample size to at most {len(pool)}")
    return rng.sample(pool, n)


def released_splits(pools: Mapping[str, Sequence[str]], *, n_train: int, n_val: int,
                    n_test: int | None = None, seed: int = RELEASED_SEED) -> dict[str, list[str]]:
    """The released pipeline's samples: one ``random.Random(seed)`` stream drawing
    :data:`RELEASED_ORDER` (``pools[key]``: that split's instructions in file order), then,
    when ``n_test`` is given, ``n_test`` prompts of ``pools["harmless_test"]``."""
    rng = random.Random(seed)
    sizes = _sizes(n_train, n_val)
    out = {key: _draw(rng, pools, key, sizes[key]) for key in RELEASED_ORDER}
    if n_test is not None:
        out[RELEASED_TEST_KEY] = _draw(rng, pools, RELEASED_TEST_KEY, n_test)
    return out


def released_training_prompts(pools: Mapping[str, Sequence[str]], *, n_train: int, n_val: int,
                              n_total: int, seed: int = RELEASED_SEED
                              ) -> dict[str, list[str]]:
    """The released NTP/PO training prompts per class (``generate_train_data.py``): the
    ``n_train`` prompts DIM draws (a fresh stream, :func:`released_splits` without the test
    draw), followed by ``n_total − n_train`` more drawn on the same stream from the train
    prompts not drawn yet, harmful then harmless. Returns ``{"harmful": [...], "harmless":
    [...]}`` (``n_total`` each)."""
    if n_total < n_train:
        raise SteerscopeError(f"the released training prompts need n_total >= n_train, got "
                              f"{n_total} < {n_train}", f"ask for at least {n_train} per class")
    rng = random.Random(seed)
    sizes = _sizes(n_train, n_val)
    first = {key: _draw(rng, pools, key, sizes[key]) for key in RELEASED_ORDER}
    out = {}
    for kind in ("harmful", "harmless"):
        key = f"{kind}_train"
        drawn = set(first[key])
        rest = [x for x in pools[key] if x not in drawn]
        out[kind] = first[key] + _draw(rng, {key: rest}, key, n_total - n_train)
    return out


__all__ = ["RELEASED_ORDER", "RELEASED_SEED", "RELEASED_TEST_KEY", "released_splits",
           "released_training_prompts"]
