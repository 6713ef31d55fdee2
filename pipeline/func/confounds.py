"""Confound regressors, named denoising strategies, scrubbing and denoising.

Confound table
--------------
Both modes work on one table with fMRIPrep's column names
(``desc-confounds_timeseries.tsv``): ``trans_x, trans_y, trans_z, rot_x,
rot_y, rot_z`` and for each also ``_derivative1``, ``_power2`` and
``_derivative1_power2``; ``white_matter``, ``csf``, ``global_signal`` with the
same expansions; ``framewise_displacement``, ``std_dvars``; anatomical CompCor
components ``w_comp_cor_XX`` (white matter), ``c_comp_cor_XX`` (CSF) and
``a_comp_cor_XX``.  In native mode :func:`compute_confounds` builds it from the
realigned data; in fMRIPrep mode :func:`load_fmriprep_confounds` reads fMRIPrep's
file through :func:`nilearn.interfaces.fmriprep.load_confounds`
(:func:`fmriprep_confound_set` for the fMRI stage).
Derivatives are backward differences with 0 at the first volume (fMRIPrep
writes n/a there), squares are of the (demeaned for signals) regressor.

Strategies (:data:`STRATEGIES`)
-------------------------------
``"24P"``
    6 motion parameters, their derivatives, and the squares of both
    (Friston et al. 1996; Satterthwaite et al. 2013).
``"36P"``
    ``24P`` + white matter, CSF and global signal with their derivatives and
    the squares of both (Satterthwaite et al. 2013; Ciric et al. 2017).
``"acompcor"``
    Top ``n_compcor`` (default 5) principal components of the white-matter
    mask and 5 of the CSF mask (Behzadi et al. 2007; Muschelli et al. 2014)
    + 6 motion parameters and their derivatives (12).

Each can be combined with **scrubbing** (censoring, Power et al. 2012, 2014):
volumes with FD above ``fd_threshold`` (default 0.5 mm), optionally also
``before`` / ``after`` volumes around each (Power 2014: 1 and 2), are
removed; segments of fewer than ``min_segment`` kept volumes are removed too
(Power 2014: 5).  A run with less than ``min_duration_s`` (default 240 s)
of data left is **excluded** (:class:`DenoisedSignals` with ``excluded=True``
and a ``reason``), not an error.

Denoising (:func:`denoise`)
---------------------------
:func:`nilearn.signal.clean` in one step: linear detrending, Butterworth
band-pass (0.01-0.08 Hz by default) of the signals *and* the confounds
(orthogonal filtering, Lindquist et al. 2019), projection on the orthogonal of
the confounds, z-scoring.  Censored volumes are given to ``clean`` as
``sample_mask``: it interpolates them (cubic spline) before filtering and
drops them afterwards, so that they neither enter the regression nor ring
through the filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "MOTION_COLUMNS",
    "STRATEGIES",
    "DenoisedSignals",
    "FmriprepConfoundSet",
    "compute_confounds",
    "denoise",
    "denoise_with_strategy",
    "expand",
    "fmriprep_confound_set",
    "fmriprep_confounds_path",
    "load_fmriprep_confounds",
    "nuisance_masks",
    "scrubbing_mask",
    "select_confounds",
    "strategy_columns",
    "tissue_compcor",
]

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
TISSUE_COLUMNS = ("white_matter", "csf", "global_signal")
STRATEGIES = ("24P", "36P", "acompcor")


def _full(names: Sequence[str]) -> list[str]:
    return [
        f"{n}{s}" for n in names for s in ("", "_derivative1", "_power2", "_derivative1_power2")
    ]


def strategy_columns(strategy: str, n_compcor: int = 5) -> list[str]:
    """Columns of the confound table that a strategy regresses out.

    Parameters
    ----------
    strategy : {"24P", "36P", "acompcor"}
    n_compcor : int
        Components per tissue (WM and CSF) for ``"acompcor"``.
    """
    if strategy == "24P":
        return _full(MOTION_COLUMNS)
    if strategy == "36P":
        return _full(MOTION_COLUMNS) + _full(TISSUE_COLUMNS)
    if strategy == "acompcor":
        motion = [f"{n}{s}" for n in MOTION_COLUMNS for s in ("", "_derivative1")]
        comps = [f"{p}_comp_cor_{i:02d}" for p in ("w", "c") for i in range(n_compcor)]
        return motion + comps
    raise ValueError(f"unknown confound strategy {strategy!r}; expected one of {STRATEGIES}")


def expand(values: np.ndarray, name: str, *, demean: bool = False) -> dict[str, np.ndarray]:
    """A regressor with its derivative and the squares of both (fMRIPrep names)."""
    x = np.asarray(values, dtype=float)
    if demean:
        x = x - x.mean()
    d = np.concatenate([[0.0], np.diff(x)])
    return {
        name: x,
        f"{name}_derivative1": d,
        f"{name}_power2": x**2,
        f"{name}_derivative1_power2": d**2,
    }


def tissue_compcor(data: np.ndarray, mask: np.ndarray, n_components: int = 5) -> np.ndarray:
    """Anatomical CompCor: top principal components of the voxel time series in a mask.

    Each voxel time series is detrended (constant, linear, quadratic) and
    variance-normalised; the left singular vectors of the (T, V) matrix with
    the largest singular values are returned (unit norm, sign fixed so that the
    largest absolute entry is positive).

    Parameters
    ----------
    data : numpy.ndarray, shape (X, Y, Z, T)
    mask : numpy.ndarray of bool, shape (X, Y, Z)
    n_components : int

    Returns
    -------
    numpy.ndarray, shape (T, n_components)
        Fewer columns are padded with zeros only if the mask has fewer voxels.
    """
    x = np.asarray(data, dtype=np.float64)[np.asarray(mask, dtype=bool)].T  # (T, V)
    n_t = x.shape[0]
    out = np.zeros((n_t, n_components))
    if x.shape[1] == 0 or n_components == 0:
        return out
    t = np.linspace(-1, 1, n_t)
    poly = np.stack([np.ones(n_t), t, t**2], axis=1)
    x = x - poly @ np.linalg.lstsq(poly, x, rcond=None)[0]
    sd = x.std(axis=0)
    x = x[:, sd > 0] / sd[sd > 0]
    if x.shape[1] == 0:
        return out
    u, _, _ = np.linalg.svd(x, full_matrices=False)
    k = min(n_components, u.shape[1])
    u = u[:, :k]
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(k)])
    out[:, :k] = u * signs
    return out


def nuisance_masks(
    wm_prob: np.ndarray,
    csf_prob: np.ndarray,
    brain_mask: np.ndarray,
    *,
    wm_threshold: float = 0.9,
    csf_threshold: float = 0.9,
    min_voxels: int = 10,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """White-matter and CSF masks for tissue signals and CompCor, on the BOLD grid.

    White matter: probability >= ``wm_threshold``, eroded once (3-D cross) so
    that partial-volume grey matter does not leak in (as fMRIPrep does).  CSF:
    probability >= ``csf_threshold``, not eroded (at BOLD resolution the
    ventricles are a few voxels wide and erosion empties them).  Both are
    restricted to the brain mask.  If a mask keeps fewer than ``min_voxels``
    voxels, the threshold steps down by 0.1 (and erosion is dropped for WM)
    until it has enough, and a note says so.

    Parameters
    ----------
    wm_prob, csf_prob : numpy.ndarray, shape (X, Y, Z)
        Tissue probabilities resampled to the BOLD grid.
    brain_mask : numpy.ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    wm, csf : numpy.ndarray of bool
    notes : list of str
        Relaxations that were needed (empty normally).

    Raises
    ------
    ValueError
        If a mask is still smaller than ``min_voxels`` at threshold 0.5.
    """
    from scipy import ndimage

    brain = np.asarray(brain_mask, dtype=bool)
    notes: list[str] = []
    out = []
    for name, prob, thr, erode in (("white matter", wm_prob, wm_threshold, True),
                                   ("CSF", csf_prob, csf_threshold, False)):
        prob = np.asarray(prob, dtype=float)
        if prob.shape != brain.shape:
            raise ValueError(f"{name} probability has shape {prob.shape}, brain mask {brain.shape}")
        t, ero = float(thr), erode
        while True:
            m = (prob >= t) & brain
            if ero:
                m = ndimage.binary_erosion(m)
            if m.sum() >= min_voxels:
                break
            if ero:
                ero = False
            elif t > 0.5 + 1e-9:
                t = max(0.5, round(t - 0.1, 6))
            else:
                raise ValueError(
                    f"{name} mask has {int(m.sum())} voxels at probability >= 0.5 "
                    f"(need {min_voxels}): cannot compute its signal or CompCor"
                )
        if t != thr or ero != erode:
            notes.append(f"{name} mask relaxed to probability >= {t:.1f}"
                         f"{' without erosion' if erode and not ero else ''} ({int(m.sum())} voxels)")
        out.append(m)
    return out[0], out[1], notes


def compute_confounds(
    data: np.ndarray,
    motion_params: np.ndarray,
    *,
    brain_mask: np.ndarray,
    wm_mask: np.ndarray,
    csf_mask: np.ndarray,
    framewise_displacement: np.ndarray | None = None,
    std_dvars: np.ndarray | None = None,
    n_compcor: int = 5,
):
    """Native confound table (fMRIPrep column names, see the module docstring).

    Parameters
    ----------
    data : numpy.ndarray, shape (X, Y, Z, T)
        Realigned BOLD.
    motion_params : numpy.ndarray, shape (T, 6)
        Realignment parameters (mm, rad).
    brain_mask, wm_mask, csf_mask : numpy.ndarray of bool, shape (X, Y, Z)
        Masks on the BOLD grid.  For the tissue signals and CompCor, use
        *eroded* WM / CSF masks (e.g. probability >= 0.9 then one erosion) so
        that grey-matter signal does not leak in.
    framewise_displacement, std_dvars : numpy.ndarray, shape (T,), optional
        Added as columns when given.
    n_compcor : int
        Components per tissue.

    Returns
    -------
    pandas.DataFrame, shape (T, n_columns)
    """
    import pandas as pd

    arr = np.asarray(data)
    n_t = arr.shape[3]
    p = np.asarray(motion_params, dtype=float)
    if p.shape != (n_t, 6):
        raise ValueError(f"motion_params must have shape ({n_t}, 6), got {p.shape}")
    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(MOTION_COLUMNS):
        cols.update(expand(p[:, i], name))
    for name, m in (("white_matter", wm_mask), ("csf", csf_mask), ("global_signal", brain_mask)):
        m = np.asarray(m, dtype=bool)
        if m.shape != arr.shape[:3] or not m.any():
            raise ValueError(f"{name} mask must be non-empty with shape {arr.shape[:3]}")
        cols.update(expand(arr[m].mean(axis=0), name, demean=True))
    for prefix, m in (("w", wm_mask), ("c", csf_mask)):
        comps = tissue_compcor(arr, m, n_compcor)
        for i in range(n_compcor):
            cols[f"{prefix}_comp_cor_{i:02d}"] = comps[:, i]
    if framewise_displacement is not None:
        cols["framewise_displacement"] = np.asarray(framewise_displacement, dtype=float)
    if std_dvars is not None:
        cols["std_dvars"] = np.asarray(std_dvars, dtype=float)
    return pd.DataFrame(cols)


def select_confounds(
    table, strategy: str, *, n_compcor: int = 5, source: str | PathLike[str] | None = None
):
    """The regressors of a strategy from a confound table.

    Parameters
    ----------
    table : pandas.DataFrame
        Confound table with fMRIPrep column names (n/a at the first volume is
        set to 0).
    strategy : {"24P", "36P", "acompcor"}
    n_compcor : int
    source : path-like, optional
        File the table came from, named in errors.

    Raises
    ------
    InputError
        If columns the strategy needs are missing (lists them, names ``source``).
    """
    cols = strategy_columns(strategy, n_compcor)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise InputError(
            source,
            f"confounds for strategy {strategy!r}: missing columns {missing}",
        )
    return table[cols].astype(float).fillna(0.0)


def scrubbing_mask(
    fd: np.ndarray,
    *,
    fd_threshold: float = 0.5,
    before: int = 0,
    after: int = 0,
    min_segment: int = 0,
    std_dvars: np.ndarray | None = None,
    dvars_threshold: float | None = None,
) -> np.ndarray:
    """Volumes kept after motion censoring (True = kept).

    Parameters
    ----------
    fd : numpy.ndarray, shape (T,)
        Framewise displacement (mm); NaN counts as 0.
    fd_threshold : float
        Volumes with ``FD > fd_threshold`` are censored.
    before, after : int
        Also censor this many volumes before / after each (Power 2014: 1, 2).
    min_segment : int
        Censor runs of fewer than this many contiguous kept volumes (Power 2014: 5).
    std_dvars, dvars_threshold : optional
        Also censor volumes with standardised DVARS above the threshold.
    """
    fd = np.nan_to_num(np.asarray(fd, dtype=float))
    bad = fd > fd_threshold
    if std_dvars is not None and dvars_threshold is not None:
        bad |= np.nan_to_num(np.asarray(std_dvars, dtype=float)) > dvars_threshold
    out = bad.copy()
    for t in np.flatnonzero(bad):
        out[max(0, t - int(before)) : t + int(after) + 1] = True
    keep = ~out
    if min_segment > 1:
        t = 0
        while t < keep.size:
            if keep[t]:
                end = t
                while end < keep.size and keep[end]:
                    end += 1
                if end - t < min_segment:
                    keep[t:end] = False
                t = end
            else:
                t += 1
    return keep


@dataclass(frozen=True, eq=False)
class DenoisedSignals:
    """Result of :func:`denoise`.

    Attributes
    ----------
    signals : numpy.ndarray, shape (n_kept, N) or None
        Cleaned signals of the kept volumes (None when excluded).  Columns that
        were all-NaN on input (e.g. regions without coverage) stay NaN.
    sample_mask : numpy.ndarray of bool, shape (T,)
        Volumes kept.
    n_kept : int
    duration_s : float
        Kept data ``n_kept * tr``.
    excluded : bool
        True when less than ``min_duration_s`` was left.
    reason : str or None
        Why the run was excluded.
    strategy : str
        Strategy label, e.g. ``"36P+scrubbing"``.
    dof : float
        Rough residual degrees of freedom: kept volumes times the fraction of
        the spectrum kept by the band-pass, minus the number of regressors.  A
        small value (say < 15) means the denoised correlations are mostly noise
        (short runs with band-pass and 36 regressors; Bright & Murphy 2017).
    """

    signals: np.ndarray | None = field(repr=False)
    sample_mask: np.ndarray = field(repr=False)
    n_kept: int
    duration_s: float
    excluded: bool
    reason: str | None
    strategy: str
    dof: float = float("nan")


def denoise(
    signals: np.ndarray,
    confounds,
    *,
    tr: float,
    sample_mask: np.ndarray | None = None,
    high_pass: float | None = 0.01,
    low_pass: float | None = 0.08,
    detrend: bool = True,
    standardize: bool = True,
    min_duration_s: float = 240.0,
    strategy: str = "custom",
) -> DenoisedSignals:
    """Regress confounds, band-pass, detrend and standardise with :func:`nilearn.signal.clean`.

    Parameters
    ----------
    signals : numpy.ndarray, shape (T, N)
        Voxel or region time series (all-NaN columns are passed through as NaN).
    confounds : pandas.DataFrame or numpy.ndarray, shape (T, K), or None
    tr : float
        Repetition time (s).
    sample_mask : numpy.ndarray of bool, shape (T,), optional
        Volumes kept (see :func:`scrubbing_mask`); censored volumes are handled
        by ``clean`` (interpolated before filtering, then dropped).
    high_pass, low_pass : float or None
        Band (Hz); None disables that side.
    detrend, standardize : bool
    min_duration_s : float
        Less kept data than this excludes the run (no exception).
    strategy : str
        Label stored in the result.

    Returns
    -------
    DenoisedSignals
    """
    from nilearn.signal import clean

    x = np.asarray(signals, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"signals must be (T, N), got shape {x.shape}")
    n_t = x.shape[0]
    keep = np.ones(n_t, bool) if sample_mask is None else np.asarray(sample_mask, dtype=bool)
    if keep.shape != (n_t,):
        raise ValueError(f"sample_mask must have shape ({n_t},), got {keep.shape}")
    n_kept = int(keep.sum())
    duration = n_kept * float(tr)
    if duration < min_duration_s:
        reason = (
            f"only {n_kept} of {n_t} volumes ({duration:.0f} s) left after censoring; "
            f"at least {min_duration_s:.0f} s required"
        )
        return DenoisedSignals(None, keep, n_kept, duration, True, reason, strategy)
    conf = None if confounds is None else np.asarray(confounds, dtype=float)
    if conf is not None:
        if conf.shape[0] != n_t:
            raise ValueError(f"confounds have {conf.shape[0]} rows, signals {n_t}")
        conf = np.nan_to_num(conf)
        conf = conf[:, conf.std(axis=0) > 0] if conf.shape[1] else None
    nyq = 0.5 / float(tr)
    band = (min(low_pass, nyq) if low_pass else nyq) - (high_pass or 0.0)
    dof = n_kept * max(band, 0.0) / nyq - (0 if conf is None else conf.shape[1]) - int(detrend)
    finite = np.all(np.isfinite(x), axis=0)
    out = np.full((n_kept, x.shape[1]), np.nan)
    if finite.any():
        out[:, finite] = clean(
            x[:, finite],
            detrend=detrend,
            standardize="zscore_sample" if standardize else None,
            confounds=conf,
            sample_mask=None if keep.all() else np.flatnonzero(keep),
            filter="butterworth" if (high_pass or low_pass) else False,
            high_pass=high_pass,
            low_pass=low_pass,
            t_r=float(tr),
            # nilearn filters column by column unless asked for a copy; the copy filters
            # all columns in one scipy call, with identical output (0 difference on a
            # 160 x 6000 array, 4.3 s -> 0.15 s); x is already a copy here.
            butterworth__copy=True,
        )
    return DenoisedSignals(out, keep, n_kept, duration, False, None, strategy, float(dof))


def denoise_with_strategy(
    signals: np.ndarray,
    table,
    strategy: str,
    *,
    tr: float,
    scrubbing: bool = False,
    fd_threshold: float = 0.5,
    before: int = 0,
    after: int = 0,
    min_segment: int = 0,
    min_duration_s: float = 240.0,
    high_pass: float | None = 0.01,
    low_pass: float | None = 0.08,
    detrend: bool = True,
    standardize: bool = True,
    n_compcor: int = 5,
    sample_mask: np.ndarray | None = None,
    source: str | PathLike[str] | None = None,
) -> DenoisedSignals:
    """Select a strategy's confounds, censor (optional) and :func:`denoise` in one call.

    Parameters
    ----------
    signals : numpy.ndarray, shape (T, N)
    table : pandas.DataFrame
        Confound table (:func:`compute_confounds`, or an fMRIPrep TSV read with
        ``na_values="n/a"``); scrubbing needs its ``framewise_displacement``.
    strategy : {"24P", "36P", "acompcor"}
    scrubbing, fd_threshold, before, after, min_segment :
        See :func:`scrubbing_mask`.
    sample_mask : numpy.ndarray of bool, optional
        Volumes to keep in any case (e.g. from :func:`load_fmriprep_confounds`);
        combined with the scrubbing mask.
    min_duration_s, high_pass, low_pass, detrend, standardize, tr :
        See :func:`denoise`.
    source : path-like, optional
        File of ``table``, named in errors.
    """
    conf = select_confounds(table, strategy, n_compcor=n_compcor, source=source)
    keep = np.ones(len(conf), bool) if sample_mask is None else np.asarray(sample_mask, bool)
    label = strategy
    if scrubbing:
        if "framewise_displacement" not in table.columns:
            raise InputError(source, "scrubbing: missing column 'framewise_displacement'")
        keep = keep & scrubbing_mask(
            table["framewise_displacement"].to_numpy(float), fd_threshold=fd_threshold,
            before=before, after=after, min_segment=min_segment,
        )
        label += "+scrubbing"
    return denoise(
        signals, conf, tr=tr, sample_mask=keep, high_pass=high_pass, low_pass=low_pass,
        detrend=detrend, standardize=standardize, min_duration_s=min_duration_s, strategy=label,
    )


# --------------------------------------------------------------------------- fMRIPrep


def _nilearn_args(strategy: str, n_compcor: int) -> dict:
    if strategy == "24P":
        return {"strategy": ["motion"], "motion": "full"}
    if strategy == "36P":
        return {
            "strategy": ["motion", "wm_csf", "global_signal"],
            "motion": "full",
            "wm_csf": "full",
            "global_signal": "full",
        }
    if strategy == "acompcor":
        return {
            "strategy": ["motion", "high_pass", "compcor"],
            "motion": "derivatives",
            "compcor": "anat_separated",
            "n_compcor": int(n_compcor),
        }
    raise ValueError(f"unknown confound strategy {strategy!r}; expected one of {STRATEGIES}")


def _fmriprep_required(strategy: str, scrubbing: bool) -> list[str]:
    if strategy == "acompcor":
        cols = [f"{n}{s}" for n in MOTION_COLUMNS for s in ("", "_derivative1")]
    else:
        cols = strategy_columns(strategy)
    # nilearn's "scrub" reads both columns (std_dvars with an infinite threshold here)
    return cols + (["framewise_displacement", "std_dvars"] if scrubbing else [])


def fmriprep_confounds_path(bold_path: str | PathLike[str]) -> Path:
    """``<run>_desc-confounds_timeseries.tsv`` of an fMRIPrep BOLD file (same folder).

    fMRIPrep names the confounds of ``sub-X_..._run-1_space-S_res-2_desc-preproc_bold``
    ``sub-X_..._run-1_desc-confounds_timeseries.tsv``: the ``space``, ``res``,
    ``den`` and ``desc`` entities are dropped.
    """
    bold_path = Path(bold_path)
    stem = bold_path.name.split(".nii")[0]
    for entity in ("_space-", "_res-", "_den-", "_desc-"):
        stem = stem.split(entity)[0]
    return bold_path.with_name(f"{stem}_desc-confounds_timeseries.tsv")


def load_fmriprep_confounds(
    bold_path: str | PathLike[str],
    strategy: str,
    *,
    scrubbing: bool = False,
    fd_threshold: float = 0.5,
    std_dvars_threshold: float | None = None,
    min_segment: int = 5,
    n_compcor: int = 5,
):
    """Confounds and sample mask of a strategy from fMRIPrep outputs.

    Uses :func:`nilearn.interfaces.fmriprep.load_confounds`, which finds
    ``<bold stem>_desc-confounds_timeseries.tsv`` (and, for ``acompcor``, its
    ``.json`` holding the CompCor masks) next to an fMRIPrep
    ``*_desc-preproc_bold.nii.gz``.  Strategy mapping: ``24P`` = motion "full";
    ``36P`` = motion, wm_csf and global_signal "full"; ``acompcor`` = motion
    "derivatives" + compcor "anat_separated" with ``n_compcor`` per tissue +
    fMRIPrep's discrete-cosine ``cosine_XX`` regressors ("high_pass"; nilearn
    requires them with CompCor, because fMRIPrep computes CompCor on
    high-pass filtered data).
    Scrubbing adds nilearn's "scrub" (FD > ``fd_threshold``, and standardised
    DVARS > ``std_dvars_threshold`` if given; segments shorter than
    ``min_segment`` removed) and returns its sample mask; nilearn also drops
    fMRIPrep's ``non_steady_state_outlier`` volumes only if asked, which this
    function does not do (remove dummies before).

    Parameters
    ----------
    bold_path : path-like
        fMRIPrep preprocessed BOLD (the image itself need not be read).
    strategy : {"24P", "36P", "acompcor"}
    scrubbing, fd_threshold, std_dvars_threshold, min_segment, n_compcor :
        See the module docstring.

    Returns
    -------
    confounds : pandas.DataFrame, shape (T, K)
    sample_mask : numpy.ndarray of bool, shape (T,)
        Volumes kept (all True without scrubbing).

    Raises
    ------
    InputError
        Naming the confounds TSV when it is missing or lacks required columns,
        or the JSON when CompCor metadata is missing.
    """
    import pandas as pd
    from nilearn.interfaces.fmriprep import load_confounds

    bold_path = Path(bold_path)
    tsv = fmriprep_confounds_path(bold_path)
    if not tsv.is_file():
        raise InputError(tsv, "fMRIPrep confounds file not found next to the BOLD")
    header = pd.read_csv(tsv, sep="\t", nrows=1)
    required = _fmriprep_required(strategy, scrubbing)
    if strategy == "acompcor":
        # fMRIPrep names anatomical CompCor a_comp_cor_XX; WM / CSF come from the JSON
        required += [f"a_comp_cor_{i:02d}" for i in range(n_compcor)]
    missing = [c for c in required if c not in header.columns]
    if missing:
        raise InputError(tsv, f"confounds for strategy {strategy!r}: missing columns {missing}")
    args = _nilearn_args(strategy, n_compcor)
    if scrubbing:
        args["strategy"] = [*args["strategy"], "scrub"]
        args.update(
            fd_threshold=float(fd_threshold),
            std_dvars_threshold=float(std_dvars_threshold)
            if std_dvars_threshold is not None else float("inf"),
            scrub=int(min_segment),
        )
    try:
        conf, sample_mask = load_confounds(str(bold_path), **args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        where = tsv.with_suffix(".json") if strategy == "acompcor" else tsv
        raise InputError(where, f"nilearn could not load strategy {strategy!r}: {exc}") from exc
    n_t = len(conf)
    keep = np.ones(n_t, bool)
    if sample_mask is not None:
        keep[:] = False
        keep[np.asarray(sample_mask, dtype=int)] = True
    return conf, keep


@dataclass(frozen=True, eq=False)
class FmriprepConfoundSet:
    """What :func:`fmriprep_confound_set` returns: one fMRIPrep run, ready for :func:`denoise`.

    Attributes
    ----------
    table : pandas.DataFrame, shape (T, K_all)
        fMRIPrep's whole confound table (``n/a`` read as NaN), first ``n_dummy``
        rows removed.
    regressors : pandas.DataFrame, shape (T, K)
        The strategy's regressors as selected by nilearn's ``load_confounds``.
    sample_mask : numpy.ndarray of bool, shape (T,)
        Volumes kept: nilearn's scrubbing and fMRIPrep's non-steady-state
        volumes, plus ``before`` / ``after`` neighbours of high-FD volumes.
    strategy : str
        Label, e.g. ``"acompcor+scrubbing"``.
    source : pathlib.Path
        The confounds TSV.
    notes : list of str
    """

    table: object = field(repr=False)
    regressors: object = field(repr=False)
    sample_mask: np.ndarray = field(repr=False)
    strategy: str
    source: Path
    notes: list[str] = field(default_factory=list)


def fmriprep_confound_set(
    bold_path: str | PathLike[str],
    strategy: str,
    *,
    scrubbing: bool = False,
    fd_threshold: float = 0.5,
    before: int = 0,
    after: int = 0,
    min_segment: int = 5,
    n_compcor: int = 5,
    n_dummy: int = 0,
) -> FmriprepConfoundSet:
    """Regressors and sample mask of an fMRIPrep run (fMRIPrep input mode of the fMRI stage).

    :func:`load_fmriprep_confounds` (nilearn's ``load_confounds``, same strategy
    names as the native mode) gives the regressors and, with ``scrubbing``, the
    sample mask (FD > ``fd_threshold``, segments shorter than ``min_segment``
    removed).  nilearn has no ``before`` / ``after`` option: when either is set,
    :func:`scrubbing_mask` on the table's ``framewise_displacement`` is
    combined with nilearn's mask.  Volumes fMRIPrep flags in
    ``non_steady_state_outlier_XX`` columns are censored by nilearn (a note
    says how many).  The first ``n_dummy`` volumes are then removed from
    every output (``func.dummy_volumes``; the image must be cut the same way).

    Raises
    ------
    InputError
        Naming the confounds TSV (or its JSON for ``acompcor``) when it is
        missing, lacks columns, or has fewer than ``n_dummy + 1`` rows.
    """
    import pandas as pd

    regressors, keep = load_fmriprep_confounds(
        bold_path, strategy, scrubbing=scrubbing, fd_threshold=fd_threshold,
        min_segment=min_segment, n_compcor=n_compcor,
    )
    tsv = fmriprep_confounds_path(bold_path)
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], keep_default_na=False)
    notes: list[str] = []
    if len(table) != len(regressors):
        raise InputError(tsv, f"{len(table)} rows, but nilearn returned {len(regressors)}")
    nss = [c for c in table.columns if c.startswith("non_steady_state_outlier")]
    if nss:
        n_nss = int((table[nss].fillna(0).to_numpy() != 0).any(axis=1).sum())
        notes.append(f"{n_nss} volume(s) flagged non-steady-state by fMRIPrep are censored")
    label = strategy
    if scrubbing:
        label += "+scrubbing"
        if before or after:
            keep = keep & scrubbing_mask(
                table["framewise_displacement"].to_numpy(float), fd_threshold=fd_threshold,
                before=before, after=after, min_segment=min_segment,
            )
    n = int(n_dummy)
    if n >= len(table):
        raise InputError(tsv, f"{len(table)} volumes, but func.dummy_volumes removes {n}")
    table = table.iloc[n:].reset_index(drop=True)
    regressors = regressors.iloc[n:].reset_index(drop=True)
    return FmriprepConfoundSet(table, regressors, keep[n:], label, tsv, notes)
