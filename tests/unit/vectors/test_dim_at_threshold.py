"""``at_threshold``: the released code's strict DIM filter comparisons (KL > t and induce < t
discard) against steerscope's (KL >= t and induce <= t discard)."""

from __future__ import annotations

import math

import pytest

from steerscope.errors import SteerscopeError
from steerscope.vectors.dim_selection import discard_reason, select_candidate, selection_score


def released_filter_fn(row, n_layer, kl_threshold=0.1, induce_threshold=0.0, prune=0.2):
    """The released ``select_direction.filter_fn`` written out independently: True = discard."""
    if any(math.isnan(row[k]) for k in ("bypass", "induce", "kl")):
        return True
    if row["layer"] >= int(n_layer * (1.0 - prune)):
        return True
    if row["kl"] > kl_threshold:
        return True
    return row["induce"] < induce_threshold


ROWS = [
    {"layer": 3, "position": -1, "bypass": -2.0, "induce": 0.0, "kl": 0.05},  # induce == t
    {"layer": 4, "position": -1, "bypass": -3.0, "induce": 1.0, "kl": 0.1},  # kl == t
    {"layer": 5, "position": -1, "bypass": 1.0, "induce": 0.5, "kl": 0.02},  # inside both
    {"layer": 6, "position": -1, "bypass": -1.0, "induce": -0.1, "kl": 0.01},  # induce < t
    {"layer": 7, "position": -1, "bypass": -1.0, "induce": 2.0, "kl": 0.2},  # kl > t
]


def test_keep_matches_the_released_filter_row_by_row():
    for row in ROWS:
        kept = discard_reason(row, n_layers=10, at_threshold="keep") is None
        assert kept == (not released_filter_fn(row, 10)), row
    # steerscope's rule discards the two rows exactly at a threshold
    assert [discard_reason(r, n_layers=10) for r in ROWS] == [
        "induce", "kl", None, "induce", "kl"]


def test_keep_can_change_the_chosen_candidate():
    released = [i for i, r in enumerate(ROWS) if not released_filter_fn(r, 10)]
    best = max(released, key=lambda i: (selection_score(ROWS[i]["bypass"], ROWS[i]["induce"]),
                                        -i))
    assert select_candidate(ROWS, n_layers=10, at_threshold="keep") == best == 1
    assert select_candidate(ROWS, n_layers=10) == 2


def test_no_survivor_message_names_the_strict_comparisons():
    rows = [ROWS[3], ROWS[4]]
    with pytest.raises(SteerscopeError, match="KL > 0.1.*induce < 0.0"):
        select_candidate(rows, n_layers=10, at_threshold="keep")
    with pytest.raises(SteerscopeError, match="unknown at_threshold 'strict'"):
        select_candidate(ROWS, n_layers=10, at_threshold="strict")
