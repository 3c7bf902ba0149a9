"""Behaviour judges: ``judge(prompts, responses) -> list[bool]``, True = behaviour present.

A judge is given as a spec dict ``{"kind": KIND, ...}``; :data:`JUDGE_KINDS` defines every
kind once, with its required keys and defaults:

- ``substring``: ``substrings`` (list); present when any occurs anywhere in the response
  (case-insensitive, typographic quotes normalised, as the paper's refusal matcher);
- ``regex``: ``patterns`` (list), ``min_matches`` (default 1), ``ignore_case`` (default
  true); present when the patterns' non-overlapping matches in the response, summed over
  patterns, number at least ``min_matches``;
- ``callable``: ``function`` = ``"module:function"``, a function ``(response) -> bool`` or
  ``(prompt, response) -> bool`` (two required parameters; the prompt is the raw instruction,
  before chat formatting; :func:`~steerscope.evaluate.presence.judge_arity`) (code: it runs
  only when allowed, see below);
- ``classifier``: ``model`` (hub id or path), ``label`` (the class meaning "present", name
  or index; default ``"present"``), ``pair`` (default false: the response alone) -- an HF
  sequence classifier (:class:`~steerscope.evaluate.judges.ClassifierJudge`);
- ``chat``: ``model``, ``template`` (text with ``{prompt}`` / ``{response}``; default: the
  judge's own chat template on the conversation), ``present_word`` (default ``"yes"``) --
  present when the chat model's greedy answer starts with that word
  (:class:`~steerscope.evaluate.judges.ChatModelJudge`).

:func:`check_judge_spec` checks a spec (kind, keys, that regexes compile, the callable's
name) without loading any model and without importing anything.

A behaviour file is data; a judge that runs code is not: a ``callable`` judge, and a
``classifier`` / ``chat`` judge whose model ships its own code (``auto_map`` in its config),
runs only with consent, ``allow_code=True`` (:func:`make_judge`, :func:`check_judge_code`;
the CLI's ``--allow-code``). Every judge is called on batches, ``judge(prompts, responses)``,
with each completion's raw prompt. Modules that run programs or arbitrary code (``os``,
``subprocess``, ``builtins``, ...; :data:`~steerscope.evaluate.presence.REFUSED_JUDGE_MODULES`)
are refused as judges even then.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.evaluate.presence import (
    CallablePresence,
    RegexPresence,
    SubstringPresence,
    check_callable_name,
    import_callable,
    judge_arity,
)

# how a user allows a judge's code, everywhere a consent error is raised
CODE_CONSENT_FIX = ("pass --allow-code to 'steerscope run' or 'steerscope demo' (or set "
                    "allow_code: true in the run config; in Python allow_code=True) if you "
                    "trust it")


def _classifier(model: str, label: str | int = "present", pair: bool = False, device=None,
                trust_remote_code: bool = False):
    from steerscope.evaluate.judges import ClassifierJudge

    return ClassifierJudge(model, label_for_unsafe=label, pair=pair, device=device,
                           min_words=None, trust_remote_code=trust_remote_code)


def _chat(model: str, template: str | None = None, present_word: str = "yes", device=None,
          trust_remote_code: bool = False):
    from steerscope.evaluate.judges import ChatModelJudge

    return ChatModelJudge(model, template=template, unsafe_word=present_word, device=device,
                          min_words=None, trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class JudgeKind:
    """One judge kind: its builder, required keys and optional keys with their defaults."""

    build: Callable[..., Any]
    required: tuple[str, ...]
    defaults: Mapping[str, Any]
    takes_device: bool = False


JUDGE_KINDS: dict[str, JudgeKind] = {
    "substring": JudgeKind(SubstringPresence, ("substrings",), {}),
    "regex": JudgeKind(RegexPresence, ("patterns",), {"min_matches": 1, "ignore_case": True}),
    "callable": JudgeKind(CallablePresence, ("function",), {}),
    "classifier": JudgeKind(_classifier, ("model",), {"label": "present", "pair": False},
                            takes_device=True),
    "chat": JudgeKind(_chat, ("model",), {"template": None, "present_word": "yes"},
                      takes_device=True),
}


def _str_list(spec: Mapping, key: str) -> list[str]:
    value = spec[key]
    if isinstance(value, str) or not isinstance(value, Sequence) or not value or not all(
            isinstance(v, str) and v for v in value):
        raise SteerscopeError(f"judge.{key} must be a non-empty list of non-empty strings",
                              f"write e.g. {key}: [\"...\"]")
    return list(value)


def check_judge_spec(spec: Any) -> dict[str, Any]:
    """The spec with defaults filled in, after every check that needs no model: a known
    kind, required keys present, no unknown keys, value types, regexes compile, the callable's
    name (:func:`~steerscope.evaluate.presence.check_callable_name`; nothing is imported).
    One-line :class:`SteerscopeError` naming the key otherwise."""
    if not isinstance(spec, Mapping):
        raise SteerscopeError("judge must be a mapping with a 'kind' key",
                              "write e.g. judge: {kind: substring, substrings: [...]}")
    kind = spec.get("kind")
    if kind not in JUDGE_KINDS:
        raise SteerscopeError(f"judge.kind '{kind}' is unknown",
                              f"use one of {', '.join(JUDGE_KINDS)}")
    jk = JUDGE_KINDS[kind]
    allowed = {"kind", *jk.required, *jk.defaults}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SteerscopeError(f"judge key '{unknown[0]}' is unknown for kind '{kind}'",
                              f"use only {', '.join(sorted(allowed))}")
    for key in jk.required:
        if key not in spec or spec[key] in (None, ""):
            raise SteerscopeError(f"judge.{key} is missing (kind '{kind}' needs it)",
                                  f"add {key}: to the judge")
    out = {"kind": kind, **jk.defaults, **{k: v for k, v in spec.items() if k != "kind"}}
    if kind == "substring":
        out["substrings"] = _str_list(out, "substrings")
    elif kind == "regex":
        out["patterns"] = _str_list(out, "patterns")
        for p in out["patterns"]:
            try:
                re.compile(p)
            except re.error as exc:
                raise SteerscopeError(f"judge.patterns entry {p!r} does not compile ({exc})",
                                      "fix the regular expression (YAML: single-quote it)") from None
        mm = out["min_matches"]
        if isinstance(mm, bool) or not isinstance(mm, int) or mm < 1:
            raise SteerscopeError(f"judge.min_matches must be an integer >= 1, got {mm!r}",
                                  "write e.g. min_matches: 1")
    elif kind == "callable":
        check_callable_name(out["function"])
    elif kind == "chat" and out["template"] is not None and "{response}" not in out["template"]:
        raise SteerscopeError("judge.template has no {response} placeholder",
                              "include {prompt} and {response} in the template")
    return out


def check_judge_code(spec: Mapping[str, Any], allow_code: bool = False) -> None:
    """Consent for the code a judge runs: a ``callable`` judge, or a model judge whose model
    ships its own code (:func:`~steerscope.evaluate.judges.model_ships_code`, read from disk),
    without ``allow_code`` is a one-line error naming it and the flag; with it, the callable
    is imported and its signature checked now (a missing module or a function taking neither
    ``(response)`` nor ``(prompt, response)`` fails here, before any compute)."""
    full = check_judge_spec(spec)
    if full["kind"] == "callable":
        if not allow_code:
            raise SteerscopeError(f"judge.function '{full['function']}' is code named by the "
                                  "behaviour; it runs only when you allow it", CODE_CONSENT_FIX)
        judge_arity(import_callable(full["function"]), full["function"])
    elif JUDGE_KINDS[full["kind"]].takes_device and not allow_code:
        from steerscope.evaluate.judges import model_ships_code

        if model_ships_code(str(full["model"])):
            raise SteerscopeError(f"judge.model '{full['model']}' ships its own code (auto_map "
                                  "in its config); it runs only when you allow it",
                                  CODE_CONSENT_FIX)


def make_judge(spec: Mapping[str, Any], *, device=None, allow_code: bool = False):
    """The judge object for ``spec`` (checked with :func:`check_judge_spec`); model judges
    load lazily, on first use. ``allow_code``: consent to run the judge's code (a
    ``callable`` judge; a model's own code), see :func:`check_judge_code`."""
    full = check_judge_spec(spec)
    check_judge_code(full, allow_code)
    jk = JUDGE_KINDS[full["kind"]]
    kwargs = {k: v for k, v in full.items() if k != "kind"}
    if jk.takes_device:
        kwargs["device"] = device
        kwargs["trust_remote_code"] = bool(allow_code)
    return jk.build(**kwargs)


__all__ = ["CODE_CONSENT_FIX", "JUDGE_KINDS", "CallablePresence", "JudgeKind", "RegexPresence",
           "SubstringPresence", "check_judge_code", "check_judge_spec", "import_callable",
           "make_judge"]
