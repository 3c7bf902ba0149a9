"""Steering vectors as Hugging Face Hub folders: ``save_pretrained``, ``from_pretrained``,
``push_to_hub`` and ``pull``, for any object that describes itself as a :class:`HubPayload`
(a :class:`~steerscope.vectors.SteeringVector` does; a multi-layer vector set can too).

A vector folder holds three files:

- ``steering_vector.safetensors``: the payload's tensors, and its metadata as JSON under the
  header key ``steerscope`` (for one :class:`SteeringVector` this is exactly the file
  :meth:`SteeringVector.save` writes, so ``SteeringVector.load`` reads it too);
- ``steering_config.json``: ``library_name``, ``kind``, ``format_version``, the tensors'
  names and shapes, ``layers``, ``method``, ``model_id``, ``revision``, ``norms``, the card's
  ``base_model``/``behaviour``/``alpha``/``figures``, and the metadata again;
- ``README.md``: the model card (:mod:`steerscope.vectors.hub_card`).

A repo (or folder) holds one vector folder at its root, or several in subfolders with an
index card at the root (``from_pretrained(..., subfolder="dim")``). A Hub repo id is read
through huggingface_hub's cache (``snapshot_download``), so it works offline
(``HF_HUB_OFFLINE=1``) once the snapshot is cached; both variables are read at call time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerscope.artifacts import atomic_write, child_path
from steerscope.errors import SteerscopeError
from steerscope.safe_files import MAX_CONFIG_BYTES, read_json_file
from steerscope.vectors.hub_card import (
    LIBRARY_NAME,
    CardInfo,
    class_name,
    front_matter,
    index_card,
    model_name,
    vector_card,
)

TENSOR_FILE = "steering_vector.safetensors"
CONFIG_FILE = "steering_config.json"
CARD_FILE = "README.md"
HEADER_KEY = "steerscope"  # the safetensors header key of the metadata (as vector.META_KEY)
HUB_FORMAT_VERSION = 1
FOLDER_HINT = "pass a folder written by save_pretrained or a Hub repo id such as owner/name"


@dataclass
class HubPayload:
    """What a vector folder stores, whatever the object.

    ``kind``: the object's type name (``steering_vector``; a set names its own);
    ``tensors``: name -> tensor (float32, e.g. ``{"vector": [d_model]}``), written as they are;
    ``metadata``: the object's JSON-able description, in the safetensors header;
    ``layers``: the steered layer(s), one per tensor; ``method``, ``model_id``, ``revision``:
    for the card. ``path``: the safetensors file it was read from (None before saving).
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    layers: list[int]
    method: str
    model_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @property
    def norms(self) -> list[float]:
        return [float(t.float().norm()) for t in self.tensors.values()]

    def summary(self) -> dict[str, Any]:
        """The payload's description in the config and the card."""
        shapes = {k: list(t.shape) for k, t in self.tensors.items()}
        return {"kind": self.kind, "method": self.method, "layers": list(self.layers),
                "norms": self.norms, "d_model": next(iter(shapes.values()), [None])[-1],
                "model_id": self.model_id, "revision": self.revision,
                "tensors": {k: {"shape": s, "dtype": str(self.tensors[k].dtype).split(".")[-1]}
                            for k, s in shapes.items()}}


def card_info(payload: HubPayload, *, base_model: str | None = None,
              behaviour: str | None = None, alpha: float | dict[str, float] | None = None,
              figures: dict[str, Any] | None = None) -> CardInfo:
    """The card's facts, ``base_model`` defaulting to the payload's model (by name)."""
    return CardInfo(base_model=base_model or model_name(payload.model_id),
                    behaviour=behaviour or (figures or {}).get("behaviour"), alpha=alpha,
                    figures=figures)


# --- writing ----------------------------------------------------------------------------
def save_pretrained(payload: HubPayload, folder: str | os.PathLike, info: CardInfo, *,
                    repo_hint: str | None = None, subfolder: str | None = None) -> Path:
    """Write the three files of a vector folder into ``folder`` (each atomically; the card
    and config are built, and checked, before anything is written); returns the folder."""
    folder = Path(folder)
    card = vector_card(payload.summary(), info, repo_hint, subfolder)  # raises without base_model
    try:
        header = json.dumps(payload.metadata, sort_keys=True)
        config = json.dumps({"library_name": LIBRARY_NAME, "format_version": HUB_FORMAT_VERSION,
                             **payload.summary(), "tensor_file": TENSOR_FILE,
                             **info.to_json(), "metadata": payload.metadata},
                            indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SteerscopeError(f"the vector's metadata or card figures are not JSON ({exc})",
                              "keep metadata to str/int/float/list/dict values") from exc
    tensors = {k: t.detach().cpu().contiguous() for k, t in payload.tensors.items()}
    atomic_write(folder / TENSOR_FILE,
                 lambda tmp: save_file(tensors, tmp, metadata={HEADER_KEY: header}))
    write_text(folder / CONFIG_FILE, config + "\n")
    write_text(folder / CARD_FILE, card)
    return folder


def save_many(entries: list[tuple[str, HubPayload, CardInfo]], folder: str | os.PathLike, *,
              repo_hint: str | None = None) -> Path:
    """Several vectors in one folder: one vector folder per subfolder (``entries`` =
    (subfolder, payload, info)) and an index card at the root; one entry goes to the root."""
    folder = Path(folder)
    if len(entries) == 1:
        return save_pretrained(entries[0][1], folder, entries[0][2], repo_hint=repo_hint)
    for _, _, info in entries:  # no card without base_model: fail before writing anything
        front_matter(info.base_model, [])
    names = [sub for sub, _, _ in entries]
    targets = [child_path(folder, sub, what="vector subfolder") for sub in names]
    if len(set(names)) != len(names):
        raise SteerscopeError(f"two vectors would share a subfolder ({', '.join(names)})",
                              "give each vector file a different name")
    index = index_card([(sub, p.summary(), i) for sub, p, i in entries], entries[0][2].base_model,
                       repo_hint)
    for target, (sub, payload, info) in zip(targets, entries):
        save_pretrained(payload, target, info, repo_hint=repo_hint, subfolder=sub)
    write_text(folder / CARD_FILE, index)
    return folder


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# --- reading ----------------------------------------------------------------------------
def vector_folders(folder: Path) -> list[Path]:
    """The vector folders in ``folder``: itself, or its subfolders holding a config."""
    if (folder / CONFIG_FILE).is_file():
        return [folder]
    return sorted(p.parent for p in folder.glob(f"*/{CONFIG_FILE}"))


def read_config(folder: Path) -> dict[str, Any]:
    """The parsed ``steering_config.json`` of a vector folder (one-line errors)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        subs = [p.name for p in vector_folders(folder)]
        if subs:
            raise SteerscopeError(f"{folder} holds several vectors ({', '.join(subs)})",
                                  f"pass subfolder= one of them (e.g. subfolder='{subs[0]}')")
        raise SteerscopeError(f"{folder} has no {CONFIG_FILE}", FOLDER_HINT)
    config = read_json_file(path, "vector config", max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(config, dict) or config.get("library_name") != LIBRARY_NAME:
        raise SteerscopeError(f"{path} is not a steerscope vector config",
                              "re-save the vector with save_pretrained")
    if int(config.get("format_version") or 0) > HUB_FORMAT_VERSION:
        raise SteerscopeError(f"{path} has format_version {config.get('format_version')}, newer "
                              f"than this steerscope reads ({HUB_FORMAT_VERSION})",
                              "upgrade steerscope")
    return config


def read_card(folder: Path):
    """The folder's model card (``huggingface_hub.ModelCard``); a one-line error when it is
    missing, has no YAML front matter or no ``base_model``."""
    from huggingface_hub import ModelCard

    path = folder / CARD_FILE
    if not path.is_file():
        raise SteerscopeError(f"{folder} has no {CARD_FILE} (model card)", FOLDER_HINT)
    try:
        card = ModelCard.load(path)
    except Exception as exc:  # huggingface_hub raises ValueError / yaml errors
        raise SteerscopeError(f"cannot parse the model card {path} ({type(exc).__name__})",
                              "fix its YAML front matter or re-save with save_pretrained") from exc
    if not card.data.base_model:
        raise SteerscopeError(f"the model card {path} has no base_model",
                              "add 'base_model: <model Hub id>' to its YAML front matter, or "
                              "re-save with save_pretrained(base_model=...)")
    return card


def read_payload(folder: str | os.PathLike) -> HubPayload:
    """The payload of a local vector folder, checked: config, card with ``base_model``, and
    the tensor file holding exactly the tensors (names and shapes) the config lists."""
    folder = Path(folder)
    config = read_config(folder)
    read_card(folder)
    name = str(config.get("tensor_file") or TENSOR_FILE)
    if Path(name).name != name or name in ("", ".", ".."):
        raise SteerscopeError(f"{folder / CONFIG_FILE} names tensor_file '{name}', not a file "
                              "name in the folder", "re-save the vector with save_pretrained")
    path = folder / name
    if not path.is_file():
        raise SteerscopeError(f"{folder} has no {path.name}", FOLDER_HINT)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = json.loads((f.metadata() or {}).get(HEADER_KEY) or "{}")
    except Exception as exc:  # safetensors raises several types for bad files
        raise SteerscopeError(f"cannot read {path} ({type(exc).__name__})",
                              "re-download or re-save the vector") from exc
    listed = config.get("tensors") or {}
    shapes = {k: list(t.shape) for k, t in tensors.items()}
    if shapes != {k: v.get("shape") for k, v in listed.items()}:
        raise SteerscopeError(f"{path.name} holds tensors {shapes}, but {CONFIG_FILE} lists "
                              f"{ {k: v.get('shape') for k, v in listed.items()} }",
                              "re-download or re-save the vector")
    return HubPayload(kind=str(config.get("kind")), tensors=tensors, metadata=metadata,
                      layers=[int(x) for x in config.get("layers") or []],
                      method=str(config.get("method")), model_id=config.get("model_id"),
                      revision=config.get("revision"), path=path)


def load_pretrained(source: str | os.PathLike, kind: str, *, revision: str | None = None,
                    subfolder: str | None = None) -> HubPayload:
    """The checked payload of ``kind`` from a local folder or a Hub repo id."""
    folder = resolve_folder(source, revision=revision, subfolder=subfolder)
    payload = read_payload(folder)
    if payload.kind != kind:
        raise SteerscopeError(f"{folder} holds a {payload.kind}, not a {kind}",
                              f"load it with steerscope.{class_name(payload.kind)}"
                              ".from_pretrained")
    return payload


# --- the Hub ----------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repo id, else a one-line error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SteerscopeError(f"'{repo_id}' is not a valid Hugging Face Hub repo id",
                              "use owner/name (letters, digits, '-', '_', '.')") from None
    return repo_id


def resolve_folder(source: str | os.PathLike, *, revision: str | None = None,
                   subfolder: str | None = None) -> Path:
    """The local folder of ``source``: an existing folder, or a Hub repo's snapshot in the
    huggingface_hub cache (downloaded first unless offline), then ``subfolder`` in it."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path
    elif path.is_file():
        raise SteerscopeError(f"'{text}' is a file, not a vector folder",
                              "pass the folder save_pretrained wrote (SteeringVector.load "
                              "reads a single vector file)")
    elif isinstance(source, os.PathLike) or text.startswith(("/", ".", "~")) \
            or text.count("/") > 1 or path.suffix == ".safetensors":
        raise SteerscopeError(f"vector folder '{text}' does not exist", FOLDER_HINT)
    else:
        folder = Path(snapshot(text, revision=revision))
    if subfolder:
        if not (folder / subfolder).is_dir():
            subs = [p.name for p in vector_folders(folder) if p != folder]
            raise SteerscopeError(f"'{text}' has no subfolder '{subfolder}'",
                                  f"use one of: {', '.join(subs)}" if subs else
                                  "leave subfolder out")
        folder = folder / subfolder
    return folder


def snapshot(repo_id: str, *, revision: str | None = None) -> str:
    """The cached snapshot folder of Hub repo ``repo_id`` (``snapshot_download``: offline,
    ``HF_HUB_OFFLINE=1``, only the cache under ``HF_HUB_CACHE`` is read)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from steerscope.models.sources import hub_offline

    check_repo_id(repo_id)
    offline = hub_offline()
    where = f"'{repo_id}'" + (f" (revision {revision})" if revision else "")
    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                 cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                 library_name=LIBRARY_NAME)
    except LocalEntryNotFoundError:
        if offline:
            raise SteerscopeError(
                f"vector repo {where} is not a local folder and not in the Hugging Face cache, "
                "and HF_HUB_OFFLINE is set", "pull it once online (steerscope vectors pull "
                f"{repo_id} --out DIR), pass a local folder, or unset HF_HUB_OFFLINE") from None
        raise SteerscopeError(f"cannot reach the Hugging Face Hub for vector repo {where}, and "
                              "it is not cached", "check the network, or pass a local folder"
                              ) from None
    except RevisionNotFoundError:
        raise SteerscopeError(f"vector repo '{repo_id}' has no revision {revision}",
                              "check the revision") from None
    except RepositoryNotFoundError:
        raise SteerscopeError(f"vector repo '{repo_id}' is not a local folder and not on the "
                              "Hugging Face Hub (or it is private)",
                              "check the id or the path, or log in (hf auth login)") from None
    except HfHubHTTPError as exc:
        raise SteerscopeError(f"the Hugging Face Hub refused vector repo {where} ("
                              f"{type(exc).__name__})", "check the id and your token") from None


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None,
                revision: str | None = None) -> str:
    """Upload a folder of vectors (every vector folder in it checked first) to Hub repo
    ``repo_id`` through ``huggingface_hub.create_repo`` + ``upload_folder``; returns the
    commit URL. Only the files a vector folder consists of are uploaded (each vector's three
    files and the index card), never anything else that lies in the folder."""
    import huggingface_hub

    from steerscope.models.sources import hub_offline

    folder = Path(folder)
    check_repo_id(repo_id)
    found = vector_folders(folder)
    if not found:
        raise SteerscopeError(f"{folder} holds no vector folder", FOLDER_HINT)
    for f in found:
        read_payload(f)
    if hub_offline():
        raise SteerscopeError(f"cannot push to '{repo_id}': HF_HUB_OFFLINE is set",
                              "unset HF_HUB_OFFLINE to push")
    try:
        huggingface_hub.create_repo(repo_id, private=private, token=token, exist_ok=True)
        info = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(folder), token=token, revision=revision,
            allow_patterns=folder_files(folder, found),
            commit_message=commit_message or f"Upload steering vectors with {LIBRARY_NAME}")
    except Exception as exc:  # an HTTP refusal (HfHubHTTPError), no network (httpx), ...
        status = getattr(getattr(exc, "response", None), "status_code", None)
        said = " ".join(str(getattr(exc, "server_message", None) or "").split())[:300]
        raise SteerscopeError(
            f"pushing to Hub repo '{repo_id}' failed ({type(exc).__name__}"
            f"{f' {status}' if status else ''}{f': the Hub says {said!r}' if said else ''})",
            "log in (hf auth login, or set HF_TOKEN), check that you may write to the repo and "
            "that the Hub is reachable; if the Hub refuses base_model (a local model name), "
            "pass the model's Hub id (base_model= / --base-model)") from None
    return str(getattr(info, "commit_url", info))


def folder_files(folder: Path, found: list[Path]) -> list[str]:
    """The paths (relative to ``folder``, '/'-separated) of the files that make up the vector
    folders ``found`` in ``folder``: each one's tensor file, config and card, and the root's
    index card."""
    files = [CARD_FILE] if (folder / CARD_FILE).is_file() else []
    for f in found:
        files += [(f.relative_to(folder) / name).as_posix()
                  for name in (TENSOR_FILE, CONFIG_FILE, CARD_FILE)]
    return list(dict.fromkeys(files))


def push_payloads(entries: list[tuple[str, HubPayload, CardInfo]], repo_id: str,
                  **options) -> str:
    """:func:`save_many` into a temporary folder, then :func:`push_folder` it."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="steerscope-push-") as tmp:
        save_many(entries, tmp, repo_hint=repo_id)
        return push_folder(tmp, repo_id, **options)


def pull(repo_id: str, out: str | os.PathLike, *, revision: str | None = None) -> list[Path]:
    """Copy Hub repo ``repo_id`` (through the cache) into folder ``out``, after checking
    every vector folder in it; returns the vector folders written."""
    folder = Path(snapshot(repo_id, revision=revision))
    found = vector_folders(folder)
    if not found:
        raise SteerscopeError(f"Hub repo '{repo_id}' holds no steerscope vector folder",
                              "check the id: a repo written by steerscope vectors push")
    for f in found:
        read_payload(f)
    out = Path(out)
    for src in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        dest = child_path(out, *src.relative_to(folder).parts, what="file of the Hub repo")
        atomic_write(dest, lambda tmp, src=src: shutil.copyfile(src, tmp))
    return [out / f.relative_to(folder) for f in found]
