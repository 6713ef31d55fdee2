"""QC-FC: how strongly head motion still shapes functional connectivity across runs.

For every edge, QC-FC is the Pearson correlation, across runs (subjects and
sessions), between a run's mean framewise displacement and that edge's
connectivity (Power et al. 2012; Satterthwaite et al. 2012; the benchmark of
denoising strategies of Ciric et al. 2017 and Parkes et al. 2018). After good
denoising the edge values no longer track motion: the QC-FC values are centred
on zero, few are significant, and they do not depend on the distance between
the regions (short-range edges are the ones motion inflates).

:func:`qc_fc` returns the per-edge correlations with their p-values and the
summaries those benchmarks report: median absolute QC-FC, the fraction of edges
with an uncorrected p < alpha, the fraction after Benjamini-Hochberg FDR
correction, and, with region coordinates, the distance dependence (Spearman
correlation of QC-FC with the Euclidean distance between the regions).

Pure numpy/scipy, vectorised over edges. The correlation is written out rather
than taken from ``scipy.stats.pearsonr(..., axis=0)`` because each edge has its
own set of runs (a region without coverage in one run is NaN there only), which
pearsonr's axis mode cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["QCFCResult", "qc_fc"]


@dataclass(frozen=True)
class QCFCResult:
    """Per-edge QC-FC and its summaries (edges ``i < j`` in upper-triangle order)."""

    i: np.ndarray  # (E,) first region of each edge
    j: np.ndarray  # (E,) second region
    r: np.ndarray  # (E,) correlation of mean FD with the edge value across runs (NaN: untestable)
    p: np.ndarray  # (E,) two-sided p-value of r (t test with n_runs - 2 dof)
    p_fdr: np.ndarray  # (E,) Benjamini-Hochberg adjusted p over the testable edges
    n_runs: np.ndarray  # (E,) runs with a finite value of the edge
    distance_mm: np.ndarray | None  # (E,) distance between the regions, with coordinates
    alpha: float

    @property
    def testable(self) -> np.ndarray:
        return np.isfinite(self.r)

    @property
    def median_abs_r(self) -> float:
        return float(np.median(np.abs(self.r[self.testable])))

    @property
    def fraction_significant(self) -> float:
        """Fraction of testable edges with uncorrected p < alpha."""
        return float(np.mean(self.p[self.testable] < self.alpha))

    @property
    def fraction_significant_fdr(self) -> float:
        return float(np.mean(self.p_fdr[self.testable] < self.alpha))

    @property
    def distance_dependence(self) -> float | None:
        """Spearman rho of QC-FC with region distance (None without coordinates)."""
        if self.distance_mm is None:
            return None
        from scipy.stats import spearmanr

        ok = self.testable
        return float(spearmanr(self.r[ok], self.distance_mm[ok]).statistic)

    def summary(self) -> dict:
        return {
            "n_edges": int(self.r.size), "n_testable_edges": int(self.testable.sum()),
            "n_runs_max": int(self.n_runs.max(initial=0)),
            "median_abs_qcfc": self.median_abs_r, "alpha": self.alpha,
            "fraction_p_below_alpha": self.fraction_significant,
            "fraction_fdr_below_alpha": self.fraction_significant_fdr,
            "distance_dependence_spearman": self.distance_dependence,
        }


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of the finite entries (NaN stays NaN)."""
    from scipy.stats import false_discovery_control

    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def qc_fc(
    mean_fd: ArrayLike,
    matrices: ArrayLike,
    *,
    coordinates: ArrayLike | None = None,
    alpha: float = 0.05,
    min_runs: int = 5,
) -> QCFCResult:
    """QC-FC of a set of runs.

    Parameters
    ----------
    mean_fd : array-like, shape (N,)
        Mean framewise displacement (mm) of each run.
    matrices : array-like, shape (N, R, R)
        Each run's connectivity matrix (e.g. Fisher z); NaN rows and columns
        (regions without coverage) are left out of that edge's correlation.
    coordinates : array-like, shape (R, 3), optional
        Region centres (mm) for the distance dependence.
    alpha : float
        Level of the significance fractions.
    min_runs : int
        Edges with fewer runs with a finite value get NaN (at least 3).
    """
    from scipy import stats

    fd = np.asarray(mean_fd, dtype=float)
    mats = np.asarray(matrices, dtype=float)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2]:
        raise ValueError(f"matrices must have shape (N, R, R), got {mats.shape}")
    if fd.shape != (mats.shape[0],):
        raise ValueError(f"mean_fd has shape {fd.shape}, expected ({mats.shape[0]},) (one per run)")
    if not np.all(np.isfinite(fd)):
        raise ValueError("mean_fd has non-finite values")
    if min_runs < 3:
        raise ValueError("min_runs must be at least 3")
    i, j = np.triu_indices(mats.shape[1], 1)
    y = mats[:, i, j]  # (N, E)
    ok = np.isfinite(y)
    n = ok.sum(axis=0)
    x = np.where(ok, fd[:, None], 0.0)
    y0 = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = x.sum(0) / n
        my = y0.sum(0) / n
        dx = np.where(ok, x - mx, 0.0)
        dy = np.where(ok, y0 - my, 0.0)
        r = (dx * dy).sum(0) / np.sqrt((dx**2).sum(0) * (dy**2).sum(0))
    r = np.where(n >= min_runs, np.clip(r, -1.0, 1.0), np.nan)
    df = n - 2
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / np.maximum(1.0 - r**2, 1e-300))
    p = np.where(np.isfinite(r), 2.0 * stats.t.sf(np.abs(t), np.maximum(df, 1)), np.nan)
    dist = None
    if coordinates is not None:
        xyz = np.asarray(coordinates, dtype=float)
        if xyz.shape != (mats.shape[1], 3):
            raise ValueError(f"coordinates must have shape ({mats.shape[1]}, 3), got {xyz.shape}")
        dist = np.linalg.norm(xyz[i] - xyz[j], axis=1)
    return QCFCResult(i=i, j=j, r=r, p=p, p_fdr=_bh(p), n_runs=n, distance_mm=dist, alpha=alpha)
