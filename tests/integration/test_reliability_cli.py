"""Every user error is one line (``error: ...``, exit code 2) and leaves nothing half-written:
non-finite steering coefficients, bad batch sizes, vector names that would escape --out,
output paths that are files or under files, read-only and full disks; artifacts get the
permissions the umask gives any new file."""

from __future__ import annotations

import errno
import math
import os
import stat
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_pipeline_workdir
from safetensors import SafetensorError
from safetensors.torch import save_file
from test_pipeline import tiny_config

from steerscope.cli import main
from steerscope.errors import SteerscopeError
from steerscope.pipeline import registry as reg
from steerscope.pipeline import run_pipeline
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = write_pipeline_workdir(tmp_path_factory.mktemp("reliability-cli"))
    SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(0)),
                   layer=1).save(root / "v.safetensors")
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _small_config(root: Path, **changes) -> dict:
    """The tiny pipeline up to evaluation (DIM only): a few seconds."""
    cfg = tiny_config(root, patching={"enabled": False}, circuits={"enabled": False},
                      freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False}, report={"enabled": False}, **changes)
    cfg["vectors"] = {**cfg["vectors"], "methods": ["dim"]}
    return cfg


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


# --- 2. non-finite steering coefficients -----------------------------------------------------
@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "1e39"])
def test_non_finite_alpha_is_rejected_by_every_command(capsys, workdir, alpha):
    model, vec = workdir / "model", workdir / "v.safetensors"
    for argv in (("generate", model, "--prompt", "Name three colours", "--vector", vec),
                 ("score", model, "--prompt", "Name three colours", "--vector", vec)):
        code, out, err = _run(capsys, *argv, f"--alpha={alpha}")
        _one_line_error(code, err, "--alpha must be a finite steering coefficient",
                        repr(float(alpha)))
        assert out == ""
    code, _, err = _run(capsys, "patch", model, "--vector", f"dim={vec}", "--harmful",
                        workdir / "harmful.txt", "--harmless", workdir / "harmless.txt",
                        "--out", workdir / "never", f"--bypass-alpha={alpha}")
    _one_line_error(code, err, "--bypass-alpha must be a finite")
    assert not (workdir / "never").exists()


def test_non_finite_alpha_is_rejected_by_the_library():
    from steerscope.models import tiny_model, validate_model
    from steerscope.runtime import Runtime
    from steerscope.runtime.interventions import Add, steer

    sv = SteeringVector(torch.ones(64), layer=1)
    for bad in (math.nan, math.inf, -math.inf, 1e39):
        with pytest.raises(SteerscopeError, match="must be a finite steering coefficient"):
            sv.intervention(bad)
        with pytest.raises(SteerscopeError, match="must be a finite steering coefficient"):
            steer(sv.vector, 1, bad)
    model = tiny_model("llama")
    validate_model(model)
    op = Add("resid_pre", 1, vector=torch.ones(64), alpha=math.nan)
    with pytest.raises(SteerscopeError, match="must be a finite steering coefficient"):
        with Runtime(model, [op]):
            pass
    assert sv.intervention(-3.0).alpha == -3.0  # finite values pass unchanged


# --- 7. batch sizes, vector metadata, long prompts ---------------------------------------
@pytest.mark.parametrize("size", ["0", "-1"])
def test_non_positive_batch_size_is_one_line(capsys, workdir, size):
    code, _, err = _run(capsys, "generate", workdir / "model", "--prompt", "hi",
                        "--batch-size", size)
    _one_line_error(code, err, "--batch-size must be a positive integer")
    code, _, err = _run(capsys, "vectors", "extract", workdir / "model", "--positive",
                        workdir / "harmful.txt", "--negative", workdir / "harmless.txt",
                        "--layer", "1", "--out", workdir / "x.safetensors", "--batch-size", size)
    _one_line_error(code, err, "--batch-size must be a positive integer")


def test_library_generate_rejects_a_zero_batch_size():
    from steerscope.generation import generate
    from steerscope.models import tiny_model, tiny_tokenizer

    with pytest.raises(SteerscopeError, match="batch_size must be a positive integer"):
        generate(tiny_model("llama"), tiny_tokenizer(), ["hi"], batch_size=0)


def test_a_prompt_longer_than_the_context_warns():
    from steerscope.generation import generate
    from steerscope.models import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama"), tiny_tokenizer()
    n_ctx = model.config.max_position_embeddings
    words = n_ctx  # the longest prompt that still fits the context alone
    while len(tok(" ".join(["word"] * words), add_special_tokens=False)["input_ids"]) > n_ctx:
        words -= 1
    long = " ".join(["word"] * words)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(model, tok, ["short"], max_new_tokens=2)
        assert not [w for w in caught if "context" in str(w.message)]
        generate(model, tok, [long, "short"], max_new_tokens=8)  # 5 tokens a word
    msgs = [str(w.message) for w in caught if "context" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].startswith("1 prompt(s) with their new tokens are "
                                                 f"longer than the model's context of {n_ctx}")
    with pytest.raises(SteerscopeError, match=f"1 prompt.s. are longer than the model's "
                                              f"context of {n_ctx} tokens"):
        generate(model, tok, [long + " word word", "short"], max_new_tokens=2)


@pytest.mark.parametrize("metadata,needle", [
    ("[1, 2]", "metadata that is not a JSON object (a list)"),
    ('{"layer": ', "metadata of vector file"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests more than 64 levels deep"),
    ('{"layer": ' + "9" * 5000 + "}", "holds a value Python cannot read"),
], ids=["list", "not-json", "nested-deep", "huge-integer"])
def test_vector_metadata_that_is_not_an_object_is_one_line(capsys, tmp_path, metadata, needle):
    path = tmp_path / "bad.safetensors"
    save_file({"vector": torch.ones(64)}, str(path), metadata={"steerscope": metadata})
    code, _, err = _run(capsys, "vectors", "info", path)
    _one_line_error(code, err, needle)


# --- 5. vector names cannot write outside --out ------------------------------------------
@pytest.mark.parametrize("name", ["x/../../../ESCAPED", "..", "a.b", "", "/abs"])
def test_vector_names_that_are_not_plain_are_rejected(capsys, workdir, tmp_path, name):
    out = tmp_path / "a" / "b" / "c" / "OUT"
    vec = workdir / "v.safetensors"
    code, _, err = _run(capsys, "sparsify", "sweep", workdir / "model", "--vector",
                        f"{name}={vec}", "--harmful", workdir / "harmful.txt", "--harmless",
                        workdir / "harmless.txt", "--out", out)
    _one_line_error(code, err, "bad vector name")
    for argv in (("patch", workdir / "model", "--harmful", workdir / "harmful.txt",
                  "--harmless", workdir / "harmless.txt", "--out", out),
                 ("evaluate", workdir / "model", "--harmful", workdir / "harmful.txt",
                  "--harmless", workdir / "harmless.txt")):
        code, _, err = _run(capsys, *argv, "--vector", f"{name}={vec}")
        _one_line_error(code, err, "bad vector name")
    assert not list(tmp_path.rglob("*.safetensors"))


# --- 4. operating-system errors -------------------------------------------------------------
def test_run_out_that_is_a_file_or_under_a_file(capsys, workdir, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_small_config(workdir)))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = _run(capsys, "run", config, "--out", blocker)
    _one_line_error(code, err, f"{blocker} is a file, not a folder")
    code, _, err = _run(capsys, "run", config, "--out", blocker / "sub" / "runs")
    _one_line_error(code, err, f"is under {blocker}, which is a file")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["afile", "config.yaml"]


def test_vectors_extract_out_an_existing_folder_fails_before_compute(capsys, workdir, tmp_path,
                                                                     monkeypatch):
    import steerscope.models.loading as loading

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the --out check")

    monkeypatch.setattr(loading, "load_model", no_model)
    code, _, err = _run(capsys, "vectors", "extract", workdir / "model", "--positive",
                        workdir / "harmful.txt", "--negative", workdir / "harmless.txt",
                        "--layer", "1", "--out", tmp_path)
    _one_line_error(code, err, f"--out {tmp_path} is an existing folder")
    assert list(tmp_path.iterdir()) == []


def _refuse(code: int, where: str):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), where)
    return fail


def test_read_only_file_system_lock_and_report(capsys, workdir, tmp_path, monkeypatch):
    """Root ignores chmod: the read-only file system is simulated by os.mkdir / mkstemp
    failing with EROFS, as the kernel would."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_small_config(workdir)))
    out = tmp_path / "ro"
    with monkeypatch.context() as m:
        m.setattr(os, "mkdir", _refuse(errno.EROFS, str(out)))
        code, _, err = _run(capsys, "run", config, "--out", out)
    _one_line_error(code, err, "the file system is read-only", "another --out")
    assert not out.exists()
    # the report's figures: nothing half-written in the report folder
    res = run_pipeline(config, tmp_path / "runs", progress=False)
    report_out = tmp_path / "report"
    report_out.mkdir()
    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", _refuse(errno.EROFS, str(report_out)))
        code, _, err = _run(capsys, "report", res.run_dir, "--out", report_out)
    _one_line_error(code, err, "read-only")
    assert list(report_out.rglob("*.*")) == []


def test_disk_full_during_circuits_is_one_line_and_resumes(capsys, workdir, tmp_path,
                                                           monkeypatch):
    """safetensors reports ENOSPC as SafetensorError text: one line, rc 2, no stage folder
    and no temporary file of the failed stage; the rerun resumes at circuits."""
    import steerscope.patching.result as result_mod

    cfg = tiny_config(workdir, freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False}, report={"enabled": False})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    circuits = reg.get_stage("circuits")
    in_circuits = []

    def tracked(ctx, section, inputs):
        in_circuits.append(True)
        try:
            return circuits.fn(ctx, section, inputs)
        finally:
            in_circuits.clear()

    def full_disk(tensors, path, *a, **k):
        if in_circuits:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                  'StorageFull, message: "No space left on device" })')
        return save_file(tensors, path, *a, **k)

    with monkeypatch.context() as m:
        m.setitem(reg.STAGES, "circuits", circuits.__class__(
            **{**circuits.__dict__, "fn": tracked}))
        m.setattr(result_mod, "save_file", full_disk)
        code, _, err = _run(capsys, "run", config, "--out", out, "--quiet")
    line = _one_line_error(code, err, "no space left on the device to write",
                           "free some disk space")
    assert ".safetensors" in line
    run_dir = next(out.iterdir())
    assert not list(run_dir.glob("circuits-*")) and _leftovers(run_dir) == []
    code, stdout, err = _run(capsys, "run", config, "--out", out, "--quiet")
    assert code == 0, err
    status = dict(line.split()[:2] for line in stdout.splitlines() if line.startswith(
        ("patching ", "circuits ")))
    assert status == {"patching": "skipped", "circuits": "ran"}, stdout


# --- 6. permissions follow the umask -------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_artifacts_get_the_permissions_the_umask_gives(workdir, tmp_path, umask):
    old = os.umask(umask)
    try:
        res = run_pipeline(_small_config(workdir), tmp_path, progress=False)
    finally:
        os.umask(old)
    files = [p for p in res.run_dir.rglob("*") if p.is_file()]
    folders = [res.run_dir, *(p for p in res.run_dir.rglob("*") if p.is_dir())]
    assert len(files) > 5 and len(folders) > 4
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    for p in folders:
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask, p
