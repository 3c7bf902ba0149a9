"""Scale-out: the pipeline launched with torchrun on 2 CPU ranks (gloo) writes the same
artifacts as one process; sharding and the ordered merge on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from steerscope.errors import SteerscopeError
from steerscope.models import save_tiny_chat_model
from steerscope.pipeline import distributed
from steerscope.pipeline.distributed import Dist, gather_indexed, shard_indices

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys\nfrom steerscope.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_shards_cover_every_unit_once_and_merge_in_order():
    n = 11
    shards = [shard_indices(n, Dist(r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    # what each rank would contribute, merged as all_gather_object would hand it over
    parts = [{i: f"unit{i}" for i in s} for s in shards]
    merged: dict[int, str] = {}
    for p in parts:
        merged.update(p)
    assert gather_indexed(merged, n, Dist()) == [f"unit{i}" for i in range(n)]
    with pytest.raises(SteerscopeError, match=r"work units \[10\] were computed by no rank"):
        gather_indexed({i: i for i in range(10)}, n, Dist())


def test_device_per_rank_and_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() == Dist(0, 1, 0)
    assert distributed.device_for("cpu", Dist(1, 2, 1)) == "cpu"
    assert distributed.broadcast({"a": 1}, Dist()) == {"a": 1}


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _stage_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of every stage folder, except stage.json (timings, world size)."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.glob("[!.]*-*/**/*"))
            if p.is_file() and p.name != "stage.json"}


def test_two_gloo_ranks_write_the_same_artifacts_as_one_process(tmp_path):
    root = tmp_path
    save_tiny_chat_model(root / "model", "qwen2")
    (root / "harmful.txt").write_text("".join(f"how do I do bad thing {i} now\n"
                                              for i in range(14)))
    (root / "harmless.txt").write_text("".join(f"a nice fact about item {i}, please\n"
                                               for i in range(14)))
    cfg = {
        "name": "dist",
        "model": {"source": str(root / "model")},
        "data": {k: str(root / ("harmful.txt" if k.startswith("harmful") else "harmless.txt"))
                 for k in ("harmful_train", "harmless_train", "harmful_val", "harmless_val",
                           "harmful_test", "harmless_test")}
        | {"n_train": 4, "n_val": 3, "n_test": 7},
        "vectors": {"methods": ["dim", "pca"], "batch_size": 4,
                    "dim": {"filter": False, "kl_threshold": 1e9, "induce_threshold": -1e9,
                            "positions": [-1]}},
        "evaluation": {"max_new_tokens": 5, "batch_size": 2},
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    script = root / "cli.py"
    script.write_text(CLI)
    args = ["run", str(config), "--until", "evaluation", "--quiet"]

    one = subprocess.run([sys.executable, str(script), *args, "--out", str(root / "one")],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), *args, "--out", str(root / "two")],
        env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]

    (run_one,) = (root / "one").iterdir()
    (run_two,) = (root / "two").iterdir()
    assert run_one.name == run_two.name
    eval_dirs = list(run_two.glob("evaluation-*"))
    assert len(eval_dirs) == 1
    record = json.loads((eval_dirs[0] / "stage.json").read_text())
    assert record["world_size"] == 2
    table = json.loads((eval_dirs[0] / "evaluation.json").read_text())
    # 3 methods x (4 + 4 batches of 2) units were spread over the two ranks
    assert len(table["completions"]) == 3 and len(table["completions"]["dim"]["present"]) == 7
    files_one, files_two = _stage_files(run_one), _stage_files(run_two)
    assert any(k.startswith("evaluation-") for k in files_one)
    assert files_one == files_two
    assert not list(run_two.glob(".*tmp*"))  # rank 1's scratch folders are gone
