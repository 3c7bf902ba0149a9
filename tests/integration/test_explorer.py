"""The circuit explorer (report.html section and ``steerscope explore``) on a run folder made
from a tiny random chat model: its circuits equal the saved minimum circuit and
build_circuit, its svv tokens the svv report, its attention patterns and per-position
metric a plain Hugging Face forward with a hook; the data stays small on a 3B-model-sized
graph; in headless Chromium a click on a head shows its svv tokens and the size slider
changes the edge count, without console errors."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from steerscope.errors import SteerscopeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny matrices: one thread

METHODS = ("dim", "ntp")
ALPHAS = {"dim": -1.0, "ntp": 1.0}


def _examples(seed: int) -> dict[str, list]:
    from steerscope.patching.data import PatchingExample

    g = torch.Generator().manual_seed(seed)
    out = {}
    for ds, alpha in (("harmful/steered", -1.0), ("harmless/steered", 1.0)):
        ids = torch.randint(3, 250, (14,), generator=g)
        out[ds] = [PatchingExample(ids, 8, alpha, ds, "a prompt", "a response")]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder laid out like the pipeline's (run.json, results.json, patching/,
    circuits/ and svv/ stage folders) from real EAP-IG, circuits and svv on a tiny model."""
    from steerscope.mechanisms import svv_report
    from steerscope.models import load_model, save_tiny_chat_model
    from steerscope.patching.run import add_circuits, score_vector
    from steerscope.pipeline.stages.circuits import circuit_entry
    from steerscope.vectors import SteeringVector

    root = tmp_path_factory.mktemp("explorer_run")
    save_tiny_chat_model(root / "model", "llama")
    lm = load_model(str(root / "model"))
    results = {"format_version": 1, "steerscope_version": "0.1.0",
               "run": {"name": "explore", "dir": str(root), "config": "config.yaml",
                       "stages": {}},
               "model": {"id": "tiny", "revision": None, "path": str(root / "model"),
                         "architecture": "llama",
                         "steering_layer": 1, "n_layers": lm.arch.n_layers},
               "vectors": {}, "circuits": {}}
    for i, m in enumerate(METHODS):
        g = torch.Generator().manual_seed(10 + i)
        s = torch.randn(lm.arch.d_model, generator=g) * 6  # [d]
        sv = SteeringVector(s, 1, method=m)
        path = sv.save(root / "vectors" / f"{m}.safetensors")
        results["vectors"][m] = {"path": str(path), "layer": 1, "position": None,
                                 "norm": float(s.norm())}
        data = _examples(i)
        res = score_vector(lm.model, sv, data, steps=2)
        (root / "patching" / m).mkdir(parents=True)
        res.save(root / "patching" / m)
        (root / "patching" / m / "examples.json").write_text(
            json.dumps({k: [e.to_json() for e in v] for k, v in data.items()}))
        add_circuits(lm.model, sv, data, res, sizes=[4, 12, 40, 120], n_random=1,
                     refine_steps=2)
        res.save(root / "circuits" / m)
        results["circuits"][m] = circuit_entry(res, 0.85)
        svv_report(lm.model, lm.tokenizer, sv.vector, 1, head_scores=res.tables["head_scores"],
                   top_k=5, arch=lm.arch, vector_name=m).save(root / "svv" / f"{m}.json")
    results["sparsify"] = {m: {"grad": [{"sparsity": x, "harmful_asr": 1 - x,
                                         "harmless_asr": x} for x in (0.0, 0.5, 0.9)]}
                           for m in METHODS}
    results["sparsify"]["iou"] = []
    (root / "results.json").write_text(json.dumps(results))
    (root / "run.json").write_text(json.dumps({"stages": {
        s: {"dir": s, "status": "ran"} for s in ("patching", "circuits", "svv")}}))
    return root


@pytest.fixture(scope="module")
def lm(run_dir):
    from steerscope.models import load_model

    return load_model(str(run_dir / "model"))


@pytest.fixture(scope="module")
def data(run_dir, lm):
    from steerscope.report.explorer import read_results, run_explorer_data

    return run_explorer_data(read_results(run_dir), run_dir=run_dir, lm=lm)


def test_a_results_file_of_format_1_is_read_under_todays_keys(run_dir, data):
    """The run's results.json is of format 1 (sparsity points with refusal's harmful_asr /
    harmless_asr): the explorer reads it with today's keys (behaviour rate = 1 − ASR)."""
    assert json.loads((run_dir / "results.json").read_text())["format_version"] == 1
    for m in METHODS:
        pts = data["sparsify"][m]["grad"]
        assert [p["present_behaviour_rate"] for p in pts] == pytest.approx([0.0, 0.5, 0.9])
        assert [p["absent_behaviour_rate"] for p in pts] == pytest.approx([1.0, 0.5, 0.1])
        assert not any("harmful_asr" in p for p in pts)


def _step_edges(view: dict, step: int) -> set[str]:
    return {view["nodes"][e[0]]["id"] + "->" + e[5] for e in view["edges"] if e[4] <= step}


def test_slider_circuits_are_the_saved_minimum_circuit_and_nested(run_dir, data):
    from steerscope.patching import PatchingResult
    from steerscope.patching.circuits import build_circuit

    assert data["methods"] == list(METHODS)
    for m in METHODS:
        res = PatchingResult.load(run_dir / "circuits" / m)
        names = res.graph.edge_names
        view = data["vectors"][m]
        steps = view["steps"]
        assert [s["size"] for s in steps] == sorted({s["size"] for s in steps})
        saved_min = {names[i] for i in res.circuits["eap_ig.min"].nonzero().flatten().tolist()}
        mins = [i for i, s in enumerate(steps) if s["min"]]
        assert mins == [view["default_step"]]
        assert _step_edges(view, mins[0]) == saved_min  # the circuits stage's own circuit
        for i, s in enumerate(steps):
            edges = _step_edges(view, i)
            assert len(edges) == s["size"]
            built = build_circuit(res.graph, res.scores["eap_ig"].edges, s["requested"])
            assert edges == {names[j] for j in built.nonzero().flatten().tolist()}
            if i:
                assert _step_edges(view, i - 1) <= edges
        # scores and types as in the saved edge table
        table = res.edge_table()
        score = dict(zip(table["edge"], table["score_eap_ig"]))
        kind = dict(zip(table["edge"], table["in_type"]))
        for e in view["edges"]:
            name = view["nodes"][e[0]]["id"] + "->" + e[5]
            assert e[3] == pytest.approx(score[name]) and e[2] == kind[name]
        curve = results_curve(run_dir, m)  # the circuits stage's faithfulness by size
        for s in steps:
            if s["size"] in curve and not s["min"]:
                assert s["faithfulness"] == pytest.approx(curve[s["size"]])


def results_curve(run_dir: Path, m: str) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {n: f for n, f in results["circuits"][m]["faithfulness_curve"]}


def test_node_details_are_the_svv_report_and_the_top_edges(run_dir, data):
    for m in METHODS:
        view = data["vectors"][m]
        report = json.loads((run_dir / "svv" / f"{m}.json").read_text())
        by_head = {h["head"]: h for h in report["heads"]}
        heads = [n for n in view["nodes"] if n["kind"] == "attn"]
        assert heads
        for n in heads:
            assert view["svv"]["heads"][n["id"]]["tokens"] == [t for t, _ in
                                                               by_head[n["id"]]["tokens"]]
            assert n["score"] == pytest.approx(by_head[n["id"]]["score"])
            outs = [abs(s) for _, s in n["top_out"]]
            assert outs == sorted(outs, reverse=True)
            assert all(e.startswith(n["id"] + "->") for e, _ in n["top_out"])
        assert view["svv"]["sum"]["tokens"] == [t for t, _ in report["total"]["tokens"]]


def _hf_run(path: str, ids: torch.Tensor, s: torch.Tensor, layer: int, alpha: float):
    """Logits [S, V] and attentions of a plain transformers forward, steered by a hook."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    hook = model.model.layers[layer].register_forward_pre_hook(
        lambda mod, args, kw: ((args[0] + alpha * s,) + args[1:], kw) if args else
        (args, {**kw, "hidden_states": kw["hidden_states"] + alpha * s}), with_kwargs=True)
    with torch.no_grad():
        out = model(input_ids=ids[None], output_attentions=True)
    hook.remove()
    return out.logits[0].double(), [a[0] for a in out.attentions]


def test_example_view_matches_a_plain_hf_forward(run_dir, data):
    from steerscope.vectors import SteeringVector

    for m in METHODS:
        ex = data["vectors"][m]["example"]
        raw = json.loads((run_dir / "patching" / m / "examples.json").read_text())
        first = next(v[0] for v in raw.values() if v)
        ids = torch.tensor(first["input_ids"])
        s = SteeringVector.load(run_dir / "vectors" / f"{m}.safetensors").vector.float()
        steered, att = _hf_run(str(run_dir / "model"), ids, s, 1, first["alpha"])
        base, _ = _hf_run(str(run_dir / "model"), ids, s, 1, 0.0)
        pos = list(range(first["prompt_len"] - 1, len(ids) - 1))
        assert ex["positions"] == pos
        y, y_star = steered[pos].argmax(-1), base[pos].argmax(-1)
        idx = torch.arange(len(pos))
        m_s = steered[pos][idx, y] - steered[pos][idx, y_star]
        m_b = base[pos][idx, y] - base[pos][idx, y_star]
        assert ex["masked"] == (y == y_star).tolist()
        assert ex["m_steered"] == pytest.approx(m_s.tolist(), abs=1e-4)
        assert ex["m_base"] == pytest.approx(m_b.tolist(), abs=1e-4)
        assert not all(ex["masked"])
        rows = ex["attention"]["rows"]
        assert rows == pos and ex["attention"]["heads"]
        for head, b64 in ex["attention"]["heads"].items():
            L, H = (int(x) for x in head[1:].split(".h"))
            q = torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)
            got = q.view(len(rows), ex["attention"]["keys"]).double() / 255
            want = att[L][H][rows][:, :ex["attention"]["keys"]].double()
            assert (got - want).abs().max() <= 0.5 / 255 + 1e-6


def test_kl_metric_terms_and_mask():
    from steerscope.report.explorer_views import per_position_metric

    g = torch.Generator().manual_seed(3)
    s, b = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    b[2] = s[2]  # no change at position 2
    out = per_position_metric(s, b, metric="kl", tau=0.0)
    ps, pb = torch.softmax(s.double(), -1), torch.softmax(b.double(), -1)
    kl = lambda p, q: (p * (p / q).log()).sum(-1)  # noqa: E731
    assert out["m_steered"].tolist() == pytest.approx(kl(pb, ps).tolist())
    assert out["m_base"].tolist() == pytest.approx((-kl(ps, pb)).tolist())
    assert out["masked"].tolist() == [False, False, True, False, False]
    big = per_position_metric(s, b, metric="kl", tau=float(kl(ps, pb).max()) + 1)
    assert all(big["masked"].tolist())


def test_a_3b_sized_graph_stays_small():
    """Llama-3.2-3B from layer 12 (about 124k edges): the page stores at most max_edges."""
    from steerscope.patching import PatchingResult
    from steerscope.patching.graph import Graph
    from steerscope.patching.scores import Scores
    from steerscope.report.explorer import explorer_section
    from steerscope.report.explorer_data import MAX_EDGES, vector_view

    graph = Graph(28, 12, 24, 8)
    assert 120_000 < graph.n_edges < 130_000
    g = torch.Generator().manual_seed(0)
    edges = torch.randn(graph.n_edges, generator=g) ** 3  # heavy-tailed scores [E]
    sc = Scores("eap_ig", edges=edges, nodes=torch.randn(graph.n_up, generator=g))
    view = vector_view(PatchingResult(graph, {"eap_ig": sc}))
    assert view["steps"][-1]["size"] <= MAX_EDGES and len(view["edges"]) <= MAX_EDGES
    page = explorer_section({"version": 1, "methods": ["dim"], "graph": graph.to_json(),
                             "threshold": 0.85, "max_edges": MAX_EDGES,
                             "vectors": {"dim": view}, "sparsify": None})
    assert len(page.encode()) < 1_000_000, len(page.encode())
    assert "not run" not in page  # reserved for the report's sections that did not run


def test_explore_cli_builds_the_report_and_fails_in_one_line(run_dir, tmp_path, capsys):
    from steerscope.cli import main

    out = tmp_path / "out"
    assert main(["explore", str(run_dir), "--out", str(out), "--no-open", "--no-model"]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    text = (out / "report.html").read_text()
    assert 'id="explorer-data"' in text and "<h2>Circuits</h2>" in text
    assert '"example"' not in text  # --no-model: no example views
    assert main(["explore", str(run_dir), "--out", str(out), "--no-open", "--max-edges",
                 "0", "--rebuild"]) == 2
    assert "--max-edges" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "results.json", bare)
    (bare / "run.json").write_text(json.dumps({"stages": {}}))
    assert main(["explore", str(bare), "--no-open"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no patching results" in err and "\n" == err[-1]


def test_report_without_explorer_is_unchanged(run_dir, tmp_path):
    from steerscope.report import render_report
    from steerscope.report.explorer import build_run_report, read_results

    path = build_run_report(run_dir, tmp_path, explorer=False)
    plain, _ = render_report(read_results(run_dir))
    assert path.read_text() == plain and "explorer" not in plain


# --- the browser ------------------------------------------------------------------------------
def _driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -e '.[dev]')")
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
    driver_bin = shutil.which("chromedriver")
    if browser is None or driver_bin is None:
        pytest.skip("chromium or chromedriver is not installed (apt-get install -y chromium "
                    "chromium-driver; scripts/setup installs them when run as root)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1200,1700", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver_bin))


def test_explorer_in_headless_chromium(run_dir, data, tmp_path):
    from steerscope.report import build_report
    from steerscope.report.explorer import read_results

    report = build_report(read_results(run_dir), tmp_path / "report", explorer=data)
    driver = _driver(tmp_path)
    try:
        driver.set_page_load_timeout(60)
        driver.get(report.resolve().as_uri())
        driver.execute_script("document.getElementById('circuit-explorer').scrollIntoView()")
        count = driver.find_element("id", "ex-edge-count")
        view = data["vectors"]["dim"]
        default = view["steps"][view["default_step"]]["size"]
        assert count.text.strip() == f"{default} edges"
        # click the head with the largest |score| shown: its svv tokens appear in the panel
        heads = [n for n in view["nodes"] if n["kind"] == "attn" and n["entry"] <= view["default_step"]]
        head = max(heads, key=lambda n: abs(n["score"]))
        driver.find_element("css selector", f'#ex-graph g[data-node="{head["id"]}"] path').click()
        svv = driver.find_element("id", "ex-svv").text
        tokens = view["svv"]["heads"][head["id"]]["tokens"]
        visible = [t for t in tokens if t.strip() and t.isprintable()]
        assert visible and all(t.strip() in svv for t in visible)
        assert driver.find_elements("css selector", "#ex-panel canvas.ex-pattern")
        # the size slider: smallest circuit, then the largest
        from selenium.webdriver.common.keys import Keys

        slider = driver.find_element("id", "ex-size")
        slider.send_keys(Keys.HOME)
        small = count.text
        slider.send_keys(Keys.END)
        large = count.text
        assert small == f"{view['steps'][0]['size']} edges" != large
        assert large == f"{view['steps'][-1]['size']} edges"
        n_paths = len(driver.find_elements("css selector", "#ex-graph .ex-edge"))
        assert n_paths >= view["steps"][-1]["size"]
        # compare view and per-position view are drawn
        assert len(driver.find_elements("css selector", ".ex-compare svg.ex-small")) == 2
        assert driver.find_elements("css selector", ".ex-seq span.ex-tok")
        slider.send_keys(Keys.HOME)
        for _ in range(view["default_step"]):
            slider.send_keys(Keys.ARROW_RIGHT)
        driver.find_element("css selector", f'#ex-graph g[data-node="{head["id"]}"] path').click()
        shot = Path(os.environ.get("STEERSCOPE_SCREENSHOT_DIR", tmp_path)) / "explorer.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_explorer_data_errors():
    from steerscope.report.explorer_data import explorer_data, stage_dirs_of_run

    with pytest.raises(SteerscopeError, match="run.json does not exist"):
        stage_dirs_of_run("/nonexistent/run")
    with pytest.raises(SteerscopeError, match="positive number of edges"):
        explorer_data({}, {}, max_edges=0)
    assert explorer_data({}, {}) is None
