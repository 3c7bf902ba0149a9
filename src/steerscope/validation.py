"""Shared checks of user input, each raising a one-line :class:`SteerscopeError`.

One place for the checks every entry point needs: steering coefficients (finite, inside the
float32 range), batch sizes and counts (positive), names that become file names (plain), and
output paths (a file path is not a folder, a folder path is not under a file). The CLI runs
:func:`check_cli_args` on every command's arguments before any model loads.

Every numeric option has one range, :data:`NUMBER_RANGES`, keyed by its name (a config key's
last part, e.g. ``max_new_tokens``, or a flag's argparse name, e.g. ``heads``): the CLI checks
its flags against it and :func:`steerscope.pipeline.config.check_values` checks every number
of a config (nested ``options`` included) against it; names it does not list must still be
finite and fit in 64 bits. docs/pipeline.md (Input limits) lists the ranges.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from steerscope.errors import SteerscopeError

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: α·s overflows beyond it
MAX_ALPHA = 1e4  # |α| cap: α·s with a larger α saturates the residual stream (NaN scores)
MAX_NEW_TOKENS = 32768  # tokens one generation may add (a KV cache beyond it rarely fits)
MAX_BATCH_SIZE = 4096  # prompts per forward pass
MAX_COUNT = 10_000_000  # prompts, examples, steps, heads, tokens listed, ...
MAX_SEED = 2**32 - 1  # the largest seed every generator (random, numpy, torch) accepts
MAX_INT = 2**63 - 1  # any other integer fits in int64
MAX_NAME_CHARS = 100  # a name that becomes a file or folder name (file systems allow 255 bytes)
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

# CLI arguments (argparse dest names) that must be positive integers when given
POSITIVE_INT_ARGS = ("batch_size", "train_batch_size", "max_new_tokens", "steps", "epochs",
                     "n", "n_train", "n_val", "n_test", "n_score", "max_per_dataset")


def check_alpha(alpha, what: str = "alpha") -> float:
    """``alpha`` as a float; a one-line error when it is NaN, infinite or larger in size than
    :data:`MAX_ALPHA` (``alpha * vector`` would saturate the model or overflow float32)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError, OverflowError):
        raise SteerscopeError(f"{what} must be a number, got {alpha!r}",
                              "pass e.g. 1 or -1") from None
    if not math.isfinite(value) or abs(value) > MAX_ALPHA:
        raise SteerscopeError(f"{what} must be a finite steering coefficient (|alpha| at most "
                              f"{MAX_ALPHA:g}), got {value!r}",
                              "pass e.g. 1 to induce refusal or -1 to bypass it")
    return value


def check_positive_int(value, what: str) -> int:
    """``value`` when it is an integer >= 1, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SteerscopeError(f"{what} must be a positive integer, got {value!r}",
                              f"pass {what} 1 or more")
    return value


# --- numeric ranges ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NumberRange:
    """The valid values of one numeric option: ``low``/``high`` bounds (None: unbounded;
    ``*_open``: the bound itself is excluded), integers only when ``integer``. Floats must
    always be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value) -> bool:
        """Whether ``value`` is a number of this range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range in words, e.g. ``a positive integer (at most 32768)``."""
        if self.integer and self.low == 1 and not self.low_open:
            kind, low = "a positive integer", None
        else:
            kind, low = ("an integer" if self.integer else "a finite number"), self.low
        if low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_bound(low)}, "
                    f"{_bound(self.high)}{')' if self.high_open else ']'}")
        if low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_bound(low)}"
        if self.high is not None:
            return f"{kind} (at most {_bound(self.high)})"
        return kind


def _bound(x: float) -> str:
    """A range bound as written: integers in full (``32768``), other numbers as ``%g``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _ints(low: int, high: int) -> NumberRange:
    return NumberRange(low, high, integer=True)


_COUNT = _ints(1, MAX_COUNT)
_TOKENS = _ints(1, MAX_NEW_TOKENS)
_BATCH = _ints(1, MAX_BATCH_SIZE)
_FRACTION = NumberRange(0, 1, low_open=True)  # (0, 1]
_NON_NEGATIVE = NumberRange(0)
_ALPHA = NumberRange(-MAX_ALPHA, MAX_ALPHA)

# option name (a config key's last part or a flag's argparse name) -> its valid values
NUMBER_RANGES: dict[str, NumberRange] = {
    # generation lengths
    "max_new_tokens": _TOKENS, "max_response_tokens": _TOKENS,
    # batch sizes
    "batch_size": _BATCH, "train_batch_size": _BATCH, "ig_batch_size": _BATCH,
    # counts of prompts, steps, heads, tokens, edges, ...
    **dict.fromkeys(("n", "n_train", "n_val", "n_test", "n_score", "n_prompts",
                     "max_per_dataset", "steps", "ig_steps", "epochs", "n_random", "top_k",
                     "top_n", "top", "heads", "n_heads", "show_tokens", "top_tokens",
                     "max_edges", "k"), _COUNT),
    # circuit sizes in edges (a fine graph of a large model has tens of millions)
    **dict.fromkeys(("sizes", "overlap_sizes"), _ints(1, MAX_INT)),
    "refine_steps": _ints(0, 64),
    "seed": _ints(0, MAX_SEED),
    # fractions and thresholds
    **dict.fromkeys(("threshold", "grid_step", "grid_max", "max_layer_fraction"), _FRACTION),
    "val_fraction": NumberRange(0, 1, low_open=True, high_open=True),
    **dict.fromkeys(("fraction", "fractions"), NumberRange(0, 1, high_open=True)),
    **dict.fromkeys(("tau", "taus", "kl_threshold"), _NON_NEGATIVE),
    "lr": NumberRange(0, 1e3, low_open=True),
    # the strength sweep: |α| magnitudes, the auto share, the coherence threshold (nats)
    **dict.fromkeys(("alpha_grid", "grid"), NumberRange(0, MAX_ALPHA, low_open=True)),
    **dict.fromkeys(("auto_share", "share"), _FRACTION),
    "fluency_threshold": NumberRange(0, low_open=True),
    "n_reference": _COUNT,
}


def number_range(name: str) -> NumberRange | None:
    """The range of option ``name`` (steering coefficients: any name ending in ``alpha``)."""
    if name == "alpha" or name.endswith("_alpha"):
        return _ALPHA
    return NUMBER_RANGES.get(name)


def check_number(value, what: str, name: str | None = None, fix: str | None = None):
    """``value`` when it lies in the range of option ``name`` (default: ``what``'s last
    part); any other number when it is finite and fits in 64 bits; else a one-line error that
    names ``what`` and the valid range (and ``fix``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value  # not a number: the type checks own it
    key = name if name is not None else re.split(r"[.\[]", what.lstrip("-"))[-1]
    rng = number_range(key.replace("-", "_")) if key else None
    if rng is None:
        rng = NumberRange(-MAX_INT, MAX_INT, integer=True) if isinstance(value, int) \
            else NumberRange()
    if not rng.contains(value):
        raise SteerscopeError(f"{what} must be {rng.describe()}, got {_shown(value)}",
                              fix or f"pass a value in that range for {what}")
    return value


def _shown(value) -> str:
    """``repr(value)``, or the digit count of an integer too long to print."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {int(math.log10(abs(value))) + 1} digits"
    return repr(value)


def parse_number_list(text: str | None, what: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]`` (None or blank → ``[]``), each number checked
    against the range of option ``what`` (e.g. ``--taus``)."""
    if text is None or not text.strip():
        return []
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SteerscopeError(f"{what} '{text}' is not a comma-separated list of numbers",
                              "write e.g. 0,0.5,1") from None
    for v in values:
        check_number(v, what)
    return values


def check_name(name: str, what: str = "name") -> str:
    """A name used as a file or folder name: letters, digits, '_' and '-' only (no path
    separators, dots or '..', so it cannot write outside its folder)."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name) or len(name) > MAX_NAME_CHARS:
        shown = name if not isinstance(name, str) or len(name) <= 40 else name[:40] + "..."
        raise SteerscopeError(f"bad {what} '{shown}'",
                              "use a plain name of letters, digits, '_' and '-' (at most "
                              f"{MAX_NAME_CHARS} characters; NAME=FILE)")
    return name


def parse_named_files(specs: list[str], what: str = "vector") -> dict[str, str]:
    """``NAME=FILE`` pairs (a bare ``FILE`` is named by its stem) with plain, distinct names."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        check_name(name, f"{what} name")
        if name in out:
            raise SteerscopeError(f"{what} '{name}' given twice", "use distinct NAME=FILE names")
        out[name] = path
    return out


def _file_above(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _refuse_file_above(path: Path, what: str) -> None:
    """A one-line error when a parent of ``path`` is a file (nothing can be written there)."""
    blocker = _file_above(path)
    if blocker is not None:
        raise SteerscopeError(f"{what} {path} is under {blocker}, which is a file",
                              "pass a path inside a folder")


def check_output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` can be (or already is) a folder: it is not a file and no parent is a file."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SteerscopeError(f"{what} {path} is a file, not a folder",
                              "pass a folder (it is created if missing)")
    _refuse_file_above(path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` can be written as a file: it is not an existing folder and no parent is a
    file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SteerscopeError(f"{what} {path} is an existing folder",
                              "pass a file path, e.g. a .safetensors name inside it")
    _refuse_file_above(path, what)
    return path


# flags given as comma-separated numbers (checked item by item)
NUMBER_LIST_ARGS = ("taus", "fractions")


def check_cli_args(args) -> None:
    """The checks every command shares, run on the parsed arguments before any work:
    steering coefficients (``--alpha``, ``--bypass-alpha``, ...) finite and at most
    :data:`MAX_ALPHA`, every other number in its :data:`NUMBER_RANGES` range (counts and
    batch sizes positive, fractions in range, thresholds finite), comma-separated number
    lists (``--taus``, ``--fractions``) item by item."""
    for dest, value in sorted(vars(args).items()):
        flag = "--" + dest.replace("_", "-")
        if value is None:
            continue
        if dest == "alpha" or dest.endswith("_alpha"):
            check_alpha(value, flag)
        elif dest in POSITIVE_INT_ARGS:
            check_positive_int(value, flag)
            check_number(value, flag, dest)
        elif dest in NUMBER_LIST_ARGS and isinstance(value, str):
            parse_number_list(value, flag)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, flag, dest)
