"""Test helpers shared by the Hub tests: a Hugging Face cache folder laid out by hand, so a
"Hub repo" is read offline (``HF_HUB_OFFLINE=1``) without the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_snapshot(cache: Path, repo_id: str, source: Path, commit: str = COMMIT) -> Path:
    """Lay out ``source``'s files as huggingface_hub caches a downloaded repo: blobs named by
    their hash, snapshots/<commit>/ symlinks to them, refs/main holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for f in sorted(p for p in source.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap
