"""Shared checks of user input, each raising a one-line :class:`SteerscopeError`.

One place for the checks every entry point needs: steering coefficients (finite, inside the
float32 range), batch sizes and counts (positive), names that become file names (plain), and
output paths (a file path is not a folder, a folder path is not under a file). The CLI runs
:func:`check_cli_args` on every command's arguments before any model loads.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from steerscope.errors import SteerscopeError

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: α·s overflows beyond it
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

# CLI arguments (argparse dest names) that must be positive integers when given
POSITIVE_INT_ARGS = ("batch_size", "train_batch_size", "max_new_tokens", "steps", "epochs",
                     "n", "n_train", "n_val", "n_test", "n_score", "max_per_dataset")


def check_alpha(alpha, what: str = "alpha") -> float:
    """``alpha`` as a float; a one-line error when it is NaN, infinite or so large that
    ``alpha * vector`` overflows float32."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise SteerscopeError(f"{what} must be a number, got {alpha!r}",
                              "pass e.g. 1 or -1") from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise SteerscopeError(f"{what} must be a finite steering coefficient (|alpha| at most "
                              f"{FLOAT32_MAX:.3g}, the float32 range), got {value!r}",
                              "pass e.g. 1 to induce refusal or -1 to bypass it")
    return value


def check_positive_int(value, what: str) -> int:
    """``value`` when it is an integer >= 1, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SteerscopeError(f"{what} must be a positive integer, got {value!r}",
                              f"pass {what} 1 or more")
    return value


def check_name(name: str, what: str = "name") -> str:
    """A name used as a file or folder name: letters, digits, '_' and '-' only (no path
    separators, dots or '..', so it cannot write outside its folder)."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise SteerscopeError(f"bad {what} '{name}'",
                              "use a plain name of letters, digits, '_' and '-' (NAME=FILE)")
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


def check_cli_args(args) -> None:
    """The checks every command shares, run on the parsed arguments before any work:
    steering coefficients (``--alpha``, ``--bypass-alpha``, ...) finite, counts and batch
    sizes positive."""
    for dest, value in sorted(vars(args).items()):
        flag = "--" + dest.replace("_", "-")
        if value is None:
            continue
        if dest == "alpha" or dest.endswith("_alpha"):
            check_alpha(value, flag)
        elif dest in POSITIVE_INT_ARGS:
            check_positive_int(value, flag)
