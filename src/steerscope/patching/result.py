"""The patching artifact: scores, circuits, faithfulness curves and tables in one folder.

Layout of a result folder (every file written atomically):

- ``scores.safetensors``: per method ``{method}.edges`` [E], ``{method}.nodes`` [U],
  ``{method}.steer_grad`` / ``{method}.steer_ie`` [d] (EAP-IG), and per dataset
  ``{method}@{dataset}.{key}``; float32, edges in graph edge order;
- ``circuits.safetensors``: ``{name}`` [E] uint8 (1 = edge in the circuit);
- ``result.json``: the graph, metadata, per-method dataset weights, faithfulness curves and
  tables (edge types, overlaps, interchange, ...);
- ``edges.parquet`` (with pyarrow) or ``edges.json``: one row per edge with its name, upstream,
  downstream, incoming/outgoing type and the score of every method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from steerscope.artifacts import atomic_write, atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.patching.circuits import FaithfulnessCurve
from steerscope.patching.graph import Graph
from steerscope.patching.scores import Scores
from steerscope.results_schema import upgrade_dataset_name, upgrade_keys

FORMAT_VERSION = 1
_KEYS = ("edges", "nodes", "steer_grad", "steer_ie")


@dataclass
class PatchingResult:
    """Everything the patching stage produces for one steering vector (or several)."""

    graph: Graph
    scores: dict[str, Scores] = field(default_factory=dict)
    circuits: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, FaithfulnessCurve] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def edge_table(self) -> dict[str, list]:
        """Column-wise table: one row per edge, a score column per method."""
        g = self.graph
        inc, out = g.edge_types()
        ei = g.edge_index.tolist()
        cols: dict[str, list] = {
            "edge": g.edge_names,
            "up": [g.up_names[u] for u, _ in ei],
            "down": [g.down_names[d] for _, d in ei],
            "in_type": inc,
            "out_type": out,
        }
        for name, sc in self.scores.items():
            if sc.edges is not None:
                cols[f"score_{name}"] = [float(x) for x in sc.edges.tolist()]
        return cols

    def top_edges(self, method: str = "eap_ig", k: int = 20) -> list[tuple[str, float]]:
        sc = self.scores.get(method)
        if sc is None or sc.edges is None:
            raise SteerscopeError(f"no edge scores for method '{method}'",
                                  f"use one of {', '.join(self.scores) or '(none)'}")
        order = torch.argsort(-sc.edges.abs(), stable=True)[:k].tolist()
        names = self.graph.edge_names
        return [(names[i], float(sc.edges[i])) for i in order]

    # files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        weights: dict[str, dict[str, int]] = {}
        score_meta: dict[str, dict] = {}
        for name, sc in self.scores.items():
            if "." in name or "@" in name:
                raise SteerscopeError(f"method name '{name}' may not contain '.' or '@'")
            for k in _KEYS:
                v = getattr(sc, k)
                if v is not None:
                    tensors[f"{name}.{k}"] = v.detach().float().contiguous().cpu()
            for ds, vals in sc.per_dataset.items():
                for k, v in vals.items():
                    tensors[f"{name}@{ds}.{k}"] = v.detach().float().contiguous().cpu()
            weights[name] = dict(sc.weights)
            score_meta[name] = {"method": sc.method, "meta": sc.meta}
        circuits = {k: v.to(torch.uint8).contiguous().cpu() for k, v in self.circuits.items()}
        atomic_write(folder / "scores.safetensors", lambda p: save_file(tensors, p))
        atomic_write(folder / "circuits.safetensors", lambda p: save_file(circuits, p))
        atomic_write_json(folder / "result.json", {
            "format_version": FORMAT_VERSION,
            "graph": self.graph.to_json(),
            "meta": self.meta,
            "scores": score_meta,
            "weights": weights,
            "curves": {k: c.to_json() for k, c in self.curves.items()},
            "tables": self.tables,
        })
        self._save_edge_table(folder)
        return folder

    def _save_edge_table(self, folder: Path) -> None:
        cols = self.edge_table()
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            atomic_write_json(folder / "edges.json", cols, indent=None)
            return
        atomic_write(folder / "edges.parquet", lambda p: pq.write_table(pa.table(cols), p))

    @classmethod
    def load(cls, folder: str | Path) -> PatchingResult:
        folder = Path(folder)
        path = folder / "result.json"
        if not path.is_file():
            raise SteerscopeError(f"no patching result in {folder}",
                                  "run 'steerscope patch' with --out pointing here")
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("format_version") != FORMAT_VERSION:
            raise SteerscopeError(f"patching result format {info.get('format_version')} is not "
                                  f"supported", f"re-run the patching (format {FORMAT_VERSION})")
        graph = Graph.from_json(info["graph"])
        tensors = load_file(str(folder / "scores.safetensors"))
        scores: dict[str, Scores] = {}
        for name, sm in info["scores"].items():
            sc = Scores(sm["method"], meta=sm.get("meta", {}),
                        weights=upgrade_keys(info["weights"].get(name, {}),
                                             upgrade_dataset_name))
            for key, v in tensors.items():
                head, _, k = key.rpartition(".")
                if head == name:
                    setattr(sc, k, v)
                elif head.startswith(name + "@"):
                    ds = upgrade_dataset_name(head[len(name) + 1:])
                    sc.per_dataset.setdefault(ds, {})[k] = v
            scores[name] = sc
        circuits = {k: v.bool() for k, v in
                    load_file(str(folder / "circuits.safetensors")).items()}
        curves = {k: FaithfulnessCurve.from_json(c) for k, c in info["curves"].items()}
        return cls(graph, scores, circuits, curves, _upgrade_tables(info.get("tables", {})),
                   info.get("meta", {}))


def _upgrade_tables(tables: dict) -> dict:
    """Saved tables in today's words: ``summary.min_size_by_metric`` keyed by side."""
    summary = tables.get("summary")
    by_metric = summary.get("min_size_by_metric") if isinstance(summary, dict) else None
    if not isinstance(by_metric, dict):
        return tables
    upgraded = {m: upgrade_keys(v) if isinstance(v, dict) else v for m, v in by_metric.items()}
    return {**tables, "summary": {**summary, "min_size_by_metric": upgraded}}
