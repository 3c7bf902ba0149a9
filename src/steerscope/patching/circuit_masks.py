"""Circuit masks on a graph model: the graph a circuit is given on (fine or coarse) and its
[U, D] masks on the fine graph (used by the faithfulness runs of
:mod:`steerscope.patching.circuits` and :mod:`steerscope.patching.faithfulness`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steerscope.errors import SteerscopeError
from steerscope.patching.forward import GraphModel
from steerscope.patching.graph import Graph


def circuit_graph(gm: GraphModel, graph: Graph | None) -> Graph:
    """The graph circuits are given on: ``gm.graph`` or its coarse variant."""
    if graph is None:
        return gm.graph
    fine = gm.graph
    same = (graph.n_layers, graph.layer, graph.n_heads, graph.n_kv_heads) == (
        fine.n_layers, fine.layer, fine.n_heads, fine.n_kv_heads)
    if not same:
        raise SteerscopeError(f"circuit graph (layer {graph.layer}, {graph.n_edges} edges) is "
                              f"not a graph of this model at layer {fine.layer}",
                              "use the graph the scores were computed on")
    return graph


def fine_masks(gm: GraphModel, graph: Graph, circuits: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[int]]:
    """[U, D_fine] bool masks of the fine graph for [E] circuits of ``graph``, and sizes."""
    masks = [graph.edge_mask(c) for c in circuits]
    mats = [graph.to_matrix(c, False) for c in masks]
    if graph.coarse:
        mats = [gm.graph.coarse_to_fine(m) for m in mats]
    return mats, [int(c.sum()) for c in masks]
