"""Relabelling sets for permutation inference: sign flips and (block) permutations.

A *relabelling set* is the collection of sign-flip patterns (independent and
symmetric errors, ISE) or row permutations (exchangeable errors, EE) over which
a permutation test evaluates its statistic. This module decides whether the set
can be enumerated exactly, enumerates it or draws unique random members, and
always puts the identity first.

Counting follows PALM / MRtrix3: two permutations that rearrange the design
matrix into the same matrix give the same statistic, so the number of
*distinct* permutations of ``n`` rows within exchangeability blocks is the
product over blocks of the multinomial coefficient of the block's repeated
design rows (``C(n, n_a)`` for a two-sample design without covariates). Sign
flips have ``2 ** n`` distinct patterns.

Conventions
-----------
* ``signs[k]`` is a vector of +1/-1; relabelling ``k`` multiplies row ``i`` of
  the design's effect regressor by ``signs[k, i]``.
* ``perms[k]`` is an index vector; relabelling ``k`` rearranges the design
  rows as ``X[perms[k]]`` (the data stay in place).
* Row 0 is always the identity (all +1 or ``arange(n)``).

If the number of distinct relabellings is not larger than the number
requested, all of them are enumerated (``exact=True``, p-values are exact
proportions). Otherwise ``n_requested - 1`` unique non-identity relabellings
are drawn at random and the identity is added, so that ``p = (b + 1) / (k + 1)``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Literal

import numpy as np

__all__ = [
    "RelabellingSet",
    "count_permutations",
    "count_sign_flips",
    "make_relabelling_set",
    "permutation_set",
    "sign_flip_set",
]

Exchangeability = Literal["sign-flip", "permute"]

#: Refuse to enumerate more than this many relabellings exactly (memory guard).
MAX_ENUMERATION = 2_000_000


@dataclass(frozen=True)
class RelabellingSet:
    """A set of relabellings with the identity in row 0.

    Attributes
    ----------
    kind : {"sign-flip", "permute"}
        Nature of the relabelling.
    table : numpy.ndarray
        ``(n_relabellings, n_obs)``: int8 signs for ``"sign-flip"``, int32
        row indices for ``"permute"``.
    n_distinct : int
        Number of distinct relabellings available (Python int, may be huge).
    exact : bool
        True when ``table`` holds every distinct relabelling exactly once.
    """

    kind: Exchangeability
    table: np.ndarray
    n_distinct: int
    exact: bool

    @property
    def n(self) -> int:
        """Number of relabellings in the set (identity included)."""
        return int(self.table.shape[0])

    def apply(self, vectors: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Relabel the columns of ``vectors`` for relabellings ``start:stop``.

        Parameters
        ----------
        vectors : numpy.ndarray
            ``(n_obs, m)`` design vectors (effect regressor and nuisance basis).
        start, stop : int
            Slice of the relabelling table.

        Returns
        -------
        numpy.ndarray
            ``(stop - start, m, n_obs)``: for each relabelling the transposed,
            relabelled vectors, ready to be multiplied with ``(n_obs, E)`` data.
        """
        rows = self.table[start:stop]
        if self.kind == "sign-flip":
            out = rows[:, :, None].astype(vectors.dtype) * vectors[None, :, :]
        else:
            out = vectors[rows]  # (K, n_obs, m)
        return np.ascontiguousarray(out.transpose(0, 2, 1))


def count_sign_flips(n_obs: int) -> int:
    """Number of distinct sign-flip patterns of ``n_obs`` observations (``2 ** n_obs``)."""
    return 2 ** int(n_obs)


def _multinomial(labels: Sequence[int]) -> int:
    counts = Counter(labels).values()
    out = math.factorial(len(labels))
    for c in counts:
        out //= math.factorial(c)
    return out


def _block_indices(blocks: np.ndarray | None, n_obs: int) -> list[np.ndarray]:
    if blocks is None:
        return [np.arange(n_obs)]
    blocks = np.asarray(blocks)
    if blocks.shape != (n_obs,):
        raise ValueError(f"blocks must have shape ({n_obs},), got {blocks.shape}")
    _, inv = np.unique(blocks, return_inverse=True)
    return [np.flatnonzero(inv == b) for b in range(inv.max() + 1)]


def count_permutations(labels: np.ndarray, blocks: np.ndarray | None = None) -> int:
    """Number of distinct rearrangements of row ``labels`` within ``blocks``.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(n_obs,)`` integer label of each design row (equal labels = identical rows).
    blocks : numpy.ndarray, optional
        ``(n_obs,)`` exchangeability block of each row; rows move only within
        their block. None means one block.

    Returns
    -------
    int
        Product over blocks of the multinomial coefficient of the block's labels.
    """
    labels = np.asarray(labels)
    total = 1
    for idx in _block_indices(blocks, labels.size):
        total *= _multinomial(labels[idx].tolist())
    return total


def _multiset_permutations(items: list[int]) -> Iterator[tuple[int, ...]]:
    """All distinct orderings of a multiset (no duplicates generated)."""
    counts = Counter(items)
    keys = sorted(counts)
    n = len(items)
    current: list[int] = []

    def rec() -> Iterator[tuple[int, ...]]:
        if len(current) == n:
            yield tuple(current)
            return
        for key in keys:
            if counts[key]:
                counts[key] -= 1
                current.append(key)
                yield from rec()
                current.pop()
                counts[key] += 1

    yield from rec()


def _arrangement_to_perm(
    arrangement: Sequence[int], labels: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """Row indices (within ``idx``) realising a label arrangement at positions ``idx``."""
    pools: dict[int, list[int]] = {}
    for row in idx.tolist():
        pools.setdefault(int(labels[row]), []).append(row)
    used: dict[int, int] = dict.fromkeys(pools, 0)
    out = np.empty(len(arrangement), dtype=np.int32)
    for t, lab in enumerate(arrangement):
        out[t] = pools[lab][used[lab]]
        used[lab] += 1
    return out


def sign_flip_set(n_obs: int, n_requested: int, rng: np.random.Generator) -> RelabellingSet:
    """Exact or random-unique set of sign-flip patterns with the identity first.

    Parameters
    ----------
    n_obs : int
        Number of observations (rows) whose signs are flipped.
    n_requested : int
        Number of relabellings wanted, identity included.
    rng : numpy.random.Generator
        Source of randomness for the random mode.

    Returns
    -------
    RelabellingSet
    """
    n_distinct = count_sign_flips(n_obs)
    if n_distinct <= n_requested:
        codes = np.arange(n_distinct, dtype=np.int64)[:, None]
        bits = (codes >> np.arange(n_obs, dtype=np.int64)[None, :]) & 1
        table = (1 - 2 * bits).astype(np.int8)  # code 0 = all +1 = identity
        return RelabellingSet("sign-flip", table, n_distinct, True)
    n_random = n_requested - 1
    seen: set[bytes] = {np.packbits(np.zeros(n_obs, dtype=np.uint8)).tobytes()}
    rows: list[np.ndarray] = []
    while len(rows) < n_random:
        draw = rng.integers(0, 2, size=(max(64, 2 * (n_random - len(rows))), n_obs), dtype=np.uint8)
        for bits in draw:
            key = np.packbits(bits).tobytes()
            if key in seen:
                continue
            seen.add(key)
            rows.append(bits)
            if len(rows) == n_random:
                break
    bits = np.vstack([np.zeros((1, n_obs), dtype=np.uint8), *[r[None] for r in rows]])
    table = (1 - 2 * bits.astype(np.int8)).astype(np.int8)
    return RelabellingSet("sign-flip", table, n_distinct, False)


def permutation_set(
    labels: np.ndarray,
    n_requested: int,
    rng: np.random.Generator,
    blocks: np.ndarray | None = None,
) -> RelabellingSet:
    """Exact or random-unique set of distinct (block) permutations, identity first.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(n_obs,)`` integer label per design row; rows with equal labels are
        identical, so permutations that only swap them are not distinct.
    n_requested : int
        Number of relabellings wanted, identity included.
    rng : numpy.random.Generator
        Source of randomness for the random mode.
    blocks : numpy.ndarray, optional
        Exchangeability blocks (permutation only within a block).

    Returns
    -------
    RelabellingSet
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_obs = labels.size
    block_idx = _block_indices(blocks, n_obs)
    n_distinct = count_permutations(labels, blocks)
    identity = np.arange(n_obs, dtype=np.int32)
    if n_distinct <= n_requested:
        if n_distinct > MAX_ENUMERATION:  # pragma: no cover - guarded by n_requested
            raise ValueError(f"refusing to enumerate {n_distinct} permutations")
        per_block = [
            [
                _arrangement_to_perm(arr, labels, idx)
                for arr in _multiset_permutations(labels[idx].tolist())
            ]
            for idx in block_idx
        ]
        table = np.empty((n_distinct, n_obs), dtype=np.int32)
        for k, combo in enumerate(product(*per_block)):
            for idx, rows in zip(block_idx, combo, strict=True):
                table[k, idx] = rows
        # move the identity arrangement to row 0
        ident_key = labels.tobytes()
        keys = labels[table]
        hit = int(np.flatnonzero((keys == labels[None, :]).all(axis=1))[0])
        assert keys[hit].tobytes() == ident_key
        table[[0, hit]] = table[[hit, 0]]
        table[0] = identity
        return RelabellingSet("permute", table, n_distinct, True)

    # random mode: within-block shuffles via argsort of (block rank + uniform)
    order = np.concatenate(block_idx)
    block_of_sorted = np.concatenate(
        [np.full(idx.size, b, dtype=np.float64) for b, idx in enumerate(block_idx)]
    )
    n_random = n_requested - 1
    seen: set[bytes] = {labels.tobytes()}
    rows: list[np.ndarray] = []
    while len(rows) < n_random:
        m = max(64, 2 * (n_random - len(rows)))
        q = np.argsort(block_of_sorted[None, :] + rng.random((m, n_obs)), axis=1, kind="stable")
        perms = np.empty((m, n_obs), dtype=np.int32)
        perms[:, order] = order[q]
        keys = labels[perms]
        for perm, key in zip(perms, keys, strict=True):
            b = key.tobytes()
            if b in seen:
                continue
            seen.add(b)
            rows.append(perm)
            if len(rows) == n_random:
                break
    table = np.vstack([identity[None, :], np.asarray(rows, dtype=np.int32).reshape(-1, n_obs)])
    return RelabellingSet("permute", table, n_distinct, False)


def make_relabelling_set(
    kind: Exchangeability,
    design: np.ndarray,
    n_requested: int,
    rng: np.random.Generator,
    blocks: np.ndarray | None = None,
) -> RelabellingSet:
    """Relabelling set for a design matrix.

    Parameters
    ----------
    kind : {"sign-flip", "permute"}
        Sign flips (ISE) or permutations within blocks (EE).
    design : numpy.ndarray
        ``(n_obs, p)`` design matrix; identical rows define the permutation labels.
    n_requested : int
        Number of relabellings wanted (identity included), at least 2.
    rng : numpy.random.Generator
        Random generator for the random mode.
    blocks : numpy.ndarray, optional
        Exchangeability blocks, only for ``kind="permute"``.

    Returns
    -------
    RelabellingSet
    """
    if n_requested < 2:
        raise ValueError("n_permutations must be at least 2 (the identity and one relabelling)")
    if kind == "sign-flip":
        if blocks is not None:
            raise ValueError(
                "exchangeability blocks are only supported with exchangeability='permute'"
            )
        return sign_flip_set(design.shape[0], n_requested, rng)
    if kind == "permute":
        _, labels = np.unique(np.round(design, 12), axis=0, return_inverse=True)
        return permutation_set(labels.ravel(), n_requested, rng, blocks)
    raise ValueError(f"unknown exchangeability {kind!r}; use 'sign-flip' or 'permute'")
