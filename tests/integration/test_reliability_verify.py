"""Every byte a run wrote is covered by a digest: a stage's own stage.json (sealed with a
digest of itself), the top-level files (config.yaml, results.json, report.html, figures/,
recorded in a sealed run.json). Each row of the table damages one thing of a finished run:
``steerscope run --verify`` exits 2 with one line naming it, and a rerun says so, recomputes
(a stage) or rewrites (a top-level file) it and ends with the undamaged run's files."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import write_pipeline_workdir
from test_pipeline import _snapshot, tiny_config

from steerscope.cli import main
from steerscope.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return write_pipeline_workdir(tmp_path_factory.mktemp("verify"))


@pytest.fixture(scope="module")
def finished(workdir, tmp_path_factory):
    """One finished run of every stage (the tiny model): its config, the run folder, and
    the snapshot of its files."""
    cfg = tiny_config(workdir)
    out = tmp_path_factory.mktemp("reference")
    res = run_pipeline(cfg, out, progress=False)
    assert (res.run_dir / "report.html").is_file() and list(res.run_dir.glob("figures/*.png"))
    return cfg, res, _snapshot(res.run_dir)


def _stage_json(run_dir, stage):
    (path,) = run_dir.glob(f"{stage}-*/stage.json")
    return path


def _edit_digit(path, after: str = ""):
    """Change one digit (the first after the text ``after``) of a file: same size."""
    data = bytearray(path.read_bytes())
    start = data.find(after.encode()) if after else 0
    i = next(k for k in range(max(start, 0), len(data)) if chr(data[k]).isdigit())
    data[i] = ord("7") if data[i] != ord("7") else ord("3")
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _first_figure(run_dir):
    return sorted(run_dir.glob("figures/*.png"))[0]


# (id, damage(run_dir) -> None, the name --verify reports, the problem's words,
#  the stages the rerun recomputes)
CASES = [
    ("vectors-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "vectors"), '"outputs"'),
     "vectors", "stage.json was edited", ["vectors"]),
    ("data-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "data"), '"outputs"'),
     "data", "stage.json was edited", ["data"]),
    ("evaluation-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "evaluation"), '"outputs"'),
     "evaluation", "stage.json was edited", ["evaluation"]),
    ("patching-stage.json-outputs",
     lambda d: _edit_digit(_stage_json(d, "patching"), '"outputs"'),
     "patching", "stage.json was edited", ["patching"]),
    ("stage.json-seal-removed",
     lambda d: _stage_json(d, "trained").write_text(json.dumps(
         {k: v for k, v in json.loads(_stage_json(d, "trained").read_text()).items()
          if k != "record_digest"})),
     "trained", "stage.json records no digest of itself", ["trained"]),
    ("results.json-digit", lambda d: _edit_digit(d / "results.json", '"steering"'),
     "results.json", "results.json's content changed", []),
    ("results.json-truncated", lambda d: _truncate(d / "results.json"),
     "results.json", "bytes", []),
    ("report.html-deleted", lambda d: (d / "report.html").unlink(),
     "report.html", "report.html is missing", []),
    ("report.html-edited", lambda d: _flip_last_byte(d / "report.html"),
     "report.html", "report.html's content changed", []),
    ("figure-edited", lambda d: _flip_last_byte(_first_figure(d)),
     "figures/", "content changed", []),
    ("figure-added", lambda d: (d / "figures" / "extra.png").write_bytes(b"\x89PNG"),
     "figures/extra.png", "was not written by the run", []),
    ("config.yaml-edited", lambda d: _edit_digit(d / "config.yaml"),
     "config.yaml", "config.yaml's content changed", []),
    ("run.json-edited", lambda d: _edit_digit(d / "run.json", '"stages"'),
     "run.json", "run.json was edited", []),
    ("run.json-not-json", lambda d: (d / "run.json").write_text("[1, 2"),
     "run.json", "run.json is unreadable", []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_damage_is_found_by_verify_and_undone_by_a_rerun(finished, tmp_path, capsys, case):
    _, damage, name, words, recomputed = case
    cfg, ref, reference = finished
    out = tmp_path / "runs"
    out.mkdir()
    run_dir = out / ref.run_dir.name
    shutil.copytree(ref.run_dir, run_dir)
    damage(run_dir)
    capsys.readouterr()

    assert main(["run", str(run_dir), "--verify"]) == 2
    captured = capsys.readouterr()
    damaged = [line for line in captured.out.splitlines() if "damaged:" in line]
    assert len(damaged) == 1 and name in damaged[0] and words in damaged[0], captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], captured.err
    assert "rerun 'steerscope run'" in err[0]

    again = run_pipeline(cfg, out, progress=False)
    warning = capsys.readouterr().err
    assert again.ran == recomputed
    assert re.search(r"warning: .*damaged", warning), warning
    assert _snapshot(run_dir) == reference
    assert main(["run", str(run_dir), "--verify"]) == 0
    assert "all match" in capsys.readouterr().out


def test_steerscope_report_rerecords_the_report_it_rewrites(finished, tmp_path, capsys):
    """Rebuilding the report into the run folder (another title) is no damage: run.json's
    record of report.html and figures/ follows; results.json's record is kept."""
    _, ref, _ = finished
    run_dir = tmp_path / ref.run_dir.name
    shutil.copytree(ref.run_dir, run_dir)
    assert main(["report", str(run_dir), "--title", "Another title", "--no-model"]) == 0
    assert "Another title" in (run_dir / "report.html").read_text()
    assert main(["run", str(run_dir), "--verify"]) == 0
    _edit_digit(run_dir / "results.json", '"steering"')
    assert main(["report", str(run_dir), "--no-model"]) == 0
    capsys.readouterr()
    assert main(["run", str(run_dir), "--verify"]) == 2
    assert "results.json" in capsys.readouterr().err
