"""What a served model is called and its hash, for the recipe written into images (A1111's ``Model`` and
``Model hash``: the first 10 hex digits of the weights' sha256, here the UNet's, the part that makes a
checkpoint what it is). Hashing reads the weights once at startup: ~2-3 s per GB here, from the page cache the
load just filled."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def unet_weight_files(source: str, unet_path: str | None = None) -> list[Path]:
    """The UNet weight files the pipeline loaded: ``unet_path`` (one file or a folder) or ``source``'s
    ``unet/`` folder; none for a hub id (its files are not local)."""
    where = Path(unet_path) if unet_path else Path(source) / "unet"
    if where.is_file():
        return [where]
    if where.is_dir():
        return sorted(p for p in where.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return []


def model_identity(source: str, unet_path: str | None = None, name: str | None = None) -> dict[str, str | None]:
    """``{"name": name, else the folder's name (or the hub id), "hash": 10 hex digits or None}``."""
    files = unet_weight_files(source, unet_path)
    digest = None
    if files:
        sha = hashlib.sha256()
        for path in files:
            with path.open("rb") as handle:
                while block := handle.read(1 << 24):
                    sha.update(block)
        digest = sha.hexdigest()[:10]
    return {"name": name or (Path(source).name if Path(source).exists() else source), "hash": digest}
