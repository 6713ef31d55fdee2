"""QC figures: slice mosaics with mask outlines and overlays.

Every function returns a matplotlib ``Figure`` (Agg backend, no display needed);
the caller saves it through the derivatives writer. Images are shown in RAS
orientation (left of the subject on the left of each panel, "neurological").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Overlay",
    "bundle_colours",
    "mosaic",
    "plot_motion",
    "plot_nbs_power",
    "plot_tract_profiles",
    "save_figure",
]

#: Salt of matplotlib's SVG element ids: fixed so the same figure gives the same bytes.
SVG_HASHSALT = "msmri"


def save_figure(fig, path, *, close: bool = True) -> str:
    """Save a matplotlib figure reproducibly (no date stamp, fixed SVG ids); return the path.

    Matplotlib by default writes the creation date into SVG / PDF / PNG metadata
    and random SVG element ids, so re-running a job would change every figure's
    bytes; with these settings identical inputs give identical files, which the
    crash-recovery and SLURM tests compare by checksum.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    path = str(path)
    fmt = path.rsplit(".", 1)[-1].lower()
    meta = {"Date": None} if fmt in ("svg", "pdf") else {}
    if fmt == "png":
        meta = {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}):
        fig.savefig(path, bbox_inches="tight", metadata=meta)
    if close:
        plt.close(fig)
    return path


@dataclass(frozen=True)
class Overlay:
    """A mask drawn as an outline (or a filled map with ``alpha``) on the background."""

    data: np.ndarray
    color: str
    label: str
    filled: bool = False
    alpha: float = 0.5


def _canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt)


def _canonical_affine(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Voxel-to-world affine of the array :func:`_canonical` returns."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return affine @ nib.orientations.inv_ornt_aff(ornt, tuple(shape[:3]))


def _slices(mask: np.ndarray, axis: int, n: int) -> list[int]:
    extent = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    if extent.size == 0:
        extent = np.arange(mask.shape[axis])
    lo, hi = extent[0], extent[-1]
    return [round(v) for v in np.linspace(lo + 0.15 * (hi - lo), hi - 0.15 * (hi - lo), n)]


def mosaic(
    background: np.ndarray,
    affine: np.ndarray,
    overlays: Sequence[Overlay] = (),
    *,
    title: str = "",
    n_slices: int = 6,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    focus: np.ndarray | None = None,
):
    """Rows of slices (one row per view) with overlays; returns a Figure.

    Parameters
    ----------
    background, affine : 3-D array (or 4-D with 3 RGB channels in 0..1, e.g. colour
        FA) and its voxel-to-world affine
    overlays : masks or maps on the same grid
    focus : boolean mask deciding which slices to show (default: background > 0)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    bg = _canonical(np.asarray(background, dtype=np.float32), affine)
    rgb = bg.ndim == 4 and bg.shape[3] == 3
    if rgb:  # voxel-axis colours are kept; only the slice layout follows RAS
        bg = np.clip(bg, 0, 1)
    ovs = [(_canonical(np.asarray(o.data, dtype=np.float32), affine), o) for o in overlays]
    if focus is None:
        focus = np.asarray(background).any(axis=3) if rgb else np.asarray(background) > 0
    fmask = _canonical(np.asarray(focus), affine)
    # voxel sizes along the canonical (R, A, S) array axes: each panel is drawn with its
    # true aspect ratio (a 0.7 x 0.7 x 3 mm clinical scan is not squashed), and each
    # slice is labelled with its world coordinate in mm
    can_aff = _canonical_affine(np.asarray(background).shape, affine)
    zooms = np.sqrt((can_aff[:3, :3] ** 2).sum(axis=0))
    centre = (np.asarray(bg.shape[:3]) - 1) / 2.0
    vmax = 1.0 if rgb else (float(np.percentile(bg[fmask], 99.5)) if fmask.any() else float(bg.max() or 1))
    axis_of = {"sagittal": 0, "coronal": 1, "axial": 2}
    fig, axes = plt.subplots(
        len(views), n_slices, figsize=(1.9 * n_slices, 2.0 * len(views)), squeeze=False
    )
    for r, view in enumerate(views):
        ax_i = axis_of[view]
        for c, idx in enumerate(_slices(fmask, ax_i, n_slices)):
            ax = axes[r, c]
            h_ax, v_ax = (a for a in range(3) if a != ax_i)
            aspect = float(zooms[v_ax] / zooms[h_ax])
            plane = np.take(bg, idx, axis=ax_i)
            if rgb:
                ax.imshow(np.transpose(plane, (1, 0, 2)), origin="lower", aspect=aspect)
            else:
                ax.imshow(plane.T, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspect)
            for data, ov in ovs:
                plane = np.take(data, idx, axis=ax_i).T
                if ov.filled:
                    masked = np.ma.masked_where(plane <= 0, plane)
                    ax.imshow(masked, cmap=_single(ov.color), origin="lower", alpha=ov.alpha)
                elif plane.any():
                    ax.contour(plane > 0.5, levels=[0.5], colors=[ov.color], linewidths=0.7)
            ax.set_axis_off()
            voxel = centre.copy()
            voxel[ax_i] = idx
            world = float((can_aff[:3, :3] @ voxel + can_aff[:3, 3])[ax_i])
            ax.set_title(f"{'xyz'[ax_i]} = {world:.0f} mm", fontsize=6)
    if overlays:
        from matplotlib.patches import Patch

        fig.legend(
            handles=[Patch(color=o.color, label=o.label) for o in overlays],
            loc="lower center", ncol=len(overlays), fontsize=7, frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.02, hspace=0.15, bottom=0.08)
    return fig


def _single(color: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([color])


def plot_motion(
    params: np.ndarray,
    fd: np.ndarray,
    *,
    x: np.ndarray | None = None,
    xlabel: str = "volume",
    fd_threshold: float | None = None,
    dvars_raw: np.ndarray | None = None,
    dvars: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
    extra_label: str = "",
    excluded: np.ndarray | None = None,
    excluded_label: str = "excluded",
    title: str | None = None,
):
    """Head motion on one time axis: translations, rotations, framewise displacement and,
    when given, DVARS of the raw (not realigned) data next to the realigned one (a spike
    in the estimates with no spike in the raw DVARS is an artefact of the estimate), a
    further panel ``extra`` (e.g. eddy-current parameters) and the excluded or censored
    volumes shaded in every panel.

    ``params`` is (T, 6): tx, ty, tz (mm), rx, ry, rz (rad, drawn in degrees).
    """
    import matplotlib.pyplot as plt

    params = np.asarray(params, dtype=float)
    n = params.shape[0]
    x = np.arange(n, dtype=float) if x is None else np.asarray(x, dtype=float)
    step = float(np.median(np.diff(x))) if n > 1 else 1.0
    rows = ["trans", "rot", "fd"] + (["dvars"] if dvars_raw is not None else []) + (
        ["extra"] if extra else [])
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.5 * len(rows) + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    ax = dict(zip(rows, axes, strict=True))
    for k, name in enumerate("xyz"):
        ax["trans"].plot(x, params[:, k], lw=1, label=name)
        ax["rot"].plot(x, np.degrees(params[:, 3 + k]), lw=1, label=name)
    ax["trans"].set_ylabel("translation\n(mm)")
    ax["rot"].set_ylabel("rotation\n(deg)")
    ax["trans"].legend(loc="upper left", ncol=3, fontsize=7, frameon=False)
    ax["fd"].plot(x, fd, color="k", lw=1)
    ax["fd"].set_ylabel("FD (mm)")
    if fd_threshold is not None:
        ax["fd"].axhline(fd_threshold, color="tab:red", ls="--", lw=1, label=f"{fd_threshold:g} mm")
        ax["fd"].legend(loc="upper right", fontsize=7, frameon=False)
    if dvars_raw is not None:
        ax["dvars"].plot(x[1:], np.asarray(dvars_raw, float)[1:], color="tab:gray", lw=1,
                         label="raw data")
        if dvars is not None:
            ax["dvars"].plot(x[1:], np.asarray(dvars, float)[1:], color="tab:blue", lw=1,
                             label="realigned")
        ax["dvars"].set_ylabel("DVARS")
        ax["dvars"].legend(loc="upper right", ncol=2, fontsize=7, frameon=False)
    if extra:
        for name, values in extra.items():
            ax["extra"].plot(x, values, lw=1, label=name)
        ax["extra"].set_ylabel(extra_label)
        ax["extra"].legend(loc="upper left", ncol=3, fontsize=7, frameon=False)
    if excluded is not None:
        bad = np.flatnonzero(np.asarray(excluded, dtype=bool))
        for a in axes:
            for k in bad:
                a.axvspan(x[k] - step / 2, x[k] + step / 2, color="tab:red", alpha=0.2, lw=0)
        if bad.size:
            axes[0].plot([], [], color="tab:red", alpha=0.4, lw=6,
                         label=f"{excluded_label} ({bad.size})")
            axes[0].legend(loc="upper left", ncol=4, fontsize=7, frameon=False)
    axes[-1].set_xlabel(xlabel)
    axes[-1].set_xlim(x[0] - step / 2, x[-1] + step / 2)
    for a in axes:
        a.yaxis.set_label_coords(-0.07, 0.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def bundle_colours(n: int) -> list:
    """One colour per bundle (matplotlib's tab10, cycled), shared by maps and profiles."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_tract_profiles(profiles, metrics: Sequence[str], units: dict[str, str]):
    """One panel per metric, one line per bundle along its nodes; lesion samples dotted.

    ``profiles``: the long tract-profile table (``bundle, metric, node, value,
    lesion_masked``) of :mod:`pipeline.tract`.
    """
    import matplotlib.pyplot as plt

    bundles = sorted(profiles["bundle"].unique())
    colour = dict(zip(bundles, bundle_colours(len(bundles)), strict=True))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.5 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        sel = profiles[profiles["metric"] == metric]
        for name, grp in sel.groupby("bundle", sort=True):
            masked = grp["lesion_masked"].astype(bool)
            ax.plot(grp.loc[~masked, "node"], grp.loc[~masked, "value"], color=colour[name],
                    label=name)
            ax.plot(grp.loc[masked, "node"], grp.loc[masked, "value"], color=colour[name],
                    ls=":", lw=1)
        ax.set_xlabel("node")
        ax.set_ylabel(units.get(metric, metric))
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("tract profiles (dotted: lesion samples excluded)")
    return fig


def plot_nbs_power(table, *, threshold_type: str, title: str):
    """Detection probability and recall against the number of subjects, one line per effect
    and one column of panels per primary threshold, with 95 % Monte Carlo bars.

    ``table``: :attr:`pipeline.stats.nbs_power.PowerResult.table`.
    """
    import matplotlib.pyplot as plt

    thresholds = sorted(table["threshold"].unique())
    fig, axes = plt.subplots(2, len(thresholds), figsize=(4.2 * len(thresholds), 6.4),
                             squeeze=False, sharex=True, sharey=True)
    for col, thr in enumerate(thresholds):
        for eff, g in table[table["threshold"] == thr].groupby("effect", sort=True):
            g = g.sort_values("n_subjects")
            for row, name in enumerate(("detection", "recall")):
                axes[row, col].errorbar(g["n_subjects"], g[name], yerr=1.96 * g[f"{name}_se"],
                                        marker="o", ms=3, capsize=2, label=f"d = {eff:g}")
        for row, name in enumerate(("detection probability", "recall of planted edges")):
            ax = axes[row, col]
            ax.axhline(0.8, color="0.6", lw=0.8, ls="--")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(name)
            if row == 1:
                ax.set_xlabel("subjects (paired sessions)")
        axes[0, col].set_title(f"primary threshold {threshold_type} = {thr:g}", fontsize=9)
    axes[0, -1].legend(fontsize=7, title="effect (d_z)", title_fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
