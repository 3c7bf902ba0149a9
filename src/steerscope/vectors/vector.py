"""The :class:`SteeringVector` type and its file format.

A vector file is one safetensors file holding one tensor (``"vector"``, [d_model] float32)
and, in the safetensors header metadata, ``"steerscope"``: a JSON object with the fields of
:class:`SteeringVector` (except the tensor), plus ``d_model``, ``norm`` and ``sha256`` (the
content hash). Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerscope.artifacts import atomic_write
from steerscope.errors import ShapeError, SteerscopeError

TENSOR_KEY = "vector"
META_KEY = "steerscope"
FORMAT_VERSION = 1
HUB_KIND = "steering_vector"  # the kind a Hub folder of one vector records


@dataclass
class SteeringVector:
    """A steering vector ``s`` [d_model] added at the residual entering block ``layer``.

    ``method``: how it was made (``dim``, ``ntp``, ``po``, ``pca``, ...); ``position``: the
    token position it was read from, when relevant (negative = from the prompt end);
    ``hyperparameters``: the method's settings; ``metadata``: anything else (JSON-able).
    """

    hub_kind: ClassVar[str] = HUB_KIND  # the kind its Hub folder records (vectors.hub)

    vector: torch.Tensor
    layer: int
    method: str = "custom"
    model_id: str | None = None
    revision: str | None = None
    position: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, torch.Tensor) or self.vector.ndim != 1:
            shape = tuple(self.vector.shape) if isinstance(self.vector, torch.Tensor) else None
            raise ShapeError(f"a steering vector must be a 1-D tensor, got shape {shape}")
        if not torch.isfinite(self.vector).all():
            raise SteerscopeError("steering vector contains NaN or infinite values",
                                  "re-extract it")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise SteerscopeError(f"steering layer must be a non-negative int, got {self.layer!r}")
        self.vector = self.vector.detach().float().cpu().contiguous()

    # --- properties -------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def sha256(self) -> str:
        """Content hash of the tensor bytes and the layer."""
        h = hashlib.sha256(self.vector.numpy().tobytes())
        h.update(f"layer={self.layer}".encode())
        return h.hexdigest()

    # --- arithmetic ---------------------------------------------------------------------
    def with_vector(self, vector: torch.Tensor, **changes) -> SteeringVector:
        """A copy with another tensor (and optionally other fields changed)."""
        return replace(self, vector=vector, **changes)

    def scaled_to(self, norm: float) -> SteeringVector:
        """A copy rescaled to L2 norm ``norm``."""
        if self.norm == 0:
            raise SteerscopeError("cannot rescale the zero vector")
        return self.with_vector(self.vector * (norm / self.norm),
                                metadata={**self.metadata, "rescaled_to": float(norm)})

    def cosine(self, other: SteeringVector | torch.Tensor) -> float:
        o = other.vector if isinstance(other, SteeringVector) else other
        return float(torch.nn.functional.cosine_similarity(self.vector.double(), o.double(), dim=0))

    # --- model fit ------------------------------------------------------------------------
    def check_fits(self, arch, model_id: str | None = None, *, strict_model: bool = False) -> None:
        """Raise a one-line error unless the vector fits the model (width and layer range).

        With ``strict_model`` a different recorded ``model_id`` is an error too.
        """
        arch.check_vector(self.vector, f"{self.method} vector")
        if not 0 <= self.layer < arch.n_layers:
            raise SteerscopeError(
                f"{self.method} vector's layer {self.layer} is out of range for this "
                f"{arch.n_layers}-layer model",
                f"use a layer from 0 to {arch.n_layers - 1} and a vector extracted from this model",
            )
        if strict_model and model_id and self.model_id and model_id != self.model_id:
            raise SteerscopeError(
                f"{self.method} vector was extracted from '{self.model_id}', not '{model_id}'",
                "use a vector extracted from this model or pass strict_model=False",
            )

    def intervention(self, alpha: float = 1.0, scope="all"):
        """The steering intervention ``h^layer ← h^layer + alpha·s``."""
        from steerscope.runtime import steer

        return steer(self.vector, self.layer, alpha, scope=scope)

    # --- files ----------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("vector")
        d.update(format_version=FORMAT_VERSION, d_model=self.d_model, norm=self.norm,
                 sha256=self.sha256)
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vector file atomically; returns its path."""
        path = Path(path)
        try:
            meta = json.dumps(self.to_metadata(), sort_keys=True)
        except TypeError as exc:
            raise SteerscopeError(f"vector metadata is not JSON-serialisable ({exc})") from exc
        return atomic_write(path, lambda tmp: save_file({TENSOR_KEY: self.vector}, tmp,
                                                        metadata={META_KEY: meta}))

    @classmethod
    def load(cls, path: str | os.PathLike, arch=None, *, layer: int | None = None,
             model_id: str | None = None, strict_model: bool = False) -> SteeringVector:
        """Read a vector file (steerscope's, or any safetensors file with one 1-D tensor).

        A file without steerscope metadata needs ``layer``. With ``arch`` the vector is
        checked against the model (:meth:`check_fits`).
        """
        path = Path(path)
        if not path.is_file():
            raise SteerscopeError(f"vector file {path} does not exist", "check the path")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                header = dict(f.metadata() or {})
                if '"kind": "vector_set"' in header.get(META_KEY, ""):  # SteeringVectorSet.save
                    raise SteerscopeError(f"vector file {path} holds a multi-layer vector set",
                                          "load it with SteeringVectorSet.load or "
                                          "load_vector_file")
                if len(keys) != 1:
                    raise SteerscopeError(
                        f"vector file {path} holds {len(keys)} tensors, expected 1",
                        "save one vector per file")
                tensor = f.get_tensor(keys[0])
        except SteerscopeError:
            raise
        except Exception as exc:  # safetensors raises several error types for bad files
            raise SteerscopeError(
                f"cannot read vector file {path} ({type(exc).__name__})",
                "pass a .safetensors file written by steerscope or safetensors") from exc
        fields: dict[str, Any] = {}
        if META_KEY in header:
            from steerscope.safe_files import parse_json

            # one line for corrupt, deep-nested (RecursionError) or huge-integer metadata
            fields = parse_json(header[META_KEY], "the steerscope metadata of vector file", path)
            if not isinstance(fields, dict):
                raise SteerscopeError(f"vector file {path} has steerscope metadata that is not a "
                                      f"JSON object (a {type(fields).__name__})",
                                      "re-save the vector with SteeringVector.save")
        for k in ("format_version", "d_model", "norm", "sha256"):
            fields.pop(k, None)
        if layer is not None:
            fields["layer"] = int(layer)
        if "layer" not in fields:
            raise SteerscopeError(f"vector file {path} records no layer", "pass the layer")
        if tensor.ndim != 1:
            raise ShapeError(f"vector file {path} holds a tensor of shape {tuple(tensor.shape)}",
                             "a steering vector is 1-D [d_model]")
        if not torch.isfinite(tensor).all():
            raise SteerscopeError(f"vector in {path} contains NaN or infinite values",
                                  "re-extract it")
        known = {f.name for f in dataclass_fields(cls)} - {"vector"}  # not the ClassVar hub_kind
        extra = {k: v for k, v in fields.items() if k not in known}
        fields = {k: v for k, v in fields.items() if k in known}
        sv = cls(vector=tensor.float(), **fields)
        if extra:
            sv.metadata = {**sv.metadata, **extra}
        if arch is not None:
            sv.check_fits(arch, model_id, strict_model=strict_model)
        return sv

    # --- the Hugging Face Hub (steerscope.vectors.hub) -----------------------------------
    def hub_payload(self):
        """This vector as a :class:`~steerscope.vectors.hub.HubPayload` (tensor ``vector``,
        the file metadata of :meth:`save`), what a Hub folder stores."""
        from steerscope.vectors.hub import HubPayload

        return HubPayload(kind=self.hub_kind, tensors={TENSOR_KEY: self.vector},
                          metadata=self.to_metadata(), layers=[self.layer], method=self.method,
                          model_id=self.model_id, revision=self.revision)

    @classmethod
    def from_hub_payload(cls, payload) -> SteeringVector:
        """The vector of a payload read from a Hub folder (its file read by :meth:`load`, so
        every check of a vector file applies), checked against the recorded sha256."""
        sv = cls.load(payload.path)
        recorded = payload.metadata.get("sha256")
        if recorded and recorded != sv.sha256:
            raise SteerscopeError(f"{payload.path} does not match its recorded sha256",
                                  "re-download or re-save the vector")
        return sv

    def save_pretrained(self, folder: str | os.PathLike, *, base_model: str | None = None,
                        behaviour: str | None = None, alpha=None, figures=None) -> Path:
        """Write a Hub-ready folder: the vector file, ``steering_config.json`` and a model
        card ``README.md`` (``base_model`` defaults to the vector's model; ``alpha``: the α it
        is used with; ``figures``: a run's :func:`~steerscope.vectors.hub_card.run_figures`)."""
        from steerscope.vectors import hub

        payload = self.hub_payload()
        info = hub.card_info(payload, base_model=base_model, behaviour=behaviour, alpha=alpha,
                             figures=figures)
        return hub.save_pretrained(payload, folder, info)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, arch=None, *, revision: str | None = None,
                        subfolder: str | None = None) -> SteeringVector:
        """A vector from a folder written by :meth:`save_pretrained` or a Hub repo id (read
        through the huggingface_hub cache; offline with ``HF_HUB_OFFLINE=1`` once cached);
        with ``arch`` it is checked against the model."""
        from steerscope.vectors import hub

        sv = cls.from_hub_payload(hub.load_pretrained(source, cls.hub_kind, revision=revision,
                                                      subfolder=subfolder))
        if arch is not None:
            sv.check_fits(arch)
        return sv

    def push_to_hub(self, repo_id: str, *, base_model: str | None = None,
                    behaviour: str | None = None, alpha=None, figures=None,
                    private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None) -> str:
        """:meth:`save_pretrained` into a temporary folder and upload it to Hub repo
        ``repo_id`` (``huggingface_hub.upload_folder``); returns the commit URL."""
        from steerscope.vectors import hub

        payload = self.hub_payload()
        info = hub.card_info(payload, base_model=base_model, behaviour=behaviour, alpha=alpha,
                             figures=figures)
        return hub.push_payloads([("", payload, info)], repo_id, private=private, token=token,
                                 commit_message=commit_message)
