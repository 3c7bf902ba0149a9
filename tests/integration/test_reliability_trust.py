"""Trust boundaries (issue 29, points 1, 3, 4), tried as a hostile user would:

- code named by a behaviour file (a ``callable`` judge, a judge model that ships its own code)
  runs only with the person running's consent (``--allow-code`` / ``allow_code: true`` in the
  run config, never in the behaviour file); modules that run programs are refused even then;
  an audit hook sees no shell, no process and no import/compile/exec of the judge's code in
  a run refused for want of consent;
- nothing is written outside ``--out``: names with path separators (``svv --name``, a
  vector's ``method`` metadata), a run folder or ``figures`` folder that is a link leading
  out;
- ``vectors.ntp.seed`` / ``vectors.po.seed`` lists are the training grid's seed axis.

Each hostile case: the command, the one-line message, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PIPELINE_HARMFUL, PIPELINE_HARMLESS, write_pipeline_workdir
from test_pipeline import tiny_config

from steerscope.cli import main
from steerscope.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

JUDGE_MODULE = "trust_case_judges"  # written into the workdir, on sys.path for every case


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = write_pipeline_workdir(tmp_path_factory.mktemp("trust"))
    SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(0)),
                   layer=1).save(root / "v.safetensors")
    SteeringVector(torch.randn(64, generator=torch.Generator().manual_seed(1)), layer=1,
                   method="../../../escaped").save(root / "v_path_method.safetensors")
    marker = root / "JUDGE_MODULE_IMPORTED"
    (root / f"{JUDGE_MODULE}.py").write_text(textwrap.dedent(f"""\
        import os
        open({str(marker)!r}, "w").write("imported")
        def says_no(text):
            return "no"
        def shell(text):
            return os.system("true") == 0
        def has_e(text):
            return "e" in text
        """))
    (root / "on.txt").write_text("\n".join(PIPELINE_HARMFUL) + "\n")
    (root / "off.txt").write_text("\n".join(PIPELINE_HARMLESS) + "\n")
    evil = root / "evil_judge"  # a judge model folder that ships its own code
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "architectures": ["EvilForSequenceClassification"],
        "auto_map": {"AutoConfig": "evil.EvilConfig",
                     "AutoModelForSequenceClassification": "evil.EvilModel"}}))
    (evil / "evil.py").write_text(f"open({str(root / 'EVIL_RAN')!r}, 'w').write('x')\n")
    return root


@pytest.fixture
def judge_path(workdir, monkeypatch):
    monkeypatch.syspath_prepend(str(workdir))
    yield
    sys.modules.pop(JUDGE_MODULE, None)


def _behaviour(root: Path, judge: dict, **extra) -> Path:
    path = root / f"b_{abs(hash(json.dumps(judge, sort_keys=True) + str(extra)))}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "trusty",
        "present": {s: str(root / "on.txt") for s in ("train", "val", "test")},
        "absent": {s: str(root / "off.txt") for s in ("train", "val", "test")},
        "judge": judge, "score_tokens": ["The"], **extra}))
    return path


def _small_config(root: Path, **changes) -> dict:
    """The tiny pipeline up to evaluation (DIM only) on a behaviour's prompt files (default:
    a regex judge, no code)."""
    cfg = tiny_config(root, patching={"enabled": False}, circuits={"enabled": False},
                      freeze={"enabled": False}, svv={"enabled": False},
                      sparsify={"enabled": False}, report={"enabled": False})
    cfg["behaviour"] = str(_behaviour(root, {"kind": "regex", "patterns": ["e"]}))
    cfg["data"] = {"n_train": 4, "n_val": 3, "n_test": 4}
    cfg["vectors"] = {**cfg["vectors"], "methods": ["dim"]}
    cfg.update(changes)
    return cfg


def _config_file(root: Path, tmp_path: Path, **changes) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_small_config(root, **changes)))
    return path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() \
        else []


# --- hostile cases: command, one-line message, exit 2, nothing written -----------------------
def _callable(fn: str) -> dict:
    return {"kind": "callable", "function": fn}


# (id, behaviour judge (None: a regex judge), extra behaviour keys, config changes, extra CLI
#  args, the message's parts)
RUN_CASES = [
    ("callable-without-consent", _callable(f"{JUDGE_MODULE}:has_e"), {}, {}, [],
     [f"behaviour {{b}}: judge.function '{JUDGE_MODULE}:has_e' is code named by the "
      "behaviour; it runs only when you allow it: pass --allow-code to 'steerscope run'"]),
    ("shell-judge-without-consent", _callable(f"{JUDGE_MODULE}:shell"), {}, {}, [],
     [f"judge.function '{JUDGE_MODULE}:shell' is code named by the behaviour", "--allow-code"]),
    ("os-system-even-allowed", _callable("os:system"), {}, {}, ["--allow-code"],
     ["judge.function 'os:system' names os, which is never allowed as a judge"]),
    ("subprocess-even-allowed", _callable("subprocess:getoutput"), {}, {}, ["--allow-code"],
     ["judge.function 'subprocess:getoutput' names subprocess, which is never allowed"]),
    ("eval-even-allowed", _callable("builtins:eval"), {}, {"allow_code": True}, [],
     ["judge.function 'builtins:eval' names builtins, which is never allowed"]),
    ("exec-even-allowed", _callable("builtins:exec"), {}, {}, ["--allow-code"],
     ["judge.function 'builtins:exec' names builtins"]),
    ("pickle-even-allowed", _callable("pickle:loads"), {}, {}, ["--allow-code"],
     ["judge.function 'pickle:loads' names pickle"]),
    ("consent-in-behaviour-file", _callable(f"{JUDGE_MODULE}:has_e"), {"allow_code": True},
     {}, [], ["behaviour key 'allow_code' is not honoured in a behaviour", "--allow-code"]),
    ("missing-module-with-consent", _callable("no_such_trust_module:f"), {}, {},
     ["--allow-code"], ["judge.function 'no_such_trust_module:f' cannot be imported"]),
    ("remote-code-classifier", {"kind": "classifier", "model": "{root}/evil_judge"}, {}, {},
     [], ["judge.model '{root}/evil_judge' ships its own code (auto_map in its config); it "
          "runs only when you allow it: pass --allow-code"]),
    ("remote-code-evaluation-judge", None, {}, {"evaluation": {
        "max_new_tokens": 4, "batch_size": 3, "judge": "classifier:{root}/evil_judge"}}, [],
     ["config key 'evaluation.judge': judge model '{root}/evil_judge' ships its own code",
      "--allow-code"]),
]


def _fill(obj, root: Path):
    if isinstance(obj, str):
        return obj.replace("{root}", str(root))
    if isinstance(obj, dict):
        return {k: _fill(v, root) for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_hostile_run(workdir, tmp_path, capsys, judge_path, case):
    _, judge, extra, changes, args, parts = case
    changes = _fill(changes, workdir)
    judge = {"kind": "regex", "patterns": ["e"]} if judge is None else _fill(judge, workdir)
    changes["behaviour"] = str(_behaviour(workdir, judge, **extra))
    out = tmp_path / "runs"
    config = _config_file(workdir, tmp_path, **changes)
    before = _files(workdir)
    code = main(["run", str(config), "--out", str(out), *args])
    stdout, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for part in parts:
        assert part.format(b=changes.get("behaviour"), root=workdir) in lines[0], lines[0]
    assert stdout == "" and not out.exists()  # nothing written, nothing computed
    assert _files(workdir) == before  # the judge module was not imported, no code ran
    assert JUDGE_MODULE not in sys.modules or "missing" in case[0]


def test_listing_a_behaviour_imports_nothing(workdir, capsys, judge_path):
    path = _behaviour(workdir, _callable(f"{JUDGE_MODULE}:shell"))
    assert main(["behaviours", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["judge"]["function"] == f"{JUDGE_MODULE}:shell"
    assert JUDGE_MODULE not in sys.modules
    assert not (workdir / "JUDGE_MODULE_IMPORTED").exists()


def test_a_bad_verdict_stops_the_run_with_nothing_half_written(workdir, tmp_path, capsys,
                                                               judge_path):
    """With consent, a judge returning "no" is a one-line error naming it; the stage that
    judged leaves no folder, the stages before it are finished and intact."""
    b = _behaviour(workdir, _callable(f"{JUDGE_MODULE}:says_no"))
    out = tmp_path / "runs"
    code = main(["run", str(_config_file(workdir, tmp_path, behaviour=str(b))), "--out",
                 str(out), "--allow-code", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: judge function '{JUDGE_MODULE}:says_no' returned 'no', "
                             "not True or False: make it return a bool"), err
    (run_dir,) = out.iterdir()
    folders = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert all((run_dir / f / "stage.json").is_file() for f in folders), folders
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]
    assert not any(f.startswith("evaluation-") for f in folders)
    assert (workdir / "JUDGE_MODULE_IMPORTED").exists()  # consent: the module was imported
    (workdir / "JUDGE_MODULE_IMPORTED").unlink()


def test_consent_from_the_flag_or_the_config_runs_the_judge(workdir, tmp_path, capsys,
                                                             judge_path):
    """The same run with --allow-code and with allow_code: true: the callable judge decides
    presence (``has_e``), and consent is not part of the run's hash (one run folder)."""
    b = str(_behaviour(workdir, _callable(f"{JUDGE_MODULE}:has_e")))
    out = tmp_path / "runs"
    assert main(["run", str(_config_file(workdir, tmp_path, behaviour=b)), "--out", str(out),
                 "--allow-code", "--until", "evaluation", "--quiet"]) == 0
    assert main(["run", str(_config_file(workdir, tmp_path, behaviour=b, allow_code=True)),
                 "--out", str(out), "--until", "evaluation", "--quiet"]) == 0
    capsys.readouterr()
    (run_dir,) = out.iterdir()
    assert "allow_code" not in (run_dir / "config.yaml").read_text()
    ev = json.loads(next(run_dir.glob("evaluation-*/evaluation.json")).read_text())
    comps = ev["completions"]["none"]
    assert comps  # the judge ran on every completion (has_e is a plain str test)
    (workdir / "JUDGE_MODULE_IMPORTED").unlink()


AUDIT_SCRIPT = r"""
import json, sys
sys.path.insert(0, {workdir!r})
from steerscope.cli import main
# libraries that start a helper process when first imported (ctypes.util runs ldconfig for
# huggingface_hub): imported before the hook, so that any process during the run is a finding
import huggingface_hub.hf_api, transformers, steerscope.pipeline  # noqa: E401,F401
judge_file = {judge_file!r}
seen = []
def hook(event, args):
    if event in ("os.system", "subprocess.Popen", "os.posix_spawn", "os.spawn", "os.fork",
                 "os.forkpty", "pty.spawn") or event.startswith("os.exec"):
        seen.append([event, repr(args)[:200]])
    elif event == "import" and args[0] == {module!r}:
        seen.append([event, args[0]])
    elif event == "compile" and len(args) > 1 and str(args[1]) == judge_file:
        seen.append([event, str(args[1])])
    elif event == "exec" and getattr(args[0], "co_filename", None) == judge_file:
        seen.append([event, judge_file])
    if seen and not {record_only!r}:
        raise RuntimeError("forbidden during a run: " + seen[-1][0])
sys.addaudithook(hook)
code = main({argv!r})
sys.stdout.flush()
print("AUDIT", json.dumps({{"code": code, "seen": seen}}))
"""


def _audited_run(workdir: Path, tmp_path: Path, behaviour: Path, *extra: str,
                 record_only: bool = False) -> dict:
    """A ``steerscope run`` in a fresh interpreter under an audit hook (hooks cannot be
    removed: a subprocess keeps this one clean); its exit code and the events seen."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = _config_file(workdir, tmp_path, behaviour=str(behaviour))
    argv = ["run", str(config), "--out", str(tmp_path / "runs"), "--until", "evaluation",
            "--quiet", *extra]
    script = AUDIT_SCRIPT.format(workdir=str(workdir), judge_file=str(workdir /
                                 f"{JUDGE_MODULE}.py"), module=JUDGE_MODULE, argv=argv,
                                 record_only=record_only)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("AUDIT ")]
    assert line, proc.stderr[-3000:]
    return {**json.loads(line[-1][6:]), "stderr": proc.stderr}


def test_audit_hook_sees_no_judge_code_without_consent(workdir, tmp_path):
    """A behaviour naming a shell-running callable judge, run without --allow-code: no
    shell, no process, no import/compile/exec of the judge module; exit 2, one line. The
    same run with --allow-code (hook recording only) shows the hook does see them."""
    behaviour = _behaviour(workdir, _callable(f"{JUDGE_MODULE}:shell"))
    refused = _audited_run(workdir, tmp_path / "refused", behaviour)
    assert refused["code"] == 2 and refused["seen"] == [], refused
    assert "--allow-code" in refused["stderr"] and "Traceback" not in refused["stderr"]
    assert not (tmp_path / "refused" / "runs").exists()
    allowed = _audited_run(workdir, tmp_path / "allowed", behaviour, "--allow-code",
                           record_only=True)
    events = {e for e, _ in allowed["seen"]}
    assert allowed["code"] == 0, allowed["stderr"][-2000:]
    # (importlib.import_module raises no "import" event: compile and exec of the file do)
    assert {"compile", "exec", "os.system"} <= events, allowed["seen"]
    (workdir / "JUDGE_MODULE_IMPORTED").unlink()


# --- 3. nothing written outside --out --------------------------------------------------------
SVV_CASES = [
    ("name-climbs-out", ["--name", "../../../X"], "--name '../../../X' cannot name a file"),
    ("name-absolute", ["--name", "/tmp/abs"], "--name '/tmp/abs' cannot name a file"),
    ("name-dotdot", ["--name", ".."], "--name '..' cannot name a file"),
    ("method-metadata-is-a-path", [], "the vector file's method (its metadata; pass --name) "
                                     "'../../../escaped' cannot name a file"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in SVV_CASES],
                         ids=[c[0] for c in SVV_CASES])
def test_svv_names_cannot_leave_out(workdir, tmp_path, capsys, args, message):
    vector = "v_path_method.safetensors" if not args else "v.safetensors"
    out = tmp_path / "a" / "b" / "c" / "out"
    before = _files(tmp_path)
    code = main(["svv", str(workdir / "model"), "--vector", str(workdir / vector), "--out",
                 str(out), *args])
    stdout, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert stdout == "" and _files(tmp_path) == before


# (id, the argv after the model/vector, the entry planted in --out as a link leading out)
LINK_CASES = [
    ("patch-vector-folder", ["patch", "{model}", "--vector", "dim={vector}", "--harmful",
                             "{root}/harmful.txt", "--harmless", "{root}/harmless.txt"], "dim"),
    ("sparsify-ie-file", ["sparsify", "sweep", "{model}", "--vector", "dim={vector}",
                          "--harmful", "{root}/harmful.txt", "--harmless",
                          "{root}/harmless.txt"], "ie_dim.safetensors"),
    ("svv-json", ["svv", "{model}", "--vector", "{vector}", "--name", "mine"],
     "svv_mine.json"),
    ("import-gguf-vector", ["vectors", "import-gguf", "{gguf}"], "cv_layer2.safetensors"),
]


@pytest.mark.parametrize("argv, planted", [c[1:] for c in LINK_CASES],
                         ids=[c[0] for c in LINK_CASES])
def test_links_planted_in_out_are_not_followed(workdir, tmp_path, capsys, argv, planted):
    """A link inside --out leading out (to a folder or a file) is refused in one line, exit
    2, before any compute, and nothing lands outside."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / planted).symlink_to(outside if "." not in planted else outside / "victim")
    gguf = tmp_path / "cv.gguf"
    if "{gguf}" in argv:  # llama.cpp steers from layer 2 on
        v2 = SteeringVector(torch.ones(64), layer=2).save(tmp_path / "v2.safetensors")
        assert main(["vectors", "export-gguf", str(v2), "--out", str(gguf)]) == 0
        capsys.readouterr()
    args = [a.format(model=workdir / "model", vector=workdir / "v.safetensors",
                     root=workdir, gguf=gguf) for a in argv]
    flag = "--out-dir" if "import-gguf" in argv else "--out"
    code = main([*args, flag, str(out)])
    stdout, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"{out / planted} is a symbolic link to {outside}" in lines[0], lines[0]
    assert list(outside.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == [planted]


def test_svv_writes_inside_out(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["svv", str(workdir / "model"), "--vector", str(workdir / "v.safetensors"),
                 "--out", str(out), "--name", "mine", "--no-figure", "--heads", "2"]) == 0
    capsys.readouterr()
    assert _files(out) == ["svv_mine.json"]


def test_a_run_folder_that_is_a_link_out(workdir, tmp_path, capsys):
    """A link planted where the run folder goes (its name is predictable) is refused."""
    from steerscope.pipeline import prepare

    out, outside = tmp_path / "runs", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    config = _config_file(workdir, tmp_path)
    run_dir = prepare(str(config), out)[2]
    run_dir.symlink_to(outside, target_is_directory=True)
    code = main(["run", str(config), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"{run_dir} is a symbolic link to {outside}, outside {out}" in lines[0]
    assert _files(outside) == []


def test_a_figures_folder_that_is_a_link_out(workdir, tmp_path, capsys):
    """``steerscope report`` into a folder whose ``figures`` is a link leading out."""
    out, outside = tmp_path / "report", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "figures").symlink_to(outside, target_is_directory=True)
    config = _config_file(workdir, tmp_path, report={"enabled": True})
    assert main(["run", str(config), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    code = main(["report", str(run_dir), "--out", str(out), "--no-model"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"{out / 'figures'} is a symbolic link to {outside}, outside {out}" in lines[0]
    assert _files(outside) == [] and not (out / "report.html").exists()
    # the run folder's own figures/ as a link: the report stage's publication refuses it
    figs = run_dir / "figures"
    if figs.exists():
        for p in figs.iterdir():
            p.unlink()
        figs.rmdir()
    figs.symlink_to(outside, target_is_directory=True)
    code = main(["run", str(config), "--out", str(tmp_path / "runs"), "--quiet",
                 "--force", "report"])
    lines = capsys.readouterr().err.strip().splitlines()
    # the run-file check first warns that the run's figures are gone (it rewrites them)
    errors = [line for line in lines if not line.startswith("warning:")]
    assert code == 2 and len(errors) == 1 and "is a symbolic link to" in errors[0], lines
    assert _files(outside) == []


# --- 4. the trained grid's seed lists ---------------------------------------------------------
def test_trained_seed_lists_are_the_grid_seed_axis(workdir, tmp_path):
    """``vectors.ntp.seed: [5]`` and ``vectors.po.seed: [5, 7]`` train with those seeds
    (was: TypeError in the trained stage)."""
    from steerscope.pipeline import run_pipeline

    cfg = _small_config(workdir, behaviour="refusal", data=tiny_config(workdir)["data"])
    cfg["vectors"] = {**tiny_config(workdir)["vectors"], "methods": ["dim", "ntp", "po"]}
    cfg["vectors"]["ntp"] = {**cfg["vectors"]["ntp"], "seed": [5]}
    cfg["vectors"]["po"] = {**cfg["vectors"]["po"], "seed": [5, 7]}
    res = run_pipeline(cfg, tmp_path / "runs", until="trained", progress=False)
    trained = res.outputs["trained"]
    ntp = SteeringVector.load(trained.path("ntp.safetensors"))
    po = SteeringVector.load(trained.path("po.safetensors"))
    assert ntp.hyperparameters["seed"] == 5
    assert po.hyperparameters["seed"] in (5, 7)


def test_train_configs_take_the_seed_list_as_the_axis():
    from steerscope.pipeline.stages.trained import train_configs
    from steerscope.pipeline.stages.vectors import TrainSection
    from steerscope.vectors.train_config import TrainConfig

    quick = train_configs("po", TrainSection(seed=[5, 7]), 42)
    assert [(c.lr, c.seed) for c in quick] == [(0.01, 5), (0.01, 7), (0.04, 5), (0.04, 7)]
    paper = train_configs("ntp", TrainSection(preset="paper", seed=[5]), 42)
    assert len(paper) == 4 and {c.seed for c in paper} == {5}
    assert all(isinstance(c, TrainConfig) for c in quick + paper)
    assert [c.seed for c in train_configs("ntp", TrainSection(), 9)] == [9, 9]


@pytest.mark.parametrize("seed, message", [
    (5, "config key 'vectors.ntp.seed' must be list of int or null, got 5"),
    ([], "config key 'vectors.ntp.seed' is empty"),
    ([-1], "'vectors.ntp.seed[0]' must be an integer in [0, 4294967295]"),
    ([2**64], "'vectors.ntp.seed[0]' must be an integer in [0, 4294967295]"),
])
def test_bad_seed_lists_are_one_line_at_config_load(workdir, tmp_path, capsys, seed, message):
    cfg = _small_config(workdir)
    cfg["vectors"] = {**cfg["vectors"], "methods": ["dim", "ntp"], "ntp": {"seed": seed}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code = main(["run", str(config), "--out", str(tmp_path / "runs")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "runs").exists()
