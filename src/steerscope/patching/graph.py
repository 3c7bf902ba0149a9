"""The patching graph: upstream nodes, downstream inputs and the edges between them.

From the steering layer ``ℓ`` on (earlier activations are identical in the steered and the
unsteered run):

- upstream nodes (what writes into the residual stream): ``"steer"`` (the whole residual
  entering block ``ℓ``, which carries ``α·s``), every attention head ``"a{L}.h{H}"`` and every
  MLP ``"m{L}"`` of the layers ``L >= ℓ``;
- downstream inputs (what reads the residual stream): the query input of each query head
  ``"a{L}.h{H}.q"``, the key and value inputs of each KV head ``"a{L}.g{G}.k"`` /
  ``"a{L}.g{G}.v"``, each MLP input ``"m{L}.in"`` and ``"logits"``.

An edge ``"{up}->{down}"`` exists when ``up`` writes before ``down`` reads: the steering input
feeds everything, a head feeds the MLP of its own layer and everything in later layers, an MLP
feeds everything in later layers. Edges are ordered upstream-major (row-major order of the
``[U, D]`` adjacency matrix).

The coarse variant groups the query, key and value inputs of a layer into one input each
(``"a{L}.q"``, ``"a{L}.k"``, ``"a{L}.v"``); its scores are sums of the fine scores and its
edge masks broadcast to the fine graph (:meth:`Graph.coarse_to_fine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from steerscope.errors import SteerscopeError

# kinds of upstream nodes and downstream inputs
UP_KINDS = ("steer", "attn", "mlp")
DOWN_KINDS = ("q", "k", "v", "mlp", "logits")


def edge_count_formula(n_layers: int, layer: int, n_heads: int, n_kv_heads: int,
                       *, coarse: bool = False) -> int:
    """The closed-form edge count of the graph from ``layer`` on (paper section 4).

    With ``k = n_layers - layer``: q edges ``H·Σ_{i<k}(1 + i(H+1))``, k and v edges
    ``G·Σ_{i<k}(1 + i(H+1))`` each, MLP edges ``Σ_{i<k}(1 + i(H+1) + H)``, logit edges
    ``1 + k(H+1)``. The coarse graph has one q, k and v input per layer (``H = G = 1`` in the
    q/k/v terms only).
    """
    k = n_layers - layer
    h = n_heads
    reads = sum(1 + i * (h + 1) for i in range(k))  # upstream nodes before each layer
    nq, nkv = (1, 1) if coarse else (n_heads, n_kv_heads)
    return nq * reads + 2 * nkv * reads + (reads + k * h) + (1 + k * (h + 1))


@dataclass
class Graph:
    """The graph of one model from steering layer ``layer`` on.

    ``up_names`` [U] / ``down_names`` [D]; ``up_layer`` / ``down_layer`` [U] / [D] long (the
    steering node has layer ``layer - 1``, the logits ``n_layers``); ``up_kind`` / ``down_kind``
    index into :data:`UP_KINDS` / :data:`DOWN_KINDS`; ``adjacency`` [U, D] bool.
    """

    n_layers: int
    layer: int
    n_heads: int
    n_kv_heads: int
    coarse: bool = False
    up_names: list[str] = field(default_factory=list, repr=False)
    down_names: list[str] = field(default_factory=list, repr=False)
    up_layer: torch.Tensor = field(default=None, repr=False)
    up_kind: torch.Tensor = field(default=None, repr=False)
    down_layer: torch.Tensor = field(default=None, repr=False)
    down_kind: torch.Tensor = field(default=None, repr=False)
    adjacency: torch.Tensor = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, v in (("n_layers", self.n_layers), ("n_heads", self.n_heads),
                        ("n_kv_heads", self.n_kv_heads)):
            if not isinstance(v, int) or v < 1:
                raise SteerscopeError(f"graph {name} must be a positive int, got {v!r}")
        if not isinstance(self.layer, int) or not 0 <= self.layer < self.n_layers:
            raise SteerscopeError(
                f"steering layer {self.layer!r} is out of range for a {self.n_layers}-layer model",
                f"use a layer from 0 to {self.n_layers - 1}",
            )
        if self.n_heads % self.n_kv_heads:
            raise SteerscopeError(f"{self.n_heads} query heads are not a multiple of "
                                  f"{self.n_kv_heads} KV heads")
        self._build()

    # construction -------------------------------------------------------------------------
    def _build(self) -> None:
        H, G = self.n_heads, self.n_kv_heads
        up_names, up_layer, up_kind = ["steer"], [self.layer - 1], [0]
        down_names, down_layer, down_kind = [], [], []
        for L in range(self.layer, self.n_layers):
            for h in range(H):
                up_names.append(f"a{L}.h{h}")
                up_layer.append(L)
                up_kind.append(1)
            up_names.append(f"m{L}")
            up_layer.append(L)
            up_kind.append(2)
            if self.coarse:
                for kind, name in ((0, f"a{L}.q"), (1, f"a{L}.k"), (2, f"a{L}.v")):
                    down_names.append(name)
                    down_layer.append(L)
                    down_kind.append(kind)
            else:
                for h in range(H):
                    down_names.append(f"a{L}.h{h}.q")
                    down_layer.append(L)
                    down_kind.append(0)
                for kind, suffix in ((1, "k"), (2, "v")):
                    for g in range(G):
                        down_names.append(f"a{L}.g{g}.{suffix}")
                        down_layer.append(L)
                        down_kind.append(kind)
            down_names.append(f"m{L}.in")
            down_layer.append(L)
            down_kind.append(3)
        down_names.append("logits")
        down_layer.append(self.n_layers)
        down_kind.append(4)
        self.up_names, self.down_names = up_names, down_names
        self.up_layer = torch.tensor(up_layer)
        self.up_kind = torch.tensor(up_kind)
        self.down_layer = torch.tensor(down_layer)
        self.down_kind = torch.tensor(down_kind)
        ul, dl = self.up_layer[:, None], self.down_layer[None, :]
        same_layer_mlp = (self.up_kind[:, None] == 1) & (self.down_kind[None, :] == 3) & (ul == dl)
        self.adjacency = (ul < dl) | same_layer_mlp  # [U, D]
        self._edge_index = self.adjacency.nonzero()  # [E, 2]
        self._up_index = {n: i for i, n in enumerate(up_names)}
        self._down_index = {n: i for i, n in enumerate(down_names)}

    @classmethod
    def from_arch(cls, arch, layer: int, *, coarse: bool = False) -> Graph:
        """The graph of a validated model (:class:`~steerscope.models.archs.ModelArch`)."""
        arch.check_layer(layer)
        return cls(arch.n_layers, layer, arch.n_heads, arch.n_kv_heads, coarse=coarse)

    # sizes and names ---------------------------------------------------------------------
    @property
    def n_up(self) -> int:
        return len(self.up_names)

    @property
    def n_down(self) -> int:
        return len(self.down_names)

    @property
    def n_edges(self) -> int:
        return int(self._edge_index.shape[0])

    @property
    def edge_index(self) -> torch.Tensor:
        """[E, 2] long: (upstream index, downstream index) of every edge, in edge order."""
        return self._edge_index

    @property
    def edge_names(self) -> list[str]:
        return [f"{self.up_names[u]}->{self.down_names[d]}" for u, d in self._edge_index.tolist()]

    def up_index(self, name: str) -> int:
        try:
            return self._up_index[name]
        except KeyError:
            raise SteerscopeError(f"unknown upstream node '{name}'",
                                  "use 'steer', 'a{L}.h{H}' or 'm{L}' from the steering layer on"
                                  ) from None

    def down_index(self, name: str) -> int:
        try:
            return self._down_index[name]
        except KeyError:
            raise SteerscopeError(f"unknown downstream input '{name}'",
                                  "use 'a{L}.h{H}.q', 'a{L}.g{G}.k', 'a{L}.g{G}.v', "
                                  "'m{L}.in' or 'logits'") from None

    def edge_id(self, name: str) -> int:
        """Position of edge ``"{up}->{down}"`` in edge order."""
        up, sep, down = name.partition("->")
        if not sep:
            raise SteerscopeError(f"'{name}' is not an edge name", "write it as 'up->down'")
        u, d = self.up_index(up), self.down_index(down)
        if not bool(self.adjacency[u, d]):
            raise SteerscopeError(f"there is no edge {name} in this graph",
                                  "an upstream node only feeds inputs that read after it")
        return int(self.adjacency[:u].sum() + self.adjacency[u, :d].sum())

    def edge_mask(self, edges) -> torch.Tensor:
        """[E] bool from edge ids (ints), edge names or an [E] bool tensor."""
        if isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
            if edges.shape != (self.n_edges,):
                raise SteerscopeError(f"edge mask has shape {tuple(edges.shape)}, expected "
                                      f"({self.n_edges},)")
            return edges
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        for e in edges:
            mask[self.edge_id(e) if isinstance(e, str) else int(e)] = True
        return mask

    def to_matrix(self, values: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
        """[E] per-edge values → [U, D] matrix (``fill`` where there is no edge)."""
        out = torch.full((self.n_up, self.n_down), fill, dtype=values.dtype)
        out[self.adjacency] = values
        return out

    def from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """[U, D] matrix → [E] per-edge values in edge order."""
        return matrix[self.adjacency]

    # relations ------------------------------------------------------------------------------
    def consumers(self) -> list[list[int]]:
        """For each downstream input, the upstream nodes whose output depends on it.

        q input of head h → [head h]; k/v input of KV head g → every head of group g; coarse
        q/k/v → every head of the layer; MLP input → the MLP; logits → [].
        """
        H, gs = self.n_heads, self.n_heads // self.n_kv_heads
        first = {}  # layer -> upstream index of head 0
        for i, (layer, kind) in enumerate(zip(self.up_layer.tolist(), self.up_kind.tolist())):
            if kind == 1 and layer not in first:
                first[layer] = i
        out: list[list[int]] = []
        for name, layer, kind in zip(self.down_names, self.down_layer.tolist(),
                                     self.down_kind.tolist()):
            if kind == 4:
                out.append([])
            elif kind == 3:
                out.append([first[layer] + H])
            elif self.coarse:
                out.append(list(range(first[layer], first[layer] + H)))
            elif kind == 0:
                h = int(name.split(".h")[1].split(".")[0])
                out.append([first[layer] + h])
            else:
                g = int(name.split(".g")[1].split(".")[0])
                out.append(list(range(first[layer] + g * gs, first[layer] + (g + 1) * gs)))
        return out

    def edge_types(self) -> tuple[list[str], list[str]]:
        """Per edge: the incoming type (``q``/``k``/``v``/``mlp``/``logits``, by the
        downstream input) and the outgoing type (``steer``/``attn``/``mlp``, by the upstream
        node)."""
        e = self._edge_index
        inc = [DOWN_KINDS[k] for k in self.down_kind[e[:, 1]].tolist()]
        out = [UP_KINDS[k] for k in self.up_kind[e[:, 0]].tolist()]
        return inc, out

    # coarse <-> fine -----------------------------------------------------------------------
    def coarsened(self) -> Graph:
        """The coarse graph of the same model (q/k/v inputs grouped per layer)."""
        return Graph(self.n_layers, self.layer, self.n_heads, self.n_kv_heads, coarse=True)

    def fine_to_coarse_down(self) -> torch.Tensor:
        """[D_fine] long: the coarse downstream index of every fine downstream input."""
        if self.coarse:
            raise SteerscopeError("this graph is already coarse")
        coarse = self.coarsened()
        idx = []
        for name, kind in zip(self.down_names, self.down_kind.tolist()):
            if kind in (0, 1, 2):
                layer = name.split(".")[0]
                idx.append(coarse.down_index(f"{layer}.{DOWN_KINDS[kind]}"))
            else:
                idx.append(coarse.down_index(name))
        return torch.tensor(idx)

    def coarsen_scores(self, matrix: torch.Tensor) -> torch.Tensor:
        """Fine [U, D_fine] scores → coarse [U, D_coarse] scores (sums over grouped inputs)."""
        idx = self.fine_to_coarse_down()
        out = torch.zeros(self.n_up, int(idx.max()) + 1, dtype=matrix.dtype)
        out.index_add_(1, idx, matrix)
        return out

    def coarse_to_fine(self, coarse_matrix: torch.Tensor) -> torch.Tensor:
        """A coarse [U, D_coarse] bool mask → the fine [U, D_fine] mask it stands for."""
        return coarse_matrix[:, self.fine_to_coarse_down()] & self.adjacency

    def to_json(self) -> dict:
        return {"n_layers": self.n_layers, "layer": self.layer, "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads, "coarse": self.coarse}

    @classmethod
    def from_json(cls, d: dict) -> Graph:
        return cls(int(d["n_layers"]), int(d["layer"]), int(d["n_heads"]), int(d["n_kv_heads"]),
                   coarse=bool(d.get("coarse", False)))
