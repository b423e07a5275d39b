"""Explicit, order-independent random streams: one generator per (seed, keys...)."""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["rng_for", "stable_int"]


def stable_int(value: object) -> int:
    """A 63-bit integer from any value's string form, identical across processes and platforms."""
    return int.from_bytes(hashlib.sha256(str(value).encode()).digest()[:8], "little") >> 1


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A generator determined only by ``seed`` and ``keys`` (e.g. a case name and a sample id).

    Per-sample streams keep every sample's randomness independent of iteration order and of which
    other samples are in the run, so subsets and reruns reproduce exactly.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(stable_int(k) for k in keys)])
