"""Presence judges: ``judge(prompts, responses) -> list[bool]``, True = the behaviour is
present in the response. Offline and deterministic; :mod:`steerscope.behaviours.judges`
builds them from a behaviour's judge spec."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.matchers import REFUSAL_SUBSTRINGS, is_refusal_substring


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    if isinstance(responses, str) or isinstance(prompts, str):
        raise SteerscopeError("prompts and responses must be lists of strings",
                              "wrap single strings in a list")
    if len(prompts) != len(responses):
        raise SteerscopeError(f"{len(prompts)} prompts but {len(responses)} responses",
                              "pass one response per prompt")
    return [str(r) for r in responses]


class SubstringPresence:
    """Present when any of ``substrings`` occurs in the response (case-insensitive, quotes
    normalised); the default substrings are the paper's refusal list (present = refused)."""

    def __init__(self, substrings: Sequence[str] = REFUSAL_SUBSTRINGS):
        self.substrings = tuple(substrings)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return [is_refusal_substring(r, self.substrings) for r in _check_pairs(prompts, responses)]


class RegexPresence:
    """Present when the summed non-overlapping matches of ``patterns`` reach ``min_matches``."""

    def __init__(self, patterns: Sequence[str], min_matches: int = 1, ignore_case: bool = True):
        flags = re.IGNORECASE if ignore_case else 0
        self.patterns = tuple(patterns)
        self.compiled = [re.compile(p, flags) for p in self.patterns]
        self.min_matches = int(min_matches)

    def matches(self, text: str) -> int:
        """Number of non-overlapping matches of all patterns in ``text``."""
        return sum(len(c.findall(text)) for c in self.compiled)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        return [self.matches(r) >= self.min_matches for r in _check_pairs(prompts, responses)]


# Modules never accepted as a judge, even when code is allowed: they run shells, programs,
# arbitrary code or deserialise objects (a judge gets model text as its argument). Checked on
# the name's first component before any import, and on the resolved function's module.
REFUSED_JUDGE_MODULES = frozenset({
    "builtins", "__builtin__", "__main__", "os", "posix", "nt", "posixpath", "ntpath",
    "subprocess", "_posixsubprocess", "sys", "shutil", "importlib", "pkgutil", "zipimport",
    "pty", "tty", "termios", "fcntl", "socket", "socketserver", "ssl", "select", "selectors",
    "ctypes", "cffi", "runpy", "code", "codeop", "pdb", "bdb", "trace", "pickle", "_pickle",
    "cPickle", "pickletools", "copyreg", "marshal", "shelve", "dill", "cloudpickle", "joblib",
    "multiprocessing", "concurrent", "asyncio", "threading", "_thread", "signal", "resource",
    "mmap", "gc", "inspect", "types", "io", "_io", "pathlib", "tempfile", "glob", "webbrowser",
    "http", "urllib", "urllib3", "requests", "ftplib", "smtplib", "telnetlib", "platform",
    "sysconfig", "site", "atexit", "faulthandler", "tarfile", "zipfile", "distutils",
    "setuptools", "pip", "venv", "ensurepip", "operator", "functools", "yaml", "pandas",
    "numexpr",
    # run their text argument as code (timeit, cProfile/profile.run, doctest, sympify,
    # numpy.testing.measure, logging.config), a program ($PAGER: pydoc.pager), or download and
    # run code (torch.hub, transformers/huggingface_hub with remote code)
    "timeit", "cProfile", "profile", "doctest", "pydoc", "idlelib", "sympy", "numpy", "torch",
    "transformers", "huggingface_hub", "logging", "unittest", "tkinter", "turtle",
})


def _refused(module: str) -> bool:
    top = module.split(".")[0]
    return top in REFUSED_JUDGE_MODULES or top.startswith("_")


def check_callable_name(spec: Any, where: str = "judge.function") -> tuple[str, str]:
    """``(module, attribute path)`` of a ``"module:function"`` name, checked without
    importing anything: the form, no private (``_``) parts, and a module that is not one of
    :data:`REFUSED_JUDGE_MODULES`."""
    module, sep, attr = str(spec).partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module or not attr:
        raise SteerscopeError(f"{where} '{spec}' is not 'module:function'",
                              "write it as package.module:function")
    if _refused(module) or any(p.startswith("_") or not p for p in attr.split(".")):
        raise SteerscopeError(f"{where} '{spec}' names {module}, which is never allowed as a "
                              "judge (it can run programs or arbitrary code)",
                              "name a function of your own module that takes one completion "
                              "and returns True or False")
    return module, attr


def import_callable(spec: str, where: str = "judge.function") -> Callable[[str], Any]:
    """The function named ``"module:function"`` (dotted attribute paths allowed), after
    :func:`check_callable_name`; a function whose own module is refused (e.g. ``os.system``
    reached through another module) is refused too. This imports the module: it runs code,
    so callers ask for consent first (:mod:`steerscope.behaviours.judges`)."""
    module, attr = check_callable_name(spec, where)
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SteerscopeError(f"{where} '{spec}' cannot be imported ({type(exc).__name__})",
                              "make the module importable (PYTHONPATH) and check the name") from exc
    except Exception as exc:  # the module itself failed while importing
        raise SteerscopeError(f"{where} '{spec}': importing {module} failed "
                              f"({type(exc).__name__}: {exc})", "fix the module") from None
    if not callable(obj):
        raise SteerscopeError(f"{where} '{spec}' is not callable",
                              "name a function (response) or (prompt, response) -> bool")
    owner = getattr(obj, "__module__", None) or getattr(getattr(obj, "__self__", None),
                                                         "__name__", None)
    if isinstance(owner, str) and _refused(owner):
        raise SteerscopeError(f"{where} '{spec}' is {owner}.{getattr(obj, '__name__', attr)}, "
                              "which is never allowed as a judge",
                              "name a function of your own module")
    return obj


def _is_bool(value: Any) -> bool:
    """True for a Python bool or a NumPy bool scalar (nothing else: no 0/1, no strings)."""
    import numpy as np

    return isinstance(value, (bool, np.bool_))


def judge_arity(fn: Callable[..., Any], name: str) -> int:
    """How many arguments the judge function ``fn`` is called with: 2 (``fn(prompt,
    response)``) when its signature has two required positional parameters, 1
    (``fn(response)``) when it has one, or none but ``*args``, or cannot be inspected.
    Any other signature (three or more required parameters, or only keyword-only ones)
    is a one-line :class:`SteerscopeError` naming ``name``."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: one argument
        return 1
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    takes_any = any(p.kind in (*positional, inspect.Parameter.VAR_POSITIONAL) for p in params)
    if len(required) in (1, 2):
        return len(required)
    if not required and takes_any:
        return 1
    raise SteerscopeError(f"judge function '{name}' takes {len(required)} required positional "
                          "arguments", "make it take (response) or (prompt, response) and "
                          "return True or False")


class CallablePresence:
    """Present when ``function(response)`` -- or ``function(prompt, response)`` for a
    function with two required parameters (:func:`judge_arity`) -- is True; ``function`` is
    a callable or its name ``"module:function"`` (imported here: see :func:`import_callable`).
    The prompt is the one :meth:`judge` is given (the pipeline: the raw instruction, before
    chat formatting). The function must return a bool (NumPy bools too); anything else, or an
    exception it raises, is a one-line :class:`SteerscopeError` naming the function."""

    def __init__(self, function: str | Callable[..., Any]):
        self.function = function
        self.fn = function if callable(function) else import_callable(function)
        self.name = function if isinstance(function, str) else \
            f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', '?')}"
        self.arity = judge_arity(self.fn, self.name)

    def present(self, response: str, prompt: str = "") -> bool:
        """The function's verdict on one response (and its prompt, for a two-argument
        function), checked to be a bool."""
        takes = "(prompt, response)" if self.arity == 2 else "one completion"
        each = " for each (prompt, response)" if self.arity == 2 else ""
        try:
            value = self.fn(prompt, response) if self.arity == 2 else self.fn(response)
        except (Exception, SystemExit) as exc:  # sys.exit in a judge must not end the run
            raise SteerscopeError(f"judge function '{self.name}' raised {type(exc).__name__}: "
                                  f"{str(exc)[:200]}",
                                  f"fix the function: it takes {takes} and returns "
                                  "True or False") from None
        if not _is_bool(value):
            shown = repr(value) if isinstance(value, (str, int, float, type(None))) else \
                type(value).__name__
            raise SteerscopeError(f"judge function '{self.name}' returned {shown[:60]}, "
                                  "not True or False", f"make it return a bool{each}")
        return bool(value)

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        responses = _check_pairs(prompts, responses)
        return [self.present(r, str(p)) for p, r in zip(prompts, responses)]


__all__ = ["REFUSED_JUDGE_MODULES", "CallablePresence", "RegexPresence", "SubstringPresence",
           "check_callable_name", "import_callable", "judge_arity"]
