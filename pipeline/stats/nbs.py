"""Network-based statistic (NBS; Zalesky, Fornito & Bullmore 2010) on a general linear model.

Estimator-style API: the test parameters go to :class:`NetworkBasedStatistic`,
``fit*`` methods take the data and return a frozen :class:`NBSResult`.

Model and inference
-------------------
Each edge ``(i, j)`` (upper triangle) is fitted with the same GLM
``Y = X b + e``. A contrast row ``c`` is tested one-sided (``c'b > 0``) with a
t-statistic; a two-sided test is the pair of contrasts ``+c`` and ``-c`` with
the family-wise error controlled across both (the null distribution is the
maximum over both), so positive and negative effects are always separate
components. Edges with ``t > threshold`` form a supra-threshold graph whose
connected components are sized by *extent* (number of edges) or *intensity*
(sum over edges of ``t - threshold``, as in the NBS toolbox). A component's
FWE-corrected p-value is the proportion of relabellings whose largest
component (over all tested contrasts) is at least as large.

Nuisance regressors are handled with Freedman-Lane: the design is partitioned
into the effect of interest ``x = X D c / (c' D c)`` (``D = (X'X)^+``) and the
nuisance ``Z``, which spans the null model ``{X b : c'b = 0}``; the data are residualised against ``Z`` and the residuals relabelled.
Relabellings are sign flips (paired / one-sample designs, independent and
symmetric errors) or permutations within exchangeability blocks (two-sample,
repeated measures with permutation within subject).

Vectorisation: for a chunk of ``K`` relabellings the statistics of all edges
are one ``(K, n_obs) @ (n_obs, E)`` matrix product (plus one per nuisance
dimension not invariant under the relabellings), using that sign flips and
permutations preserve the residual sum of squares. The components of all
``K`` supra-threshold graphs (times the number of contrasts) are found in one
call of :func:`scipy.sparse.csgraph.connected_components` on the block-diagonal
graph of the chunk.

Nodes with NaN entries in any input are excluded consistently from every
observation (greedily, the node involved in most NaN edges first) and reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse, stats
from scipy.sparse.csgraph import connected_components

from pipeline.stats.permutation import Exchangeability, RelabellingSet, make_relabelling_set

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx
    import pandas as pd

__all__ = ["Component", "NBSResult", "NetworkBasedStatistic"]

logger = logging.getLogger(__name__)

Alternative = Literal["greater", "less", "two-sided", "both-one-sided"]
SizeMeasure = Literal["extent", "intensity"]
ThresholdType = Literal["t", "p"]

#: Target number of float64 elements per chunk array (about 64 MB).
_CHUNK_ELEMENTS = 2**23


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Component:
    """One observed supra-threshold component.

    Attributes
    ----------
    contrast : int
        Row of the contrast matrix this component belongs to.
    sign : int
        +1 for the contrast as given (``c'b > 0``), -1 for its negation.
    i, j : numpy.ndarray
        Edge endpoints (``i < j``) in the original node numbering.
    statistic : numpy.ndarray
        Signed t of contrast ``contrast`` at each edge (negative when ``sign=-1``).
    size : float
        Extent (number of edges) or intensity (sum of ``|t| - threshold``).
    p_fwe : float
        Family-wise-error-corrected p-value across all components and contrasts.
    """

    contrast: int
    sign: int
    i: np.ndarray
    j: np.ndarray
    statistic: np.ndarray
    size: float
    p_fwe: float

    @property
    def n_edges(self) -> int:
        """Number of edges in the component."""
        return int(self.i.size)

    @property
    def nodes(self) -> np.ndarray:
        """Sorted node indices of the component."""
        return np.unique(np.concatenate([self.i, self.j]))


@dataclass(frozen=True)
class NBSResult:
    """Frozen result of a network-based statistic fit.

    Attributes
    ----------
    components : tuple of Component
        Observed components of every tested one-sided contrast, ordered by
        contrast row, sign (+ first) and decreasing size.
    statistics : numpy.ndarray
        ``(n_contrasts, n_nodes, n_nodes)`` edge-wise t of each contrast row
        (symmetric, 0 on the diagonal, NaN on excluded nodes).
    null_distribution : numpy.ndarray
        ``(n_permutations,)`` largest component size per relabelling (maximum
        over the tested contrasts); entry 0 is the identity (observed data).
        With ``alternative="both-one-sided"`` each test's p comes from its own
        row of ``null_by_test`` instead.
    n_permutations : int
        Relabellings used, identity included.
    n_distinct_available : int
        Distinct relabellings the design allows.
    exact : bool
        True when all distinct relabellings were enumerated (exact p-values).
    min_attainable_p : float
        Smallest FWE p-value any component could obtain with this set.
    seed : int or None
        ``random_state`` used.
    excluded_nodes : tuple of int
        Nodes dropped because of NaN entries.
    threshold_t : float
        Primary threshold on t actually applied.
    df : int
        Residual degrees of freedom of the GLM.
    n_obs : int
        Number of observations (rows of the design).
    exchangeability : str
        ``"sign-flip"`` or ``"permute"``.
    tests : tuple of tuple[int, int]
        ``(contrast row, sign)`` of every one-sided test controlled together.
    node_labels : tuple of str or None
        Node names, if given.
    parameters : dict
        Estimator parameters and design description.
    degenerate_edges : tuple of tuple[int, int]
        Edges (node pairs) without residual variance in the observed data: identical
        change in every subject (up to float noise, :data:`DEGENERATE_RTOL`) or constant
        zero. Their t is undefined (a tiny variance gives t ~ 1e6), so they are left out of
        the test (t = 0) and listed here, with a warning.
    """

    components: tuple[Component, ...]
    statistics: np.ndarray
    null_distribution: np.ndarray
    n_permutations: int
    n_distinct_available: int
    exact: bool
    min_attainable_p: float
    seed: int | None
    excluded_nodes: tuple[int, ...]
    threshold_t: float
    df: int
    n_obs: int
    exchangeability: str
    tests: tuple[tuple[int, int], ...]
    node_labels: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    degenerate_edges: tuple[tuple[int, int], ...] = ()
    null_by_test: np.ndarray | None = None

    # ------------------------------------------------------------ accessors
    @property
    def statistic(self) -> np.ndarray:
        """Edge-wise t of the first contrast row, ``(n_nodes, n_nodes)``."""
        return self.statistics[0]

    @property
    def p_values(self) -> np.ndarray:
        """FWE p-value of each component, in the order of :attr:`components`."""
        return np.array([c.p_fwe for c in self.components], dtype=float)

    def significant(self, alpha: float = 0.05) -> tuple[Component, ...]:
        """Components with ``p_fwe < alpha``."""
        return tuple(c for c in self.components if c.p_fwe < alpha)

    def edge_mask(self, alpha: float = 0.05) -> np.ndarray:
        """Symmetric boolean ``(n_nodes, n_nodes)`` mask of edges in significant components."""
        n = self.statistics.shape[-1]
        mask = np.zeros((n, n), dtype=bool)
        for c in self.significant(alpha):
            mask[c.i, c.j] = True
            mask[c.j, c.i] = True
        return mask

    def _label(self, node: int) -> str:
        return self.node_labels[node] if self.node_labels is not None else str(node)

    def to_frame(self) -> pd.DataFrame:
        """Edge table of all components.

        Returns
        -------
        pandas.DataFrame
            One row per component edge with columns ``component`` (index into
            :attr:`components`), ``contrast``, ``sign``, ``i``, ``j``,
            ``label_i``/``label_j`` (when node labels were given), ``statistic``
            (signed t), ``size`` and ``p_fwe`` of the component.
        """
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for k, comp in enumerate(self.components):
            for i, j, t in zip(
                comp.i.tolist(), comp.j.tolist(), comp.statistic.tolist(), strict=True
            ):
                row: dict[str, Any] = {
                    "component": k,
                    "contrast": comp.contrast,
                    "sign": comp.sign,
                    "i": i,
                    "j": j,
                }
                if self.node_labels is not None:
                    row["label_i"] = self.node_labels[i]
                    row["label_j"] = self.node_labels[j]
                row.update(statistic=t, size=comp.size, p_fwe=comp.p_fwe)
                rows.append(row)
        columns = ["component", "contrast", "sign", "i", "j"]
        if self.node_labels is not None:
            columns += ["label_i", "label_j"]
        columns += ["statistic", "size", "p_fwe"]
        return pd.DataFrame(rows, columns=columns)

    def component_graph(self, k: int) -> nx.Graph:
        """Component ``k`` as a :class:`networkx.Graph` (edge attribute ``statistic``).

        Nodes carry a ``label`` attribute; the graph carries ``size``, ``p_fwe``,
        ``contrast`` and ``sign``.
        """
        import networkx as nx

        comp = self.components[k]
        graph = nx.Graph(size=comp.size, p_fwe=comp.p_fwe, contrast=comp.contrast, sign=comp.sign)
        for node in comp.nodes.tolist():
            graph.add_node(node, label=self._label(node))
        for i, j, t in zip(comp.i.tolist(), comp.j.tolist(), comp.statistic.tolist(), strict=True):
            graph.add_edge(i, j, statistic=t)
        return graph

    def summary(self, alpha: float = 0.05) -> str:
        """Human-readable report stating exactness and the smallest attainable p-value."""
        p = self.parameters
        n_nodes = self.statistics.shape[-1]
        lines = [
            "Network-based statistic (Zalesky et al. 2010)",
            f"  design: {p.get('design', 'glm')}, {self.n_obs} observations, df = {self.df}, "
            f"{n_nodes - len(self.excluded_nodes)} of {n_nodes} nodes used",
        ]
        if self.excluded_nodes:
            names = ", ".join(self._label(n) for n in self.excluded_nodes)
            lines.append(f"  excluded nodes (NaN in an input): {names}")
        if self.degenerate_edges:
            lines.append(f"  excluded edges without residual variance (same change in every "
                         f"observation): {_edge_text(self.degenerate_edges, self._label)}")
        lines.append(
            f"  primary threshold: t > {self.threshold_t:.4g}"
            + (
                f" (from one-sided p = {p['threshold']:g})"
                if p.get("threshold_type") == "p"
                else ""
            )
            + f"; size = {p.get('size', 'extent')}; alternative = {p.get('alternative')}"
            + (" (two separate one-sided tests, each with its own FWE)"
               if p.get("alternative") == "both-one-sided"
               else " (FWE controlled across both signs)" if len(self.tests) > 1 else "")
        )
        kind = "sign-flip patterns" if self.exchangeability == "sign-flip" else "permutations"
        if self.exact:
            lines.append(
                f"  inference: EXACT, all {self.n_distinct_available} distinct {kind} enumerated"
            )
        else:
            lines.append(
                f"  inference: Monte Carlo, {self.n_permutations - 1} unique random {kind} + identity "
                f"out of {self.n_distinct_available} distinct; p = (b + 1) / (k + 1)"
            )
        lines.append(f"  smallest attainable FWE p-value: {self.min_attainable_p:.4g}")
        if self.min_attainable_p >= alpha:
            lines.append(
                f"  WARNING: with this design no component can reach p < {alpha:g} "
                f"(smallest attainable p = {self.min_attainable_p:.4g}); collect more data."
            )
        if not self.components:
            lines.append("  no supra-threshold edges")
        for k, c in enumerate(self.components):
            flag = "*" if c.p_fwe < alpha else " "
            sign = "+" if c.sign > 0 else "-"
            lines.append(
                f" {flag} component {k}: contrast {c.contrast}{sign}, {c.n_edges} edges, "
                f"{c.nodes.size} nodes, size {c.size:.4g}, p_FWE = {c.p_fwe:.4g}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- GLM pieces


@dataclass(frozen=True)
class _Partition:
    """Freedman-Lane ingredients for one contrast row (internal)."""

    vectors: np.ndarray  # (n_obs, 1 + q): effect regressor x then nuisance basis not invariant
    resid: np.ndarray  # (n_obs, E): data residualised against the nuisance
    ss: np.ndarray  # (E,) residual sum of squares against the nuisance
    xx: float
    df: int


def _orth(a: np.ndarray, tol: float = 1e-10, absolute: bool = False) -> np.ndarray:
    """Orthonormal basis of the column space of ``a``.

    Singular values below ``tol`` (relative to the largest, or absolute when
    ``absolute``) are treated as zero.
    """
    if a.size == 0 or a.shape[1] == 0:
        return np.zeros((a.shape[0], 0))
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    cut = tol if absolute else tol * (s[0] if s.size else 0.0)
    if s.size == 0 or s[0] <= (tol if absolute else 0.0):
        return np.zeros((a.shape[0], 0))
    return u[:, s > cut]


#: An edge whose residual sum of squares is below this fraction of its raw sum of
#: squares has no residual variance (float noise on an identical change): degenerate.
DEGENERATE_RTOL = 1e-10


def _edge_text(edges, label, limit: int = 8) -> str:
    shown = ", ".join(f"{label(i)}-{label(j)}" for i, j in edges[:limit])
    return shown + (f" and {len(edges) - limit} more" if len(edges) > limit else "")


def _degenerate(y: np.ndarray, part: _Partition) -> np.ndarray:
    """Edges of ``y`` (n_obs, E) with no residual variance under ``part``'s full model."""
    rss = part.ss - (part.vectors[:, 0] @ part.resid) ** 2 / part.xx
    raw = np.einsum("ne,ne->e", y, y)
    return rss <= DEGENERATE_RTOL * raw


def _partition(
    y: np.ndarray,
    design: np.ndarray,
    contrast: np.ndarray,
    df: int,
    invariant: np.ndarray | None,
) -> _Partition:
    """Effect/nuisance partition of ``design`` for ``contrast`` and Freedman-Lane residuals."""
    d = np.linalg.pinv(design.T @ design)
    c = contrast.reshape(-1, 1)
    cdc = (c.T @ d @ c).item()
    if cdc <= 0:
        raise ValueError("contrast is not estimable with this design")
    # effect regressor: its coefficient in [x_i, Z] is c'b
    x_i = (design @ d @ c / cdc).ravel()
    # nuisance = the null model {X b : c'b = 0}
    if design.shape[1] > 1:
        from scipy.linalg import null_space

        uz = _orth(design @ null_space(c.T))
    else:
        uz = np.zeros((design.shape[0], 0))
    x = x_i - uz @ (uz.T @ x_i)
    xx = float(x @ x)
    if xx <= 1e-12 * max(1.0, float(x_i @ x_i)):
        raise ValueError("effect of interest is collinear with the nuisance regressors")
    resid = y - uz @ (uz.T @ y)
    ss = np.einsum("ne,ne->e", resid, resid)
    # Nuisance directions invariant under every relabelling (e.g. subject
    # indicators under within-subject permutation) contribute nothing after
    # relabelling the residuals: drop them from the per-relabelling products.
    if invariant is not None and uz.shape[1] and invariant.shape[1]:
        inv = invariant / np.linalg.norm(invariant, axis=0, keepdims=True)
        inside = np.linalg.norm(inv - uz @ (uz.T @ inv), axis=0) < 1e-8
        if inside.any():
            b = _orth(inv[:, inside])
            uz = _orth(uz - b @ (b.T @ uz), tol=1e-8, absolute=True)
    vectors = np.column_stack([x, uz])
    return _Partition(vectors=vectors, resid=resid, ss=ss, xx=xx, df=df)


def _chunk_stats(
    part: _Partition, relabel: RelabellingSet, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Effect projections for relabellings ``start:stop``.

    Returns ``a`` (``(K, E)``, relabelled ``x' Y``) and ``b2`` (``(K, E)`` squared
    norm of the relabelled nuisance projection, None without nuisance). The t
    statistic is ``a / sqrt((ss - a**2 / xx - b2) * xx / df)``: sign flips and
    permutations preserve the residual sum of squares ``ss``, so one matrix
    product per chunk gives the statistics of every edge and relabelling.
    """
    rv = relabel.apply(part.vectors, start, stop)  # (K, 1+q, n)
    k, m, n = rv.shape
    g = (rv.reshape(k * m, n) @ part.resid).reshape(k, m, -1)
    a = g[:, 0, :]
    b2 = np.einsum("kqe,kqe->ke", g[:, 1:, :], g[:, 1:, :]) if m > 1 else None
    return a, b2


def _t_from(a: np.ndarray, b2: np.ndarray | float, ss: np.ndarray, part: _Partition) -> np.ndarray:
    """t statistic from effect projections (elementwise, broadcasting)."""
    rss = np.maximum(ss - b2 - a * a / part.xx, 1e-13 * ss)
    denom = np.sqrt(rss * (part.xx / part.df))
    t = np.zeros(np.broadcast(a, denom).shape)
    np.divide(a, denom, out=t, where=denom > 0)
    return t


def _supra_index(
    a: np.ndarray, b2: np.ndarray | None, part: _Partition, thr: float, sign: int
) -> np.ndarray:
    """Flat indices of ``(K, E)`` entries with ``sign * t > thr`` (``thr > 0``).

    ``t > thr`` is equivalent to ``a > thr * sqrt(ss' * xx / (df + thr**2))`` with
    ``ss' = ss - b2``, so the test needs no square roots per relabelling when
    there is no nuisance (the bound is then a fixed per-edge vector).
    """
    c = thr * thr * part.xx / (part.df + thr * thr)
    if b2 is None:
        tau = np.sqrt(c * part.ss)
    else:
        tau = np.sqrt(c * np.maximum(part.ss[None, :] - b2, 0.0))
    mask = (a > tau) if sign > 0 else (a < -tau)
    return np.flatnonzero(mask)


def _max_component_sizes(
    block: np.ndarray,
    edge: np.ndarray,
    weight: np.ndarray | None,
    n_blocks: int,
    ii: np.ndarray,
    jj: np.ndarray,
    n_nodes: int,
) -> np.ndarray:
    """Largest component size in each of ``n_blocks`` supra-threshold graphs.

    ``block[m]``/``edge[m]`` say that edge ``edge[m]`` is supra-threshold in
    graph ``block[m]``; all graphs are solved in one block-diagonal csgraph call.
    """
    out = np.zeros(n_blocks)
    if block.size == 0:
        return out
    src = block.astype(np.int64) * n_nodes + ii[edge]
    dst = block.astype(np.int64) * n_nodes + jj[edge]
    # compress to the nodes that carry an edge (order-preserving, no sort)
    present = np.zeros(n_blocks * n_nodes, dtype=bool)
    present[src] = True
    present[dst] = True
    new_id = np.cumsum(present, dtype=np.int64) - 1
    n_present = int(new_id[-1]) + 1
    s_id, d_id = new_id[src], new_id[dst]
    graph = sparse.csr_matrix(
        (np.ones(src.size, dtype=np.int8), (s_id, d_id)), shape=(n_present, n_present)
    )
    n_comp, labels = connected_components(graph, directed=False)
    lab = labels[s_id]  # every compressed node carries an edge: all labels are used
    sizes = np.bincount(lab, weights=weight, minlength=n_comp)
    owner = np.empty(n_comp, dtype=np.int64)
    owner[lab] = block
    np.maximum.at(out, owner, sizes)
    return out


def _observed_components(
    t: np.ndarray,
    sign: int,
    thr: float,
    size: SizeMeasure,
    ii: np.ndarray,
    jj: np.ndarray,
    n_nodes: int,
) -> list[tuple[np.ndarray, float]]:
    """Components of one observed supra-threshold graph: (edge indices, size)."""
    st = sign * t
    edges = np.flatnonzero(st > thr)
    if edges.size == 0:
        return []
    graph = sparse.coo_matrix(
        (np.ones(edges.size), (ii[edges], jj[edges])), shape=(n_nodes, n_nodes)
    )
    _, labels = connected_components(graph.tocsr(), directed=False)
    lab = labels[ii[edges]]
    out = []
    for lbl in np.unique(lab):
        e = edges[lab == lbl]
        sz = float(e.size) if size == "extent" else float(np.sum(st[e] - thr))
        out.append((e, sz))
    return out


# --------------------------------------------------------------------------- input handling


def _as_stack(name: str, data: Any) -> np.ndarray:
    arr = np.asarray(data, dtype=float)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{name} must have shape (n_obs, n_nodes, n_nodes), got {arr.shape}")
    if arr.shape[1] < 3:
        raise ValueError(f"{name} needs at least 3 nodes, got {arr.shape[1]}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    tr = np.swapaxes(arr, 1, 2)
    scale = np.nanmax(np.abs(arr)) if np.isfinite(arr).any() else 1.0
    if not np.allclose(arr, tr, rtol=1e-6, atol=1e-9 * max(scale, 1e-300), equal_nan=True):
        bad = np.flatnonzero(
            ~np.isclose(arr, tr, rtol=1e-6, atol=1e-9 * max(scale, 1e-300), equal_nan=True)
            .reshape(arr.shape[0], -1)
            .all(axis=1)
        )
        raise ValueError(
            f"{name} matrices must be symmetric (observations {bad[:10].tolist()} are not)"
        )
    return arr


def _nan_nodes(stacks: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Nodes to exclude so that no NaN edge remains (greedy, most NaN edges first)."""
    n = stacks[0].shape[1]
    counts = np.zeros((n, n))
    for s in stacks:
        counts += np.isnan(s).sum(axis=0)
    np.fill_diagonal(counts, 0)
    counts = counts + counts.T
    excluded: list[int] = []
    while counts.sum() > 0:
        node = int(np.argmax(counts.sum(axis=1)))
        excluded.append(node)
        counts[node, :] = 0
        counts[:, node] = 0
    return tuple(sorted(excluded))


def _covariates(cov: Any, n_obs: int, center: bool) -> np.ndarray:
    if cov is None:
        return np.zeros((n_obs, 0))
    c = np.asarray(cov, dtype=float)
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2 or c.shape[0] != n_obs:
        raise ValueError(
            f"covariates must have shape ({n_obs},) or ({n_obs}, k), got {np.shape(cov)}"
        )
    if not np.isfinite(c).all():
        raise ValueError("covariates must be finite (no NaN)")
    return c - c.mean(axis=0) if center else c


# --------------------------------------------------------------------------- estimator


class NetworkBasedStatistic:
    """Network-based statistic with GLM designs and exact/Monte-Carlo permutation inference.

    Parameters
    ----------
    threshold : float
        Primary (edge-wise) threshold: a t value (``threshold_type="t"``) or a
        one-sided p-value converted to t with the model's degrees of freedom.
    threshold_type : {"t", "p"}
        Meaning of ``threshold``.
    size : {"extent", "intensity"}
        Component size: number of edges, or sum of ``t - threshold`` over edges.
    alternative : {"greater", "less", "two-sided", "both-one-sided"}
        ``"greater"`` tests ``c'b > 0``, ``"less"`` tests ``c'b < 0``;
        ``"two-sided"`` tests both with FWE control across them (never merging
        positive and negative edges into one component); ``"both-one-sided"``
        runs both one-sided contrasts as separate tests, each with its own null
        distribution and FWE p (as the NBS toolbox runs ``[1]`` and ``[-1]``:
        two tests, two families, reported separately).
    n_permutations : int
        Relabellings to use, identity included. If the design allows at most
        this many distinct relabellings, all are enumerated (exact test).
    random_state : int or None
        Seed of :func:`numpy.random.default_rng` for the random draws.
    chunk_size : int or None
        Relabellings processed per vectorised chunk (bounds memory, about
        ``chunk_size * n_edges * 8`` bytes per array); None picks about 64 MB.

    Examples
    --------
    >>> nbs = NetworkBasedStatistic(threshold=3.0, n_permutations=5000, random_state=0)
    >>> result = nbs.fit_paired(baseline, followup)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """

    def __init__(
        self,
        threshold: float = 3.0,
        *,
        threshold_type: ThresholdType = "t",
        size: SizeMeasure = "extent",
        alternative: Alternative = "two-sided",
        n_permutations: int = 5000,
        random_state: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if threshold_type not in ("t", "p"):
            raise ValueError("threshold_type must be 't' or 'p'")
        if threshold_type == "p" and not 0 < threshold < 0.5:
            raise ValueError("a p-value threshold must lie in (0, 0.5)")
        if threshold_type == "t" and not threshold > 0:
            raise ValueError("a t threshold must be positive (one-sided contrasts)")
        if size not in ("extent", "intensity"):
            raise ValueError("size must be 'extent' or 'intensity'")
        if alternative not in ("greater", "less", "two-sided", "both-one-sided"):
            raise ValueError(
                "alternative must be 'greater', 'less', 'two-sided' or 'both-one-sided'"
            )
        if int(n_permutations) < 2:
            raise ValueError("n_permutations must be >= 2")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError("chunk_size must be >= 1")
        self.threshold = float(threshold)
        self.threshold_type = threshold_type
        self.size = size
        self.alternative = alternative
        self.n_permutations = int(n_permutations)
        self.random_state = random_state
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.result_: NBSResult | None = None

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters as a dict."""
        return {
            "threshold": self.threshold,
            "threshold_type": self.threshold_type,
            "size": self.size,
            "alternative": self.alternative,
            "n_permutations": self.n_permutations,
            "random_state": self.random_state,
            "chunk_size": self.chunk_size,
        }

    # ---------------------------------------------------------------- wrappers
    def fit_paired(
        self,
        baseline: Any,
        followup: Any,
        covariates: Any = None,
        *,
        center_covariates: bool = True,
        node_labels: Sequence[str] | None = None,
    ) -> NBSResult:
        """Paired two-session comparison: follow-up minus baseline, sign flips.

        Parameters
        ----------
        baseline, followup : array_like
            ``(n_subjects, n_nodes, n_nodes)`` symmetric matrices, same subject order.
        covariates : array_like, optional
            ``(n_subjects,)`` or ``(n_subjects, k)`` nuisance covariates (Freedman-Lane).
            Centred by default so the tested intercept is the mean change at
            the mean covariate; with ``center_covariates=False`` it is the
            change at covariate value 0.
        center_covariates : bool
            Centre the covariates (default True).
        node_labels : sequence of str, optional
            Node names for tables and graphs.

        Returns
        -------
        NBSResult
        """
        a = _as_stack("baseline", baseline)
        b = _as_stack("followup", followup)
        if a.shape != b.shape:
            raise ValueError(f"baseline {a.shape} and followup {b.shape} must have the same shape")
        excluded = _nan_nodes([a, b])
        diff = b - a
        cov = _covariates(covariates, diff.shape[0], center_covariates)
        design = np.column_stack([np.ones(diff.shape[0]), cov])
        contrast = np.zeros(design.shape[1])
        contrast[0] = 1.0
        return self._fit(
            diff,
            design,
            contrast[None, :],
            None,
            "sign-flip",
            excluded,
            node_labels,
            "paired (follow-up - baseline)",
        )

    def fit_one_sample(
        self,
        data: Any,
        covariates: Any = None,
        *,
        center_covariates: bool = True,
        node_labels: Sequence[str] | None = None,
    ) -> NBSResult:
        """One-sample test of the mean (e.g. precomputed differences), sign flips.

        Parameters
        ----------
        data : array_like
            ``(n_obs, n_nodes, n_nodes)`` symmetric matrices.
        covariates : array_like, optional
            Nuisance covariates (centred by default).
        center_covariates : bool
            Centre the covariates (default True).
        node_labels : sequence of str, optional
            Node names.

        Returns
        -------
        NBSResult
        """
        y = _as_stack("data", data)
        excluded = _nan_nodes([y])
        cov = _covariates(covariates, y.shape[0], center_covariates)
        design = np.column_stack([np.ones(y.shape[0]), cov])
        contrast = np.zeros(design.shape[1])
        contrast[0] = 1.0
        return self._fit(
            y, design, contrast[None, :], None, "sign-flip", excluded, node_labels, "one-sample"
        )

    def fit_two_sample(
        self,
        group_a: Any,
        group_b: Any,
        covariates: Any = None,
        *,
        center_covariates: bool = True,
        node_labels: Sequence[str] | None = None,
    ) -> NBSResult:
        """Two-sample comparison ``mean(group_a) - mean(group_b)``, permutations.

        Parameters
        ----------
        group_a, group_b : array_like
            ``(n_a, n_nodes, n_nodes)`` and ``(n_b, n_nodes, n_nodes)`` matrices.
        covariates : array_like, optional
            ``(n_a + n_b,)`` or ``(n_a + n_b, k)`` nuisance covariates, rows of
            group A first (Freedman-Lane).
        center_covariates : bool
            Centre the covariates (default True; irrelevant to the group difference).
        node_labels : sequence of str, optional
            Node names.

        Returns
        -------
        NBSResult
        """
        a = _as_stack("group_a", group_a)
        b = _as_stack("group_b", group_b)
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"group_a {a.shape[1:]} and group_b {b.shape[1:]} matrices differ in size"
            )
        excluded = _nan_nodes([a, b])
        y = np.concatenate([a, b])
        grp = np.r_[np.ones(a.shape[0]), np.zeros(b.shape[0])]
        cov = _covariates(covariates, y.shape[0], center_covariates)
        design = np.column_stack([grp, 1 - grp, cov])
        contrast = np.zeros(design.shape[1])
        contrast[:2] = [1.0, -1.0]
        return self._fit(
            y,
            design,
            contrast[None, :],
            None,
            "permute",
            excluded,
            node_labels,
            "two-sample (A - B)",
        )

    def fit_repeated(
        self,
        data: Any,
        subjects: Sequence[Any],
        sessions: Sequence[Any],
        contrast: Any,
        *,
        node_labels: Sequence[str] | None = None,
    ) -> NBSResult:
        """Repeated measures over sessions, permutation within subject.

        The design has one column per session plus subject indicators
        (nuisance); sessions are permuted within each subject (exchangeability
        blocks). With two sessions this is the paired test.

        Parameters
        ----------
        data : array_like
            ``(n_obs, n_nodes, n_nodes)``, one matrix per subject-session.
        subjects, sessions : sequence
            Subject and session label of each observation.
        contrast : array_like or dict
            Session weights summing to zero, in sorted order of the session
            labels, or a mapping ``{session: weight}`` (missing sessions = 0).
        node_labels : sequence of str, optional
            Node names.

        Returns
        -------
        NBSResult
        """
        y = _as_stack("data", data)
        n = y.shape[0]
        subj = np.asarray(subjects)
        sess = np.asarray(sessions)
        if subj.shape != (n,) or sess.shape != (n,):
            raise ValueError(f"subjects and sessions must each have {n} entries")
        sess_levels, sess_idx = np.unique(sess, return_inverse=True)
        subj_levels, subj_idx = np.unique(subj, return_inverse=True)
        if len(set(zip(subj_idx.tolist(), sess_idx.tolist(), strict=True))) != n:
            raise ValueError("each subject may have each session at most once")
        if isinstance(contrast, dict):
            unknown = set(contrast) - set(sess_levels.tolist())
            if unknown:
                raise ValueError(f"contrast names unknown sessions {sorted(unknown)}")
            c_sess = np.array([float(contrast.get(s, 0.0)) for s in sess_levels.tolist()])
        else:
            c_sess = np.asarray(contrast, dtype=float).ravel()
            if c_sess.size != sess_levels.size:
                raise ValueError(f"contrast needs one weight per session {sess_levels.tolist()}")
        if abs(c_sess.sum()) > 1e-9 * max(1.0, np.abs(c_sess).sum()) or not np.any(c_sess):
            raise ValueError("a within-subject contrast must be non-zero and sum to zero")
        excluded = _nan_nodes([y])
        s_dum = (sess_idx[:, None] == np.arange(sess_levels.size)[None, :]).astype(float)
        p_dum = (subj_idx[:, None] == np.arange(1, subj_levels.size)[None, :]).astype(float)
        design = np.column_stack([s_dum, p_dum])
        full_c = np.r_[c_sess, np.zeros(p_dum.shape[1])]
        return self._fit(
            y,
            design,
            full_c[None, :],
            subj_idx,
            "permute",
            excluded,
            node_labels,
            f"repeated measures ({sess_levels.size} sessions, within-subject permutation)",
        )

    def fit(
        self,
        data: Any,
        design: Any,
        contrast: Any,
        *,
        blocks: Sequence[Any] | None = None,
        exchangeability: Exchangeability = "permute",
        node_labels: Sequence[str] | None = None,
    ) -> NBSResult:
        """General GLM entry point.

        Parameters
        ----------
        data : array_like
            ``(n_obs, n_nodes, n_nodes)`` symmetric matrices.
        design : array_like
            ``(n_obs, p)`` design matrix (include an intercept column yourself).
        contrast : array_like
            ``(p,)`` or ``(n_contrasts, p)``; each row is a one-sided t contrast
            (doubled into ``+c``/``-c`` for ``alternative="two-sided"``) and the
            FWE is controlled across all rows.
        blocks : sequence, optional
            Exchangeability blocks (``exchangeability="permute"`` only).
        exchangeability : {"permute", "sign-flip"}
            Relabel by permutation within blocks (EE) or by sign flips (ISE).
        node_labels : sequence of str, optional
            Node names.

        Returns
        -------
        NBSResult
        """
        y = _as_stack("data", data)
        x = np.asarray(design, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"design must have shape ({y.shape[0]}, p), got {np.shape(design)}")
        if not np.isfinite(x).all():
            raise ValueError("design must be finite")
        c = np.atleast_2d(np.asarray(contrast, dtype=float))
        if c.ndim != 2 or c.shape[1] != x.shape[1]:
            raise ValueError(
                f"contrast must have {x.shape[1]} columns, got shape {np.shape(contrast)}"
            )
        blk = None
        if blocks is not None:
            blk = np.asarray(blocks)
            if blk.shape != (y.shape[0],):
                raise ValueError(f"blocks must have {y.shape[0]} entries")
            blk = np.unique(blk, return_inverse=True)[1]
        excluded = _nan_nodes([y])
        return self._fit(
            y, x, c, blk, exchangeability, excluded, node_labels, "general linear model"
        )

    # ---------------------------------------------------------------- engine
    def _fit(
        self,
        y3: np.ndarray,
        design: np.ndarray,
        contrasts: np.ndarray,
        blocks: np.ndarray | None,
        exchangeability: Exchangeability,
        excluded: tuple[int, ...],
        node_labels: Sequence[str] | None,
        description: str,
    ) -> NBSResult:
        t_start = time.perf_counter()
        n_obs, n_all, _ = y3.shape
        if node_labels is not None:
            node_labels = tuple(str(s) for s in node_labels)
            if len(node_labels) != n_all:
                raise ValueError(f"node_labels needs {n_all} names, got {len(node_labels)}")
        keep = np.setdiff1d(np.arange(n_all), np.asarray(excluded, dtype=int))
        if keep.size < 2:
            raise ValueError(f"fewer than 2 nodes left after excluding NaN nodes {list(excluded)}")
        if excluded:
            logger.warning(
                "NBS: excluding %d node(s) with NaN entries: %s", len(excluded), list(excluded)
            )
        rank = int(np.linalg.matrix_rank(design))
        df = n_obs - rank
        if df < 1:
            raise ValueError(
                f"too few observations: {n_obs} observation(s) for a design of rank {rank} leave "
                f"{df} residual degrees of freedom (need at least 1)"
            )
        n_keep = keep.size
        iu, ju = np.triu_indices(n_keep, k=1)
        y = y3[:, keep[iu], keep[ju]]  # (n_obs, E)
        n_edges = y.shape[1]

        if self.threshold_type == "p":
            thr = float(stats.t.isf(self.threshold, df))
        else:
            thr = self.threshold

        rng = np.random.default_rng(self.random_state)
        relabel = make_relabelling_set(exchangeability, design, self.n_permutations, rng, blocks)
        if relabel.n_distinct < 2:
            raise ValueError("the design allows only one distinct relabelling: too few subjects")

        invariant = None
        if exchangeability == "permute" and blocks is not None:
            invariant = (blocks[:, None] == np.arange(blocks.max() + 1)[None, :]).astype(float)
        parts = [_partition(y, design, c, df, invariant) for c in contrasts]
        degenerate = np.zeros(n_edges, dtype=bool)
        for part in parts:
            degenerate |= _degenerate(y, part)
        degenerate_edges = tuple((int(keep[iu[e]]), int(keep[ju[e]]))
                                 for e in np.flatnonzero(degenerate))
        if degenerate.any():  # no t: left out of the test (t = 0), reported
            names = node_labels or tuple(str(k) for k in range(n_all))
            logger.warning(
                "NBS: %d edge(s) without residual variance (the same change in every "
                "observation) left out of the test: %s", int(degenerate.sum()),
                _edge_text(degenerate_edges, lambda k: names[k]),
            )
            y = y.copy()
            y[:, degenerate] = 0.0
            parts = [_partition(y, design, c, df, invariant) for c in contrasts]
        signs = {"greater": (1,), "less": (-1,), "two-sided": (1, -1),
                 "both-one-sided": (1, -1)}[self.alternative]
        separate = self.alternative == "both-one-sided"
        tests = tuple((r, s) for r in range(contrasts.shape[0]) for s in signs)
        n_tests = len(tests)

        n_rel = relabel.n
        q_max = max(p.vectors.shape[1] for p in parts)
        chunk = self.chunk_size or int(
            np.clip(_CHUNK_ELEMENTS // max(1, n_edges * q_max), 1, n_rel)
        )
        fp_rng = np.random.default_rng(12345)
        weights_fp = fp_rng.standard_normal(n_edges)
        weights_fp2 = fp_rng.standard_normal(n_edges)
        part_fp = [p.resid @ weights_fp for p in parts]
        null = np.zeros(n_rel)
        null_by_test = np.zeros((n_tests, n_rel))
        fingerprints = np.zeros((n_tests, n_rel))
        observed_t: list[np.ndarray] = []
        logger.info(
            "NBS: %d obs, %d nodes (%d edges), %d %s relabellings (%s of %d distinct), chunk %d",
            n_obs,
            n_keep,
            n_edges,
            n_rel,
            exchangeability,
            "all" if relabel.exact else "random",
            relabel.n_distinct,
            chunk,
        )
        next_log = 0.1
        for start in range(0, n_rel, chunk):
            stop = min(n_rel, start + chunk)
            k = stop - start
            chunk_stats = [_chunk_stats(p, relabel, start, stop) for p in parts]
            # fingerprint of a: relabelled x projected on resid @ w (no (K, E) pass)
            chunk_proj = [relabel.apply(p.vectors[:, :1], start, stop)[:, 0, :] for p in parts]
            if start == 0:
                observed_t = [
                    _t_from(a[0], 0.0 if b2 is None else b2[0], p.ss, p)
                    for p, (a, b2) in zip(parts, chunk_stats, strict=True)
                ]
            blocks_l, edges_l, w_l = [], [], []
            for r_idx, (row, sgn) in enumerate(tests):
                part = parts[row]
                a, b2 = chunk_stats[row]
                fp = sgn * (chunk_proj[row] @ part_fp[row])
                if b2 is not None:
                    fp += b2 @ weights_fp2
                fingerprints[r_idx, start:stop] = fp
                flat = _supra_index(a, b2, part, thr, sgn)
                kk, ee = np.divmod(flat, n_edges)
                blocks_l.append(kk + r_idx * k)
                edges_l.append(ee)
                if self.size == "intensity":
                    bb = 0.0 if b2 is None else b2.ravel()[flat]
                    w_l.append(sgn * _t_from(a.ravel()[flat], bb, part.ss[ee], part) - thr)
            sizes = _max_component_sizes(
                np.concatenate(blocks_l),
                np.concatenate(edges_l),
                np.concatenate(w_l) if self.size == "intensity" else None,
                n_tests * k,
                iu,
                ju,
                n_keep,
            )
            null_by_test[:, start:stop] = sizes.reshape(n_tests, k)
            null[start:stop] = null_by_test[:, start:stop].max(axis=0)
            done = stop / n_rel
            if done >= next_log or stop == n_rel:
                logger.info(
                    "NBS: %d/%d relabellings (%.0f%%), %.1f s",
                    stop,
                    n_rel,
                    100 * done,
                    time.perf_counter() - t_start,
                )
                while next_log <= done:
                    next_log += 0.1

        # relabellings equivalent to the identity (same set of statistic maps)
        obs_fp = np.sort(fingerprints[:, 0])
        scale = max(1.0, float(np.abs(fingerprints[:, 0]).max()))
        equiv = np.all(
            np.abs(np.sort(fingerprints, axis=0) - obs_fp[:, None]) <= 1e-8 * scale, axis=0
        )
        min_p = float(equiv.sum()) / n_rel
        if separate:  # each one-sided test on its own: only its own maps need to match
            scales = np.maximum(1.0, np.abs(fingerprints[:, :1]))
            own = np.abs(fingerprints - fingerprints[:, :1]) <= 1e-8 * scales
            min_p = float(own.sum(axis=1).min()) / n_rel

        # observed components and FWE p-values
        comps: list[Component] = []
        tol = 1e-9
        for t_idx, (row, sgn) in enumerate(tests):
            ref_null = null_by_test[t_idx] if separate else null
            for e, sz in sorted(
                _observed_components(observed_t[row], sgn, thr, self.size, iu, ju, n_keep),
                key=lambda item: -item[1],
            ):
                p = float(np.count_nonzero(ref_null >= sz - tol * max(1.0, abs(sz)))) / n_rel
                comps.append(
                    Component(
                        contrast=row,
                        sign=sgn,
                        i=_frozen(keep[iu[e]]),
                        j=_frozen(keep[ju[e]]),
                        statistic=_frozen(observed_t[row][e]),
                        size=sz,
                        p_fwe=p,
                    )
                )

        stat = np.full((contrasts.shape[0], n_all, n_all), np.nan)
        for row in range(contrasts.shape[0]):
            m = np.zeros((n_keep, n_keep))
            m[iu, ju] = observed_t[row]
            m = m + m.T
            stat[row][np.ix_(keep, keep)] = m

        params = self.get_params()
        params.update(
            design=description, exchangeability=exchangeability, contrasts=contrasts.tolist()
        )
        result = NBSResult(
            components=tuple(comps),
            statistics=_frozen(stat),
            null_distribution=_frozen(null),
            n_permutations=n_rel,
            n_distinct_available=int(relabel.n_distinct),
            exact=relabel.exact,
            min_attainable_p=min_p,
            seed=self.random_state,
            excluded_nodes=tuple(int(n) for n in excluded),
            threshold_t=thr,
            df=df,
            n_obs=n_obs,
            exchangeability=exchangeability,
            tests=tests,
            node_labels=node_labels,
            parameters=params,
            degenerate_edges=degenerate_edges,
            null_by_test=_frozen(null_by_test),
        )
        logger.info(
            "NBS: done in %.2f s, %d component(s), min attainable p %.4g",
            time.perf_counter() - t_start,
            len(comps),
            min_p,
        )
        self.result_ = result
        return result


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a
