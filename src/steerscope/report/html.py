"""The self-contained HTML report, built from results.json alone.

:func:`build_report` writes ``report.html`` (figures embedded as base64 PNG, no external
resources) and the same figures as ``figures/*.png``. Each results.json section present gets
its table and figure; a section that is absent says "not run" with the stage's status.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerscope.artifacts import atomic_write, child_path
from steerscope.report import figures
from steerscope.results_schema import side_labels
from steerscope.safe_files import read_json_file

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:.8em;color:#555}
.notrun{color:#888;font-style:italic}
.tokens{font-family:monospace;font-size:.85em;text-align:left}
.meta{color:#555;font-size:.9em}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _e(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


class _Doc:
    """Accumulates HTML parts and the figures (name -> PNG bytes)."""

    def __init__(self):
        self.parts: list[str] = []
        self.figures: dict[str, bytes] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<figure><img alt="{_e(caption)}" data-figure="{_e(name)}" '
                 f'src="data:image/png;base64,{data}"><figcaption>{_e(caption)}</figcaption>'
                 "</figure>")

    def table(self, head: list[str], rows: list[list[str]], left: int = 1) -> None:
        th = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>'
                     for i, h in enumerate(head))
        body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>'
                                        for i, c in enumerate(r)) + "</tr>" for r in rows)
        self.add(f"<table><tr>{th}</tr>{body}</table>")

    def not_run(self, results: dict, stage: str) -> None:
        status = results.get("run", {}).get("stages", {}).get(stage, "not run")
        self.add(f'<p class="notrun">not run (stage <code>{_e(stage)}</code>: {_e(status)})</p>')


def _label(r: dict, key: str) -> str:
    """Display word of the run's behaviour (``behaviour``, ``present``, ``absent``; refusal's
    words when results.json records no behaviour): :func:`~steerscope.report.compare.side_labels`."""
    return side_labels(r)[key]


def _shown(r: dict) -> tuple[str, Callable[[Any], Any]]:
    """(name, value from a behaviour rate) of the rate the report shows: refusal runs show
    the ASR (1 − behaviour rate, as the paper), other behaviours the behaviour rate."""
    if _label(r, "behaviour") == "refusal":
        return "ASR", lambda x: None if x is None else 1.0 - x
    return "rate", lambda x: x


def _judge_kind(r: dict) -> str:
    judge = r.get("behaviour", {}).get("definition", {}).get("judge", {})
    kind = judge.get("kind", "substring")
    return "substring matching" if kind == "substring" else f"{kind} judge"


def _model(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Model</h2>")
    m = r.get("model")
    if not m:
        return doc.not_run(r, "model")
    keys = ["id", "revision", "architecture", "n_layers", "d_model", "n_heads", "n_kv_heads",
            "steering_layer", "dtype"]
    doc.table(["", "value"], [[_e(k), _e(m.get(k))] for k in keys if k in m])


def _vectors(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Steering vectors</h2>")
    v = r.get("vectors")
    if not v:
        return doc.not_run(r, "vectors")
    doc.table(["method", "layer", "position", "norm"],
              [[_e(m), _num(e.get("layer")), _num(e.get("position")), _num(e.get("norm"))]
               for m, e in v.items()])
    sel = r.get("dim_selection")
    if sel:
        doc.add(f'<p class="meta">DIM selection: layer {_num(sel.get("layer"))}, position '
                f'{_num(sel.get("position"))}, bypass {_num(sel.get("bypass"))}, induce '
                f'{_num(sel.get("induce"))}, KL {_num(sel.get("kl"), 4)}</p>')


def _steering(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Steering</h2>")
    s = r.get("steering")
    if not s:
        return doc.not_run(r, "evaluation")
    what, shown = _shown(r)
    rows = []
    for m, cells in s.items():
        h, b = cells.get("present", {}), cells.get("absent", {})
        rows.append([_e(m), _num(shown(h.get("behaviour_rate"))), _num(h.get("judge_rate")),
                     _num(h.get("mean_score")), _num(h.get("repetition_rate")),
                     _num(shown(b.get("behaviour_rate"))), _num(b.get("mean_score")),
                     _num(b.get("repetition_rate"))])
    on, off, name = _label(r, "present"), _label(r, "absent"), _label(r, "behaviour")
    up, down = ("↑", "↓") if what == "ASR" else ("↓", "↑")
    doc.add(f'<p class="meta">{_e(on.capitalize())} prompts are steered with −s ({what} {up} '
            f"is better), {_e(off)} prompts with +s ({what} {down} is better). "
            + (f"ASR = 1 − the {_e(name)} rate" if what == "ASR" else f"Rate = the {_e(name)} rate")
            + f" by the behaviour's judge ({_e(_judge_kind(r))}). Loops = the fraction of "
            "completions that are repetition loops, which a substring judge reads "
            "unreliably.</p>")
    doc.table(["vector", f"{on} {what}", f"judge {what if what == 'ASR' else 'rate'}",
               f"{on} {name} score", f"{on} loops", f"{off} {what}", f"{off} {name} score",
               f"{off} loops"], rows)
    doc.figure("steering", figures.steering_bars(s, side_labels(r)), f"{what} by method")
    doc.add("<h2>Cosine similarity</h2>")
    c = r.get("cosine")
    if not c:
        return doc.not_run(r, "evaluation")
    doc.figure("cosine", figures.heatmap(c["methods"], c["matrix"], "Cosine similarity",
                                         vmin=-1, vmax=1, cmap="RdBu_r"),
               "Cosine similarity between the steering vectors")


def _coherence_cells(c: dict) -> list[str]:
    return [_num(c.get("alpha")), _num(c.get("behaviour_rate")),
            _num(c.get("coherent_behaviour_rate")), _num(c.get("coherent_share")),
            _num(c.get("repetition_rate")), _num(c.get("fluency"), 2),
            _num(c.get("ce_reference"), 3)]


COHERENCE_HEAD = ["α", "behaviour rate", "among coherent", "coherent share", "loops",
                  "fluency", "ce_reference"]


def _coherence(doc: _Doc, r: dict) -> None:
    s = r.get("steering") or {}
    rows = [[_e(m), _e(side), *_coherence_cells(c)] for m, cells in s.items()
            for side, c in cells.items() if "fluency" in c]
    if not rows:
        return
    doc.add("<h2>Coherence of the steered text</h2>")
    threshold = next(c["fluency_threshold"] for cells in s.values() for c in cells.values()
                     if "fluency_threshold" in c)
    doc.add('<p class="meta">fluency = mean per-token cross-entropy (nats) of the completions '
            "under the unsteered model; ce_reference = the steered model's cross-entropy on "
            "the unsteered model's own completions of absent-side val prompts, minus the "
            "unsteered one; a completion is coherent when it is not a loop and its fluency is "
            f"at most {_num(threshold, 2)}; among coherent = the behaviour rate among the "
            "coherent completions.</p>")
    doc.table(["vector", "side", *COHERENCE_HEAD], rows, left=2)


def _strength(doc: _Doc, r: dict) -> None:
    curve = r.get("alpha_curve")
    if not curve:
        return
    chosen = r.get("alpha_chosen") or {}
    doc.add("<h2>Steering strength</h2>")
    doc.add('<p class="meta">The strength sweep on the val prompts (evaluation.alpha: auto): '
            "per vector and use, the smallest |α| whose coherent success (the share of "
            "completions that are coherent and show the use's intended outcome) reaches the "
            "configured share of the curve's best.</p>")
    doc.table(["vector", "use", "chosen α", "coherent success", "best", "rule"],
              [[_e(m), _e(u), _num(c.get("alpha")), _num(c.get("coherent_success")),
                _num(c.get("best_coherent_success")), _e(c.get("rule"))]
               for m, uses in chosen.items() for u, c in uses.items()], left=2)
    doc.figure("alpha_curve", figures.alpha_curves(curve, chosen),
               "Behaviour rate, coherent success and loops against |α| (val prompts)")


def _circuits(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Circuits</h2>")
    c = r.get("circuits")
    if not c:
        doc.not_run(r, "circuits")
    else:
        doc.table(["vector", "total edges", "min faithful size", "complement", "random (2×)"],
                  [[_e(m), _num(e.get("total_edges")), _num(e.get("min_faithful_size")),
                    _num(e.get("complement_faithfulness")), _num(e.get("random_faithfulness"))]
                   for m, e in c.items()])
        doc.figure("faithfulness", figures.faithfulness_curves(c), "Faithfulness curves")
    doc.add("<h3>Circuit overlap</h3>")
    o = r.get("overlap")
    if not o:
        doc.not_run(r, "circuits")
    else:
        for item in o["by_size"]:
            doc.figure(f"overlap_{item['size']}",
                       figures.heatmap(o["methods"], item["matrix"],
                                       f"Overlap, circuits of {item['size']} edges"),
                       f"|C1 ∩ C2| / min(|C1|, |C2|) at {item['size']} edges")
    doc.add("<h3>Interchangeability</h3>")
    i = r.get("interchange")
    if not i:
        doc.not_run(r, "circuits")
    else:
        doc.figure("interchange", figures.heatmap(i["methods"], i["matrix"], "Interchange",
                                                  xlabel="steering vector",
                                                  ylabel="circuit of"),
                   "Faithfulness of each vector's minimal circuit under another vector")
    doc.add("<h3>Edge types</h3>")
    et = r.get("edge_types")
    if not et:
        doc.not_run(r, "patching")
    else:
        doc.figure("edge_types", figures.edge_type_bars(et), "Edge types of the top edges")


def _freeze(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Freezing ablations</h2>")
    f = r.get("freeze")
    if not f:
        return doc.not_run(r, "freeze")
    on, off = _label(r, "present"), _label(r, "absent")
    what, shown = _shown(r)

    def side(e: dict, s: str, key: str):
        return (e.get(s) or {}).get(key)

    doc.table(["ablation", f"{on} {what}", f"{off} {what}", "mean drop (points)",
               f"{on} loops", f"{off} loops"],
              [[_e(m), _num(shown(side(e, "present", "behaviour_rate"))),
                _num(shown(side(e, "absent", "behaviour_rate"))), _num(e.get("mean_drop"), 2),
                _num(side(e, "present", "repetition_rate")),
                _num(side(e, "absent", "repetition_rate"))] for m, e in f.items()])
    doc.figure("freeze", figures.freeze_bars(f, side_labels(r)),
               f"{what} under freezing ablations")


def _svv(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Steering value vectors</h2>")
    s = r.get("svv")
    if not s:
        return doc.not_run(r, "svv")
    for m, heads in s.items():
        doc.add(f"<h3>{_e(m)}</h3>")
        doc.table(["head", "score", "top tokens (logit lens)"],
                  [[_e(h["head"]), _num(h.get("score")),
                    '<span class="tokens">' + " · ".join(_e(repr(t)[1:-1]) for t in h["tokens"])
                    + "</span>"] for h in heads], left=3)


def _sparsify(doc: _Doc, r: dict) -> None:
    doc.add("<h2>Sparsification</h2>")
    sp = r.get("sparsify")
    if not sp:
        return doc.not_run(r, "sparsify")
    for m, rules in sp.items():
        if m == "iou":
            continue
        doc.figure(f"sparsify_{m}", figures.sparsity_curves(m, rules, side_labels(r)),
                   f"{_label(r, 'behaviour')} rate under sparsification: {m}")
    iou = sp.get("iou")
    if iou:
        doc.figure("iou", figures.iou_plot(iou), "IoU of the kept dimensions")
        doc.table(["level", "pair", "IoU", "p-value"],
                  [[_num(x["level"]), _e(" / ".join(x["pair"])), _num(x["iou"]),
                    _e(f"{x['p_value']:.2e}") if x.get("p_value") is not None else "–"]
                   for x in iou], left=0)


def _freeze_coherence(doc: _Doc, r: dict) -> None:
    f = r.get("freeze") or {}
    rows = [[_e(m), _e(side), *_coherence_cells({**e[side], **e[side]["coherence"]})]
            for m, e in f.items() for side in ("present", "absent")
            if isinstance(e.get(side), dict) and e[side].get("coherence")]
    if rows:
        doc.add("<h3>Coherence under freezing</h3>")
        doc.table(["ablation", "side", *COHERENCE_HEAD], rows, left=2)


SECTIONS = (_model, _vectors, _strength, _steering, _coherence, _circuits, _freeze,
            _freeze_coherence, _svv, _sparsify)


def render_report(results: dict, title: str | None = None, *,
                  explorer: dict | None = None) -> tuple[str, dict[str, bytes]]:
    """The report's HTML text and its figures (name -> PNG bytes); with ``explorer`` data
    (:func:`steerscope.report.explorer.run_explorer_data`) the interactive circuit explorer
    is added after the sections."""
    doc = _Doc()
    name = results.get("run", {}).get("name", "run")
    model = (results.get("model") or {}).get("id", "")
    title = title or f"steerscope report: {name}" + (f" ({model})" if model else "")
    for section in SECTIONS:
        section(doc, results)
    if explorer is not None:
        from steerscope.report.explorer_html import explorer_section

        doc.add(explorer_section(explorer))
    stages = results.get("run", {}).get("stages", {})
    doc.add("<h2>Stages</h2>")
    doc.table(["stage", "status"], [[_e(k), _e(v)] for k, v in stages.items()])
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
            f"</title><style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
            f'<p class="meta">steerscope {_e(results.get("steerscope_version"))}, results format '
            f'{_e(results.get("format_version"))}</p>')
    return head + "\n".join(doc.parts) + "</body></html>\n", doc.figures


def build_report(results: dict | str | Path, out_dir: str | Path, *,
                 title: str | None = None, explorer: dict | None = None) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/<name>.png`` from a results dict
    (or a results.json path), with the circuit explorer when ``explorer`` data is given;
    returns the HTML path."""
    if not isinstance(results, dict):
        results = read_json_file(results, "results file")
    from steerscope.results_schema import check_results, upgrade_results

    results = upgrade_results(results)  # a run of an earlier version: today's keys
    check_results(results)
    text, figs = render_report(results, title, explorer=explorer)
    out_dir = Path(out_dir)
    paths = {name: child_path(out_dir, "figures", f"{name}.png", what="figure name")
             for name in figs}  # every path checked before the first write
    html = child_path(out_dir, "report.html")
    for name, png in figs.items():
        atomic_write(paths[name], lambda tmp, png=png: Path(tmp).write_bytes(png))
    return atomic_write(html, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
