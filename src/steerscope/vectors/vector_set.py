"""Multi-layer steering vectors: :class:`SteeringVectorSet`, one direction per layer, one α.

Steering with a set adds ``α·s_ℓ`` to the residual entering block ``ℓ`` for every listed
layer ``ℓ`` (at every position in scope), all with the same coefficient ``α``: exactly the
single-layer interventions ``steer(s_ℓ, ℓ, α)`` of its layers together
(:meth:`SteeringVectorSet.intervention` returns that list; a
:class:`~steerscope.runtime.Runtime` expands a list inside its interventions).

File format (one safetensors file, written atomically): one float32 tensor [d_model] per
steered layer under the key ``"layer.{ℓ}"`` (e.g. ``layer.10``, ``layer.12``) and, in the
safetensors header metadata under ``"steerscope"``, a JSON object with ``"kind":
"vector_set"``, ``layers`` (ascending), the fields of :class:`SteeringVectorSet` other than
the tensor, and ``format_version``, ``d_model``, ``norm`` (of all layers together) and
``sha256`` (:meth:`SteeringVectorSet.to_metadata` is that object). A single-layer
:class:`~steerscope.vectors.SteeringVector` file holds one tensor ``"vector"`` instead;
:func:`load_vector_file` reads either.

:func:`steer` is ``ss.steer``: a tensor and a layer (the single-layer runtime intervention),
a :class:`SteeringVector` or a :class:`SteeringVectorSet` (its own layers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerscope.artifacts import atomic_write
from steerscope.errors import ShapeError, SteerscopeError
from steerscope.runtime import steer as steer_at_layer
from steerscope.safe_files import parse_json
from steerscope.vectors.vector import META_KEY, SteeringVector

KIND = "vector_set"
HUB_KIND = "steering_vector_set"  # the kind its Hub folder records (class SteeringVectorSet)
TENSOR_PREFIX = "layer."  # tensor key of the direction at layer ℓ: "layer.{ℓ}"
_TENSOR_KEY = re.compile(r"^layer\.(\d+)$")


def tensor_key(layer: int) -> str:
    """The safetensors key of the direction at ``layer`` (``"layer.{ℓ}"``)."""
    return f"{TENSOR_PREFIX}{int(layer)}"


def check_steering_layers(layers, n_layers: int | None = None,
                          what: str = "steering layers") -> list[int]:
    """``layers`` as an ascending list of ints, or a one-line error for an empty list, a
    non-int, a repeated layer or (with ``n_layers``) a layer outside ``0 .. n_layers-1``."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise SteerscopeError(f"{what} must be a list of layer indices, got {layers!r}",
                              "pass e.g. [10, 12]")
    if not layers:
        raise SteerscopeError(f"{what} is an empty list", "list at least one layer, e.g. [10, 12]")
    for x in layers:
        if not isinstance(x, int) or isinstance(x, bool) or x < 0:
            raise SteerscopeError(f"{what} {list(layers)} hold {x!r}, not a non-negative int",
                                  "use 0-indexed block numbers")
    repeated = sorted({x for x in layers if list(layers).count(x) > 1})
    if repeated:
        raise SteerscopeError(f"{what} {list(layers)} repeat layer {repeated[0]}",
                              "list each layer once")
    if n_layers is not None:
        bad = [x for x in layers if x >= n_layers]
        if bad:
            raise SteerscopeError(f"{what} {list(layers)}: layer {bad[0]} is out of range for "
                                  f"this {n_layers}-layer model",
                                  f"use layers from 0 to {n_layers - 1}")
    return sorted(int(x) for x in layers)


@dataclass
class SteeringVectorSet:
    """Steering vectors ``vector[k]`` [d_model] added at the residual entering block
    ``layers[k]``, all with one shared coefficient α (``vector`` [K, d_model] float32,
    ``layers`` ascending; given unsorted, rows are reordered with them).

    ``method``, ``model_id``, ``revision``, ``position`` (the prompt position every layer's
    direction was read at), ``hyperparameters`` and ``metadata`` as in
    :class:`~steerscope.vectors.SteeringVector`. Iterating gives one ``SteeringVector`` per
    layer (so ``export_control_vector(vector_set, path)`` writes one direction per layer).
    """

    hub_kind: ClassVar[str] = HUB_KIND

    vector: torch.Tensor
    layers: list[int]
    method: str = "custom"
    model_id: str | None = None
    revision: str | None = None
    position: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = list(self.layers) if isinstance(self.layers, (list, tuple)) else self.layers
        layers = check_steering_layers(given)
        if not isinstance(self.vector, torch.Tensor) or self.vector.ndim != 2 \
                or self.vector.shape[0] != len(layers):
            shape = tuple(self.vector.shape) if isinstance(self.vector, torch.Tensor) else None
            raise ShapeError(f"a vector set over {len(layers)} layers needs a "
                             f"[{len(layers)}, d_model] tensor, got shape {shape}",
                             "stack one 1-D vector per layer")
        if not torch.isfinite(self.vector).all():
            raise SteerscopeError("vector set contains NaN or infinite values", "re-extract it")
        order = sorted(range(len(given)), key=given.__getitem__)
        vec = self.vector.detach().float().cpu()
        self.vector = vec[order].contiguous() if order != list(range(len(order))) else \
            vec.contiguous()  # [K, d]
        self.layers = layers

    @classmethod
    def from_vectors(cls, vectors: Sequence[SteeringVector], **fields) -> SteeringVectorSet:
        """One set from single-layer vectors (one per layer). ``method``, ``model_id``,
        ``revision`` and ``position`` default to the vectors' common value (else
        ``"custom"`` / None)."""
        vectors = list(vectors)
        if not vectors or not all(isinstance(v, SteeringVector) for v in vectors):
            raise SteerscopeError("a vector set needs one or more SteeringVector objects",
                                  "pass e.g. [SteeringVector(s1, 10), SteeringVector(s2, 12)]")
        widths = sorted({v.d_model for v in vectors})
        if len(widths) > 1:
            raise ShapeError(f"vectors have different widths {widths}",
                             "combine vectors of one model")
        for name, default in (("method", "custom"), ("model_id", None), ("revision", None),
                              ("position", None)):
            values = {getattr(v, name) for v in vectors}
            fields.setdefault(name, values.pop() if len(values) == 1 else default)
        return cls(vector=torch.stack([v.vector for v in vectors]),
                   layers=[v.layer for v in vectors], **fields)

    # --- per layer ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[SteeringVector]:
        return (self.at(layer) for layer in self.layers)

    def at(self, layer: int) -> SteeringVector:
        """The direction at ``layer`` as a single-layer :class:`SteeringVector`."""
        if layer not in self.layers:
            raise SteerscopeError(f"the vector set has no direction at layer {layer!r}",
                                  f"use one of its layers {self.layers}")
        return SteeringVector(vector=self.vector[self.layers.index(layer)], layer=layer,
                              method=self.method, model_id=self.model_id,
                              revision=self.revision, position=self.position,
                              hyperparameters=dict(self.hyperparameters),
                              metadata={**self.metadata, "vector_set_layers": self.layers})

    # --- properties -----------------------------------------------------------------------
    @property
    def layer(self) -> int:
        """The first steered layer (where the patching graph starts)."""
        return self.layers[0]

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[-1])

    norm = SteeringVector.norm  # L2 norm of all layers' directions together

    @property
    def norms(self) -> dict[int, float]:
        """layer -> L2 norm of its direction."""
        return {layer: float(v.norm()) for layer, v in zip(self.layers, self.vector)}

    @property
    def sha256(self) -> str:
        """Content hash of the tensor bytes and the layers."""
        return hashlib.sha256(self.vector.numpy().tobytes()
                              + f"layers={self.layers}".encode()).hexdigest()

    # --- arithmetic (a copy with another [K, d] tensor; rescaled, every layer by one factor,
    # to total L2 norm ``norm``): SteeringVector's, which read only the fields both share
    with_vector = SteeringVector.with_vector
    scaled_to = SteeringVector.scaled_to

    def cosine(self, other) -> float:
        """Cosine similarity of the concatenated directions with another set over the same
        layers (or a [K, d] tensor)."""
        if isinstance(other, SteeringVectorSet):
            if other.layers != self.layers:
                raise SteerscopeError(f"cannot compare vector sets over layers {self.layers} "
                                      f"and {other.layers}", "compare sets over the same layers")
            other = other.vector
        if not isinstance(other, torch.Tensor) or other.shape != self.vector.shape:
            raise SteerscopeError(f"a vector set over layers {self.layers} compares only with "
                                  "another set over the same layers",
                                  "compare single-layer vectors with set.at(layer)")
        return float(torch.nn.functional.cosine_similarity(
            self.vector.double().flatten(), other.double().flatten(), dim=0))

    # --- model fit and steering -----------------------------------------------------------
    def check_fits(self, arch, model_id: str | None = None, *, strict_model: bool = False) -> None:
        """Raise a one-line error unless every direction fits the model (width, layer range;
        with ``strict_model`` also the recorded ``model_id``)."""
        check_steering_layers(self.layers, arch.n_layers, f"{self.method} vector set's layers")
        for v in self:
            v.check_fits(arch, model_id, strict_model=strict_model)

    def intervention(self, alpha: float = 1.0, scope="all") -> list:
        """The steering interventions ``h^ℓ ← h^ℓ + alpha·s_ℓ``, one per layer (a list; a
        :class:`~steerscope.runtime.Runtime` accepts it as one item of its interventions)."""
        return [steer_at_layer(v, layer, alpha, scope=scope)
                for layer, v in zip(self.layers, self.vector)]

    # --- files ----------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """The JSON object stored in the file header (everything but the tensors)."""
        return {**SteeringVector.to_metadata(self), "kind": KIND}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set file atomically (format: module doc); returns its path."""
        try:
            meta = json.dumps(self.to_metadata(), sort_keys=True)
        except TypeError as exc:
            raise SteerscopeError(f"vector set metadata is not JSON-serialisable ({exc})") from exc
        tensors = {tensor_key(layer): v.clone() for layer, v in zip(self.layers, self.vector)}
        return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp,
                                                              metadata={META_KEY: meta}))

    @classmethod
    def load(cls, path: str | os.PathLike, arch=None, *, model_id: str | None = None,
             strict_model: bool = False) -> SteeringVectorSet:
        """Read a set file written by :meth:`save` (with ``arch``: checked with
        :meth:`check_fits`)."""
        path = Path(path)
        tensors, meta = read_safetensors(path)
        if meta.get("kind") != KIND:
            raise SteerscopeError(f"{path} is not a steerscope vector set (no kind "
                                  f"'{KIND}' in its metadata)",
                                  "load single-layer files with SteeringVector.load or "
                                  "load_vector_file")
        by_layer = {}
        for key, t in tensors.items():
            m = _TENSOR_KEY.match(key)
            if m is None or t.ndim != 1:
                raise ShapeError(f"{path} holds tensor '{key}' of shape {tuple(t.shape)}, not "
                                 "a [d] direction 'layer.<N>'", "re-save it with "
                                 "SteeringVectorSet.save")
            by_layer[int(m.group(1))] = t
        layers = meta.get("layers")
        if not isinstance(layers, list) or sorted(by_layer) != sorted(layers):
            raise SteerscopeError(f"{path} records layers {layers} but holds tensors for "
                                  f"{sorted(by_layer)}", "re-save it with SteeringVectorSet.save")
        widths = sorted({int(t.shape[0]) for t in by_layer.values()})
        if len(widths) > 1:
            raise ShapeError(f"{path} holds directions of widths {widths}",
                             "a vector set has one width")
        known = {f.name for f in dataclass_fields(cls)} - {"vector", "layers"}  # no hub_kind
        fields = {k: v for k, v in meta.items() if k in known}
        vs = cls(vector=torch.stack([by_layer[x].float() for x in layers]), layers=layers,
                 **fields)
        if arch is not None:
            vs.check_fits(arch, model_id, strict_model=strict_model)
        return vs

    # --- the Hugging Face Hub (steerscope.vectors.hub; docs/vectors.md) -------------------
    def hub_payload(self):
        """This set as a :class:`~steerscope.vectors.hub.HubPayload`: tensors ``layer.{ℓ}``
        and the header metadata of :meth:`save` (so the folder's tensor file is a set file)."""
        from steerscope.vectors.hub import HubPayload

        return HubPayload(kind=self.hub_kind, metadata=self.to_metadata(),
                          tensors={tensor_key(layer): v.clone()
                                   for layer, v in zip(self.layers, self.vector)},
                          layers=list(self.layers), method=self.method, model_id=self.model_id,
                          revision=self.revision)

    # SteeringVector's, which read only what both share (``hub_kind``, ``hub_payload``,
    # ``load``, ``sha256``, ``check_fits``): ``save_pretrained(DIR, base_model=, behaviour=,
    # alpha=, figures=)`` writes the Hub folder (its card lists every layer and its norm),
    # ``from_pretrained(DIR | repo_id, arch, revision=, subfolder=)`` reads one (offline from
    # the HF cache; a single-vector folder is refused in one line naming SteeringVector),
    # ``push_to_hub(repo_id, ...)`` uploads it; ``from_hub_payload`` checks the sha256.
    from_hub_payload = classmethod(SteeringVector.from_hub_payload.__func__)
    save_pretrained = SteeringVector.save_pretrained
    from_pretrained = classmethod(SteeringVector.from_pretrained.__func__)
    push_to_hub = SteeringVector.push_to_hub

    def export_gguf(self, path: str | os.PathLike, *, model_hint: str | None = None,
                    alpha: float = 1.0) -> Path:
        """Write the set as one llama.cpp control vector (``direction.{ℓ-1}`` per layer ℓ,
        holding ``alpha·s_ℓ``): :func:`~steerscope.vectors.gguf.export_control_vector`."""
        from steerscope.vectors.gguf import export_control_vector

        return export_control_vector(list(self), path, model_hint=model_hint, alpha=alpha)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, arch=None, *,
                  model_id: str | None = None) -> SteeringVectorSet:
        """Read a llama.cpp control vector (every ``direction.N`` → layer N + 1) as one set."""
        from steerscope.vectors.gguf import import_control_vector

        vectors = import_control_vector(path, arch, model_id=model_id)
        return cls.from_vectors(vectors, metadata={"source": str(path)})


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(every tensor, the steerscope header metadata as a dict ({} when absent)) of a
    safetensors file, or a one-line error for a missing, unreadable or corrupt file."""
    if not path.is_file():
        raise SteerscopeError(f"vector file {path} does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several error types for bad files
        raise SteerscopeError(f"cannot read vector file {path} ({type(exc).__name__})",
                              "pass a .safetensors file written by steerscope") from exc
    meta: Any = {}
    if META_KEY in header:  # one line for corrupt, deep-nested or huge-integer metadata
        meta = parse_json(header[META_KEY], "the steerscope metadata of vector file", path)
    if not isinstance(meta, dict):
        raise SteerscopeError(f"vector file {path} has steerscope metadata that is not a JSON "
                              f"object (a {type(meta).__name__})", "re-save the vector")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise SteerscopeError(f"tensor '{name}' in {path} contains NaN or infinite values",
                                  "re-extract it")
    return tensors, meta


def load_vector_file(path: str | os.PathLike, arch=None, **kw) -> SteeringVector | SteeringVectorSet:
    """A :class:`SteeringVectorSet` for a set file, else :meth:`SteeringVector.load`
    (``kw``: its keywords, e.g. ``layer`` for a bare safetensors file)."""
    path = Path(path)
    _, meta = read_safetensors(path)
    if meta.get("kind") == KIND:
        kw.pop("layer", None)
        return SteeringVectorSet.load(path, arch, **kw)
    return SteeringVector.load(path, arch, **kw)


def is_multi_layer(vector) -> bool:
    """Whether ``vector`` steers several layers (a :class:`SteeringVectorSet` of 2+ layers)."""
    return isinstance(vector, SteeringVectorSet) and len(vector) > 1


def steer(vector, layer: int | None = None, alpha: float = 1.0, scope="all", **kw):
    """``ss.steer``: the steering intervention(s) adding ``alpha`` times ``vector``.

    ``vector``: a [d_model] tensor with its ``layer`` (one
    :func:`steerscope.runtime.steer` intervention; ``kw`` passed on), a
    :class:`SteeringVector` or a :class:`SteeringVectorSet` (their own layers; a set gives a
    list, one intervention per layer, which a runtime accepts as one item). Pass ``alpha`` by
    keyword with a vector object.
    """
    if isinstance(vector, (SteeringVector, SteeringVectorSet)):
        own = vector.layers if isinstance(vector, SteeringVectorSet) else [vector.layer]
        if layer is not None and [layer] != own:
            raise SteerscopeError(f"layer={layer!r} was given for a vector that steers layers "
                                  f"{own}", "drop layer= (a vector object carries its layers) "
                                  "and pass alpha= by keyword")
        return vector.intervention(alpha, scope=scope)
    if layer is None:
        raise SteerscopeError("steering a tensor needs its layer",
                              "pass ss.steer(tensor, layer=L, alpha=a)")
    return steer_at_layer(vector, layer, alpha, scope=scope, **kw)


__all__ = [
    "HUB_KIND",
    "KIND",
    "SteeringVectorSet",
    "check_steering_layers",
    "is_multi_layer",
    "load_vector_file",
    "read_safetensors",
    "steer",
    "tensor_key",
]
