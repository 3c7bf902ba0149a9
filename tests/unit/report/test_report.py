"""The HTML report, from a synthetic results.json holding every section, checked in a real
headless browser (Debian chromium; skipped when it is not installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from steerscope.errors import SteerscopeError
from steerscope.pipeline.results import check_results
from steerscope.report import build_report, render_report

METHODS = ["dim", "ntp", "po"]


def full_results() -> dict:
    """A results.json with every documented section (docs/results.md), made-up numbers."""
    square = [[1.0, 0.3, 0.2], [0.3, 1.0, 0.4], [0.2, 0.4, 1.0]]
    curve = [[10, 0.1], [100, 0.5], [900, 0.87], [4000, 0.97], [8790, 1.0]]
    return {
        "format_version": 2,
        "steerscope_version": "0.1.0",
        "run": {"name": "synthetic", "dir": "/tmp/x", "config": "config.yaml",
                "stages": {s: "done" for s in ("model", "data", "vectors", "trained",
                                               "evaluation", "patching", "circuits", "freeze",
                                               "svv", "sparsify")}},
        "model": {"id": "toy", "revision": None, "architecture": "gemma2", "path": "/tmp/m",
                  "steering_layer": 15, "n_layers": 26, "d_model": 2304},
        "vectors": {m: {"path": f"/tmp/{m}.safetensors", "layer": 15, "position": -1,
                        "norm": 42.0} for m in METHODS},
        "steering": {m: {"present": {"behaviour_rate": 1 - a, "mean_score": -s, "judge_rate": a,
                                     "repetition_rate": 0.625 if m == "ntp" else 0.0},
                         "absent": {"behaviour_rate": 1 - b, "mean_score": s}}
                     for m, a, b, s in (("none", 0.0, 0.99, -3.0), ("dim", 0.8, 0.0, 2.0),
                                        ("ntp", 0.84, 0.03, 1.5), ("po", 0.8, 0.0, 1.7))},
        "cosine": {"methods": METHODS, "matrix": square},
        "circuits": {m: {"total_edges": 8790, "faithfulness_curve": curve,
                         "min_faithful_size": 900, "complement_faithfulness": 0.01,
                         "random_faithfulness": 0.05} for m in METHODS},
        "overlap": {"methods": METHODS,
                    "by_size": [{"size": 100, "matrix": square}, {"size": 900, "matrix": square}]},
        "interchange": {"methods": METHODS, "matrix": [[0.9, 0.88, 0.91]] * 3},
        "edge_types": {m: {"top_n": 100, "fractions": {"q": 0.0, "k": 0.0, "v": 0.16,
                                                       "mlp": 0.5, "logits": 0.34}}
                       for m in METHODS},
        "freeze": {m: {"present": {"behaviour_rate": 1 - h, "repetition_rate": hl},
                       "absent": {"behaviour_rate": 1 - b, "repetition_rate": bl},
                       "mean_drop": d}
                   for m, h, b, d, hl, bl in (("qk", 0.74, 0.03, 8.75, 0.375, 0.0),
                                              ("ov", 0.06, 0.57, 71.75, None, None),
                                              ("svv", 0.2, 0.35, 54.75, None, None),
                                              ("mlp", 0.57, 0.29, 44.5, None, None))},
        "svv": {m: [{"head": "L16H1", "score": 0.8, "tokens": ["forbid", " prohibition", "<b>"]},
                    {"head": "L17H3 (−)", "score": -0.2, "tokens": ["sorry", "\n"]}]
                for m in METHODS},
        "sparsify": {
            **{m: {rule: [{"sparsity": s, "present_behaviour_rate": 1 - 0.8 * (1 - s ** 4),
                           "absent_behaviour_rate": 1 - s ** 4} for s in (0.0, 0.5, 0.9, 0.99)]
                   for rule in ("grad", "ie", "dropout", "bottomk")} for m in METHODS},
            "iou": [{"level": t, "pair": [a, b], "iou": 0.5, "p_value": 1e-12}
                    for t in (0.1, 0.5, 1.0) for a, b in (("dim", "ntp"), ("dim", "po"),
                                                          ("ntp", "po"))],
        },
    }



def format1_results() -> dict:
    """The same results as :func:`full_results` as steerscope wrote them before format 2
    (refusal's words: harmful/harmless, ASR = 1 − behaviour rate), key for key; the sections
    format 2 did not change are :func:`full_results`'s."""
    res = full_results()
    res["format_version"] = 1
    res["steering"] = {m: {"harmful": {"asr": a, "mean_refusal_score": -s, "judge_asr": a,
                                       "repetition_rate": 0.625 if m == "ntp" else 0.0},
                           "harmless": {"asr": b, "mean_refusal_score": s}}
                       for m, a, b, s in (("none", 0.0, 0.99, -3.0), ("dim", 0.8, 0.0, 2.0),
                                          ("ntp", 0.84, 0.03, 1.5), ("po", 0.8, 0.0, 1.7))}
    res["freeze"] = {"qk": {"harmful_asr": 0.74, "harmless_asr": 0.03, "mean_drop": 8.75,
                            "harmful_repetition_rate": 0.375, "harmless_repetition_rate": 0.0},
                     "ov": {"harmful_asr": 0.06, "harmless_asr": 0.57, "mean_drop": 71.75},
                     "svv": {"harmful_asr": 0.2, "harmless_asr": 0.35, "mean_drop": 54.75},
                     "mlp": {"harmful_asr": 0.57, "harmless_asr": 0.29, "mean_drop": 44.5}}
    res["sparsify"] = {**{m: {rule: [{"sparsity": s, "harmful_asr": 0.8 * (1 - s ** 4),
                                      "harmless_asr": s ** 4} for s in (0.0, 0.5, 0.9, 0.99)]
                              for rule in ("grad", "ie", "dropout", "bottomk")}
                          for m in METHODS}, "iou": res["sparsify"]["iou"]}
    return res


# figures the full results must produce (name -> section)
EXPECTED_FIGURES = {"steering", "cosine", "faithfulness", "overlap_100", "overlap_900",
                    "interchange", "edge_types", "freeze", "sparsify_dim", "sparsify_ntp",
                    "sparsify_po", "iou"}


def test_the_synthetic_results_follow_the_documented_contract():
    present = check_results(full_results())
    assert set(present) == {"model", "vectors", "steering", "cosine", "circuits", "overlap",
                            "interchange", "edge_types", "freeze", "svv", "sparsify"}
    bad = full_results()
    bad["circuits"]["dim"]["faithfulness_curve"] = [[1, 2, 3]]
    with pytest.raises(SteerscopeError, match=r"circuits.dim needs 'faithfulness_curve'"):
        check_results(bad)
    bad = full_results()
    del bad["steering"]["none"]
    with pytest.raises(SteerscopeError, match=r"steering lacks the unsteered row 'none'"):
        check_results(bad)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    """The report of :func:`full_results`, built once (its folder also holds figures/)."""
    return build_report(full_results(), tmp_path_factory.mktemp("report"))


def test_full_report_has_every_section_and_figure(full_report):
    tmp_path = full_report.parent
    text = full_report.read_text()
    assert set(re.findall(r'data-figure="([^"]+)"', text)) == EXPECTED_FIGURES
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == EXPECTED_FIGURES
    assert "not run" not in text
    for heading in ("Steering", "Cosine similarity", "Circuits", "Circuit overlap",
                    "Interchangeability", "Edge types", "Freezing ablations",
                    "Steering value vectors", "Sparsification"):
        assert f">{heading}</h" in text
    assert "forbid" in text and "&lt;b&gt;" in text and "<b>" not in text  # tokens escaped
    assert "harmful loops" in text and "0.625" in text and "0.375" in text  # loop rates shown
    assert "harmful ASR" in text and "0.84" in text  # refusal's words and ASR, at display
    assert "http://" not in text and "https://" not in text  # self-contained
    # deterministic: the same results give the same bytes
    again, figs = render_report(full_results())
    assert again == text and set(figs) == EXPECTED_FIGURES


def test_missing_sections_say_not_run(tmp_path):
    r = full_results()
    for k in ("circuits", "overlap", "interchange", "edge_types", "freeze", "svv", "sparsify"):
        del r[k]
    r["run"]["stages"].update(patching="not available", circuits="blocked",
                              freeze="not available", svv="blocked", sparsify="disabled")
    text = build_report(r, tmp_path).read_text()
    assert text.count('class="notrun"') == 7
    assert "stage <code>freeze</code>: not available" in text
    assert "stage <code>sparsify</code>: disabled" in text


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK = """<script>window.addEventListener("load", function () {
  var rows = [];
  document.querySelectorAll("img").forEach(function (i) {
    rows.push([i.getAttribute("data-figure"), i.complete, i.naturalWidth, i.naturalHeight]);
  });
  var pre = document.createElement("pre");
  pre.id = "imgcheck";
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});</script>"""


def test_every_figure_renders_in_headless_chromium(full_report, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; scripts/setup "
                    "installs it when run as root)")
    html_path = full_report
    probe = tmp_path / "probe.html"  # the report plus a script listing each decoded image
    probe.write_text(html_path.read_text().replace("</body>", CHECK + "</body>"))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no image report from chromium: {proc.stderr[-1500:]}"
    rows = json.loads(match.group(1).replace("&quot;", '"'))
    assert {r[0] for r in rows} == EXPECTED_FIGURES
    for name, complete, width, height in rows:
        assert complete and width > 0 and height > 0, f"figure {name} did not render"


def test_report_cli_rebuilds_from_results_json(tmp_path, capsys):
    from steerscope.cli import main

    r = full_results()
    for k in ("circuits", "overlap", "interchange", "edge_types", "freeze", "svv", "sparsify"):
        del r[k]
    (tmp_path / "results.json").write_text(json.dumps(r))
    assert main(["report", str(tmp_path)]) == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "results.json does not exist" in capsys.readouterr().err


def test_report_figures_are_real_pngs(full_report):
    for png in Path(full_report.parent, "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _close(a, b) -> bool:
    """Equal JSON-like values, floats to 1e-12."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) < 1e-12
    return a == b


def test_results_of_format_1_are_read_under_todays_keys(tmp_path):
    """A results.json as steerscope wrote it before format 2 (refusal's words) is upgraded
    to today's keys with the same numbers (behaviour rate = 1 − ASR), and the report built
    from it is the report of today's results."""
    from steerscope.results_schema import upgrade_results

    old = format1_results()
    with pytest.raises(SteerscopeError, match="behaviour_rate"):
        check_results(old)  # today's contract
    up = upgrade_results(old)
    expected = full_results()
    for cells in expected["freeze"].values():  # format 1 recorded no alpha, drop or n
        for side in ("present", "absent"):
            cells[side] = {"alpha": None, "drop": None, "n": None, **cells[side]}
    assert _close(up, expected)
    assert upgrade_results(expected) is expected  # today's format: unchanged
    counts = upgrade_results({"data": {"counts": {"harmful_train": 4, "harmless_test": 2}}})
    assert counts["data"]["counts"] == {"present_train": 4, "absent_test": 2}
    text = build_report(old, tmp_path / "old").read_text()
    assert text == build_report(full_results(), tmp_path / "new").read_text()


def test_steerscope_report_rebuilds_a_format_1_run(tmp_path, capsys):
    """`steerscope report RUN` on a run folder whose results.json is of format 1."""
    from steerscope.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(format1_results()), encoding="utf-8")
    assert main(["report", str(run), "--no-model"]) == 0
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    text = (run / "report.html").read_text()
    assert ">harmful ASR<" in text and "not run" not in text
    assert set(re.findall(r'data-figure="([^"]+)"', text)) == EXPECTED_FIGURES
