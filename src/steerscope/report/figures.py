"""The report's figures: matplotlib (Agg) drawings of results.json sections, as PNG bytes.

Every function takes the section as it appears in results.json (docs/results.md) and returns
the PNG file's bytes; the output is deterministic for the same input (no timestamp or
software metadata).
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.2f}"


def _shown(labels: dict[str, str]) -> tuple[str, Any]:
    """(name, value from a behaviour rate): refusal's ASR (1 − rate, as the paper), else the
    behaviour rate."""
    if labels.get("behaviour") == "refusal":
        return "ASR", lambda x: None if x is None else 1.0 - x
    return f"{labels.get('behaviour', 'behaviour')} rate", lambda x: x


def steering_bars(steering: dict[str, dict[str, dict]], labels: dict[str, str]) -> bytes:
    """The shown rate (:func:`_shown`) per method on the present (remove, −s) and absent
    (induce, +s) test prompts; ``labels``: the behaviour's display words."""
    what, shown = _shown(labels)
    up, down = ("↑", "↓") if what == "ASR" else ("↓", "↑")
    methods = list(steering)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.2))
    width = 0.38
    for j, (s, label) in enumerate((("present", f"{labels['present']} (−s): {what} {up}"),
                                    ("absent", f"{labels['absent']} (+s): {what} {down}"))):
        vals = [shown(steering[m].get(s, {}).get("behaviour_rate")) or 0.0 for m in methods]
        xs = [i + (j - 0.5) * width for i in range(len(methods))]
        bars = ax.bar(xs, vals, width, label=label, color=COLORS[j])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("attack success rate" if what == "ASR" else what)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2,
              frameon=False)
    ax.set_title(f"Steering: {what} by method", fontsize=10)
    return _png(fig)


def heatmap(methods: list[str], matrix: list[list], title: str, *, vmin: float = 0.0,
            vmax: float = 1.0, cmap: str = "viridis", xlabel: str | None = None,
            ylabel: str | None = None) -> bytes:
    """A labelled matrix heat-map with the values printed in the cells."""
    n = len(methods)
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * n, 1.3 + 0.7 * n))
    vals = [[math.nan if v is None else float(v) for v in row] for row in matrix]
    im = ax.imshow(vals, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(n), methods)
    ax.set_yticks(range(n), methods)
    for i in range(n):
        for j in range(n):
            v = vals[i][j]
            if not math.isnan(v):
                r, g, b, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def faithfulness_curves(circuits: dict[str, dict], threshold: float = 0.85) -> bytes:
    """Faithfulness against circuit size (edges) per method, with the faithful threshold."""
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    for i, (m, c) in enumerate(circuits.items()):
        curve = sorted(c.get("faithfulness_curve") or [])
        if curve:
            ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", ms=3,
                    color=COLORS[i % len(COLORS)], label=f"{m} ({c.get('total_edges')} edges)")
    ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"faithful ({threshold:g})")
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (edges)")
    ax.set_ylabel("faithfulness")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Faithfulness of the top-n edge circuits", fontsize=10)
    return _png(fig)


EDGE_TYPES = ("q", "k", "v", "mlp", "logits")


def edge_type_bars(edge_types: dict[str, dict]) -> bytes:
    """Fraction of the top edges entering queries, keys, values, MLPs and the logits."""
    methods = list(edge_types)
    types = list(EDGE_TYPES)
    for e in edge_types.values():
        types += [t for t in e.get("fractions", {}) if t not in types]
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(types), 3.2))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        fr = edge_types[m].get("fractions", {})
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(types))]
        ax.bar(xs, [fr.get(t, 0.0) for t in types], width, color=COLORS[j % len(COLORS)],
               label=f"{m} (top {edge_types[m].get('top_n')})")
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("fraction of top edges")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Where the top edges enter", fontsize=10)
    return _png(fig)


def freeze_bars(freeze: dict[str, dict], labels: dict[str, str]) -> bytes:
    """The shown rate (:func:`_shown`) under each freezing ablation on both sides."""
    what, shown = _shown(labels)
    modes = list(freeze)
    fig, ax = plt.subplots(figsize=(1.4 + 1.0 * len(modes), 3.2))
    width = 0.38
    for j, s in enumerate(("present", "absent")):
        vals = [shown((freeze[m].get(s) or {}).get("behaviour_rate")) or 0.0 for m in modes]
        xs = [i + (j - 0.5) * width for i in range(len(modes))]
        ax.bar(xs, vals, width, color=COLORS[j], label=f"{labels[s]} {what}")
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Steering under freezing ablations", fontsize=10)
    return _png(fig)


def sparsity_curves(method: str, rules: dict[str, list[dict]], labels: dict[str, str]) -> bytes:
    """The shown rate (:func:`_shown`) as the vector is sparsified, one line per rule (present
    side solid, absent dashed)."""
    what, shown = _shown(labels)
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    for i, (rule, points) in enumerate(rules.items()):
        pts = sorted(points, key=lambda p: p["sparsity"])
        xs = [p["sparsity"] for p in pts]
        color = COLORS[i % len(COLORS)]
        for side, marker, ls in (("present", "o", "-"), ("absent", "s", "--")):
            vals = [shown(p.get(f"{side}_behaviour_rate")) for p in pts]
            if any(v is not None for v in vals):
                ax.plot(xs, vals, marker=marker, ms=3, ls=ls, color=color,
                        label=f"{rule}: {labels[side]}")
    ax.set_xlabel("sparsity (fraction of dimensions dropped)")
    ax.set_ylabel(what)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=6, frameon=False, ncol=2)
    ax.set_title(f"Sparsification: {method}", fontsize=10)
    return _png(fig)


def iou_plot(iou: list[dict]) -> bytes:
    """IoU of the non-zero dimension sets between methods against the sparsity level."""
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    pairs: dict[str, list[dict]] = {}
    for r in iou:
        pairs.setdefault(" / ".join(r["pair"]), []).append(r)
    for i, (pair, rows) in enumerate(pairs.items()):
        rows = sorted(rows, key=lambda r: r["level"])
        ax.plot([r["level"] for r in rows], [r["iou"] for r in rows], marker="o", ms=3,
                color=COLORS[i % len(COLORS)], label=pair)
    ax.set_xlabel("level")
    ax.set_ylabel("IoU of kept dimensions")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Agreement of sparsified vectors", fontsize=10)
    return _png(fig)


def alpha_curves(curve: list[dict], chosen: dict[str, dict[str, dict]]) -> bytes:
    """The strength sweep: per use (remove | induce), behaviour rate (solid), coherent success
    (dashed) and loop rate (dotted) against |α| for every method; the chosen |α| circled; the
    unsteered model's coherent success a grey dashed line."""
    uses = [u for u in ("remove", "induce") if any(e["use"] == u for e in curve)]
    methods = list(dict.fromkeys(e["method"] for e in curve if e["method"] != "none"))
    fig, axes = plt.subplots(1, max(1, len(uses)), figsize=(4.2 * max(1, len(uses)), 3.2),
                             squeeze=False)
    for ax, use in zip(axes[0], uses):
        for i, m in enumerate(methods):
            pts = sorted((e for e in curve if e["method"] == m and e["use"] == use),
                         key=lambda e: abs(e["alpha"]))
            xs = [abs(e["alpha"]) for e in pts]
            color = COLORS[i % len(COLORS)]
            ax.plot(xs, [e["behaviour_rate"] for e in pts], "-", color=color, label=m)
            ax.plot(xs, [e["coherent_success"] for e in pts], "--", color=color)
            ax.plot(xs, [e["repetition_rate"] for e in pts], ":", color=color)
            pick = chosen.get(m, {}).get(use, {})
            hit = [e for e in pts if e["alpha"] == pick.get("alpha")]
            if hit:
                ax.plot([abs(hit[0]["alpha"])], [hit[0]["coherent_success"]], "o",
                        color=color, fillstyle="none", markersize=9)
        base = [e["coherent_success"] for e in curve if e["method"] == "none" and e["use"] == use]
        if base:  # the unsteered model's coherent success on the same prompts
            ax.axhline(base[0], color="grey", linestyle="--", linewidth=0.8,
                       label="unsteered" if use == uses[0] else None)
        ax.set_xlabel("|α|")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"{use}: behaviour (—), coherent success (--), loops (··)", fontsize=8)
    axes[0][0].legend(fontsize=7, frameon=False)
    return _png(fig)
