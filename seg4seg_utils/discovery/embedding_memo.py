"""Embed each distinct image once across datasets, with the same numbers as embedding every batch as it comes.

Why: most test images recur. The injected datasets of one modality share the clean images that were not
injected (cases B, C and F on dermoscopy at three prevalences: about 1,180 distinct images among the 3,600 test
images of the cpu grid), and chapter 09 cuts the same images into patches at every prevalence. Each embedding
file (:func:`~seg4seg_utils.discovery.embed.embed_dataset`) used to embed all of its images again.

What decides an image's numbers: measured on the packaged EfficientNet-Lite0 (one thread, oneDNN), an image's
row depends on the size of the batch it is in (a batch of 8 gives other last bits than a batch of 32) but not on
which images share the batch or where (``tests/test_embedding_memo.py`` checks it). So a row is kept under
(image content, batch size, position in the batch), and :func:`embed_batches` computes the rows it has not seen
in *merged* batches of the same size, each image at its own position, the free places filled with a copy of one
of them. Every row is then the row the plain batch would give, bit for bit, and a batch is only run for what is
new.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["EmbeddingMemo", "embed_batches"]


class EmbeddingMemo:
    """Rows of one embedder on disk, one ``.npy`` per (image content, batch size, position in the batch)."""

    def __init__(self, folder: str | os.PathLike, embedder: Any) -> None:
        from seg4seg_utils.data.records import config_hash

        # the embedder's key names its weights and the CPU numerics: another key, another folder
        self.folder = Path(folder) / config_hash(embedder.key_fields())
        self.dim = int(embedder.dim)

    @staticmethod
    def key(image: np.ndarray, batch_size: int, position: int) -> str:
        image = np.ascontiguousarray(image)
        digest = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
        digest.update(image.tobytes())
        return f"{digest.hexdigest()[:32]}-b{batch_size}-p{position}"

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        try:
            row = np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError):  # absent, or cut short by an interruption: computed again
            return None
        return row if row.shape == (self.dim,) and row.dtype == np.float32 else None

    def put(self, key: str, row: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.asarray(row, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)  # workers writing the same row write the same bytes: last one wins


def embed_batches(embedder: Any, batches: Sequence[Sequence[np.ndarray]], memo: EmbeddingMemo | None = None
                  ) -> list[np.ndarray]:
    """``[embedder.embed(b, batch_size=len(b)) for b in batches]``, reading rows seen before from ``memo`` and
    computing the others in merged batches of the same size at the same positions (see the module's docstring)."""
    if memo is None:
        return [embedder.embed(list(b), batch_size=len(b)) for b in batches]
    out = [np.empty((len(b), memo.dim), dtype=np.float32) for b in batches]
    # batch size -> per position, the (batch, key) of each row still to compute
    todo: dict[int, list[list[tuple[int, str]]]] = {}
    for bi, batch in enumerate(batches):
        size = len(batch)
        for position, image in enumerate(batch):
            key = memo.key(image, size, position)
            row = memo.get(key)
            if row is None:
                todo.setdefault(size, [[] for _ in range(size)])[position].append((bi, key))
            else:
                out[bi][position] = row
    for size, queues in todo.items():
        for r in range(max(len(q) for q in queues)):
            members = {position: q[r] for position, q in enumerate(queues) if r < len(q)}
            first_position, (first_batch, _) = next(iter(members.items()))
            filler = batches[first_batch][first_position]
            merged = [batches[members[p][0]][p] if p in members else filler for p in range(size)]
            X = embedder.embed(merged, batch_size=size)
            for position, (bi, key) in members.items():
                out[bi][position] = X[position]
                memo.put(key, X[position])
    return out
