"""Longitudinal tests of ROI, tract-profile and clinical measures across sessions.

Estimator-style API (as :mod:`pipeline.stats.nbs`): the test parameters go to
:class:`LongitudinalTests`, :meth:`LongitudinalTests.fit` takes the long table
the pipeline writes and returns a frozen :class:`LongitudinalResult`.

Input
-----
A long-format table with one row per ``(subject, session, roi, metric)`` and a
value column (``median`` by default, as written by
:func:`pipeline.dwi.rois.roi_table`). Every ``by`` group (default
``("roi", "metric")``) is analysed on its own:

* **Session summary** (:func:`session_summary`): n, median, first and third
  quartile (linear interpolation, ``numpy.percentile``) per session.
* **Friedman test** across all sessions (>= 3 sessions) on the subjects with
  every session. The statistic is :func:`scipy.stats.friedmanchisquare`'s
  (tie-corrected); the p-value is EXACT by enumerating all ``(k!)**n``
  within-subject permutations of the ranks when that number is at most
  ``exact_limit``, otherwise the chi-square approximation.
* **Paired tests** for every contrast ``(a, b)`` on the subjects with both
  sessions (others are excluded and listed in :attr:`LongitudinalResult.exclusions`):
  Wilcoxon signed-rank (:func:`wilcoxon_signed_rank`: Wilcoxon's zero convention,
  zero differences dropped and listed; mid-ranks for tied magnitudes; the EXACT
  conditional null distribution of the rank sum given the ties, by enumeration of
  every sign pattern, when the non-zero differences number at most
  ``wilcoxon_exact_max_n`` (default 50), otherwise the normal approximation with tie
  correction, said so in ``method``; ``min_p`` is the exact smallest attainable p,
  2 / 2^m for m non-zero differences) and paired t (:func:`scipy.stats.ttest_rel`).
  Differences are ``b - a``.
* **Linear mixed model** ``value ~ time`` with a random intercept per subject
  (:class:`statsmodels.regression.mixed_linear_model.MixedLM`, REML), on all
  available observations (subjects with missing sessions included). The slope
  is tested with a t reference distribution with "between-within" degrees of
  freedom ``n_obs - n_subjects - 1`` (time varies within subjects; exact for a
  balanced complete design, where the REML slope test equals the within-subject
  regression test); ``lmm_df="wald"`` uses the asymptotic normal instead.
  Fits that raise, do not converge, or put the subject variance on the boundary
  (zero) are replaced by the within-subject least-squares test
  (:func:`within_subject_slope`, one intercept per subject, the same t test for a
  balanced design), named in ``method`` with the LMM's problem in ``reason``: no
  row leaves the FDR family because the LMM could not be fitted.

Multiple comparisons: Benjamini-Hochberg FDR (:func:`scipy.stats.false_discovery_control`)
over a *family* that is stated in the output: by default (``fdr_family="test"``)
one family per (test, contrast) across all ``by`` groups (e.g. the 24
ROI x metric LMM slopes), or ``fdr_family="all"`` for every p-value of the table.

Smallest attainable p: an exact test on ``n`` subjects cannot go below a design
floor (``2 / 2**n`` for the two-sided exact Wilcoxon, ``k! / (k!)**n`` for the
exact Friedman test). It is reported per row (``min_p``) and flagged when it is
not below ``fdr_alpha`` (with 5 pairs the Wilcoxon test can never reach 0.05).

Tract profiles (:func:`profile_tests`): node-wise paired t with a sign-flip
permutation family-wise correction along the tract (max-t or cluster mass),
exact when all ``2**n`` sign patterns fit in ``n_permutations``.

Clinical variables (:func:`clinical_to_long`) go through the same tests;
:func:`change_scores` and :func:`clinical_association` correlate imaging
change with clinical change.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats

from pipeline.stats.permutation import sign_flip_set

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "LongitudinalResult",
    "LongitudinalTests",
    "ProfileTestResult",
    "box_plot_by_session",
    "change_scores",
    "clinical_association",
    "clinical_to_long",
    "profile_plot",
    "profile_tests",
    "session_summary",
    "spaghetti_plot",
    "wilcoxon_signed_rank",
    "within_subject_slope",
]

logger = logging.getLogger(__name__)

FDRFamily = Literal["test", "all"]
LMMDf = Literal["between-within", "wald"]

#: Columns of :attr:`LongitudinalResult.table` after the ``by`` columns.
TEST_COLUMNS = [
    "test",
    "contrast",
    "n_subjects",
    "n_obs",
    "statistic",
    "p",
    "p_fdr",
    "significant",
    "fdr_family",
    "exact",
    "min_p",
    "can_reach_alpha",
    "method",
    "estimate",
    "estimate_name",
    "median_change",
    "mean_pct_change",
    "reason",
]


# --------------------------------------------------------------------------- helpers


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _group_items(df: pd.DataFrame, by: Sequence[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """``(key tuple, sub-frame)`` per group, in sorted order (``by`` may be empty)."""
    if not by:
        return [((), df)]
    return [
        ((k if isinstance(k, tuple) else (k,)), g)
        for k, g in df.groupby(list(by), sort=True, dropna=False)
    ]


def _wide(
    g: pd.DataFrame, value: str, sessions: Sequence[str], subject: str, session: str
) -> pd.DataFrame:
    """Subjects x sessions table of ``value`` (NaN when missing)."""
    w = g.pivot(index=subject, columns=session, values=value)
    return w.reindex(columns=list(sessions)).astype(float)


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries stay NaN and are not counted.

    Parameters
    ----------
    p : numpy.ndarray
        Raw p-values.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values (``scipy.stats.false_discovery_control``, method ``"bh"``).
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def friedman_exact_p(data: np.ndarray, limit: int = 100_000) -> tuple[float, float, int] | None:
    """Exact permutation p-value of the Friedman test.

    Under the null the ``k`` values of each subject are exchangeable, so the
    ``(k!)**n`` within-subject permutations of the (mid-)ranks are equally
    likely. The Friedman statistic is an increasing function of the sum of
    squared rank sums, which is enumerated.

    Parameters
    ----------
    data : numpy.ndarray
        ``(n_subjects, k_sessions)`` complete data.
    limit : int
        Enumerate only when ``(k!)**n <= limit``.

    Returns
    -------
    tuple of (p, min_p, n_permutations) or None
        None when the enumeration would exceed ``limit``.
    """
    n, k = data.shape
    total = math.factorial(k) ** n
    if total > limit:
        return None
    ranks = np.apply_along_axis(stats.rankdata, 1, data)
    perm_idx = np.array(list(permutations(range(k))))  # (k!, k)
    sums = np.zeros((1, k))
    for i in range(n):
        sums = (sums[:, None, :] + ranks[i][perm_idx][None, :, :]).reshape(-1, k)
    s2 = np.einsum("ij,ij->i", sums, sums)
    obs = float(np.sum(ranks.sum(axis=0) ** 2))
    tol = 1e-9 * max(1.0, abs(obs))
    p = float(np.mean(s2 >= obs - tol))
    min_p = float(np.mean(s2 >= s2.max() - tol))
    return p, min_p, total


def wilcoxon_signed_rank(
    d: np.ndarray, *, exact_max_n: int = 50
) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired differences ``d`` (zeros, ties).

    Zero differences are dropped (Wilcoxon's convention, scipy's ``zero_method="wilcox"``);
    the m remaining magnitudes get mid-ranks. Under the null every sign pattern of the m
    ranks is equally likely; the exact conditional distribution of W+ (sum of the ranks of
    the positive differences) given the tie pattern is computed by enumerating the 2^m
    patterns as a convolution over the doubled (integer) mid-ranks, O(m^2 n) and exact
    in float64 up to m = 50. scipy's exact method does not handle ties or zeros (it falls
    back to the normal approximation), hence this function. Two-sided p = P(|W+ - E| >=
    |w - E|), E = sum(ranks) / 2 (the distribution is symmetric about E).

    Returns a dict: ``statistic`` (min(W+, W-), as scipy), ``w_plus``, ``p``, ``min_p``
    (2 / 2^m, the exact smallest attainable p), ``n_nonzero``, ``n_zero``, ``ties``
    (bool) and ``exact`` (False above ``exact_max_n`` non-zero differences: normal
    approximation with tie correction, no continuity correction).
    """
    d = np.asarray(d, dtype=float).ravel()
    if not np.all(np.isfinite(d)):
        raise ValueError("differences must be finite")
    nz = d[d != 0]
    m = int(nz.size)
    out: dict[str, Any] = {"n_nonzero": m, "n_zero": int(d.size - m)}
    if m == 0:
        return {**out, "statistic": np.nan, "w_plus": np.nan, "p": np.nan, "min_p": np.nan,
                "ties": False, "exact": False}
    ranks = stats.rankdata(np.abs(nz))  # mid-ranks: integers or halves
    w_plus = float(ranks[nz > 0].sum())
    total = float(ranks.sum())
    out.update(statistic=min(w_plus, total - w_plus), w_plus=w_plus,
               min_p=min(1.0, 2.0 / 2.0**m), ties=bool(np.unique(ranks).size < m))
    if m <= exact_max_n:
        r2 = np.rint(2 * ranks).astype(int)
        counts = np.zeros(int(r2.sum()) + 1)
        counts[0] = 1.0
        for r in r2:  # add one rank with a random sign: S -> S or S + r
            shifted = np.zeros_like(counts)
            shifted[r:] = counts[: counts.size - r]
            counts += shifted
        k = np.arange(counts.size)
        centre, obs = r2.sum() / 2.0, 2.0 * w_plus
        extreme = np.abs(k - centre) >= abs(obs - centre) - 1e-9
        out.update(p=float(min(1.0, counts[extreme].sum() / 2.0**m)), exact=True)
    else:
        _, t_counts = np.unique(ranks, return_counts=True)
        var = m * (m + 1) * (2 * m + 1) / 24.0 - (t_counts**3 - t_counts).sum() / 48.0
        z = (w_plus - total / 2.0) / np.sqrt(var)
        out.update(p=float(min(1.0, 2.0 * stats.norm.sf(abs(z)))), exact=False)
    return out


def within_subject_slope(y: np.ndarray, t: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Least-squares slope of ``y`` on ``t`` with one intercept per subject (fixed effects).

    The within-subject regression test: y and t are centred within each subject, the
    slope is ``sum(t~ y~) / sum(t~^2)`` and its t statistic has ``n_obs - n_subjects - 1``
    degrees of freedom. For a balanced complete design it equals the REML random-intercept
    LMM slope test with between-within degrees of freedom; it needs no variance component,
    so it is the fallback when the LMM fails or its subject variance is on the boundary.
    Returns ``slope``, ``se``, ``statistic``, ``p``, ``df``, ``intercept`` (mean of the
    subject intercepts) and ``reason`` (non-empty when not estimable).
    """
    y, t = np.asarray(y, float), np.asarray(t, float)
    groups = np.asarray(groups)
    out: dict[str, Any] = {"slope": np.nan, "se": np.nan, "statistic": np.nan, "p": np.nan,
                           "df": np.nan, "intercept": np.nan, "reason": ""}
    labels, inv = np.unique(groups, return_inverse=True)
    df = y.size - labels.size - 1
    counts = np.bincount(inv)
    yc = y - (np.bincount(inv, y) / counts)[inv]
    tc = t - (np.bincount(inv, t) / counts)[inv]
    sxx = float(np.sum(tc**2))
    if df < 1 or sxx <= 0:
        out["reason"] = (f"within-subject slope not estimable: {y.size} observations, "
                         f"{labels.size} subjects, no time variation within subjects"
                         if sxx <= 0 else f"within-subject slope not estimable: df = {df}")
        return out
    slope = float(np.sum(tc * yc) / sxx)
    sse = float(np.sum((yc - slope * tc) ** 2))
    scale = max(float(np.sum(yc**2)), float(np.finfo(float).tiny))
    if sse <= 1e-20 * scale:
        out.update(slope=slope, df=float(df), reason="within-subject slope fits the data "
                   "exactly (no residual variance): no test")
        return out
    se = float(np.sqrt(sse / df / sxx))
    stat = slope / se
    intercept = float(np.mean((np.bincount(inv, y) - slope * np.bincount(inv, t)) / counts))
    out.update(slope=slope, se=se, statistic=stat, p=float(2 * stats.t.sf(abs(stat), df)),
               df=float(df), intercept=intercept)
    return out


#: Subject variance of the random-intercept LMM below this fraction of the residual
#: variance counts as on the boundary (zero): the within-subject test is used instead.
LMM_BOUNDARY = 1e-6


def _lmm_fit(y: np.ndarray, t: np.ndarray, groups: np.ndarray, df_method: LMMDf) -> dict[str, Any]:
    """Random-intercept LMM ``y ~ 1 + t``; slope, SE, statistic, p, reason, method.

    When the fit fails, does not converge, gives a non-finite slope / SE, or its subject
    variance is on the boundary (< :data:`LMM_BOUNDARY` x the residual variance), the
    slope is tested by :func:`within_subject_slope` instead; ``method`` says which
    (``"lmm"`` or ``"within"``) and ``reason`` why.
    """
    fit = _lmm_fit_raw(y, t, groups, df_method)
    if fit["method"] == "lmm" or not fit.get("fallback", False):
        return fit
    alt = within_subject_slope(y, t, groups)
    alt["method"] = "within"
    alt["reason"] = "; ".join(r for r in (f"LMM: {fit['reason']}", alt["reason"]) if r)
    return alt


def _lmm_fit_raw(
    y: np.ndarray, t: np.ndarray, groups: np.ndarray, df_method: LMMDf
) -> dict[str, Any]:
    """Random-intercept LMM ``y ~ 1 + t``; slope, SE, statistic, p, reason."""
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    out: dict[str, Any] = {
        "statistic": np.nan,
        "p": np.nan,
        "slope": np.nan,
        "intercept": np.nan,
        "se": np.nan,
        "df": np.nan,
        "reason": "",
        "method": "none",
        "fallback": False,
    }
    n_groups = np.unique(groups).size
    df = y.size - n_groups - 1
    if n_groups < 2 or df < 1 or np.unique(t).size < 2:
        out["reason"] = (
            f"LMM not estimable: {y.size} observations, {n_groups} subjects, "
            f"{np.unique(t).size} distinct times"
        )
        return out
    x = np.column_stack([np.ones_like(t), t])
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = MixedLM(y, x, groups=groups).fit(reml=True)
        for w in caught:
            msg = str(w.message).splitlines()[0]
            if issubclass(w.category, ConvergenceWarning | RuntimeWarning | UserWarning):
                notes.append(msg)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        out["reason"] = f"fit failed: {type(exc).__name__}: {exc}"
        out["fallback"] = True
        return out
    if not getattr(res, "converged", True):
        out["reason"] = "did not converge" + (f" ({'; '.join(notes)})" if notes else "")
        out["fallback"] = True
        return out
    slope, se = float(res.fe_params[1]), float(res.bse_fe[1])
    if not (np.isfinite(slope) and np.isfinite(se) and se > 0):
        out["reason"] = "non-finite slope or standard error" + (
            f" ({'; '.join(notes)})" if notes else ""
        )
        out["fallback"] = True
        return out
    subject_var = float(np.asarray(res.cov_re).ravel()[0]) if np.size(res.cov_re) else 0.0
    if not subject_var > LMM_BOUNDARY * float(res.scale):
        out["reason"] = (f"subject variance on the boundary ({subject_var:.3g} vs residual "
                         f"{float(res.scale):.3g})")
        out["fallback"] = True
        return out
    z = slope / se
    if df_method == "wald":
        p = float(2 * stats.norm.sf(abs(z)))
        out["df"] = np.inf
    else:
        p = float(2 * stats.t.sf(abs(z), df))
        out["df"] = float(df)
    out.update(statistic=z, p=p, slope=slope, intercept=float(res.fe_params[0]), se=se,
               method="lmm")
    if notes:
        out["reason"] = "warning: " + "; ".join(dict.fromkeys(notes))
    return out


# --------------------------------------------------------------------------- summary


def session_summary(
    df: pd.DataFrame,
    value: str = "median",
    by: Sequence[str] = ("roi", "metric"),
    sessions: Sequence[str] | None = None,
    subject: str = "subject",
    session: str = "session",
) -> pd.DataFrame:
    """Per-session n, median and interquartile range of ``value`` (the clinicians' table).

    Parameters
    ----------
    df : pandas.DataFrame
        Long table with ``subject``, ``session``, the ``by`` columns and ``value``.
    value : str
        Column summarised (one value per subject and session).
    by : sequence of str
        Grouping columns.
    sessions : sequence of str, optional
        Session order; default the order of first appearance.
    subject, session : str
        Column names.

    Returns
    -------
    pandas.DataFrame
        Columns ``by..., session, n, median, q1, q3, iqr`` (quartiles with
        ``numpy.percentile``'s linear interpolation; NaN values are not counted).
    """
    import pandas as pd

    _check_columns(df, [subject, session, value, *by], "session_summary")
    order = list(sessions) if sessions is not None else list(dict.fromkeys(df[session]))
    rows = []
    for key, g in _group_items(df, by):
        for ses in order:
            v = g.loc[g[session] == ses, value].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            q1, med, q3 = np.percentile(v, [25, 50, 75]) if v.size else (np.nan,) * 3
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "session": ses,
                    "n": int(v.size),
                    "median": float(med),
                    "q1": float(q1),
                    "q3": float(q3),
                    "iqr": float(q3 - q1),
                }
            )
    return pd.DataFrame(rows, columns=[*by, "session", "n", "median", "q1", "q3", "iqr"])


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class LongitudinalResult:
    """Frozen result of :meth:`LongitudinalTests.fit`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (``by`` group, test, contrast); columns ``by...`` then
        :data:`TEST_COLUMNS`: ``statistic`` (Friedman chi-square, Wilcoxon
        W = smaller signed-rank sum as in scipy, paired t, LMM slope/SE), raw
        ``p``, BH-adjusted ``p_fdr`` within ``fdr_family``, ``significant``
        (``p_fdr < fdr_alpha``), ``exact`` (exact null distribution),
        ``min_p`` (smallest p the test could attain with this design),
        ``can_reach_alpha`` (``min_p < fdr_alpha``), ``method``, ``estimate``
        (median of differences for Wilcoxon, mean difference for t, Kendall's
        W for Friedman, slope per time unit for the LMM) with
        ``estimate_name``, ``median_change`` and ``mean_pct_change`` (paired:
        over the compared sessions; LMM: fitted change over the time span in %
        of the fitted first-session value), ``reason`` (why NaN / warnings).
    summary_table : pandas.DataFrame
        :func:`session_summary` of the data.
    exclusions : pandas.DataFrame
        ``by..., test, contrast, subject, reason`` for subjects left out of a test.
    parameters : dict
        Estimator parameters, FDR family statement and design (JSON-ready).
    """

    table: pd.DataFrame
    summary_table: pd.DataFrame
    exclusions: pd.DataFrame
    parameters: dict[str, Any] = field(default_factory=dict)

    def significant(self, alpha: float | None = None) -> pd.DataFrame:
        """Rows with ``p_fdr < alpha`` (default the fitted ``fdr_alpha``)."""
        a = self.parameters["fdr_alpha"] if alpha is None else alpha
        return self.table[self.table["p_fdr"] < a]

    def summary(self) -> str:
        """Human-readable report: tests, FDR family, smallest attainable p-values, hits."""
        p = self.parameters
        alpha = p["fdr_alpha"]
        lines = [
            "Longitudinal tests",
            f"  sessions: {', '.join(p['sessions'])}; times: {p['times']} ({p['time_units']})",
            f"  groups: {p['n_groups']} ({' x '.join(p['by']) or 'all'}); value: {p['value']}",
            f"  multiple comparisons: {p['fdr_statement']}",
        ]
        for (test, contrast), g in self.table.groupby(["test", "contrast"], sort=False):
            mins = g["min_p"].dropna()
            line = f"  {test} [{contrast}]: {int(g['significant'].sum())} of {len(g)} with p_FDR < {alpha:g}"
            if len(mins):
                line += f"; smallest attainable p = {mins.min():.4g}"
                if (mins >= alpha).all():
                    line += (
                        f"  WARNING: cannot reach p < {alpha:g} with this design "
                        f"(n = {int(g['n_subjects'].max())})"
                    )
            lines.append(line)
        by = p["by"]
        for _, r in self.significant().iterrows():
            name = "/".join(str(r[c]) for c in by)
            lines.append(
                f"  * {name} {r['test']} [{r['contrast']}]: p = {r['p']:.4g}, "
                f"p_FDR = {r['p_fdr']:.4g}, {r['estimate_name']} = {r['estimate']:.4g}"
            )
        if len(self.exclusions):
            lines.append(f"  {len(self.exclusions)} subject exclusions (see exclusions table)")
        return "\n".join(lines)

    def to_json_dict(self) -> dict[str, Any]:
        """Parameters, summary text and the test table as JSON-serialisable dict."""
        records = json.loads(self.table.to_json(orient="records"))
        return {"parameters": self.parameters, "summary": self.summary(), "tests": records}


# --------------------------------------------------------------------------- estimator


class LongitudinalTests:
    """Friedman, paired Wilcoxon / t and mixed-model tests across sessions.

    Parameters
    ----------
    sessions : sequence of str
        Session labels in chronological order (e.g. ``["baseline", "m03", "m06"]``).
    times : sequence of float or mapping, optional
        Time of each session (e.g. months since baseline) for the LMM; default
        the session index 0, 1, 2, ... (stated in the output).
    compare : pair or sequence of pairs of str, optional
        Session contrasts ``(a, b)`` for the paired tests, difference ``b - a``;
        default ``(first, last)``.
    fdr_alpha : float
        Level for the ``significant`` flag and warnings.
    fdr_family : {"test", "all"}
        BH family: per (test, contrast) across all groups, or the whole table.
    lmm : bool
        Fit the linear mixed model.
    lmm_df : {"between-within", "wald"}
        Reference distribution of the LMM slope test (see module docstring).
    friedman : bool
        Run the Friedman test (needs >= 3 sessions).
    paired_t, wilcoxon : bool
        Run the paired t and Wilcoxon tests.
    exact_limit : int
        Largest ``(k!)**n`` enumerated for the exact Friedman p-value.
    wilcoxon_exact_max_n : int
        Largest number of non-zero differences for the exact Wilcoxon distribution
        (above it the normal approximation; exact enumeration is cheap up to 50).
    time_units : str
        Label of the time axis (for the output).
    """

    def __init__(
        self,
        sessions: Sequence[str],
        times: Sequence[float] | Mapping[str, float] | None = None,
        compare: tuple[str, str] | Sequence[tuple[str, str]] | None = None,
        fdr_alpha: float = 0.05,
        fdr_family: FDRFamily = "test",
        lmm: bool = True,
        lmm_df: LMMDf = "between-within",
        friedman: bool = True,
        paired_t: bool = True,
        wilcoxon: bool = True,
        exact_limit: int = 100_000,
        wilcoxon_exact_max_n: int = 50,
        time_units: str = "months",
    ) -> None:
        self.sessions = [str(s) for s in sessions]
        if len(self.sessions) < 2 or len(set(self.sessions)) != len(self.sessions):
            raise ValueError(f"need at least two distinct sessions, got {self.sessions}")
        if times is None:
            self.times = [float(i) for i in range(len(self.sessions))]
            self.time_units = "session index"
        else:
            if isinstance(times, Mapping):
                self.times = [float(times[s]) for s in self.sessions]
            else:
                self.times = [float(t) for t in times]
            if len(self.times) != len(self.sessions):
                raise ValueError("times must give one value per session")
            self.time_units = time_units
        if compare is None:
            pairs = [(self.sessions[0], self.sessions[-1])]
        elif len(compare) == 2 and all(isinstance(c, str) for c in compare):
            pairs = [(str(compare[0]), str(compare[1]))]
        else:
            pairs = [(str(a), str(b)) for a, b in compare]  # type: ignore[misc]
        for a, b in pairs:
            if a not in self.sessions or b not in self.sessions or a == b:
                raise ValueError(f"contrast ({a!r}, {b!r}) must name two listed sessions")
        self.compare = pairs
        if not 0 < fdr_alpha < 1:
            raise ValueError("fdr_alpha must be in (0, 1)")
        if fdr_family not in ("test", "all"):
            raise ValueError("fdr_family must be 'test' or 'all'")
        if lmm_df not in ("between-within", "wald"):
            raise ValueError("lmm_df must be 'between-within' or 'wald'")
        self.fdr_alpha = float(fdr_alpha)
        self.fdr_family = fdr_family
        self.lmm = bool(lmm)
        self.lmm_df = lmm_df
        self.friedman = bool(friedman)
        self.paired_t = bool(paired_t)
        self.wilcoxon = bool(wilcoxon)
        self.exact_limit = int(exact_limit)
        self.wilcoxon_exact_max_n = int(wilcoxon_exact_max_n)

    # ------------------------------------------------------------ per-group tests
    def _friedman(self, w: pd.DataFrame) -> tuple[dict[str, Any], list[tuple[Any, str]]]:
        complete = w.dropna()
        excl = [(s, "missing at least one session") for s in w.index.difference(complete.index)]
        n, k = complete.shape
        row: dict[str, Any] = {
            "test": "friedman",
            "contrast": " vs ".join(self.sessions),
            "n_subjects": n,
            "n_obs": n * k,
            "estimate_name": "kendall_w",
        }
        if n < 2:
            row["reason"] = f"Friedman needs >= 2 complete subjects, has {n}"
            return row, excl
        data = complete.to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.friedmanchisquare(*data.T)
        chi2 = float(res.statistic)
        row["statistic"] = chi2
        row["estimate"] = chi2 / (n * (k - 1)) if np.isfinite(chi2) else np.nan
        ex = friedman_exact_p(data, self.exact_limit) if np.isfinite(chi2) else None
        if ex is not None:
            row.update(
                p=ex[0],
                min_p=ex[1],
                exact=True,
                method=f"exact: all {ex[2]} within-subject rank permutations",
            )
        else:
            row.update(
                p=float(res.pvalue), exact=False, method=f"chi-square approximation, df = {k - 1}"
            )
            if not np.isfinite(chi2):
                row["reason"] = "all values tied within every subject"
        d = data[:, -1] - data[:, 0]
        row["median_change"] = float(np.median(d))
        row["mean_pct_change"] = float(np.mean(100 * d / data[:, 0]))
        return row, excl

    def _paired(
        self, w: pd.DataFrame, a: str, b: str
    ) -> tuple[list[dict[str, Any]], list[tuple[Any, str]]]:
        pair = w[[a, b]]
        ok = pair.notna().all(axis=1)
        excl = []
        for s in pair.index[~ok]:
            miss = [c for c in (a, b) if not np.isfinite(pair.loc[s, c])]
            excl.append((s, f"missing session(s) {', '.join(miss)}: excluded from paired test"))
        x, y = pair[ok][a].to_numpy(), pair[ok][b].to_numpy()
        n = int(x.size)
        d = y - x
        base = {"contrast": f"{b} - {a}", "n_subjects": n, "n_obs": 2 * n}
        if n:
            base["median_change"] = float(np.median(d))
            base["mean_pct_change"] = float(np.mean(100 * d / x))
        rows = []
        if self.wilcoxon:
            row = {**base, "test": "wilcoxon", "estimate_name": "median_difference"}
            nz = d[d != 0]
            if nz.size < 1 or n < 2:
                row["reason"] = f"Wilcoxon needs non-zero differences, has {nz.size} of {n}"
            else:
                res = wilcoxon_signed_rank(d, exact_max_n=self.wilcoxon_exact_max_n)
                m = res["n_nonzero"]
                row.update(statistic=float(res["statistic"]), p=res["p"], exact=res["exact"],
                           estimate=float(np.median(d)), min_p=res["min_p"])
                detail = ", ".join(
                    [f"{m} non-zero differences"]
                    + (["mid-ranks for tied |differences|"] if res["ties"] else [])
                    + ([f"{res['n_zero']} zero difference(s) dropped (Wilcoxon's convention)"]
                       if res["n_zero"] else []))
                row["method"] = (
                    f"exact conditional signed-rank distribution ({detail}), two-sided"
                    if res["exact"] else
                    f"normal approximation with tie correction (more than "
                    f"{self.wilcoxon_exact_max_n} non-zero differences; {detail}), two-sided"
                )
                if res["n_zero"]:
                    row["reason"] = f"{res['n_zero']} zero difference(s) dropped (Wilcoxon)"
            rows.append(row)
        if self.paired_t:
            row = {
                **base,
                "test": "paired_t",
                "estimate_name": "mean_difference",
                "method": f"paired t, df = {n - 1}, two-sided",
                "exact": False,
            }
            # constant differences (up to float noise: an identical change in every
            # subject) have no variance, and a t from rounding error would be ~1e15
            constant = n >= 2 and np.ptp(d) <= 1e-9 * max(float(np.abs(d).max()), 1e-300)
            if n < 2 or constant:
                row["reason"] = (f"paired t needs >= 2 pairs with non-constant differences "
                                 f"(n = {n}; the same change in every subject has no variance)")
            else:
                res = stats.ttest_rel(y, x)
                row.update(
                    statistic=float(res.statistic),
                    p=float(res.pvalue),
                    estimate=float(np.mean(d)),
                    min_p=0.0,
                )
            rows.append(row)
        return rows, excl

    def _lmm(self, g: pd.DataFrame, value: str, subject: str, session: str) -> dict[str, Any]:
        tmap = dict(zip(self.sessions, self.times, strict=True))
        sel = g[g[session].isin(self.sessions) & np.isfinite(g[value].astype(float))]
        y = sel[value].to_numpy(dtype=float)
        t = sel[session].map(tmap).to_numpy(dtype=float)
        groups = sel[subject].astype(str).to_numpy()
        fit = _lmm_fit(y, t, groups, self.lmm_df)
        span = (min(self.times), max(self.times))
        row = {
            "test": "lmm",
            "contrast": f"slope per {self.time_units[:-1] if self.time_units.endswith('s') else self.time_units}",
            "n_subjects": int(np.unique(groups).size),
            "n_obs": int(y.size),
            "statistic": fit["statistic"],
            "p": fit["p"],
            "exact": False,
            "min_p": 0.0 if np.isfinite(fit["p"]) else np.nan,
            "estimate": fit["slope"],
            "estimate_name": "slope",
            "method": (
                "REML random-intercept LMM value ~ time, "
                + (
                    f"t reference, between-within df = {fit['df']:g}"
                    if self.lmm_df != "wald"
                    else "Wald z (asymptotic)"
                )
            ) if fit["method"] != "within" else (
                f"within-subject least squares (one intercept per subject), t with df = "
                f"{fit['df']:g} (fallback: the LMM could not be used)"
            ),
            "reason": fit["reason"],
        }
        if np.isfinite(fit["slope"]):
            first = fit["intercept"] + fit["slope"] * span[0]
            row["median_change"] = fit["slope"] * (span[1] - span[0])
            row["mean_pct_change"] = 100 * row["median_change"] / first if first else np.nan
        return row

    # ------------------------------------------------------------ fit
    def fit(
        self,
        df: pd.DataFrame,
        value: str = "median",
        by: Sequence[str] = ("roi", "metric"),
        subject: str = "subject",
        session: str = "session",
    ) -> LongitudinalResult:
        """Run all tests for every ``by`` group.

        Parameters
        ----------
        df : pandas.DataFrame
            Long table, one row per (subject, session, *by*).
        value : str
            Column tested (``median`` of the ROI by default).
        by : sequence of str
            Grouping columns (``("roi", "metric")``; ``("bundle", "metric")`` ...).
        subject, session : str
            Column names.

        Returns
        -------
        LongitudinalResult
        """
        import pandas as pd

        by = list(by)
        _check_columns(df, [subject, session, value, *by], "LongitudinalTests.fit")
        d = df[df[session].astype(str).isin(self.sessions)].copy()
        d[session] = d[session].astype(str)
        dup = d.duplicated([subject, session, *by])
        if dup.any():
            raise ValueError(
                f"{int(dup.sum())} duplicated (subject, session, {', '.join(by)}) rows; "
                "expected one value per subject and session"
            )
        unknown = sorted(set(df[session].astype(str)) - set(self.sessions))
        if unknown:
            logger.warning("sessions not in the session list are ignored: %s", unknown)
        rows: list[dict[str, Any]] = []
        excl_rows: list[dict[str, Any]] = []
        for key, g in _group_items(d, by):
            keyd = dict(zip(by, key, strict=True))
            w = _wide(g, value, self.sessions, subject, session)
            out: list[tuple[dict[str, Any], list[tuple[Any, str]]]] = []
            if self.friedman and len(self.sessions) >= 3:
                out.append(self._friedman(w))
            for a, b in self.compare:
                prow, pex = self._paired(w, a, b)
                out.extend((r, pex) for r in prow)
            if self.lmm:
                out.append((self._lmm(g, value, subject, session), []))
            for row, ex in out:
                rows.append({**keyd, **row})
                excl_rows.extend(
                    {
                        **keyd,
                        "test": row["test"],
                        "contrast": row["contrast"],
                        "subject": s,
                        "reason": why,
                    }
                    for s, why in ex
                )
        table = pd.DataFrame(rows).reindex(columns=[*by, *TEST_COLUMNS])
        table["exact"] = table["exact"].astype("boolean").fillna(False).astype(bool)
        table["reason"] = table["reason"].fillna("")
        table["fdr_family"] = pd.Series([""] * len(table), index=table.index, dtype=object)
        table["p_fdr"] = np.nan
        for col in ("method", "estimate_name"):
            table[col] = table[col].astype(object)
        if self.fdr_family == "all":
            table["p_fdr"] = bh_fdr(table["p"].to_numpy())
            table["fdr_family"] = f"all {int(table['p'].notna().sum())} tests"
        else:
            for (test, contrast), idx in table.groupby(
                ["test", "contrast"], sort=False
            ).groups.items():
                p = table.loc[idx, "p"].to_numpy()
                table.loc[idx, "p_fdr"] = bh_fdr(p)
                table.loc[idx, "fdr_family"] = (
                    f"{test} [{contrast}] across {int(np.isfinite(p).sum())} "
                    f"{' x '.join(by) or 'group'} tests"
                )
        table["significant"] = (table["p_fdr"] < self.fdr_alpha).fillna(False).astype(bool)
        table["can_reach_alpha"] = table["min_p"] < self.fdr_alpha
        for i in np.flatnonzero((table["exact"] & ~table["can_reach_alpha"]).to_numpy()):
            r = table.iloc[i]
            msg = (
                f"cannot reach p < {self.fdr_alpha:g} with n = {r['n_subjects']} "
                f"(smallest attainable p = {r['min_p']:.4g})"
            )
            table.iloc[i, table.columns.get_loc("reason")] = (
                f"{r['reason']}; {msg}" if r["reason"] else msg
            )
        exclusions = pd.DataFrame(excl_rows, columns=[*by, "test", "contrast", "subject", "reason"])
        statement = f"Benjamini-Hochberg FDR at {self.fdr_alpha:g}; family = " + (
            "every p-value in the table"
            if self.fdr_family == "all"
            else f"each (test, contrast) across all {' x '.join(by) or 'group'} combinations"
        )
        params: dict[str, Any] = {
            "sessions": self.sessions,
            "times": self.times,
            "time_units": self.time_units,
            "compare": [list(c) for c in self.compare],
            "value": value,
            "by": by,
            "n_groups": len(_group_items(d, by)),
            "n_subjects": int(d[subject].nunique()),
            "fdr_alpha": self.fdr_alpha,
            "fdr_family": self.fdr_family,
            "fdr_statement": statement,
            "lmm": self.lmm,
            "lmm_df": self.lmm_df,
            "lmm_formula": "value ~ time + (1 | subject), REML",
            "exact_limit": self.exact_limit,
            "wilcoxon_exact_max_n": self.wilcoxon_exact_max_n,
            "differences": "later minus earlier session (b - a)",
        }
        summary = session_summary(d, value, by, self.sessions, subject, session)
        return LongitudinalResult(
            table=table, summary_table=summary, exclusions=exclusions, parameters=params
        )


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ProfileTestResult:
    """Frozen result of :func:`profile_tests`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (bundle, metric, node): ``n_subjects``, ``mean_difference``
        (``b - a``), ``t``, ``p_uncorrected`` (paired t), ``p_fwe`` (max-t:
        node-wise FWE p; cluster: p of the node's cluster, 1 outside clusters)
        and ``significant``.
    ranges : pandas.DataFrame
        Significant contiguous node ranges: ``bundle, metric, start_node,
        stop_node`` (inclusive), ``n_nodes``, ``sign``, ``peak_t``, ``p_fwe``.
    exclusions : pandas.DataFrame
        ``bundle, metric, subject, reason``.
    parameters : dict
        Method, permutations, exactness, smallest attainable p per (bundle, metric).
    """

    table: pd.DataFrame
    ranges: pd.DataFrame
    exclusions: pd.DataFrame
    parameters: dict[str, Any] = field(default_factory=dict)


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs ``(start, stop_inclusive, label)`` of non-zero labels."""
    out = []
    start = None
    for i, lab in enumerate(np.append(labels, 0)):
        if start is not None and lab != labels[start]:
            out.append((start, i - 1, int(labels[start])))
            start = None
        if start is None and i < labels.size and lab != 0:
            start = i
    return out


def _max_cluster_mass(t: np.ndarray, thr: float) -> np.ndarray:
    """Largest cluster mass (sum of ``|t| - thr`` over a same-sign supra-threshold run) per row."""
    k, m = t.shape
    lab = np.sign(t) * (np.abs(t) > thr)
    excess = np.where(lab != 0, np.abs(t) - thr, 0.0)
    start = np.ones((k, m), dtype=bool)
    start[:, 1:] = lab[:, 1:] != lab[:, :-1]
    seg = np.cumsum(start.ravel()) - 1
    mass = np.bincount(seg, weights=excess.ravel())
    seg_row = np.flatnonzero(start.ravel()) // m
    out = np.zeros(k)
    np.maximum.at(out, seg_row, mass)
    return out


def profile_tests(
    profiles: pd.DataFrame,
    compare: tuple[str, str],
    n_permutations: int = 10_000,
    random_state: int | None = 0,
    method: Literal["max-t", "cluster"] = "max-t",
    alpha: float = 0.05,
    cluster_p: float = 0.05,
    value: str = "value",
    by: Sequence[str] = ("bundle", "metric"),
    subject: str = "subject",
    session: str = "session",
    node: str = "node",
) -> ProfileTestResult:
    """Node-wise paired t along tract profiles with permutation FWE correction along the tract.

    For each (bundle, metric) the paired differences ``D = profile(b) - profile(a)``
    (subjects x nodes) are tested with a one-sample t at every node. Under the
    null the differences are symmetric about 0, so the reference distribution is
    obtained by flipping the sign of whole subjects (all nodes together, which
    keeps the spatial correlation along the tract). ``method="max-t"``: the FWE
    p-value of a node is the proportion of sign patterns whose maximum ``|t|``
    over nodes reaches the node's ``|t|``. ``method="cluster"``: runs of
    adjacent nodes with ``|t|`` above the two-sided ``cluster_p`` t-threshold
    and the same sign are clusters sized by mass (sum of ``|t| - threshold``);
    a cluster's p is the proportion of sign patterns whose largest cluster mass
    reaches it. All ``2**n`` patterns are enumerated (exact) when
    ``2**n <= n_permutations``; otherwise ``n_permutations - 1`` unique random
    patterns plus the identity. FWE is controlled per (bundle, metric).

    Parameters
    ----------
    profiles : pandas.DataFrame
        Columns ``subject, session, bundle, node, metric, value``.
    compare : tuple of str
        Sessions ``(a, b)``; differences are ``b - a``.
    n_permutations : int
        Sign patterns wanted, identity included.
    random_state : int, optional
        Seed for the random mode.
    method : {"max-t", "cluster"}
        Family-wise correction.
    alpha : float
        Level for ``significant`` and the node ranges.
    cluster_p : float
        Cluster-forming two-sided p threshold (``method="cluster"``).
    value, by, subject, session, node : str or sequence of str
        Column names.

    Returns
    -------
    ProfileTestResult
    """
    import pandas as pd

    if method not in ("max-t", "cluster"):
        raise ValueError("method must be 'max-t' or 'cluster'")
    by = list(by)
    a, b = compare
    _check_columns(profiles, [subject, session, node, value, *by], "profile_tests")
    rng = np.random.default_rng(random_state)
    rows, ranges, excl = [], [], []
    per_group: dict[str, Any] = {}
    for key, g in _group_items(profiles[profiles[session].isin([a, b])], by):
        keyd = dict(zip(by, key, strict=True))
        nodes = np.sort(g[node].unique())
        wa = (
            g[g[session] == a]
            .pivot(index=subject, columns=node, values=value)
            .reindex(columns=nodes)
        )
        wb = (
            g[g[session] == b]
            .pivot(index=subject, columns=node, values=value)
            .reindex(columns=nodes)
        )
        subs = wa.index.union(wb.index)
        wa, wb = wa.reindex(subs).astype(float), wb.reindex(subs).astype(float)
        diff = wb - wa
        ok = diff.notna().all(axis=1)
        for s in subs[~ok]:
            excl.append(
                {**keyd, "subject": s, "reason": f"missing session {a} or {b} (or nodes): excluded"}
            )
        dmat = diff[ok].to_numpy()
        n, m = dmat.shape
        if n < 2:
            for j, nd in enumerate(nodes):
                rows.append(
                    {
                        **keyd,
                        "node": nd,
                        "n_subjects": n,
                        "mean_difference": np.nan,
                        "t": np.nan,
                        "p_uncorrected": np.nan,
                        "p_fwe": np.nan,
                        "significant": False,
                    }
                )
                del j
            continue
        flips = sign_flip_set(n, n_permutations, rng)
        signs = flips.table.astype(float)  # (K, n)
        ss = np.einsum("ij,ij->j", dmat, dmat)
        means = signs @ dmat / n  # (K, m)
        var = np.maximum((ss[None, :] - n * means**2) / (n - 1), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tk = means / np.sqrt(var / n)
        tk = np.nan_to_num(tk, nan=0.0, posinf=np.finfo(float).max, neginf=-np.finfo(float).max)
        t_obs = tk[0]
        p_unc = 2 * stats.t.sf(np.abs(t_obs), n - 1)
        kk = flips.n
        if method == "max-t":
            null = np.abs(tk).max(axis=1)
            tol = 1e-10 * np.maximum(1.0, np.abs(t_obs))
            p_fwe = (null[None, :] >= (np.abs(t_obs) - tol)[:, None]).mean(axis=1)
            min_p = float(np.mean(null >= null.max() - 1e-10 * max(1.0, null.max())))
            sig = p_fwe < alpha
            for s0, s1, sg in _runs(np.where(sig, np.sign(t_obs), 0).astype(int)):
                seg = slice(s0, s1 + 1)
                pk = int(np.argmax(np.abs(t_obs[seg]))) + s0
                ranges.append(
                    {
                        **keyd,
                        "start_node": nodes[s0],
                        "stop_node": nodes[s1],
                        "n_nodes": s1 - s0 + 1,
                        "sign": sg,
                        "peak_t": float(t_obs[pk]),
                        "p_fwe": float(p_fwe[seg].min()),
                    }
                )
        else:
            thr = float(stats.t.isf(cluster_p / 2, n - 1))
            null = _max_cluster_mass(tk, thr)
            min_p = float(np.mean(null >= null.max() - 1e-10 * max(1.0, null.max())))
            p_fwe = np.ones(m)
            lab = (np.sign(t_obs) * (np.abs(t_obs) > thr)).astype(int)
            for s0, s1, sg in _runs(lab):
                seg = slice(s0, s1 + 1)
                mass = float(np.sum(np.abs(t_obs[seg]) - thr))
                pc = float(np.mean(null >= mass - 1e-10 * max(1.0, mass)))
                p_fwe[seg] = pc
                if pc < alpha:
                    pk = int(np.argmax(np.abs(t_obs[seg]))) + s0
                    ranges.append(
                        {
                            **keyd,
                            "start_node": nodes[s0],
                            "stop_node": nodes[s1],
                            "n_nodes": s1 - s0 + 1,
                            "sign": sg,
                            "peak_t": float(t_obs[pk]),
                            "p_fwe": pc,
                        }
                    )
        mean_d = dmat.mean(axis=0)
        for j, nd in enumerate(nodes):
            rows.append(
                {
                    **keyd,
                    "node": nd,
                    "n_subjects": n,
                    "mean_difference": float(mean_d[j]),
                    "t": float(t_obs[j]),
                    "p_uncorrected": float(p_unc[j]),
                    "p_fwe": float(p_fwe[j]),
                    "significant": bool(p_fwe[j] < alpha),
                }
            )
        per_group["/".join(map(str, key))] = {
            "n_subjects": n,
            "n_nodes": m,
            "n_permutations": kk,
            "n_distinct": flips.n_distinct,
            "exact": flips.exact,
            "min_attainable_p": min_p,
        }
    params = {
        "method": method,
        "compare": [a, b],
        "differences": f"{b} - {a}",
        "alpha": alpha,
        "cluster_p": cluster_p if method == "cluster" else None,
        "cluster_size": "mass: sum of |t| - threshold" if method == "cluster" else None,
        "fwe_scope": "along the tract, per " + " x ".join(by),
        "relabelling": "sign flips of whole subjects (identity included)",
        "random_state": random_state,
        "groups": per_group,
    }
    table = pd.DataFrame(
        rows,
        columns=[
            *by,
            "node",
            "n_subjects",
            "mean_difference",
            "t",
            "p_uncorrected",
            "p_fwe",
            "significant",
        ],
    )
    return ProfileTestResult(
        table=table,
        ranges=pd.DataFrame(
            ranges, columns=[*by, "start_node", "stop_node", "n_nodes", "sign", "peak_t", "p_fwe"]
        ),
        exclusions=pd.DataFrame(excl, columns=[*by, "subject", "reason"]),
        parameters=params,
    )


# --------------------------------------------------------------------------- clinical


def clinical_to_long(
    sessions_table: pd.DataFrame,
    variables: Sequence[str] | None = None,
    subject: str = "subject",
    session: str = "session",
) -> pd.DataFrame:
    """Clinical variables of a sessions table in the long ROI format.

    ``session_id`` values like ``ses-m03`` and ``participant_id`` like ``sub-01``
    are stripped of their BIDS prefix when ``subject``/``session`` are absent.

    Parameters
    ----------
    sessions_table : pandas.DataFrame
        One row per (subject, session) with clinical columns (e.g. ``EDSS``).
    variables : sequence of str, optional
        Columns to convert; default every numeric column.
    subject, session : str
        Column names.

    Returns
    -------
    pandas.DataFrame
        Columns ``subject, session, roi`` (``"clinical"``), ``metric`` (variable
        name), ``median`` (the value), ready for :class:`LongitudinalTests`.
    """
    import pandas as pd

    t = sessions_table.copy()
    if subject not in t and "participant_id" in t:
        t[subject] = t["participant_id"].astype(str).str.removeprefix("sub-")
    if session not in t and "session_id" in t:
        t[session] = t["session_id"].astype(str).str.removeprefix("ses-")
    _check_columns(t, [subject, session], "clinical_to_long")
    if variables is None:
        variables = [c for c in t.select_dtypes("number").columns if c not in (subject, session)]
    frames = [
        pd.DataFrame(
            {
                "subject": t[subject],
                "session": t[session],
                "roi": "clinical",
                "metric": v,
                "median": pd.to_numeric(t[v], errors="coerce"),
            }
        )
        for v in variables
    ]
    return pd.concat(frames, ignore_index=True)


def change_scores(
    df: pd.DataFrame,
    compare: tuple[str, str],
    value: str = "median",
    by: Sequence[str] = ("roi", "metric"),
    relative: bool = False,
    subject: str = "subject",
    session: str = "session",
) -> pd.DataFrame:
    """Per-subject change ``value(b) - value(a)`` (or percent change when ``relative``).

    Returns
    -------
    pandas.DataFrame
        Columns ``subject, by..., change``; subjects missing a session are dropped.
    """
    import pandas as pd

    a, b = compare
    by = list(by)
    rows = []
    for key, g in _group_items(df, by):
        w = _wide(g, value, [a, b], subject, session).dropna()
        ch = w[b] - w[a]
        if relative:
            ch = 100 * ch / w[a]
        for s, c in ch.items():
            rows.append({"subject": s, **dict(zip(by, key, strict=True)), "change": float(c)})
    return pd.DataFrame(rows, columns=["subject", *by, "change"])


def _spearman_exact_p(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and its exact two-sided permutation p (all ``n!`` orderings)."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    ry = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    rho = float(rx @ ry)
    perms = np.array(list(permutations(range(x.size))))
    null = ry[perms] @ rx
    return rho, float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def clinical_association(
    imaging_change: pd.DataFrame,
    clinical_change: pd.DataFrame,
    method: Literal["spearman", "pearson"] = "spearman",
    fdr_alpha: float = 0.05,
    exact_max_n: int = 8,
) -> pd.DataFrame:
    """Correlation of imaging change with clinical change across subjects.

    Parameters
    ----------
    imaging_change, clinical_change : pandas.DataFrame
        Outputs of :func:`change_scores`: ``subject``, key columns (e.g. ``roi,
        metric``) and ``change``.
    method : {"spearman", "pearson"}
        Correlation. Spearman p is exact (all ``n!`` permutations) when
        ``n <= exact_max_n`` and the ranks vary, otherwise scipy's t approximation.
    fdr_alpha : float
        BH level; the family is every (imaging, clinical) pair of the output.
    exact_max_n : int
        Largest n for the exact Spearman permutation p.

    Returns
    -------
    pandas.DataFrame
        ``imaging, clinical, n, r, p, exact, p_fdr, significant, fdr_family``.
    """
    import pandas as pd

    def keyed(t: pd.DataFrame) -> dict[str, pd.Series]:
        keys = [c for c in t.columns if c not in ("subject", "change")]
        return {
            "/".join(map(str, k)): g.set_index("subject")["change"].astype(float)
            for k, g in _group_items(t, keys)
        }

    img, cli = keyed(imaging_change), keyed(clinical_change)
    rows = []
    for iname, iv in img.items():
        for cname, cv in cli.items():
            j = pd.concat([iv, cv], axis=1, join="inner").dropna()
            x, y = j.iloc[:, 0].to_numpy(), j.iloc[:, 1].to_numpy()
            n = int(x.size)
            row: dict[str, Any] = {
                "imaging": iname,
                "clinical": cname,
                "n": n,
                "r": np.nan,
                "p": np.nan,
                "exact": False,
            }
            if n >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                if method == "spearman" and n <= exact_max_n:
                    row["r"], row["p"] = _spearman_exact_p(x, y)
                    row["exact"] = True
                elif method == "spearman":
                    res = stats.spearmanr(x, y)
                    row["r"], row["p"] = float(res.statistic), float(res.pvalue)
                else:
                    res = stats.pearsonr(x, y)
                    row["r"], row["p"] = float(res.statistic), float(res.pvalue)
            rows.append(row)
    out = pd.DataFrame(rows, columns=["imaging", "clinical", "n", "r", "p", "exact"])
    out["p_fdr"] = bh_fdr(out["p"].to_numpy())
    out["significant"] = out["p_fdr"] < fdr_alpha
    out["fdr_family"] = (
        f"BH over all {int(out['p'].notna().sum())} imaging x clinical {method} tests"
    )
    return out


# --------------------------------------------------------------------------- figures


def _select(df: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    m = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        m &= (df[k] == v).to_numpy()
    return df[m]


def spaghetti_plot(
    df: pd.DataFrame,
    sessions: Sequence[str],
    where: Mapping[str, Any],
    times: Sequence[float] | None = None,
    value: str = "median",
    title: str | None = None,
) -> Figure:
    """Per-patient change across sessions, one line per subject.

    Parameters
    ----------
    df : pandas.DataFrame
        Long table.
    sessions : sequence of str
        Session order.
    where : mapping
        Selection, e.g. ``{"roi": "NAWM_L", "metric": "rd"}``.
    times : sequence of float, optional
        x positions (e.g. months); default the session index.
    value : str
        Column plotted.
    title : str, optional
        Axes title (default from ``where``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    g = _select(df, where)
    x = list(times) if times is not None else list(range(len(sessions)))
    w = _wide(g, value, sessions, "subject", "session")
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    for s, r in w.iterrows():
        ax.plot(x, r.to_numpy(), marker="o", alpha=0.8, label=str(s))
    ax.plot(x, w.median(axis=0).to_numpy(), color="k", lw=3, label="median")
    ax.set_xticks(x, list(sessions))
    ax.set_ylabel(value)
    ax.set_title(title or " ".join(map(str, where.values())))
    ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def box_plot_by_session(
    df: pd.DataFrame,
    sessions: Sequence[str],
    where: Mapping[str, Any],
    value: str = "median",
    title: str | None = None,
) -> Figure:
    """Box plot of ``value`` by session with the subjects' points overlaid.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    g = _select(df, where)
    data = [g.loc[g["session"] == s, value].dropna().to_numpy(dtype=float) for s in sessions]
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.boxplot(data, labels=list(sessions)) if _mpl_old() else ax.boxplot(
        data, tick_labels=list(sessions)
    )
    for i, v in enumerate(data, start=1):
        ax.scatter(np.full(v.size, i), v, s=12, alpha=0.7)
    ax.set_ylabel(value)
    ax.set_title(title or " ".join(map(str, where.values())))
    fig.tight_layout()
    return fig


def _mpl_old() -> bool:
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return (major, minor) < (3, 9)


def profile_plot(
    profiles: pd.DataFrame,
    sessions: Sequence[str],
    where: Mapping[str, Any],
    result: ProfileTestResult | None = None,
    value: str = "value",
    title: str | None = None,
) -> Figure:
    """Mean tract profile (+/- SD across subjects) per session, significant nodes shaded.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    g = _select(profiles, where)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for ses in sessions:
        w = g[g["session"] == ses].pivot(index="subject", columns="node", values=value)
        if w.empty:
            continue
        nodes = w.columns.to_numpy()
        mu, sd = w.mean(axis=0).to_numpy(), w.std(axis=0).to_numpy()
        ax.plot(nodes, mu, label=str(ses))
        ax.fill_between(nodes, mu - sd, mu + sd, alpha=0.15)
    if result is not None:
        r = _select(result.ranges, {k: v for k, v in where.items() if k in result.ranges})
        for _, row in r.iterrows():
            ax.axvspan(row["start_node"] - 0.5, row["stop_node"] + 0.5, color="grey", alpha=0.3)
    ax.set_xlabel("node")
    ax.set_ylabel(value)
    ax.set_title(title or " ".join(map(str, where.values())))
    ax.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig
