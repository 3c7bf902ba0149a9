"""``steerscope compare``: the headline cells of several run folders side by side, checked
against numbers computed here from the results.json files, as a table, JSON and HTML; bad
input gets one line and exit code 2."""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest

from steerscope.cli import main
from steerscope.results_schema import check_results

HOSTILE = "<img src=x onerror=alert(1)>&\"run\""
METHODS = ["dim", "ntp"]


def _results(rng: random.Random, *, behaviour: dict | None, full: bool) -> dict:
    """A results.json that passes check_results, random numbers throughout; ``full``: every
    section, else only the model and the steering table."""
    def cell():
        return {"behaviour_rate": round(rng.random(), 4), "mean_score": rng.uniform(-3, 3),
                "repetition_rate": round(rng.random(), 4)}

    res = {"format_version": 2,
           "model": {"id": f"m{rng.randrange(100)}", "revision": None, "architecture": "llama",
                     "path": "model", "steering_layer": rng.randrange(1, 9)},
           "steering": {m: {"present": cell(), "absent": cell()} for m in ["none"] + METHODS}}
    if behaviour is not None:
        res["behaviour"] = behaviour
    if not full:
        return res
    c = rng.uniform(-1, 1)
    res |= {
        "cosine": {"methods": METHODS, "matrix": [[1.0, c], [c, 1.0]]},
        "circuits": {m: {"total_edges": 400, "min_faithful_size": rng.randrange(1, 400),
                         "faithfulness_curve": [[10, 0.5], [400, 1.0]],
                         "complement_faithfulness": 0.1, "random_faithfulness": None,
                         "threshold": 0.85} for m in METHODS},
        "overlap": {"methods": METHODS, "by_size": [
            {"size": 50, "matrix": [[1.0, 0.3], [0.3, 1.0]]},
            {"size": 99, "matrix": [[1.0, 0.9], [0.9, 1.0]]}]},
        "interchange": {"methods": METHODS,
                        "matrix": [[rng.random() for _ in METHODS] for _ in METHODS]},
        "edge_types": {m: {"top_n": 100, "fractions": {
            k: rng.random() / 5 for k in ("q", "k", "v", "mlp", "logits")}} for m in METHODS},
        "freeze": {mode: {"present": {"behaviour_rate": 0.5}, "absent": {"behaviour_rate": 0.5},
                          "mean_drop": rng.uniform(0, 90)} for mode in ("none", "qk", "ov")},
        "svv": {m: [{"head": f"L{i}H0", "score": 1.0,
                     "tokens": [f"t{i}{j}" for j in range(8)]} for i in range(3)]
                for m in METHODS},
        "sparsify": {m: {"gradient": [
            {"sparsity": s, "present_behaviour_rate": 0.5, "absent_behaviour_rate": 0.5,
             "present_retention": hr, "absent_retention": br}
            for s, hr, br in ((0.5, 1.0, 0.99), (0.7, 0.95, 0.9), (0.8, 0.97, 0.89),
                              (0.9, None, 0.95))]} for m in METHODS} | {"iou": []},
    }
    return res


def format1(res: dict) -> dict:
    """``res`` as steerscope wrote results.json before format 2 (refusal's words: harmful /
    harmless cells with ``asr`` = 1 − behaviour rate, ``mean_refusal_score``, flat freeze and
    sparsity keys), written out here independently of steerscope's reader."""
    old = json.loads(json.dumps(res))
    old["format_version"] = 1
    names = {"present": "harmful", "absent": "harmless"}
    old["steering"] = {m: {names[side]: {"asr": 1 - c["behaviour_rate"],
                                         "refusal_rate": c["behaviour_rate"],
                                         "mean_refusal_score": c["mean_score"],
                                         "repetition_rate": c["repetition_rate"]}
                           for side, c in cells.items()} for m, cells in res["steering"].items()}
    if "freeze" in res:
        old["freeze"] = {mode: {"harmful_asr": 1 - e["present"]["behaviour_rate"],
                                "harmless_asr": 1 - e["absent"]["behaviour_rate"],
                                "mean_drop": e["mean_drop"]} for mode, e in res["freeze"].items()}
    if "sparsify" in res:
        old["sparsify"] = {m: rules if m == "iou" else {rule: [
            {"sparsity": p["sparsity"], "harmful_asr": 1 - p["present_behaviour_rate"],
             "harmless_asr": 1 - p["absent_behaviour_rate"],
             "harmful_retention": p["present_retention"],
             "harmless_retention": p["absent_retention"]} for p in pts]
            for rule, pts in rules.items()} for m, rules in res["sparsify"].items()}
    return old


@pytest.fixture
def runs(tmp_path) -> dict[str, tuple[Path, dict]]:
    rng = random.Random(3)
    made = {
        "refusal-run": _results(rng, behaviour=None, full=True),
        "lists-run": _results(rng, behaviour={"name": "lists", "definition": {"labels": {
            "behaviour": "numbered lists", "present": "list requests",
            "absent": "plain requests"}}}, full=True),
        HOSTILE: _results(rng, behaviour={"name": "formal", "definition": {}}, full=False),
    }
    made["lists-run"]["svv"]["dim"][0]["tokens"][1] = "</td><script>x|y</script>&amp;"
    out = {}
    for name, res in made.items():
        check_results(res)
        folder = tmp_path / name
        folder.mkdir()
        # the refusal run was written by an earlier version (results format 1)
        written = format1(res) if name == "refusal-run" else res
        (folder / "results.json").write_text(json.dumps(written), encoding="utf-8")
        out[name] = (folder, res)
    return out


def _expected(res: dict) -> dict[str, str]:
    """The cells of one run, computed here from its results dict (row label -> cell)."""
    labels = (res.get("behaviour") or {}).get("definition", {}).get("labels", {})
    default = ("harmful", "harmless") if "behaviour" not in res else ("present", "absent")
    present, absent = labels.get("present", default[0]), labels.get("absent", default[1])
    st = res["steering"]
    rows = {"behaviour": labels.get("behaviour") or (res.get("behaviour") or {}).get(
                "name", "refusal"),
            "model": res["model"]["id"], "steering_layer": str(res["model"]["steering_layer"]),
            "steering: methods": " / ".join(st)}
    for side, label in (("present", present), ("absent", absent)):
        rows[f"steering: {label}"] = " / ".join("{:.2f}".format(st[m][side]["behaviour_rate"])
                                                for m in st)
        rows[f"steering: {label} loops"] = " / ".join(
            "{:.2f}".format(st[m][side]["repetition_rate"]) for m in st)
    if "cosine" not in res:
        return rows
    rows["cosine: dim–ntp"] = "{:.2f}".format(res["cosine"]["matrix"][0][1])
    for m in METHODS:
        n = res["circuits"][m]["min_faithful_size"]
        rows[f"circuits: {m}"] = f"{n} of 400 ({n / 4:.1f}%)"
        f = res["edge_types"][m]["fractions"]
        rows[f"edge_types (q/k/v/mlp/logits %): {m}"] = "top-100: " + " / ".join(
            str(round(100 * f[k])) for k in ("q", "k", "v", "mlp", "logits"))
        heads = res["svv"][m]
        rows[f"svv: {m}"] = "; ".join(h["head"] + ": " + ", ".join(h["tokens"][:6])
                                      for h in heads[:2])
        # both retentions >= 0.9 at 0.5 and 0.7; 0.8 loses the absent side, 0.9 has no figure
        rows[f"sparsity at 90% retention: {m}"] = "gradient 70%"
    rows["overlap"] = "dim: 1.00 0.30; ntp: 0.30 1.00"  # the first size
    ic = res["interchange"]["matrix"]
    rows["interchange"] = "; ".join(f"{m}: " + " ".join(f"{v:.2f}" for v in row)
                                    for m, row in zip(METHODS, ic))
    for mode in ("qk", "ov"):
        rows[f"freeze mean drop: {mode}"] = "{:.1f}".format(res["freeze"][mode]["mean_drop"])
    return rows


def _markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = [[c.strip().replace("\\|", "|") for c in ln.strip("|").split(" | ")]
             for ln in lines]
    return split[0][1:], {row[0]: row[1:] for row in split[2:]}


def test_table_cells_match_the_results_files(runs, capsys):
    folders = [str(f) for f, _ in runs.values()]
    assert main(["compare", *folders]) == 0
    columns, rows = _markdown_rows(capsys.readouterr().out)
    assert columns == list(runs)
    for col, (_, res) in enumerate(runs.values()):
        expected = _expected(res)
        for label, cell in expected.items():
            assert rows[label][col] == cell, (label, list(runs)[col])
        # every other row is a cell this run lacks
        assert all(cells[col] == "—" for label, cells in rows.items() if label not in expected)
    assert rows["steering: list requests"][0] == "—"  # a refusal run has no list requests


def test_json_output(runs, capsys):
    folders = [str(f) for f, _ in runs.values()]
    assert main(["compare", *folders, "--json", "--names", "a,b,c"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["columns"] == ["a", "b", "c"]
    for name, (folder, res) in zip("abc", runs.values()):
        got = out["runs"][name]
        assert got["path"] == str(folder / "results.json")
        exp = _expected(res)
        assert got["model"] == exp["model"] and got["steering_layer"] == res["model"][
            "steering_layer"]
        assert got["behaviour"] == exp["behaviour"]
        for label, cell in exp.items():
            if ": " in label:
                section, key = label.split(": ", 1)
                assert got[section][key] == cell
    assert out["runs"]["c"]["circuits"] == {} and out["runs"]["c"]["overlap"] == "—"


class _Cells(HTMLParser):
    """The text of every table cell, row by row, and every attribute seen."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_page_is_escaped_and_self_contained(runs, tmp_path, capsys):
    folders = [str(f) for f, _ in runs.values()]
    page = tmp_path / "out" / "compare.html"
    page.parent.mkdir()
    assert main(["compare", *folders, "--html", str(page)]) == 0
    _, md_rows = _markdown_rows(capsys.readouterr().out)
    text = page.read_text(encoding="utf-8")
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<script" not in text and "&lt;/td&gt;&lt;script&gt;x|y" in text
    parsed = _Cells()
    parsed.feed(text)
    assert set(parsed.tags) <= {"html", "head", "meta", "title", "style", "body", "h1",
                                "table", "tr", "th", "td", "p"}
    assert not [a for a, _ in parsed.attrs if a in ("src", "href")]  # nothing to fetch
    header, paths, *body = parsed.rows
    assert header[1:] == list(runs)  # the hostile name, unescaped back to itself
    assert paths[1:] == [str(f / "results.json") for f, _ in runs.values()]
    assert {r[0]: r[1:] for r in body} == md_rows
    for col, (_, res) in enumerate(runs.values()):
        for label, cell in _expected(res).items():
            assert md_rows[label][col] == cell


def test_older_or_partial_sections_show_a_dash(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({
        "model": {"id": "x"}, "steering": {"none": {"harmful": {"asr": 0.25},
                                                    "harmless": {"asr": 0.5}}},
        "circuits": {"dim": 5}, "svv": {"dim": "L1H0"}}))
    assert main(["compare", str(old / "results.json")]) == 0
    _, rows = _markdown_rows(capsys.readouterr().out)
    # a format-1 file: the behaviour rate is 1 − its asr
    assert rows["steering: harmful"] == ["0.75"] and rows["steering: harmless"] == ["0.50"]
    assert rows["circuits"] == ["—"] and rows["svv"] == ["—"] and rows["cosine"] == ["—"]
    assert rows["steering_layer"] == ["—"]


@pytest.mark.parametrize("make, match", [
    (lambda d: d, "is not a run folder (no results.json)"),
    (lambda d: (d / "results.json").write_text("{\"model\": ") and d, "is not valid JSON"),
    (lambda d: (d / "results.json").write_text("[1, 2]") and d, "holds a JSON list"),
    (lambda d: (d / "results.json").write_text("{\"x\": 1}") and d,
     "has none of the results sections"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, make, match):
    folder = tmp_path / "bad"
    folder.mkdir()
    target = make(folder)
    assert main(["compare", str(target), "--html", str(tmp_path / "page.html")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err and match in err and str(folder) in err
    assert not (tmp_path / "page.html").exists()


def test_no_runs_and_bad_names(runs, capsys):
    assert main(["compare"]) == 2
    assert capsys.readouterr().err.strip() == ("error: no runs given: pass one or more run "
                                               "folders.")
    folder = str(next(iter(runs.values()))[0])
    assert main(["compare", folder, folder, "--names", "a"]) == 2
    assert "1 names for 2 runs" in capsys.readouterr().err
    assert main(["compare", folder, folder, "--names", "a,a"]) == 2
    assert "same name" in capsys.readouterr().err
    assert main(["compare", folder, folder]) == 0  # default names made unique
    columns, _ = _markdown_rows(capsys.readouterr().out)
    assert columns == ["refusal-run", "refusal-run (2)"]
