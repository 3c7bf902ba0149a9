"""Figures of the sparsity study (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

from pathlib import Path

from steerscope.artifacts import atomic_write

_LABELS = {"bypass": "present, remove (fraction without the behaviour, higher = stronger)",
           "induce": "absent, induce (fraction without the behaviour, lower = stronger)",
           "unseen": "unseen present, remove (fraction without the behaviour)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                          bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_retention(result, path: str | Path) -> Path:
    """ASR versus sparsity: one row per method, one column per prompt set, one line per
    rule; dotted lines = dense vector and unsteered model."""
    plt = _pyplot()
    effects = [e for e in ("bypass", "induce", "unseen") if e in result.unsteered]
    methods = list(result.dense)
    rules = list(dict.fromkeys(p["rule"] for p in result.points))
    fig, axes = plt.subplots(len(methods), len(effects), squeeze=False,
                             figsize=(4.2 * len(effects), 3.0 * len(methods)))
    for i, m in enumerate(methods):
        for j, e in enumerate(effects):
            ax = axes[i][j]
            for r in rules:
                pts = result.curve(m, r)
                ax.plot([p["sparsity"] for p in pts], [p[f"{e}_asr"] for p in pts],
                        marker="o", ms=3, label=r)
            ax.axhline(result.dense[m][e], color="k", ls=":", lw=1, label="dense")
            ax.axhline(result.unsteered[e], color="grey", ls="--", lw=1, label="unsteered")
            ax.set_xlim(-0.02, 1.0)
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{m}: {_LABELS[e]}", fontsize=8)
            if i == len(methods) - 1:
                ax.set_xlabel("sparsity (fraction of dimensions zeroed)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_agreement(rows: list[dict], path: str | Path) -> Path:
    """IoU of kept sets between methods versus the pair's mean sparsity, per rule; filled
    markers where the hypergeometric p-value is < 0.05."""
    plt = _pyplot()
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    fig, axes = plt.subplots(1, len(rules), squeeze=False, figsize=(4.5 * len(rules), 3.2))
    for ax, rule in zip(axes[0], rules):
        pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows if r["rule"] == rule))
        for a, b in pairs:
            pts = sorted((r for r in rows if r["rule"] == rule and (r["a"], r["b"]) == (a, b)),
                         key=lambda r: r["sparsity_a"] + r["sparsity_b"])
            x = [(r["sparsity_a"] + r["sparsity_b"]) / 2 for r in pts]
            y = [r["iou"] for r in pts]
            (line,) = ax.plot(x, y, label=f"{a}/{b}")
            for xi, yi, r in zip(x, y, pts):
                ax.plot(xi, yi, "o", ms=4, color=line.get_color(),
                        mfc=line.get_color() if r["p_value"] < 0.05 else "none")
        ax.set_xlabel("sparsity (mean of the pair)")
        ax.set_ylabel("IoU of kept dimensions")
        ax.set_xlim(-0.02, 1.0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{rule} rule (filled: p < 0.05)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
