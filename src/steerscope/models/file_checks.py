"""Checks of a model's files from their headers alone, before any weight is read or any
tensor allocated (milliseconds, whatever the model's size): a truncated or damaged
``.safetensors`` or ``.gguf`` file, and a ``config.json`` whose ``num_hidden_layers`` is not
the number of layers the weights hold (``1e9`` would otherwise allocate until the machine
gives up). Each failure is one :class:`~steerscope.errors.SteerscopeError` naming the file
and the fix."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

from steerscope.errors import SteerscopeError

MAX_SAFETENSORS_HEADER = 100 * 2**20  # the safetensors format's own limit
MAX_GGUF_ITEMS = 2**24  # tensors, metadata keys or array items: far above any real model
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blk|block|blocks)\.(\d+)\.")
# the small JSON files transformers reads while loading (tokenizer.json, often tens of MB, is
# left to the tokenizer's loader: parsing it here would cost seconds)
SIDE_JSON_FILES = ("tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "added_tokens.json")
REFETCH = "rebuild or re-download the model (a cached model: delete its folder, it is rebuilt)"


def damaged(path: Path | str, problem: str) -> SteerscopeError:
    """The one-line error for a model file that cannot be what it claims."""
    return SteerscopeError(f"model file {path} is truncated or damaged ({problem})", REFETCH)


def safetensors_tensor_names(path: str | os.PathLike) -> list[str]:
    """The tensor names in a ``.safetensors`` file's header, after checking that the header
    parses and that the file holds every byte the header's offsets need."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise damaged(path, f"{size} bytes, no header")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise damaged(path, f"its header claims {n} bytes, the file has {size}")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise damaged(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise damaged(path, "its header is not a JSON object")
    needed, names = 0, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and o >= 0 for o in offsets)):
            raise damaged(path, f"tensor {name!r} has no valid data_offsets")
        needed = max(needed, offsets[1])
        names.append(name)
    if 8 + n + needed != size:
        raise damaged(path, f"{size} bytes, its header describes {8 + n + needed}")
    return names


def weight_files(folder: Path) -> list[Path]:
    """The ``.safetensors`` files of a model folder (those its index lists, if sharded)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise damaged(index, "not a safetensors index") from None
        return [folder / s for s in shards if isinstance(s, str)]
    return sorted(folder.glob("*.safetensors"))


def layer_counts(names: list[str]) -> set[int]:
    """For each stack of numbered layers in the tensor names (grouped by the text before the
    index, e.g. ``model.layers.``; a multimodal model has one per tower): 1 + its highest
    index. Empty when no name has a layer index."""
    highest: dict[str, int] = {}
    for n in names:
        m = LAYER_INDEX.search(n)
        if m:
            prefix = n[:m.start(1)]
            highest[prefix] = max(highest.get(prefix, -1), int(m.group(1)))
    return {h + 1 for h in highest.values()}


def check_depth(config: dict, where: str, layers_in_weights: set[int]) -> None:
    """``num_hidden_layers`` of a raw config (its ``text_config`` first) is a positive integer
    and, when the weights were read (``layers_in_weights``: :func:`layer_counts`), the length
    of one of their layer stacks."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    for c in (text, config):
        if not c or "num_hidden_layers" not in c:
            continue
        depth = c["num_hidden_layers"]
        held = " or ".join(str(n) for n in sorted(layers_in_weights))
        fix = f"set num_hidden_layers in {where} to the model's layer count"
        if held:
            fix += f" ({held})"
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) \
                or not math.isfinite(depth) or depth != int(depth) or depth < 1:
            raise SteerscopeError(f"{where}: num_hidden_layers is {depth!r}, not a positive "
                                  "integer", fix)
        if layers_in_weights and int(depth) not in layers_in_weights:
            raise SteerscopeError(f"{where}: num_hidden_layers is {depth!r} but the weights "
                                  f"hold {held} layers", fix)
        return


def check_model_folder(folder: str | os.PathLike) -> None:
    """Every weight file of a model folder is complete (its safetensors header covers the
    file exactly), ``config.json``'s depth matches the layers the weights hold, and the small
    JSON files beside it (:data:`SIDE_JSON_FILES`) are readable JSON (not deep, huge, a FIFO)."""
    from steerscope.safe_files import MAX_CONFIG_BYTES, read_json_file

    folder = Path(folder)
    for name in SIDE_JSON_FILES:
        if (folder / name).exists() or (folder / name).is_symlink():
            read_json_file(folder / name, "model file", max_bytes=MAX_CONFIG_BYTES)
    names: list[str] = []
    for path in weight_files(folder):
        if not path.is_file():
            raise damaged(path, "the file is missing")
        names += safetensors_tensor_names(path)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return  # read_config_json names this problem
    if isinstance(config, dict):
        check_depth(config, str(config_path), layer_counts(names))


# --- GGUF ------------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    """Bounded little-endian reads from a GGUF file's bytes."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.data):
            raise damaged(self.path, f"it ends inside its header, at byte {len(self.data)}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return value

    def count(self, what: str) -> int:
        n = self.take("<Q")
        if n > MAX_GGUF_ITEMS:
            raise damaged(self.path, f"its header claims {n} {what}")
        return n

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise damaged(self.path, f"it ends inside its header, at byte {len(self.data)}")
        text = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item = self.take("<I")
            return [self.value(item) for _ in range(self.count("array items"))]
        raise damaged(self.path, f"unknown metadata value type {kind}")


def check_gguf_file(path: str | os.PathLike) -> dict:
    """Parse a ``.gguf`` file's header (metadata and tensor table) and check that the file
    holds every tensor's bytes and that the block count matches the tensors' layers; returns
    the metadata."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        data = fh.read(min(size, 64 * 2**20))  # metadata (a vocabulary) is a few MB
    r = _Reader(path, data)
    if data[:4] != b"GGUF":
        raise damaged(path, "no GGUF magic number")
    r.pos = 4
    version = r.take("<I")
    if version < 2:
        raise SteerscopeError(f"{path} is GGUF version {version}, which is not supported",
                              "convert it with a current llama.cpp")
    n_tensors, n_kv = r.count("tensors"), r.count("metadata keys")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("<I"))
    needed, names = 0, []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(min(r.take("<I"), 8))]
        kind, offset = r.take("<I"), r.take("<Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise damaged(path, f"tensor {name!r} has unknown type {kind}") from None
        needed = max(needed, offset + math.prod(dims) // block * type_size)
        names.append(name)
    align = meta.get("general.alignment", 32)
    align = align if isinstance(align, int) and align > 0 else 32
    start = -(-r.pos // align) * align
    if start + needed > size:
        raise damaged(path, f"{size} bytes, its tensors need {start + needed}")
    arch = meta.get("general.architecture")
    blocks = meta.get(f"{arch}.block_count")
    found = layer_counts(names)
    if blocks is not None and found and blocks not in found:
        raise SteerscopeError(f"{path}: {arch}.block_count is {blocks} but the tensors hold "
                              f"{' or '.join(map(str, sorted(found)))} layers",
                              "pass an undamaged .gguf file")
    return meta
