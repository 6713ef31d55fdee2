"""Quality-control figures for resting-state fMRI (matplotlib; imported lazily).

* :func:`plot_carpet`: carpet plot (Power 2017) of voxel time series inside a
  mask, z-scored per voxel, optionally with the FD trace above; call it on the
  data before and after denoising.
* :func:`plot_fd`: framewise displacement trace with the censoring threshold
  and the censored volumes.
* :func:`plot_connectome_matrix`: a connectivity matrix ordered by network.

Every function returns a :class:`matplotlib.figure.Figure` (Agg backend, not
shown); the caller saves and closes it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_carpet", "plot_connectome_matrix", "plot_fd"]


def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(**kw)


def plot_carpet(
    data: np.ndarray,
    mask: np.ndarray,
    *,
    tr: float,
    fd: np.ndarray | None = None,
    title: str | None = None,
    max_voxels: int = 4000,
    vlim: float = 2.0,
):
    """Carpet plot of a 4-D series (voxels x time), voxels z-scored and detrended.

    Parameters
    ----------
    data : numpy.ndarray, shape (X, Y, Z, T) or (T, V)
        4-D image data, or an already masked (T, V) matrix (then ``mask`` is ignored).
    mask : numpy.ndarray of bool, shape (X, Y, Z) or None
    tr : float
        Repetition time (s) for the time axis.
    fd : numpy.ndarray, shape (T,), optional
        Plotted above the carpet.
    max_voxels : int
        Voxels are evenly subsampled to at most this many rows.
    vlim : float
        Colour range (z-score).
    """
    arr = np.asarray(data, dtype=float)
    x = arr if arr.ndim == 2 else arr[np.asarray(mask, dtype=bool)].T  # (T, V)
    n_t = x.shape[0]
    t = np.arange(n_t)
    coef = np.polyfit(t, x, 1)
    x = x - (np.outer(t, coef[0]) + coef[1])
    sd = x.std(axis=0)
    x = x[:, sd > 0] / sd[sd > 0]
    if x.shape[1] > max_voxels:
        x = x[:, np.linspace(0, x.shape[1] - 1, max_voxels).astype(int)]
    fig = _figure(figsize=(8, 5 if fd is not None else 4))
    if fd is not None:
        gs = fig.add_gridspec(2, 1, height_ratios=(1, 4), hspace=0.05)
        ax_fd = fig.add_subplot(gs[0])
        ax_fd.plot(np.arange(n_t) * tr, np.asarray(fd, float), color="tab:red", lw=1)
        ax_fd.set_ylabel("FD (mm)")
        ax_fd.set_xlim(0, (n_t - 1) * tr)
        ax_fd.tick_params(labelbottom=False)
        ax = fig.add_subplot(gs[1], sharex=ax_fd)
    else:
        ax = fig.add_subplot(1, 1, 1)
    ax.imshow(
        x.T, aspect="auto", cmap="gray", vmin=-vlim, vmax=vlim, interpolation="nearest",
        extent=(0, (n_t - 1) * tr, x.shape[1], 0),
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("voxels")
    if title:
        fig.suptitle(title)
    return fig


def plot_fd(
    fd: np.ndarray,
    *,
    tr: float,
    threshold: float | None = 0.5,
    sample_mask: np.ndarray | None = None,
    title: str | None = None,
):
    """Framewise displacement over time, with the threshold and censored volumes shaded."""
    fd = np.asarray(fd, dtype=float)
    t = np.arange(fd.size) * tr
    fig = _figure(figsize=(8, 2.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, fd, color="k", lw=1)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"{threshold:g} mm")
        ax.legend(loc="upper right", frameon=False)
    if sample_mask is not None:
        for k in np.flatnonzero(~np.asarray(sample_mask, dtype=bool)):
            ax.axvspan(t[k] - tr / 2, t[k] + tr / 2, color="tab:red", alpha=0.2, lw=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("FD (mm)")
    ax.set_xlim(t[0], t[-1] if t.size > 1 else 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_connectome_matrix(
    matrix,
    *,
    networks=None,
    title: str | None = None,
    vlim: float | None = None,
    cmap: str = "RdBu_r",
):
    """Connectivity matrix (pandas DataFrame or array), optionally sorted by network.

    NaN rows / columns (regions without coverage) are shown in grey.
    """
    m = np.asarray(matrix.to_numpy() if hasattr(matrix, "to_numpy") else matrix, dtype=float)
    order = np.arange(m.shape[0])
    bounds: list[tuple[int, str]] = []
    if networks is not None:
        nets = np.asarray(list(networks), dtype=str)
        order = np.argsort(nets, kind="stable")
        sorted_nets = nets[order]
        bounds = [(i, n) for i, n in enumerate(sorted_nets) if i == 0 or n != sorted_nets[i - 1]]
    m = m[np.ix_(order, order)].copy()
    np.fill_diagonal(m, np.nan)
    if vlim is None:
        vlim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    fig = _figure(figsize=(6, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("0.8")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-vlim, vmax=vlim,
                   interpolation="nearest")
    for i, _ in bounds[1:]:
        ax.axhline(i - 0.5, color="k", lw=0.5)
        ax.axvline(i - 0.5, color="k", lw=0.5)
    if bounds:
        ticks = [
            (a + b) / 2
            for (a, _), (b, _) in zip(bounds, [*bounds[1:], (m.shape[0], "")], strict=True)
        ]
        ax.set_yticks(ticks, [n for _, n in bounds], fontsize=6)
        ax.set_xticks([])
    fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    return fig
