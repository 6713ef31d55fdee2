"""Power of the network-based statistic, simulated in a study's own change noise.

No NBS implementation (the NBS toolbox, MRtrix3 ``connectomestats``, bctpy)
estimates power; small trials need it to plan the next phase. This module
answers "with ``n`` subjects, this primary threshold and an effect of this size
on a subnetwork of this size, how often does the NBS find it, and how much of
it?" by direct simulation of the paired design the NBS stage runs.

Model
-----
A subject's between-session change of edge ``e`` is ``d_e = delta_e + sigma_e
g_e``: ``delta_e`` is the planted change (non-zero on the planted subnetwork
only) and ``sigma_e g_e`` the within-subject noise of the change, estimated
from the study's own connectomes (:meth:`ChangeNoise.from_paired`: per-edge
standard deviation of the follow-up minus baseline change across subjects).
The paired t of an edge is invariant to the edge's scale, so only the
standardised effect ``delta_e / sigma_e`` (Cohen's d_z of the change) matters;
an effect given in the measure's own units (``effect_type="raw"``) is divided
by each planted edge's noise SD from the study.

Two noise models:

``"gaussian"`` (default)
    ``g_e`` independent standard normal. Exact for independent Gaussian edge
    noise; it ignores the correlation between the noise of edges that share a
    region. On the resting-state phantom (whose edge noise is correlated, as
    sample correlations are) it predicts the detection rate of direct
    simulation within Monte Carlo error (``tests/test_nbs_power.py``).
``"resample"``
    Each simulated subject is one of the study's residual change matrices
    ``(d_s - mean d) sqrt(N / (N - 1))``, drawn with replacement, with a random
    sign: keeps the study's spatial noise structure but only ``2 N`` distinct
    noise patterns per edge, so it needs a study with many subjects.

Each repetition draws a planted subnetwork (a random connected graph:
random-attachment spanning tree on ``n_regions`` regions plus random extra
edges up to ``n_edges``) or uses the given ``edges``, the noise of ``n``
subjects, and runs :class:`~pipeline.stats.nbs.NetworkBasedStatistic` on the
changes. The same noise and subnetwork are reused across effects and
thresholds of one ``(n, repetition)`` (common random numbers: smoother curves,
and differences between cells are not Monte Carlo noise).

Reported per ``(n, threshold, effect)``:

* ``detection``: the proportion of repetitions in which a significant component
  (FWE p < alpha) contains a planted edge;
* ``recall``: mean fraction of the planted edges inside significant components;
* ``precision``: mean fraction of significant-component edges that are planted
  (over repetitions with a significant component);
* ``false_positive``: proportion of repetitions with a significant component
  that contains no planted edge (at effect 0: the family-wise error rate);

each with its Monte Carlo standard error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats

from pipeline.stats.nbs import Alternative, NetworkBasedStatistic, SizeMeasure, ThresholdType

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["ChangeNoise", "PowerResult", "nbs_power", "random_subnetwork"]

logger = logging.getLogger(__name__)

NoiseModel = Literal["wishart", "gaussian", "resample"]
EffectType = Literal["standardized", "raw"]
Edge = tuple[int, int]


@dataclass(frozen=True, eq=False)
class ChangeNoise:
    """Between-session change noise of a study's connectomes.

    Attributes
    ----------
    sd : numpy.ndarray
        ``(R, R)`` symmetric per-edge standard deviation (ddof 1) of the
        follow-up minus baseline change across subjects; NaN on the diagonal
        and on edges of regions with NaN in any input.
    residuals : numpy.ndarray
        ``(N, R, R)`` changes minus their mean, times ``sqrt(N / (N - 1))`` (so
        that their mean square is the unbiased variance); used by the
        ``"resample"`` model.
    n_subjects : int
        Subjects ``N`` the noise was estimated from.
    measure : str or None
        ``"correlation"`` or ``"fisher_z"`` when the matrices are (z-transformed)
        correlations: enables the ``"wishart"`` model. None otherwise.
    mean_correlation : numpy.ndarray or None
        ``(R, R)`` mean correlation over subjects and both sessions (``"wishart"``).
    n_effective : float or None
        Effective number of independent time points of the Wishart model, fitted so
        that its Fisher-z change variance ``2 / (n_eff - 3)`` equals the median
        observed one (rescaled by the chi-square median-to-mean ratio of N - 1
        degrees of freedom).
    """

    sd: np.ndarray
    residuals: np.ndarray
    n_subjects: int
    measure: str | None = None
    mean_correlation: np.ndarray | None = None
    n_effective: float | None = None

    @classmethod
    def from_paired(cls, baseline: Any, followup: Any, measure: str | None = None) -> ChangeNoise:
        """Estimate from ``(N, R, R)`` baseline and follow-up matrices (same subject order).

        ``measure`` ("correlation" or "fisher_z") says the matrices are correlations
        (or their Fisher z), which the ``"wishart"`` noise model needs.

        Raises
        ------
        ValueError
            Shapes differ, fewer than 3 subjects, or matrices not square.
        """
        a = np.asarray(baseline, dtype=float)
        b = np.asarray(followup, dtype=float)
        if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2]:
            raise ValueError(
                f"baseline {a.shape} and followup {b.shape} must be (N, R, R) with the same shape"
            )
        if measure not in (None, "correlation", "fisher_z"):
            raise ValueError(f"measure must be None, 'correlation' or 'fisher_z', got {measure!r}")
        n = a.shape[0]
        if n < 3:
            raise ValueError(
                f"estimating the change noise needs >= 3 subjects with both sessions, got {n}"
            )
        d = b - a
        resid = (d - d.mean(axis=0)) * math.sqrt(n / (n - 1))
        sd = np.sqrt((resid**2).mean(axis=0))
        np.fill_diagonal(sd, np.nan)
        mean_r = n_eff = None
        if measure is not None:
            both = np.concatenate([a, b])
            r = np.tanh(both) if measure == "fisher_z" else np.clip(both, -0.999999, 0.999999)
            mean_r = r.mean(axis=0)
            np.fill_diagonal(mean_r, 1.0)
            z = both if measure == "fisher_z" else np.arctanh(r)
            zd = z[n:] - z[:n]
            iu = np.triu_indices(a.shape[1], 1)
            var_z = zd[:, iu[0], iu[1]].var(axis=0, ddof=1)
            med = float(np.nanmedian(var_z)) if np.isfinite(var_z).any() else math.nan
            if not med > 0:
                raise ValueError("the matrices do not change between sessions: no noise to model")
            # the median of N - 1 degree-of-freedom variances sits below their mean
            # (0.84 of it at N = 5): rescale to the variance it estimates
            med *= (n - 1) / stats.chi2.ppf(0.5, n - 1)
            n_eff = float(3.0 + 2.0 / med)
        return cls(sd=sd, residuals=resid, n_subjects=n, measure=measure,
                   mean_correlation=mean_r, n_effective=n_eff)

    @property
    def n_nodes(self) -> int:
        return int(self.sd.shape[0])

    def usable_nodes(self) -> np.ndarray:
        """Regions whose every edge has a finite, positive noise SD."""
        sd = self.sd.copy()
        np.fill_diagonal(sd, 1.0)
        ok = np.isfinite(sd) & (sd > 0)
        return np.flatnonzero(ok.all(axis=1))

    def summary(self) -> dict[str, float | None]:
        """Median and 5th / 95th percentiles of the per-edge SD (upper triangle), n_eff."""
        iu = np.triu_indices(self.n_nodes, 1)
        v = self.sd[iu]
        v = v[np.isfinite(v)]
        q = np.percentile(v, [5, 50, 95]) if v.size else [math.nan] * 3
        return {"median": float(q[1]), "p05": float(q[0]), "p95": float(q[2]),
                "n_effective": None if self.n_effective is None else round(self.n_effective, 2)}


class _Wishart:
    """Sample correlation matrices of ``n_eff`` Gaussian draws from a population matrix.

    The population is the study's mean correlation over the usable regions, made
    positive definite (eigenvalues floored at 1e-3 of their mean, unit diagonal
    restored): an average of sample correlation matrices of short runs is
    often singular. ``n_eff`` is rounded to an integer number of draws.
    """

    def __init__(self, noise: ChangeNoise, nodes: np.ndarray) -> None:
        c = noise.mean_correlation[np.ix_(nodes, nodes)]
        w, v = np.linalg.eigh((c + c.T) / 2)
        w = np.maximum(w, 1e-3 * w.mean())
        c = (v * w) @ v.T
        s = np.sqrt(np.diag(c))
        self.root = (v * np.sqrt(w)).T / s  # rows: draws' mixing, c = root.T @ root
        self.n_draws = max(round(noise.n_effective), 4)
        self.fisher = noise.measure == "fisher_z"
        self.iu = np.triu_indices(nodes.size, 1)
        sd_z = math.sqrt(2.0 / (noise.n_effective - 3.0))
        pop = (c / np.outer(s, s))[self.iu]
        # SD of the simulated change per edge, in the measure's units
        self.sd = np.full(pop.shape, sd_z) if self.fisher else (1 - pop**2) * sd_z

    def _one(self, rng: np.random.Generator) -> np.ndarray:
        x = rng.standard_normal((self.n_draws, self.root.shape[0])) @ self.root
        r = np.corrcoef(x, rowvar=False)[self.iu]
        return np.arctanh(np.clip(r, -0.9999999, 0.9999999)) if self.fisher else r

    def changes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.array([self._one(rng) - self._one(rng) for _ in range(n)])


def random_subnetwork(
    nodes: Sequence[int], n_regions: int, n_edges: int, rng: np.random.Generator
) -> tuple[Edge, ...]:
    """A random connected graph with ``n_regions`` of ``nodes`` and ``n_edges`` edges.

    A random-attachment spanning tree (each region joins a uniformly chosen
    earlier one) keeps it connected, as an NBS component is; the remaining
    ``n_edges - n_regions + 1`` edges are drawn uniformly among the other pairs.
    """
    nodes = np.asarray(nodes, dtype=int)
    k, m = int(n_regions), int(n_edges)
    if not 2 <= k <= nodes.size:
        raise ValueError(f"a subnetwork needs 2 .. {nodes.size} regions, got {k}")
    if not k - 1 <= m <= k * (k - 1) // 2:
        raise ValueError(f"{k} connected regions hold {k - 1} .. {k * (k - 1) // 2} edges, got {m}")
    chosen = rng.choice(nodes, k, replace=False)
    edges = set()
    for pos in range(1, k):
        a, b = int(chosen[pos]), int(chosen[rng.integers(pos)])
        edges.add((min(a, b), max(a, b)))
    if m > len(edges):
        srt = np.sort(chosen)
        pairs = [(int(a), int(b)) for x, a in enumerate(srt) for b in srt[x + 1 :]]
        rest = [p for p in pairs if p not in edges]
        for idx in rng.choice(len(rest), m - len(edges), replace=False):
            edges.add(rest[int(idx)])
    return tuple(sorted(edges))


@dataclass(frozen=True)
class PowerResult:
    """Simulated NBS power over a grid.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per ``(n_subjects, threshold, effect)`` with ``threshold_t``
        (the t applied at that n), ``n_repetitions``, ``detection``, ``recall``,
        ``precision``, ``false_positive`` and their ``*_se`` Monte Carlo
        standard errors, ``n_permutations`` and ``exact``.
    parameters : dict
        Every parameter of the simulation, the seed and the noise summary.
    """

    table: pd.DataFrame
    parameters: dict[str, Any]


def _to_matrices(vec: np.ndarray, n_nodes: int, iu: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    out = np.zeros((vec.shape[0], n_nodes, n_nodes))
    out[:, iu[0], iu[1]] = vec
    out[:, iu[1], iu[0]] = vec
    return out


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not x.size:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def nbs_power(
    noise: ChangeNoise,
    *,
    n_subjects: Sequence[int],
    effects: Sequence[float],
    thresholds: Sequence[float],
    threshold_type: ThresholdType = "t",
    n_regions: int | None = None,
    n_edges: int | None = None,
    edges: Sequence[Edge] | None = None,
    effect_type: EffectType = "standardized",
    edge_effects: Sequence[float] | None = None,
    alternative: Alternative = "greater",
    size: SizeMeasure = "extent",
    noise_model: NoiseModel = "wishart",
    n_repetitions: int = 100,
    n_permutations: int = 1000,
    alpha: float = 0.05,
    random_state: int = 0,
) -> PowerResult:
    """Detection probability, recall and precision of the NBS by simulation.

    Parameters
    ----------
    noise : ChangeNoise
        The study's change noise (:meth:`ChangeNoise.from_paired`).
    n_subjects : sequence of int
        Subject counts to simulate (each >= 2).
    effects : sequence of float
        Planted change per planted edge: standardised (mean change / SD of the
        change, ``effect_type="standardized"``) or in the measure's units
        (``"raw"``, divided by each edge's noise SD). 0 gives the null (the
        ``false_positive`` column is then the family-wise error rate).
    thresholds : sequence of float
        Primary thresholds (t, or one-sided p converted with each n's df).
    threshold_type : {"t", "p"}
    n_regions, n_edges : int, optional
        Size of the random planted subnetwork, redrawn per repetition.
    edges : sequence of (int, int), optional
        A fixed planted subnetwork instead (e.g. a hypothesised one).
    edge_effects : sequence of float, optional
        With ``edges``: a per-edge multiplier of ``effects`` (e.g. the phantom's
        planted change of each edge); default 1.
    alternative : {"greater", "less", "two-sided", "both-one-sided"}
        The NBS's alternative; the planted change is positive, negative for "less".
    size : {"extent", "intensity"}
    noise_model : {"gaussian", "resample"}
        See the module docstring.
    n_repetitions : int
        Simulated studies per ``(n, threshold, effect)``.
    n_permutations : int
        Relabellings per NBS (exact when 2**n is not larger).
    alpha : float
        FWE level of a significant component.
    random_state : int
        Seed; repetition ``r`` at ``n`` uses ``default_rng([random_state, n, r])``.

    Returns
    -------
    PowerResult
    """
    import pandas as pd

    if (edges is None) == (n_regions is None or n_edges is None):
        raise ValueError("give either edges or both n_regions and n_edges")
    if n_repetitions < 2:
        raise ValueError(f"n_repetitions must be >= 2, got {n_repetitions}")
    if any(int(n) < 2 for n in n_subjects):
        raise ValueError(f"every simulated n must be >= 2, got {list(n_subjects)}")
    if effect_type not in ("standardized", "raw"):
        raise ValueError("effect_type must be 'standardized' or 'raw'")
    if noise_model not in ("wishart", "gaussian", "resample"):
        raise ValueError("noise_model must be 'wishart', 'gaussian' or 'resample'")
    if noise_model == "wishart" and noise.mean_correlation is None:
        raise ValueError(
            "the wishart noise model needs correlation or Fisher-z matrices "
            "(ChangeNoise.from_paired(..., measure=...))"
        )
    nodes = noise.usable_nodes()
    n_nodes = noise.n_nodes
    iu = np.triu_indices(n_nodes, 1)
    index = np.full((n_nodes, n_nodes), -1)
    index[iu] = np.arange(iu[0].size)
    sub_iu = np.triu_indices(nodes.size, 1)
    cols = index[nodes[sub_iu[0]], nodes[sub_iu[1]]]  # usable edges in the full vector
    fixed = None
    if edges is not None:
        fixed = tuple((min(int(i), int(j)), max(int(i), int(j))) for i, j in edges)
        usable = set(nodes.tolist())
        bad = [e for e in fixed if e[0] == e[1] or e[0] not in usable or e[1] not in usable]
        if bad:
            raise ValueError(f"planted edges on regions without a usable noise estimate: {bad[:5]}")
        mult = np.ones(len(fixed)) if edge_effects is None else np.asarray(edge_effects, float)
        if mult.shape != (len(fixed),):
            raise ValueError(f"edge_effects needs {len(fixed)} values, got {mult.shape}")
    elif edge_effects is not None:
        raise ValueError("edge_effects needs fixed edges")
    # per-edge noise SD of the simulated change (measure units), on the usable edges
    if noise_model == "wishart":
        wishart = _Wishart(noise, nodes)
        sd_use = wishart.sd
    else:
        sd_use = noise.sd[iu][cols]
        resid = noise.residuals[:, iu[0], iu[1]][:, cols]
    sd_full = np.full(iu[0].size, np.nan)
    sd_full[cols] = sd_use
    sign = -1.0 if alternative == "less" else 1.0
    rows: dict[tuple, list[tuple[float, float, float, float]]] = {}
    meta: dict[tuple, tuple[float, int, bool]] = {}
    t0 = time.perf_counter()
    for n in sorted({int(v) for v in n_subjects}):
        for r in range(int(n_repetitions)):
            rng = np.random.default_rng([int(random_state), n, r])
            planted = (
                fixed if fixed is not None else random_subnetwork(nodes, n_regions, n_edges, rng)
            )
            pidx = index[tuple(np.array(planted).T)]
            g = np.full((n, iu[0].size), np.nan)
            if noise_model == "gaussian":
                g[:, cols] = rng.standard_normal((n, cols.size)) * sd_use
            elif noise_model == "resample":
                pick = rng.integers(noise.n_subjects, size=n)
                g[:, cols] = resid[pick] * rng.choice([-1.0, 1.0], size=(n, 1))
            else:
                g[:, cols] = wishart.changes(n, rng)
            truth = np.zeros(iu[0].size, dtype=bool)
            truth[pidx] = True
            for eff in effects:
                shift = np.full(pidx.size, float(eff))
                if effect_type == "standardized":
                    shift = shift * sd_full[pidx]
                if fixed is not None:
                    shift = shift * mult
                y = g.copy()
                y[:, pidx] += sign * shift
                data = _to_matrices(y, n_nodes, iu)
                for thr in thresholds:
                    est = NetworkBasedStatistic(
                        thr, threshold_type=threshold_type, size=size, alternative=alternative,
                        n_permutations=n_permutations, random_state=int(random_state) + r,
                    )
                    res = est.fit_one_sample(data)
                    found = res.edge_mask(alpha)[iu]
                    tp = int((found & truth).sum())
                    n_found = int(found.sum())
                    fp_comp = any(
                        not truth[index[np.minimum(c.i, c.j), np.maximum(c.i, c.j)]].any()
                        for c in res.significant(alpha)
                    )
                    key = (n, float(thr), float(eff))
                    rows.setdefault(key, []).append((
                        float(tp > 0), tp / truth.sum(),
                        tp / n_found if n_found else math.nan, float(fp_comp),
                    ))
                    meta[key] = (res.threshold_t, res.n_permutations, res.exact)
    elapsed = time.perf_counter() - t0
    out = []
    for key in sorted(rows):
        arr = np.array(rows[key], dtype=float)
        rec = {"n_subjects": key[0], "threshold": key[1], "threshold_t": round(meta[key][0], 4),
               "effect": key[2], "n_repetitions": arr.shape[0]}
        for c, name in enumerate(("detection", "recall", "precision", "false_positive")):
            mean, se = _mean_se(arr[:, c])
            rec[name], rec[f"{name}_se"] = round(mean, 4), round(se, 4)
        rec["n_permutations"], rec["exact"] = meta[key][1], bool(meta[key][2])
        out.append(rec)
    table = pd.DataFrame(out)
    params = {
        "n_subjects": sorted({int(v) for v in n_subjects}),
        "effects": [float(e) for e in effects],
        "effect_type": effect_type,
        "thresholds": [float(t) for t in thresholds],
        "threshold_type": threshold_type,
        "subnetwork": ({"edges": [list(e) for e in fixed]} if fixed is not None
                       else {"n_regions": int(n_regions), "n_edges": int(n_edges), "redrawn": True}),
        "alternative": alternative,
        "size": size,
        "noise_model": noise_model,
        "n_repetitions": int(n_repetitions),
        "n_permutations": int(n_permutations),
        "alpha": float(alpha),
        "seed": int(random_state),
        "noise_estimated_from_subjects": noise.n_subjects,
        "noise_sd": noise.summary(),
        "elapsed_s": round(elapsed, 2),
    }
    logger.info(
        "NBS power: %d simulated studies in %.1f s", sum(len(v) for v in rows.values()), elapsed
    )
    return PowerResult(table=table, parameters=params)
