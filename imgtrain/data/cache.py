"""Where data lives on disk: the data dir, content hashes, and the npz cache of converted arrays."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def data_dir() -> Path:
    """$IMGTRAIN_DATA, default ~/.cache/imgtrain."""
    return Path(os.environ.get("IMGTRAIN_DATA") or Path.home() / ".cache" / "imgtrain")


def sha256_files(paths: list[Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_cached(name: str, digest: str, build) -> dict[str, np.ndarray]:
    """Arrays for `name` converted from sources whose content hash is `digest`; `build()` makes them once."""
    path = data_dir() / f"{name}-{digest[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return arrays
