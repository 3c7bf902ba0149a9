"""A table of hostile inputs, each refused in one line (``error: ...`` naming the key, flag or
file; exit code 2) within seconds, before any weights load, with nothing written under
--out: out-of-range numbers in a config and on the command line, YAML alias bombs, deep
nesting, files that are not UTF-8 or not regular files, huge integers and names, prompts
longer than the limit. Also: Ctrl-C exits 130 even when it lands in a finalizer, and a
file-size limit (``ulimit -f``) is a one-line EFBIG error with nothing half-written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_pipeline_workdir
from test_pipeline import tiny_config

from steerscope.cli import main
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECONDS = 30  # generous on a loaded 2-core machine; each case takes well under a second alone


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = write_pipeline_workdir(tmp_path_factory.mktemp("reliability-inputs"))
    SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(0)),
                   layer=1).save(root / "v.safetensors")
    _write_hostile_files(root / "files")
    return root


@pytest.fixture
def no_weights(monkeypatch):
    import transformers

    def fail(*a, **k):
        raise AssertionError("weights were loaded before the input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)


def _bomb(levels: int = 10, width: int = 9) -> str:
    """YAML anchors a0..aN, each a list of ``width`` aliases of the one before: 9**10 values
    once expanded, a few hundred bytes on disk."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _write_hostile_files(d: Path) -> None:
    d.mkdir()
    bomb = _bomb()
    (d / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    (d / "deep70.json").write_text("[" * 70 + '"x"' + "]" * 70)
    (d / "hugeint.json").write_text("[" + "9" * 5000 + "]")
    (d / "long.txt").write_text("x" * 1_000_000 + "\n")  # one 1-MB prompt
    (d / "utf16.txt").write_bytes("Name three colours\n".encode("utf-16"))
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    os.mkfifo(d / "fifo.txt")
    (d / "zero.txt").symlink_to("/dev/zero")
    # behaviour files
    (d / "bomb_behaviour.yaml").write_text(bomb + "name: bomb\ndescription: *a10\n")
    (d / "deep_behaviour.yaml").write_text("name: deep\ndescription: " + "[" * 5000
                                           + "]" * 5000 + "\n")
    (d / "latin1_behaviour.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))


def _config_file(root: Path, tmp_path: Path, changes: dict | None = None,
                 text: str | None = None) -> Path:
    """The tiny config (DIM and the steering table only) with ``changes`` merged one section
    deep, or raw ``text`` (a format string: ``{config}`` is the tiny config's YAML)."""
    cfg = tiny_config(root, patching={"enabled": False}, circuits={"enabled": False},
                      freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False}, report={"enabled": False})
    for k, v in (changes or {}).items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = tmp_path / "config.yaml"
    body = yaml.safe_dump(cfg, sort_keys=False)
    path.write_text(body if text is None else text.replace("{config}", body))
    return path


def _refused(capsys, argv: list, out: Path, *needles: str) -> str:
    """Run ``steerscope *argv``; assert exit 2, one ``error:`` line holding every needle,
    within SECONDS, and nothing under ``out``."""
    t0 = time.perf_counter()
    code = main([str(a) for a in argv])
    seconds = time.perf_counter() - t0
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert seconds < SECONDS, f"took {seconds:.1f} s"
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    return lines[0]


# --- numbers in a pipeline config ------------------------------------------------------------
CONFIG_NUMBERS = [
    ({"evaluation": {"bypass_alpha": "1e39"}},
     "'evaluation.bypass_alpha' must be a finite number in [-10000, 10000], got 1e+39"),
    ({"evaluation": {"bypass_alpha": 3.3e38}}, "'evaluation.bypass_alpha' must be a finite"),
    ({"evaluation": {"induce_alpha": 10001}}, "'evaluation.induce_alpha' must be a finite"),
    ({"evaluation": {"max_new_tokens": 10**9}},
     "'evaluation.max_new_tokens' must be a positive integer (at most 32768)"),
    ({"evaluation": {"batch_size": 10**6}},
     "'evaluation.batch_size' must be a positive integer (at most 4096)"),
    ({"seed": 2**64}, "'seed' must be an integer in [0, 4294967295], got 18446744073709551616"),
    ({"data": {"n_train": 10**40}}, "'data.n_train' must be a positive integer (at most "
                                    "10000000), got an integer of 41 digits"),
    ({"data": {"seed": 2**32}}, "'data.seed' must be an integer in [0, 4294967295]"),
    ({"vectors": {"ntp": {"seed": [5, 2**70]}, "methods": ["dim", "ntp"]}},
     "'vectors.ntp.seed[1]' must be an integer in [0, 4294967295]"),
    ({"vectors": {"dim": {"filter": False, "kl_threshold": float("nan")}}},
     "'vectors.dim.kl_threshold' must be a finite number"),
    ({"vectors": {"preference": {"val_fraction": 1.5}}},
     "'vectors.preference.val_fraction' must be in (0, 1), got 1.5"),
    ({"vectors": {"batch_size": 0}}, "'vectors.batch_size' must be a positive integer"),
    ({"vectors": {"position": -(2**70)}}, "'vectors.position' must be an integer in"),
    ({"sparsify": {"taus": [0.5, float("inf")]}}, "'sparsify.taus'"),
    ({"patching": {"options": {"max_new_tokens": 10**6}}},
     "'patching.options.max_new_tokens' must be a positive integer (at most 32768)"),
    ({"name": "n" * 300}, "'name' 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...' is not a valid "
                          "run name"),
]


@pytest.mark.parametrize("changes,needle", CONFIG_NUMBERS,
                         ids=[n.split("'")[1] if "'" in n else n[:20] for _, n in CONFIG_NUMBERS])
def test_config_numbers_are_range_checked_when_read(capsys, workdir, tmp_path, no_weights,
                                                    changes, needle):
    out = tmp_path / "runs"
    _refused(capsys, ["run", _config_file(workdir, tmp_path, changes), "--out", out], out,
             "config key", needle)


# --- hostile config, behaviour and prompt files ---------------------------------------------
def _files(root: Path) -> Path:
    return root / "files"


HOSTILE_CONFIGS = [  # (id, raw text or None, changes, needles); {files}: the hostile files
    ("alias bomb", _bomb() + "{config}vectors:\n  methods: [dim, probe]\n  extraction:\n"
     "    probe:\n      C: *a10\n", None, ["config file", "expands to more than 100000 values"]),
    ("recursive alias", "{config}\nx: &x [*x]\n", None, ["has an alias inside its own anchor"]),
    ("deep flow nesting", "{config}\nx: " + "[" * 100_000 + "]" * 100_000 + "\n", None,
     ["config file", "nests more than 64 levels deep"]),
    ("deep block nesting", "{config}\n" + "".join(" " * i + "k:\n" for i in range(300))
     + " " * 300 + "k: 1\n", None, ["nests more than 64 levels deep"]),
    ("huge integer", "{config}\nseed: " + "9" * 5000 + "\n", None,
     ["config file", "holds a value Python cannot read"]),
    ("behaviour alias bomb", None, {"behaviour": "{files}/bomb_behaviour.yaml"},
     ["behaviour file", "bomb_behaviour.yaml expands to more than 100000 values"]),
    ("behaviour deep nesting", None, {"behaviour": "{files}/deep_behaviour.yaml"},
     ["behaviour file", "deep_behaviour.yaml nests more than 64 levels deep"]),
    ("behaviour latin-1", None, {"behaviour": "{files}/latin1_behaviour.yaml"},
     ["latin1_behaviour.yaml is not UTF-8 text"]),
    ("prompt JSON deep", None, {"data": {"harmful_train": "{files}/deep.json"}},
     ["prompt file", "deep.json nests more than 64 levels deep"]),
    ("prompt JSON 70 deep", None, {"data": {"harmful_train": "{files}/deep70.json"}},
     ["deep70.json nests more than 64 levels deep"]),
    ("prompt JSON huge integer", None, {"data": {"harmful_train": "{files}/hugeint.json"}},
     ["hugeint.json holds a value Python cannot read"]),
    ("prompt of 1 MB", None, {"data": {"harmful_train": "{files}/long.txt"}},
     ["long.txt: prompt 1 is 1000000 characters long, more than the limit of 100000"]),
    ("prompt UTF-16", None, {"data": {"harmful_train": "{files}/utf16.txt"}},
     ["utf16.txt is not UTF-8 text"]),
    ("prompt FIFO", None, {"data": {"harmful_train": "{files}/fifo.txt"}}, ["fifo.txt"]),
    ("prompt /dev/zero", None, {"data": {"harmful_train": "{files}/zero.txt"}}, ["zero.txt"]),
]


def _fill(value, files: Path):
    if isinstance(value, dict):
        return {k: _fill(v, files) for k, v in value.items()}
    return value.replace("{files}", str(files)) if isinstance(value, str) else value


@pytest.mark.parametrize("text,changes,needles", [c[1:] for c in HOSTILE_CONFIGS],
                         ids=[c[0] for c in HOSTILE_CONFIGS])
def test_hostile_files_are_one_line(capsys, workdir, tmp_path, no_weights, text, changes,
                                    needles):
    out = tmp_path / "runs"
    path = _config_file(workdir, tmp_path, _fill(changes, _files(workdir)), text)
    _refused(capsys, ["run", path, "--out", out], out, *needles)


@pytest.mark.parametrize("content,needle", [
    ("name: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (invalid continuation byte"),
    ("name: x\n".encode("utf-16"), "is not UTF-8 text (invalid start byte at byte 0)"),
    (b"\x7fELF\x00\x00name", "is not UTF-8 text (a NUL byte"),
    (b"x" * (2 << 20), "more than the limit of 1048576"),
], ids=["latin-1", "utf-16", "binary", "2 MB"])
def test_config_files_that_are_not_utf8_text(capsys, tmp_path, content, needle):
    path, out = tmp_path / "config.yaml", tmp_path / "runs"
    path.write_bytes(content)
    _refused(capsys, ["run", path, "--out", out], out, f"config file {path}", needle)


@pytest.mark.parametrize("changes", [{"behaviour": "b" * 300},
                                     {"data": {"harmful_train": "h" * 300 + ".txt"}},
                                     {"model": {"source": "m" * 300}}],
                         ids=["behaviour", "prompt file", "model"])
def test_a_300_character_name_is_one_line(capsys, workdir, tmp_path, no_weights, changes):
    out = tmp_path / "runs"
    _refused(capsys, ["run", _config_file(workdir, tmp_path, changes), "--out", out], out,
             "is too long for the file system")


@pytest.mark.parametrize("name", ["fifo.txt", "zero.txt"])
def test_a_config_that_is_not_a_regular_file(capsys, workdir, tmp_path, name):
    out = tmp_path / "runs"
    _refused(capsys, ["run", _files(workdir) / name, "--out", out], out,
             "is not a regular file (a pipe, device or socket)")


@pytest.mark.parametrize("name,needle", [
    ("deep.json", "deep.json nests more than 64 levels deep"),
    ("long.txt", "more than the limit of 100000"),
    ("fifo.txt", "fifo.txt is not a regular file"),
    ("zero.txt", "zero.txt is not a regular file"),
    ("utf16.txt", "utf16.txt is not UTF-8 text"),
    ("latin1.txt", "latin1.txt is not UTF-8 text"),
])
def test_hostile_prompt_files_on_the_command_line(capsys, workdir, tmp_path, no_weights, name,
                                                  needle):
    _refused(capsys, ["generate", workdir / "model", "--prompts", _files(workdir) / name],
             tmp_path / "nothing", needle)


# --- numbers on the command line -------------------------------------------------------------
def _cli_cases(root: Path, out: Path) -> dict[str, tuple[list, str]]:
    model, vec = root / "model", root / "v.safetensors"
    sweep = ["sparsify", "sweep", model, "--vector", f"dim={vec}", "--harmful",
             root / "harmful.txt", "--harmless", root / "harmless.txt", "--score-harmful",
             root / "harmful.txt", "--score-harmless", root / "harmless.txt", "--out", out]
    patch = ["patch", model, "--vector", f"dim={vec}", "--harmful", root / "harmful.txt",
             "--harmless", root / "harmless.txt", "--out", out]
    gen = ["generate", model, "--prompt", "Name three colours", "--vector", vec]
    return {
        "sweep --taus nan": (sweep + ["--taus", "0,nan"],
                             "--taus must be a finite number >= 0, got nan"),
        "sweep --taus -1": (sweep + ["--taus=-1"], "--taus must be a finite number >= 0, got -1"),
        "sweep --fractions 1.5": (sweep + ["--fractions", "0.5,1.5"],
                                  "--fractions must be a finite number in [0, 1), got 1.5"),
        "sweep --threshold nan": (sweep + ["--threshold", "nan"],
                                  "--threshold must be a finite number in (0, 1], got nan"),
        "patch --threshold nan": (patch + ["--threshold", "nan"],
                                  "--threshold must be a finite number in (0, 1], got nan"),
        "patch --steps 0": (patch + ["--steps", "0"], "--steps must be a positive integer"),
        "svv --heads -1": (["svv", model, "--vector", vec, "--heads=-1", "--out", out],
                           "--heads must be a positive integer (at most 10000000), got -1"),
        "svv --top-k 0": (["svv", model, "--vector", vec, "--top-k", "0", "--out", out],
                          "--top-k must be a positive integer"),
        "generate --max-new-tokens 1e9": (gen + ["--max-new-tokens", str(10**9)],
                                          "--max-new-tokens must be a positive integer (at "
                                          "most 32768)"),
        "generate --alpha 3.3e38": (gen + ["--alpha", "3.3e38"],
                                    "--alpha must be a finite steering coefficient (|alpha| "
                                    "at most 10000)"),
        "vectors dim --seed 2**64": (["vectors", "dim", model, "--harmful-train",
                                      root / "harmful.txt", "--out", out / "v.safetensors",
                                      "--seed", str(2**64)],
                                     "--seed must be an integer in [0, 4294967295]"),
        "sparsify apply --out 300-character name": (
            ["sparsify", "apply", vec, "--rule", "random", "--fraction", "0.5", "--out",
             out / ("n" * 300 + ".safetensors")],
            "is too long for the file system"),
        "vectors dim --max-layer-fraction 2": (["vectors", "dim", model, "--out",
                                                out / "v.safetensors",
                                                "--max-layer-fraction", "2"],
                                               "--max-layer-fraction must be a finite number "
                                               "in (0, 1]"),
    }


CLI_IDS = list(_cli_cases(Path("r"), Path("o")))


@pytest.mark.parametrize("case", CLI_IDS)
def test_cli_numbers_are_range_checked_before_anything_runs(capsys, workdir, tmp_path,
                                                            no_weights, case):
    out = tmp_path / "out"
    argv, needle = _cli_cases(workdir, out)[case]
    _refused(capsys, argv, out, needle)


# --- signals and limits ---------------------------------------------------------------------
def test_ctrl_c_in_a_finalizer_still_exits_130(capsys):
    """A KeyboardInterrupt raised inside ``__del__`` (where Ctrl-C lands when a garbage
    collection runs, e.g. while the model loads) is reported by Python as "ignored"; the CLI
    re-raises it and exits 130 instead of finishing with exit 0."""
    import argparse
    import gc
    import signal

    from steerscope.cli.common import run_command

    class Finalised:
        def __del__(self):
            raise KeyboardInterrupt

    reached = []

    def command(args):
        Finalised()  # collected at once: its __del__ raises
        gc.collect()
        deadline = time.monotonic() + 20  # the re-sent SIGINT is raised in this loop (at
        while time.monotonic() < deadline:  # once on an idle machine; a loaded one may
            time.sleep(0.001)  # schedule the re-sending thread late)
        reached.append("end")
        return {}

    # Python's own SIGINT handler, as in a real `steerscope` process (an earlier test in the
    # same pytest process may have left another one installed)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = run_command(argparse.Namespace(func=command))
    finally:
        signal.signal(signal.SIGINT, before)
    _, err = capsys.readouterr()
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert reached == []


def test_a_file_size_limit_is_one_line_with_nothing_half_written(capsys, workdir, tmp_path):
    """``ulimit -f``: safetensors reports EFBIG as text; the CLI names the file, exits 2 and
    leaves no partial file."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    big = tmp_path / "big.safetensors"
    SteeringVector(torch.randn(300_000), layer=1).save(big)  # 1.2 MB
    script = ("import resource, sys; from steerscope.cli import main; "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
              f"sys.exit(main(['sparsify', 'apply', {str(big)!r}, '--rule', 'random', "
              f"'--fraction', '0.1', '--out', {str(out / 'sparse.safetensors')!r}]))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and f"cannot write {out / 'sparse.safetensors'}" in lines[0]
    assert "file-size limit (errno EFBIG" in lines[0]
    assert list(out.iterdir()) == []
