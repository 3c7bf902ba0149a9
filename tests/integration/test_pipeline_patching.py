"""The ``patching`` and ``circuits`` pipeline stages on a tiny random chat model: their
artifacts equal the patching library called directly (rollouts, EAP-IG, faithfulness curve,
minimum circuit, controls, overlap, interchange), results.json passes ``check_results`` and
the report renders the sections; changing ``circuits.*`` reruns the circuits stage only; a
run where nothing flips fails in one line naming the fix."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_pipeline_workdir

from steerscope.errors import SteerscopeError
from steerscope.pipeline import check_results, config_from_dict, prepare, run_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import tiny_config  # noqa: E402

PATCHING = {"flip": "tokens", "n_prompts": 2, "ig_steps": 2, "max_new_tokens": 4,
            "batch_size": 3, "top_n": 20}
CIRCUITS = {"sizes": [5, 20, 60, 1000], "n_random": 2, "refine_steps": 2,
            "position_metrics": True}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return write_pipeline_workdir(tmp_path_factory.mktemp("patching_stage"))


def _config(root: Path, patching=None, circuits=None, methods=("dim", "pca", "ntp")) -> dict:
    return tiny_config(root, patching={**PATCHING, **(patching or {})},
                       circuits={**CIRCUITS, **(circuits or {})},
                       vectors={"methods": list(methods)})


@pytest.fixture(scope="module")
def run(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run_pipeline(_config(workdir), out, until="circuits", progress=False)


@pytest.fixture(scope="module")
def model(run):
    from steerscope.models import load_model

    results = json.loads(run.results_path.read_text())
    return load_model(results["model"]["path"])


def _vector(run, method, arch):
    from steerscope.vectors import SteeringVector

    for stage in ("vectors", "trained"):
        entry = run.outputs[stage].outputs.get("methods", {}).get(method)
        if entry:
            return SteeringVector.load(run.outputs[stage].path(entry["file"]), arch)
    raise KeyError(method)


def _prompts(run):
    return json.loads(run.outputs["data"].path("prompts.json").read_text())


# --- patching ----------------------------------------------------------------------------------
def test_patched_methods_default_to_dim_ntp_po_present(run):
    assert run.ran[-2:] == ["patching", "circuits"]
    # pca is not patched by default; po is not in vectors.methods
    assert list(run.outputs["patching"].outputs["methods"]) == ["dim", "ntp"]
    cfg = config_from_dict({"vectors": {"methods": ["dim", "pca"]},
                            "patching": {"methods": ["pca", "dim"]}})
    from steerscope.pipeline.stages.patching import patched_methods

    assert patched_methods(cfg) == ["pca", "dim"]
    assert patched_methods(config_from_dict({"vectors": {"methods": ["po", "dim"]}})) == \
        ["dim", "po"]


def test_examples_are_the_token_flipped_rollouts(run, model):
    """examples.json = rollouts called directly, keeping every prompt whose steered greedy
    tokens differ from the base ones (at most n_prompts per dataset, input order)."""
    from steerscope.patching.data import rollouts

    p = _prompts(run)
    out = run.outputs["patching"]
    for m in out.outputs["methods"]:
        v = _vector(run, m, model.arch)
        saved = json.loads((out.path(m) / "examples.json").read_text())
        # the patching datasets keep refusal's names (harmful = the present side)
        for kind, side, alpha in (("harmful", "present", -1.0), ("harmless", "absent", 1.0)):
            rolls = rollouts(model.model, model.tokenizer, p[f"{side}_test"], v, alpha,
                             max_new_tokens=4, batch_size=3)
            changed = [r for r in rolls if r.steered_ids != r.base_ids][:2]
            assert changed, "the tiny test needs prompts whose tokens change"
            for which in ("steered", "base"):
                got = saved[f"{kind}/{which}"]
                assert [e["input_ids"] for e in got] == \
                    [r.prompt_ids + getattr(r, f"{which}_ids") for r in changed]
                assert all(e["alpha"] == alpha and e["prompt_len"] == len(r.prompt_ids)
                           for e, r in zip(got, changed))


def test_eap_ig_scores_equal_the_library_called_directly(run, model):
    from steerscope.patching import PatchingResult, eap_ig, head_node_scores
    from steerscope.patching.circuits import edge_type_shares, top_k_edges
    from steerscope.patching.example_files import load_examples
    from steerscope.patching.forward import GraphModel

    out = run.outputs["patching"]
    results = json.loads(run.results_path.read_text())
    for m in out.outputs["methods"]:
        v = _vector(run, m, model.arch)
        res = PatchingResult.load(out.path(m))
        examples = [e for exs in load_examples(out.path(m)).values() for e in exs]
        gm = GraphModel(model.model, v.layer, arch=model.arch)
        ref = eap_ig(gm, examples, v.vector, steps=2)
        got = res.scores["eap_ig"]
        for k in ("edges", "nodes", "steer_grad", "steer_ie"):
            torch.testing.assert_close(getattr(got, k), getattr(ref, k), rtol=0, atol=0)
        assert set(got.per_dataset) == set(ref.per_dataset)
        assert res.tables["head_scores"] == head_node_scores(ref, gm.graph)
        shares = edge_type_shares(gm.graph, top_k_edges(ref.edges, 20))
        et = results["edge_types"][m]
        assert et["top_n"] == 20
        assert et["fractions"] == pytest.approx(
            {k: shares["incoming"][k] for k in ("q", "k", "v", "mlp", "logits")})
        assert sum(et["fractions"].values()) == pytest.approx(1.0)


# --- circuits ----------------------------------------------------------------------------------
def test_circuits_equal_the_library_called_directly(run, model):
    from steerscope.patching import PatchingResult
    from steerscope.patching.circuits import (
        build_circuit,
        complement,
        evaluate_circuits,
        faithfulness_curve,
        interchange_matrix,
        minimal_faithful_circuit,
        overlap,
        random_circuit,
    )
    from steerscope.patching.example_files import load_examples
    from steerscope.patching.faithfulness import evaluate_position_metrics
    from steerscope.patching.forward import GraphModel

    results = json.loads(run.results_path.read_text())
    pout, cout = run.outputs["patching"], run.outputs["circuits"]
    names = list(pout.outputs["methods"])
    scores, data, mins = {}, {}, {}
    for m in names:
        v = _vector(run, m, model.arch)
        sc = PatchingResult.load(pout.path(m)).scores["eap_ig"].edges
        examples = [e for exs in load_examples(pout.path(m)).values() for e in exs]
        gm = GraphModel(model.model, v.layer, arch=model.arch)
        g = gm.graph
        curve = faithfulness_curve(gm, examples, v.vector, sc, CIRCUITS["sizes"])
        c = results["circuits"][m]
        assert c["total_edges"] == g.n_edges
        assert c["faithfulness_curve"] == [[n, pytest.approx(f, abs=1e-9)]
                                           for n, f in zip(curve.actual, curve.faithfulness)]
        assert c["faithfulness_curve"][-1][1] == pytest.approx(1.0, abs=1e-4)  # all edges
        # the released code's position metrics at every curve size
        pm = evaluate_position_metrics(gm, examples, v.vector,
                                       [build_circuit(g, sc, n) for n in CIRCUITS["sizes"]])
        assert [p["size"] for p in c["position_metrics"]] == curve.actual
        for entry, ref in zip(c["position_metrics"], pm):
            for part in ("harmful", "harmless"):
                assert entry[part]["n_positions"] == ref[part]["n_positions"]
                for k in ("kl_ratio", "dir_kl", "token_match"):
                    assert entry[part][k] == {x: pytest.approx(y, abs=1e-9) for x, y in
                                              ref[part].get(k, {}).items()}
        last = c["position_metrics"][-1]  # all edges: the steered model itself
        assert any(last[p]["n_positions"] for p in ("harmful", "harmless"))
        for p in ("harmful", "harmless"):
            if last[p]["n_positions"]:
                assert last[p]["token_match"]["overall"] == 1.0
                assert last[p]["kl_ratio"]["overall"] == pytest.approx(1.0, abs=1e-5)
        assert set(c["min_size_by_metric"]) == {"kl_ratio", "dir_kl", "token_match", "logprob"}
        assert c["random_kind"] == "pruned"
        circuit, f_min = minimal_faithful_circuit(gm, examples, v.vector, sc, threshold=0.85,
                                                  curve=curve, refine_steps=2)
        saved = PatchingResult.load(cout.path(m))
        assert torch.equal(saved.circuits["eap_ig.min"], circuit)
        size = int(circuit.sum())
        assert c["min_faithful_size"] == (size if f_min >= 0.85 else None)
        assert c["min_faithful_size"] is not None and c["min_faithfulness"] >= 0.85
        ev = evaluate_circuits(gm, examples, v.vector,
                               [complement(g, circuit), random_circuit(g, 2 * size, seed=42),
                                random_circuit(g, 2 * size, seed=43)])
        f = ev.faithfulness.tolist()
        assert c["complement_faithfulness"] == pytest.approx(f[0], abs=1e-9)
        assert c["random_faithfulness"] == pytest.approx((f[1] + f[2]) / 2, abs=1e-9)
        # the scores travel with the circuits (steerscope circuits reads the folder)
        torch.testing.assert_close(saved.scores["eap_ig"].edges, sc, rtol=0, atol=0)
        scores[m], data[m], mins[m] = sc, (examples, v.vector), circuit
    # overlap at matched sizes (default: each minimum circuit's size) and interchange
    o = results["overlap"]
    assert o["methods"] == names
    sizes = sorted({int(c.sum()) for c in mins.values()})
    assert [x["size"] for x in o["by_size"]] == sizes
    g = PatchingResult.load(pout.path(names[0])).graph
    for item in o["by_size"]:
        cs = [build_circuit(g, scores[m], item["size"]) for m in names]
        assert item["matrix"] == [[pytest.approx(overlap(a, b)) for b in cs] for a in cs]
        assert all(item["matrix"][i][i] == 1.0 for i in range(len(names)))
    gm = GraphModel(model.model, g.layer, arch=model.arch)
    inter = interchange_matrix(gm, mins, data)
    i = results["interchange"]
    assert i["methods"] == names
    assert i["matrix"] == [[pytest.approx(inter[a][b], abs=1e-9) for b in names]
                           for a in names]
    for k, m in enumerate(names):  # the diagonal is the method's own minimum circuit
        assert i["matrix"][k][k] == pytest.approx(results["circuits"][m]["min_faithfulness"])
    cmp = json.loads(cout.path("comparison.json").read_text())
    assert set(cmp) >= {"overlap", "jaccard", "interchange", "matched"}


def test_results_pass_check_and_the_report_renders_them(run, tmp_path):
    from steerscope.report import build_report

    results = json.loads(run.results_path.read_text())
    assert {"circuits", "overlap", "interchange", "edge_types"} <= set(check_results(results))
    html = build_report(results, tmp_path).read_text()
    assert "Circuits" in html and "Interchangeability" in html
    assert html.count('class="notrun"') == 3  # freeze, svv, sparsify (--until circuits)
    figs = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert {"faithfulness", "interchange", "edge_types"} <= figs
    assert any(f.startswith("overlap_") for f in figs)


# --- keys, skips, errors -----------------------------------------------------------------------
def _seed_run(src: Path, dst: Path, stages: tuple[str, ...]) -> None:
    """Copy finished stage folders of one run folder into another (same keys = skipped)."""
    dst.mkdir(parents=True, exist_ok=True)
    for d in src.glob("[!.]*-*"):
        if d.is_dir() and d.name.rsplit("-", 1)[0] in stages:
            shutil.copytree(d, dst / d.name)


def test_a_new_threshold_reruns_circuits_only(run, workdir, tmp_path):
    """circuits.threshold is in the circuits stage's key only: with the earlier stage folders
    in place, a changed threshold skips patching (EAP-IG) and recomputes the circuits."""
    cfg = _config(workdir, circuits={"threshold": 0.5})
    _, _, run_dir = prepare(cfg, tmp_path)
    assert run_dir.name != run.run_dir.name  # a changed config is a new run folder
    _seed_run(run.run_dir, run_dir, ("model", "data", "vectors", "trained", "strength",
                                     "evaluation", "patching", "circuits"))
    again = run_pipeline(cfg, tmp_path, until="circuits", progress=False)
    assert again.skipped == ["model", "data", "vectors", "trained", "strength", "evaluation",
                            "patching"]
    assert again.ran == ["circuits"]
    assert again.outputs["patching"].key == run.outputs["patching"].key
    assert again.outputs["circuits"].key != run.outputs["circuits"].key
    res = json.loads(again.results_path.read_text())
    assert all(c["threshold"] == 0.5 for c in res["circuits"].values())
    # a changed patching key reruns EAP-IG
    cfg2 = _config(workdir, patching={"ig_steps": 3})
    _, _, run_dir2 = prepare(cfg2, tmp_path)
    _seed_run(run.run_dir, run_dir2, ("model", "data", "vectors", "trained", "strength",
                                      "evaluation", "patching", "circuits"))
    third = run_pipeline(cfg2, tmp_path, until="circuits", progress=False)
    assert third.ran == ["patching", "circuits"]


def test_reverse_roles_on_the_coarse_graph(run, workdir, tmp_path, model):
    """patching.reverse / patching.graph reach the library: the stage's scores equal
    score_vector(reverse=True, coarse=True) and the circuits live on the coarse graph."""
    from steerscope.patching import PatchingResult
    from steerscope.patching.example_files import load_examples
    from steerscope.patching.graph import Graph
    from steerscope.patching.run import score_vector

    cfg = _config(workdir, patching={"reverse": True, "graph": "coarse"})
    _, _, run_dir = prepare(cfg, tmp_path)
    _seed_run(run.run_dir, run_dir, ("model", "data", "vectors", "trained", "strength",
                                     "evaluation"))
    again = run_pipeline(cfg, tmp_path, until="circuits", progress=False)
    assert again.ran == ["patching", "circuits"]
    folder = again.outputs["patching"].path("dim")
    res = PatchingResult.load(folder)
    assert res.graph.coarse and res.meta["reverse"] is True
    direct = score_vector(model.model, _vector(again, "dim", model.arch), load_examples(folder),
                          arch=model.arch, steps=PATCHING["ig_steps"], reverse=True,
                          coarse=True, top_k=PATCHING["top_n"])
    torch.testing.assert_close(res.scores["eap_ig"].edges, direct.scores["eap_ig"].edges)
    g = Graph.from_arch(model.arch, res.graph.layer, coarse=True)
    results = json.loads(again.results_path.read_text())
    assert all(c["total_edges"] == g.n_edges and c["graph"] == "coarse" and c["reverse"]
               for c in results["circuits"].values())
    check_results(results)


def test_nothing_flipped_is_a_one_line_error_naming_the_fix(run, workdir, tmp_path):
    cfg = _config(workdir, patching={"flip": "refusal"})  # a random model never refuses
    _, _, run_dir = prepare(cfg, tmp_path)
    _seed_run(run.run_dir, run_dir, ("model", "data", "vectors", "trained", "strength",
                                     "evaluation"))
    with pytest.raises(SteerscopeError, match=r"no test prompt flipped under steering for any "
                                              r"vector \(dim: .*set patching.flip: tokens") as e:
        run_pipeline(cfg, tmp_path, until="patching", progress=False)
    assert "\n" not in str(e.value)
    assert not list(run_dir.glob("patching-*"))


@pytest.mark.parametrize("section, match", [
    ({"patching": {"methods": ["pca"]}}, r"'patching.methods' has unknown value 'pca'"),
    ({"patching": {"methods": []}}, r"'patching.methods' is empty"),
    ({"patching": {"flip": "always"}}, r"'patching.flip' has unknown value 'always'"),
    ({"patching": {"metric": "l2"}}, r"'patching.metric' has unknown value 'l2'"),
    ({"patching": {"tau": 1.0}}, r"'patching.tau' applies to metric kl only"),
    ({"patching": {"metric": "kl", "tau": -1.0}}, r"'patching.tau' must be a finite number"),
    ({"patching": {"top_n": 0}}, r"'patching.top_n' must be a positive integer"),
    ({"patching": {"graph": "medium"}}, r"'patching.graph' has unknown value 'medium'"),
    ({"patching": {"grad_at": "norm"}}, r"'patching.grad_at' has unknown value 'norm'"),
    ({"patching": {"logits_at": "cap"}}, r"'patching.logits_at' has unknown value 'cap'"),
    ({"patching": {"pooling": "sum"}}, r"'patching.pooling' has unknown value 'sum'"),
    ({"circuits": {"sizes": []}}, r"'circuits.sizes' is empty"),
    ({"circuits": {"overlap_sizes": [0]}}, r"'circuits.overlap_sizes' must be a positive"),
    ({"circuits": {"refine_steps": -1}}, r"'circuits.refine_steps' must be >= 0"),
])
def test_bad_patching_and_circuits_keys_fail_in_one_line(section, match):
    with pytest.raises(SteerscopeError, match=match) as e:
        config_from_dict({"vectors": {"methods": ["dim", "ntp"]}, **section})
    assert "\n" not in str(e.value)


def test_two_gloo_ranks_write_the_same_patching_artifacts(workdir, tmp_path):
    """Rollout batches and EAP-IG examples sharded over 2 torchrun ranks (gloo): the patching
    stage's files are byte-identical to one process."""
    import subprocess

    import yaml
    from test_distributed import CLI, REPO, _env, _stage_files

    cfg = _config(workdir, methods=["dim"])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    args = [str(script), "run", str(config), "--until", "patching", "--quiet"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=_env(),
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", *args, "--out", str(tmp_path / "two")],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    (run_one,) = (tmp_path / "one").iterdir()
    (run_two,) = (tmp_path / "two").iterdir()
    (patch_dir,) = run_two.glob("patching-*")
    assert json.loads((patch_dir / "stage.json").read_text())["world_size"] == 2
    files_one, files_two = _stage_files(run_one), _stage_files(run_two)
    assert any(k.startswith("patching-") and k.endswith("scores.safetensors") for k in files_one)
    assert files_one == files_two
