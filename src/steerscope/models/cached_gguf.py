"""Models shipped as a GGUF file inside pip packages, used through a verified float32
safetensors copy in the cache: one :class:`CachedGGUFModel` record per model (the embedded
SmolLM2-135M-Instruct, :mod:`steerscope.models.embedded`; Gemma-3-270M,
:mod:`steerscope.models.gemma3`).

The GGUF file is found with ``importlib.util.find_spec`` (nothing imported): one part is the
file itself, read in place; several parts are chunk files concatenated into the build folder,
checked against the record's SHA-256 and deleted after the build. Dequantising takes up to a
minute, so :meth:`CachedGGUFModel.model_dir` does it once and keeps a float32 copy under
``$STEERSCOPE_CACHE/models/<name>``, written atomically (a folder at the final path is always
complete) and verified: identical weights, an identical tokenizer (and chat template) and
exactly the GGUF model's logits on one prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from steerscope import artifacts
from steerscope.artifacts import MANIFEST_NAME, atomic_build_dir, file_sha256, package_version
from steerscope.errors import ModelNotFoundError, SteerscopeError
from steerscope.models.cache_check import DIGESTS_KEY, cached_folder_ok, record_digests
from steerscope.models.gguf import gguf_depth, load_gguf, quiet_transformers, strip_quantization
from steerscope.models.sources import config_depth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedGGUFModel:
    """One model shipped as GGUF in pip packages (see the module docstring).

    ``name``: its alias, cache folder and manifest ``model``; ``label``: how messages name it;
    ``distribution``/``version``: what to install; ``gguf_name``: the GGUF file name;
    ``parts``: ``(import name, path relative to its folder)`` of each part, in file order;
    ``missing``: ``(message, fix)`` when a part is not installed; ``sha256``: the digest of
    the assembled GGUF (checked; None: the installed file's size, mtime and digest are
    recorded and a reinstalled file invalidates the copy); ``chat_template``: given to the
    copy's tokenizer; ``verify_messages`` (rendered with the chat template, no special
    tokens added) or ``verify_text`` (raw, special tokens added): the prompt whose logits the
    copy must reproduce; ``published_shape``: ``(n_layers, model_type)`` before the copy
    exists (None: read from the GGUF metadata); ``fingerprint_key``/``fingerprint_value``:
    the second entry of :meth:`fingerprint` (it goes into run hashes)."""

    name: str
    label: str
    distribution: str
    version: str
    gguf_name: str
    parts: tuple[tuple[str, str], ...]
    missing: tuple[str, str]
    fingerprint_key: str
    fingerprint_value: str
    sha256: str | None = None
    chat_template: str | None = None
    verify_messages: tuple[dict, ...] | None = None
    verify_text: str | None = None
    published_shape: tuple[int, str] | None = None
    manifest_format: int = 1

    # --- the installed GGUF -------------------------------------------------------------------
    def part_paths(self) -> list[Path]:
        """The installed part files, in order; the one-line install hint when one is missing."""
        paths = []
        for package, relative in self.parts:
            try:
                spec = importlib.util.find_spec(package)
            except (ImportError, ValueError):
                spec = None
            folders = list(spec.submodule_search_locations or []) if spec is not None else []
            if spec is not None and not folders and spec.origin:
                folders = [os.path.dirname(spec.origin)]
            found = [Path(f) / relative for f in folders if (Path(f) / relative).is_file()]
            if not found:
                raise ModelNotFoundError(*self.missing)
            paths.append(found[0])
        return paths

    def available(self) -> bool:
        """Whether every part is installed."""
        try:
            self.part_paths()
        except SteerscopeError:
            return False
        return True

    def assemble(self, target: str | os.PathLike) -> Path:
        """Concatenate the parts into ``target`` and check the result's SHA-256 against
        :attr:`sha256` (when set); returns ``target``."""
        target = Path(target)
        digest = hashlib.sha256()
        with open(target, "wb") as out:
            for part in self.part_paths():
                with open(part, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if self.sha256 is not None and digest.hexdigest() != self.sha256:
            target.unlink(missing_ok=True)
            raise SteerscopeError(f"the assembled {self.label} GGUF has SHA-256 "
                                  f"{digest.hexdigest()[:12]}..., not {self.sha256[:12]}...",
                                  f"reinstall: pip install --force-reinstall "
                                  f"{self.distribution}=={self.version}")
        return target

    # --- the cached copy ----------------------------------------------------------------------
    def cache_folder(self, cache_root: str | os.PathLike | None = None) -> Path:
        """Where the float32 copy is (or will be) cached: ``<cache>/models/<name>``
        (``cache_root`` default: ``$STEERSCOPE_CACHE``)."""
        root = Path(cache_root).expanduser().absolute() if cache_root is not None \
            else artifacts.cache_dir()
        return root / "models" / self.name

    def cache_valid(self, folder: Path) -> bool:
        """Whether ``folder`` holds a complete copy: its manifest is readable, every listed
        file has its recorded size and sha256 (:mod:`steerscope.models.cache_check`), and its
        source is this record's GGUF (:attr:`sha256`, else the installed file when there is
        one: same size, and same mtime or digest)."""
        try:
            manifest = json.loads((folder / MANIFEST_NAME).read_text())
            if manifest.get("format") != self.manifest_format or manifest.get("model") != self.name:
                return False
            files = manifest["files"]
            if "config.json" not in files:
                return False
            if not all((folder / n).stat().st_size == size for n, size in files.items()):
                return False
            source = manifest["source"]
            if self.sha256 is not None and source["sha256"] != self.sha256:
                return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        if self.sha256 is None and not self._installed_source_ok(source):
            return False
        return cached_folder_ok(folder, manifest)

    def _installed_source_ok(self, source: dict) -> bool:
        try:
            gguf = self.part_paths()[0]
        except SteerscopeError:
            return True  # the package is gone, but the verified copy is still good
        st = gguf.stat()
        if st.st_size != source.get("size"):
            return False
        # reinstalled: is it the same file?
        return st.st_mtime_ns == source.get("mtime_ns") or file_sha256(gguf) == source.get("sha256")

    def model_dir(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """The folder of the verified float32 copy, built on first use (``cache_dir``
        overrides the cache root); ``AutoModelForCausalLM.from_pretrained`` loads it."""
        final = self.cache_folder(cache_dir)
        if self.cache_valid(final):
            return final
        self.part_paths()  # fails with the install hint before anything is written
        logger.info("building the float32 copy of %s in %s (once)", self.label, final.parent)
        return atomic_build_dir(final, self.build, valid=self.cache_valid)

    def fingerprint(self) -> dict:
        """What identifies the model without reading it (it goes into run hashes)."""
        return {"alias": self.name, self.fingerprint_key: self.fingerprint_value}

    def shape(self) -> tuple[int, str | None]:
        """``(n_layers, model_type)`` without loading weights: from the cached copy's config
        when built, else :attr:`published_shape` or the GGUF metadata."""
        cached = self.cache_folder()
        if self.cache_valid(cached):
            return config_depth(json.loads((cached / "config.json").read_text()), str(cached))
        if self.published_shape is not None:
            return self.published_shape
        return gguf_depth(self.part_paths()[0])

    # --- the build ----------------------------------------------------------------------------
    def build(self, tmp: Path) -> None:
        """Dequantise the GGUF into ``tmp`` (float32 safetensors, the record's chat template),
        verify the reloaded copy (:meth:`verify`) and write the manifest; an assembled GGUF
        is deleted (never kept or shipped next to the copy)."""
        assembled = len(self.parts) > 1
        gguf = self.assemble(tmp / self.gguf_name) if assembled else self.part_paths()[0]
        tokenizer, model = load_gguf(gguf, torch.float32)
        model.eval()
        strip_quantization(model)
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        verification = self.verify(model, tokenizer, out, gguf)
        if assembled:
            gguf.unlink()
        for p in out.iterdir():
            os.replace(p, tmp / p.name)
        out.rmdir()
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        source = {"package": self.distribution,
                  "package_version": package_version(self.distribution),
                  "file": self.gguf_name, "sha256": self.sha256 or file_sha256(gguf)}
        if not assembled:
            st = gguf.stat()
            source.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        manifest = {
            "format": self.manifest_format,
            "model": self.name,
            "dtype": "float32",
            **({"chat_template": "set by steerscope (CachedGGUFModel.chat_template)"}
               if self.chat_template is not None else {}),
            "source": source,
            "files": files,
            DIGESTS_KEY: record_digests(tmp, list(files)),
            "verification": verification,
            "transformers_version": package_version("transformers"),
            "torch_version": torch.__version__,
            "gguf_version": package_version("gguf"),
            "steerscope_version": package_version("steerscope"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")

    def verify(self, model, tokenizer, folder: Path, gguf: Path) -> dict:
        """Reload the copy in ``folder`` and check it against the GGUF ``model`` and
        ``tokenizer``: the same parameters (names, dtypes, values; tied embeddings still
        tied), the same chat template rendering and token ids, and exactly the same logits on
        the verification prompt. Returns the manifest's ``verification`` record."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def fail(what: str) -> None:
            raise SteerscopeError(f"the float copy of {self.label} is not identical to the GGUF "
                                  f"model ({what})",
                                  f"report this with your transformers version; the GGUF file "
                                  f"is {gguf}")

        with quiet_transformers():
            copy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            copy_tok = AutoTokenizer.from_pretrained(folder)
        ref_sd, new_sd = model.state_dict(), copy.state_dict()
        if set(ref_sd) != set(new_sd):
            fail(f"parameter names differ: {sorted(set(ref_sd) ^ set(new_sd))[:4]}")
        for name, ref in ref_sd.items():
            if ref.dtype != new_sd[name].dtype or not torch.equal(ref, new_sd[name]):
                fail(f"parameter {name} differs")
        if getattr(model.config, "tie_word_embeddings", False) and \
                copy.get_output_embeddings().weight.data_ptr() != \
                copy.get_input_embeddings().weight.data_ptr():
            fail("the output embedding is no longer tied to the input embedding")
        if self.verify_messages is not None:
            messages = list(self.verify_messages)
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
            if copy_tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=True) != text:
                fail("the chat template renders differently")
            special, record = False, {"messages": messages}
        else:
            text, special, record = self.verify_text, True, {"text": self.verify_text}
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=special).input_ids  # [1, T]
        if not torch.equal(copy_tok(text, return_tensors="pt",
                                    add_special_tokens=special).input_ids, ids):
            fail("the tokenizer encodes differently")
        with torch.no_grad():
            diff = (model(ids).logits - copy(ids).logits).abs().max().item()  # [1, T, V]
        if diff != 0.0:
            fail(f"logits differ by up to {diff:.3g}")
        return {**record, "n_tokens": int(ids.shape[1]), "identical_weights": True,
                "logits_max_abs_diff": 0.0}


__all__ = ["CachedGGUFModel"]
