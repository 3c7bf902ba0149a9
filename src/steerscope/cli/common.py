"""What every ``steerscope`` command shares: the model options and loading, prompt and vector
arguments, comma-separated lists, ``--json`` output and the one-line error handling.

A command is a function ``cmd(args)`` that prints its human-readable lines and returns what it
computed as a JSON-able object. With ``--json`` :func:`run_command` sends those lines to
stderr and prints only the returned object, as strict JSON, on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError, os_error_code, write_error

MODEL_HELP = ("the model: 'default' (the embedded SmolLM2-135M-Instruct), 'demo' (the demo "
              "refusal model), a local folder, a .gguf file or a Hugging Face Hub id")
DTYPE_HELP = "weight dtype: float32 | bfloat16 | float16 | auto (default: %(default)s)"
DEVICE_HELP = "device: cpu | cuda | cuda:N | mps | auto (default: %(default)s)"
QUANTIZATION_HELP = ("load the weights quantized: int8 (torchao, CPU or CUDA) | bnb-int8 | nf4 | "
                     "fp4 (bitsandbytes, CUDA) (default: float; docs/quantization.md)")
SEED_HELP = "seed of the prompt sample (default: %(default)s)"
NAMED_FILE_HELP = "NAME=FILE (repeatable; a bare FILE is named by its stem)"
JUDGE_HELP = ("refusal judge: 'substring', 'llamaguard', 'classifier:ID' or 'chat:ID' "
              "(default: the refusal substrings)")


# --- arguments -----------------------------------------------------------------------------
def add_chat_template_arg(p: argparse.ArgumentParser) -> None:
    """``--chat-template``: replace the tokenizer's chat template (a name or Jinja text)."""
    p.add_argument("--chat-template", default=None,
                   help="prompt format: 'llama3-no-system-header' (the authors' released Llama-3 "
                        "format) or Jinja text (default: the tokenizer's own template)")


def add_model_args(p: argparse.ArgumentParser, *, positional: bool = True,
                   chat_template: bool = True, batch_size: int | None = None) -> None:
    """MODEL (when ``positional``), ``--dtype``, ``--device``, ``--quantization``,
    ``--chat-template`` (when
    ``chat_template``) and, when ``batch_size`` is given, ``--batch-size`` with that default."""
    if positional:
        p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--quantization", default=None, help=QUANTIZATION_HELP)
    if chat_template:
        add_chat_template_arg(p)
    if batch_size is not None:
        add_batch_size_arg(p, batch_size)


def add_batch_size_arg(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--batch-size", type=int, default=default,
                   help="prompts per forward pass or generation batch (default: %(default)s)")


def add_json_arg(p: argparse.ArgumentParser, what: str = "the results") -> None:
    """``--json``: print ``what`` as JSON on stdout (other output goes to stderr)."""
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as JSON on stdout; progress and notes go to stderr")


def add_allow_code_arg(p: argparse.ArgumentParser) -> None:
    """``--allow-code``: consent to run a judge's code (a behaviour's callable judge, a judge
    model's own code); never given by a behaviour file."""
    p.add_argument("--allow-code", action="store_true",
                   help="allow the behaviour's judge to run code: a 'callable' judge (a "
                        "Python function named in the behaviour file) or a judge model that "
                        "ships its own code. Without it such a run stops before any compute. "
                        "Give it only for files you trust (same as allow_code: true in the "
                        "run config)")


def add_sample_args(p: argparse.ArgumentParser, n: int | None, what: str = "prompts per set",
                    seed: bool = True) -> None:
    """``--n`` (a seeded sample of N prompts; None: all) and ``--seed``."""
    default = "all" if n is None else "%(default)s"
    p.add_argument("--n", type=int, default=n,
                   help=f"{what}: a seeded sample of N (default: {default})")
    if seed:
        p.add_argument("--seed", type=int, default=42, help=SEED_HELP)


def add_vector_specs(p: argparse.ArgumentParser, ie_note: str | None = None) -> None:
    """Repeatable ``--vector NAME=FILE`` and, when ``ie_note`` is given, ``--ie NAME=FILE``
    (the vector's dimension scores; ``ie_note`` says when they are needed)."""
    p.add_argument("--vector", action="append", default=[],
                   help=f"a steering vector as {NAMED_FILE_HELP}")
    if ie_note is not None:
        p.add_argument("--ie", action="append", default=[],
                       help=f"{NAMED_FILE_HELP}: the IE of the --vector of that NAME{ie_note}")


def add_run_folder_args(p: argparse.ArgumentParser, *, out: str, no_model: str) -> None:
    """RUN_DIR, ``--out`` and ``--no-model`` of the commands that read a run folder."""
    p.add_argument("run_dir", help="a run folder written by 'steerscope run' (it holds "
                                   "results.json)")
    p.add_argument("--out", help=out)
    p.add_argument("--no-model", action="store_true", help=no_model)


def add_prompt_pair(p: argparse.ArgumentParser, present: str, absent: str, *,
                    flag: str = "{}", note: str = "") -> None:
    """``--present`` and ``--absent`` (``flag``'s ``{}`` is the side: ``"{}-val"`` gives
    ``--present-val``; destinations ``present`` / ``absent``, ``present_val`` ...): prompt
    files or dataset names with these defaults; ``note`` says what they are used for.
    Refusal's spellings (``--harmful`` / ``--harmless``, ``--harmful-val`` ...) stay as
    hidden aliases of the same options."""
    for side, old, default in (("present", "harmful", present), ("absent", "harmless", absent)):
        dest = flag.format(side).replace("-", "_")
        p.add_argument("--" + flag.format(side), default=default, dest=dest,
                       help=f"{side} prompts{note}: a file or dataset name (default: "
                            "%(default)s)")
        p.add_argument("--" + flag.format(old), dest=dest, help=argparse.SUPPRESS)


STEERED_NOTE = (" (present steered with -s to remove the behaviour, absent with +s to induce "
                "it; refusal: harmful / harmless)")


def add_max_new_tokens_arg(p: argparse.ArgumentParser, default: int | None = 64) -> None:
    shown = "%(default)s" if default is not None else "the config's"
    p.add_argument("--max-new-tokens", type=int, default=default,
                   help=f"tokens generated per completion (greedy; default: {shown})")


def float_list(text: str | None, what: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]``; None or blank → ``[]``; each number in the range
    of flag ``what`` (:func:`steerscope.validation.parse_number_list`), which the one-line
    error names."""
    from steerscope.validation import parse_number_list

    return parse_number_list(text, what)


def named_files(specs: list[str], what: str) -> dict[str, str]:
    """NAME=FILE pairs (a bare FILE is named by its stem; names plain, as they name files)."""
    from steerscope.validation import parse_named_files

    return parse_named_files(specs, what)


def load_vectors(specs: list[str], *, required: bool = True) -> dict:
    """The ``--vector NAME=FILE`` steering vectors, read before any model loads; a one-line
    error when none is given and ``required`` (a multi-layer vector file gives a
    :class:`~steerscope.vectors.SteeringVectorSet`)."""
    from steerscope.vectors import load_vector_file

    if not specs and required:
        raise SteerscopeError("no steering vector given", "pass --vector NAME=FILE")
    return {name: load_vector_file(path)
            for name, path in named_files(specs, "vector").items()}


# --- model and prompts ---------------------------------------------------------------------
def load(args):
    """The :class:`~steerscope.models.loading.LoadedModel` named by ``args.model``,
    ``--dtype``, ``--device``, ``--quantization``, with ``--chat-template`` applied."""
    from steerscope.models.chat import set_chat_template
    from steerscope.models.loading import load_model

    lm = load_model(args.model, dtype=args.dtype, device=args.device,
                    quantization=getattr(args, "quantization", None))
    set_chat_template(lm.tokenizer, getattr(args, "chat_template", None))
    return lm


def read_prompts(source: str, n: int | None, seed: int) -> list[str]:
    """Instructions from a prompt file or named dataset, optionally a seeded sample of n."""
    from steerscope.data import load_prompts

    ps = load_prompts(source)
    if n is not None:
        ps = ps.sample(n, seed=seed, allow_fewer=True)
    return ps.instructions


def formatted(tok, instructions: list[str], system: str | None = None) -> list[str]:
    """Each instruction as a user turn in the tokenizer's chat template."""
    from steerscope.models.chat import format_prompt

    return [format_prompt(tok, p, system=system) for p in instructions]


# --- output and errors ---------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """``obj`` as strict JSON values: NaN/inf → None, paths → strings, tuples → lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def wants_json(args) -> bool:
    return bool(getattr(args, "json", False))


@contextlib.contextmanager
def interrupts_propagate():
    """Within the block, a Ctrl-C that lands while a finalizer (``__del__``) runs is not
    lost: Python reports a ``KeyboardInterrupt`` raised there as "ignored" and carries on
    (a run interrupted while the model loads used to finish with exit 0). The hook trips
    SIGINT again from a helper thread, so the interrupt is raised in the code that runs next
    (at the latest when the block ends)."""
    import _thread
    import threading

    before = sys.unraisablehook
    resent: list[threading.Timer] = []

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # not from here: a signal tripped inside the hook would be handled (and lost) here
            resent.append(threading.Timer(0.05, _thread.interrupt_main))
            resent[-1].daemon = True
            resent[-1].start()
        else:
            before(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = before
        for thread in resent:
            thread.join()  # the re-sent interrupt is raised here if not earlier
        if resent:
            raise KeyboardInterrupt


def run_command(args, stdout=None) -> int:
    """Run ``args.func(args)`` after the shared argument checks; print its result as JSON on
    ``stdout`` with ``--json`` (everything else it prints then goes to stderr). User errors
    become one ``error: ...`` line on stderr and exit code 2; Ctrl-C exits with 130."""
    stdout = sys.stdout if stdout is None else stdout
    as_json = wants_json(args)
    try:
        from steerscope.cli.options import parse_list_options
        from steerscope.validation import check_cli_args

        parse_list_options(args)  # comma-separated options of list config fields
        check_cli_args(args)
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(), \
                interrupts_propagate():
            result = args.func(args)
        if as_json and result is not None:  # None: nothing to print (a non-main rank)
            print(json.dumps(jsonable(result), indent=2, allow_nan=False), file=stdout)
    except SteerscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the OS refused a file operation no check could foresee
        print(f"error: {write_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os_error_code(exc) is None:  # e.g. a library's wrapped ENOSPC or EFBIG
            raise
        print(f"error: {write_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
