"""Which volumes of a DWI series go into the tensor fit.

Two decisions live here:

* :func:`derived_volumes` / :func:`drop_derived_volumes` find volumes that are not
  acquisitions but images the scanner computed from them (isotropic / trace-weighted
  image, ADC map) and that a converter kept in the series, as dcm2niix leaves them
  out. They are stored with a zero (or meaningless) gradient vector and either the
  b-value of the shell (b > 0, zero vector) or b = 0. The second kind looks like a
  b = 0 volume in the gradient files and is only recognisable by its intensity.
* :func:`tensor_volumes` chooses the b = 0 volumes and the shells a diffusion tensor
  is fitted to (``dwi.tensor_bmax`` / ``dwi.tensor_shells``): the tensor describes
  the signal only at low b (no kurtosis term), so shells above ``bmax`` are left out.

Volume indices are 0-based everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.dwi.gradtable import DwiGradients
from pipeline.gradients import count_unique_directions

__all__ = [
    "BMAX_SLACK",
    "DERIVED_B0_RATIO",
    "DerivedVolume",
    "KeptVolumes",
    "TensorSelection",
    "derived_volumes",
    "drop_derived_volumes",
    "tensor_volumes",
]

#: A "b = 0" volume whose median brain signal is below this fraction of the brightest
#: b = 0 volume's is a derived image. Measured (median inside the head mask):
#: the Philips trace image of ``philips-dti32/dwi_with-trace`` is 0.393 of the b = 0
#: (its 32 b = 1000 volumes: 0.384-0.405); a trace image built from the tiny phantom
#: series (geometric mean of its b = 1000 volumes, which the Philips trace matches to
#: 1.6 % in brain) is 0.399-0.401 (b = 1000 volumes 0.403-0.417), while the phantom's
#: three true b = 0 volumes are 0.999-1.000 of the brightest (real series drift by a few
#: per cent).
#: 0.7 leaves a factor 1.8 to the trace at b = 1000 and 30 % to a true b = 0; it catches
#: trace images down to b ~ 380 s/mm^2 (brain median ADC ~ 0.94e-3 mm^2/s measured on
#: the real series: exp(-380 x 0.94e-3) = 0.7).
DERIVED_B0_RATIO = 0.7

#: Shells whose b-value exceeds ``bmax`` by at most this fraction still count as
#: ``b <= bmax``: scanners report b-values a few s/mm^2 off the nominal (999.99996 and
#: 1000.000034 on the Philips series, 1005 after gradient rounding on others).
BMAX_SLACK = 0.02

#: Largest deviation of a b > 0 volume's gradient-vector norm from 1 that is accepted
#: as a direction (as :func:`pipeline.validation.validate_dwi`'s default).
VECTOR_TOLERANCE = 0.1


def _fmt_b(b: float) -> str:
    return f"{b:.0f}"


def _volumes_word(n: int) -> str:
    return f"{n} volume" + ("" if n == 1 else "s")


# ======================================================================= derived volumes
@dataclass(frozen=True)
class DerivedVolume:
    """A volume recognised as a scanner-derived image.

    Attributes
    ----------
    index : int
        0-based volume index in the series.
    reason : str
        Why, starting with the volume's gradient entry ("has b = 0 and a zero
        vector but ..."); it names the kind of image (trace/isotropic, ADC).
    """

    index: int
    reason: str

    @property
    def warning(self) -> str:
        """Human-readable warning naming the volume."""
        return f"volume {self.index} (0-based) {self.reason}, left out (as dcm2niix does)"


@dataclass(frozen=True, eq=False)
class KeptVolumes:
    """The volumes kept after leaving the derived ones out.

    Attributes
    ----------
    kept : ndarray (K,) int
        0-based indices of the acquired volumes, ascending.
    derived : tuple of DerivedVolume
    warnings : tuple of str
        One per derived volume (:attr:`DerivedVolume.warning`).
    """

    kept: np.ndarray
    derived: tuple[DerivedVolume, ...]
    warnings: tuple[str, ...] = field(default=())

    def select(self, data: np.ndarray, gradients: DwiGradients) -> tuple[np.ndarray, DwiGradients]:
        """The series and gradients without the derived volumes (data unchanged if none)."""
        if not self.derived:
            return data, gradients
        return data[..., self.kept], gradients.select(self.kept)


def _head_mask(volume: np.ndarray) -> np.ndarray:
    """Otsu's threshold of ``volume``, largest connected component, holes filled."""
    from dipy.segment.threshold import otsu
    from scipy import ndimage

    vol = np.asarray(volume, dtype=np.float32)
    fg = vol > otsu(vol)
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def derived_volumes(
    data: np.ndarray,
    gradients: DwiGradients,
    *,
    mask: np.ndarray | None = None,
    ratio: float = DERIVED_B0_RATIO,
    vector_tolerance: float = VECTOR_TOLERANCE,
) -> list[DerivedVolume]:
    """Volumes of a DWI series that are scanner-derived images, not acquisitions.

    Rules (a volume is reported once, with the first rule that applies):

    1. ``b > b0_threshold`` and a zero gradient vector (norm < 1e-6): a trace /
       isotropic or ADC image stored with the shell's b-value.
    2. ``b > b0_threshold`` and a vector whose norm differs from 1 by more than
       ``vector_tolerance``: not one diffusion direction.
    3. A b = 0 volume whose median signal inside the brain is below ``ratio`` times
       that of the brightest b = 0 volume (the b = 0 volume with the highest brain
       median): a trace image at b = 1000 has ~ exp(-b MD) ~ 0.4 of the b = 0 signal
       in brain, a true b = 0 drifts by a few per cent (see :data:`DERIVED_B0_RATIO`
       for the measurements behind the default 0.7). With one true b = 0 plus a trace
       "b = 0" the reference is the true one, because it is the brighter.
    4. When even the brightest b = 0 volume is not brighter (brain median) than the
       brightest diffusion-weighted volume, there is no true b = 0 in the series: a
       genuine b = 0 outshines every diffusion-weighted volume in brain, whereas a
       trace image lies within their range (measured on the real series: trace 0.393,
       b = 1000 volumes 0.384-0.405 of the b = 0). Every b = 0 volume is then reported.

    Diffusion-weighted volumes for rule 4 are those with ``b > b0_threshold`` and a
    unit vector. Rules 3-4 need the image; rules 1-2 only the gradient table.

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
        The DWI series (any real dtype).
    gradients : DwiGradients
        Its gradient table (N volumes).
    mask : ndarray (X, Y, Z) bool, optional
        Brain mask for the intensity rules. Default: Otsu's threshold of the b = 0
        volume with the highest mean over the image (the true b = 0 when a trace image
        is stored as b = 0: the trace is darker everywhere in the head), largest
        connected component, holes filled; it holds the head, and the rules use
        medians, so scalp in the mask does not matter.
    ratio : float
        Threshold of rule 3, in (0, 1).
    vector_tolerance : float
        Tolerance of rule 2.

    Returns
    -------
    list of DerivedVolume
        Sorted by index; empty for a clean series.

    Raises
    ------
    ValueError
        Shapes that do not match, a ratio outside (0, 1), or an empty mask.
    """
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[3] != gradients.n_volumes:
        raise ValueError(
            f"expected a 4D series with {gradients.n_volumes} volumes (the gradient table), "
            f"got shape {data.shape}"
        )
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
    bvals = gradients.bvals
    norms = np.linalg.norm(gradients.bvecs, axis=1)
    b0 = np.flatnonzero(gradients.b0_mask)
    found: dict[int, str] = {}
    for k in np.flatnonzero(gradients.dw_mask):
        if norms[k] < 1e-6:
            found[int(k)] = (
                f"has b = {_fmt_b(bvals[k])} but a zero gradient vector: a scanner-derived "
                "trace/isotropic (or ADC) image"
            )
        elif abs(norms[k] - 1.0) > vector_tolerance:
            found[int(k)] = (
                f"has b = {_fmt_b(bvals[k])} but a gradient vector of norm {norms[k]:.3g} "
                "(not a unit direction): not an acquisition along one direction, most likely "
                "a scanner-derived image"
            )
    if b0.size:
        if mask is None:
            means = [float(np.mean(data[..., k], dtype=np.float64)) for k in b0]
            mask = _head_mask(data[..., b0[int(np.argmax(means))]])
        else:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != data.shape[:3]:
                raise ValueError(
                    f"mask shape {mask.shape} does not match the data {data.shape[:3]}"
                )
        if not mask.any():
            raise ValueError("the brain mask has no voxels")
        med = np.array(
            [float(np.median(data[..., k][mask].astype(np.float32))) for k in range(data.shape[3])]
        )
        dw = np.array([k for k in np.flatnonzero(gradients.dw_mask) if k not in found], dtype=int)
        ref = int(b0[np.argmax(med[b0])])
        if med[ref] <= 0:
            raise ValueError("the b = 0 volumes have no signal inside the brain mask")
        dw_text = ""
        if dw.size:
            lo, hi = med[dw].min() / med[ref], med[dw].max() / med[ref]
            dw_text = f"; diffusion-weighted volumes {lo:.2f}-{hi:.2f}"

        def vector_text(k: int) -> str:
            return "a zero vector" if norms[k] < 1e-6 else f"a vector of norm {norms[k]:.3g}"

        if dw.size and med[ref] <= med[dw].max():
            for k in b0:
                found[int(k)] = (
                    f"has b = 0 and {vector_text(k)} but its brain signal (median "
                    f"{med[k]:.4g}) is not above that of the diffusion-weighted volumes (up "
                    f"to {med[dw].max():.4g}): a scanner-derived trace/isotropic image; the "
                    "series has no true b = 0 volume"
                )
        else:
            for k in b0:
                r = med[k] / med[ref]
                if r < ratio:
                    found[int(k)] = (
                        f"has b = 0 and {vector_text(k)} but its brain signal is {r:.2f} of "
                        f"the brightest b = 0 volume (volume {ref}{dw_text}; threshold {ratio:g}): a "
                        "scanner-derived trace/isotropic image"
                    )
        # rules 1-2 volumes: add how bright they are, as evidence
        for k in found:
            if not gradients.b0_mask[k]:
                found[k] += f" (brain signal {med[k] / med[ref]:.2f} of the brightest b = 0)"
    return [DerivedVolume(k, found[k]) for k in sorted(found)]


def drop_derived_volumes(
    data: np.ndarray,
    gradients: DwiGradients,
    *,
    mask: np.ndarray | None = None,
    ratio: float = DERIVED_B0_RATIO,
    vector_tolerance: float = VECTOR_TOLERANCE,
) -> KeptVolumes:
    """Indices of the acquired volumes and a warning per derived one.

    Runs :func:`derived_volumes` (same parameters); use :meth:`KeptVolumes.select`
    for the reduced series and gradients.
    """
    derived = derived_volumes(
        data, gradients, mask=mask, ratio=ratio, vector_tolerance=vector_tolerance
    )
    bad = {d.index for d in derived}
    kept = np.array([k for k in range(gradients.n_volumes) if k not in bad], dtype=int)
    kept.setflags(write=False)
    return KeptVolumes(kept, tuple(derived), tuple(d.warning for d in derived))


# ======================================================================= tensor shells
@dataclass(frozen=True, eq=False)
class TensorSelection:
    """The volumes a tensor is fitted to.

    Attributes
    ----------
    indices : ndarray (K,) int
        0-based volume indices: the b = 0 volumes and the chosen shells, ascending.
    shells : tuple of float
        b-values of the shells used, b = 0 first (shell medians, s/mm^2).
    dropped_shells : tuple of float
        b-values of the shells left out.
    n_dropped : int
        Number of volumes left out.
    bmax : float or None
        The limit applied (None when ``shells`` was given or no limit was set).
    requested_shells : tuple of float or None
        The explicit shell list, when given.
    warning : str or None
        Set when shells above ``bmax`` were left out.
    """

    indices: np.ndarray
    shells: tuple[float, ...]
    dropped_shells: tuple[float, ...]
    n_dropped: int
    bmax: float | None
    requested_shells: tuple[float, ...] | None
    warning: str | None

    def describe(self) -> dict:
        """JSON-able summary for a sidecar."""
        return {
            "tensor_volumes": int(self.indices.size),
            "tensor_shells": [round(b, 1) for b in self.shells],
            "tensor_shells_left_out": [round(b, 1) for b in self.dropped_shells],
            "tensor_volumes_left_out": self.n_dropped,
            "tensor_bmax": self.bmax,
            "tensor_shells_requested": (
                None if self.requested_shells is None else list(self.requested_shells)
            ),
        }


def tensor_volumes(
    gradients: DwiGradients,
    *,
    bmax: float | None = 1500.0,
    shells: Sequence[float] | None = None,
    tolerance: float | None = None,
    min_directions: int = 6,
) -> TensorSelection:
    """Choose the b = 0 volumes and shells for a diffusion tensor fit.

    Parameters
    ----------
    gradients : DwiGradients
    bmax : float or None
        Use the shells with ``b <= bmax`` (a shell's b-value is the median of its
        volumes; up to :data:`BMAX_SLACK` above ``bmax`` still counts). None: all shells.
        Ignored when ``shells`` is given.
    shells : sequence of float, optional
        Use exactly these shells (+ b = 0); each must match a shell of the series
        within ``tolerance``. Values at or below the b = 0 threshold are ignored
        (b = 0 is always used).
    tolerance : float, optional
        For matching ``shells``; default the gradient table's ``shell_tolerance``.
    min_directions : int
        Fewest distinct directions (antipodes count once) among the chosen volumes.

    Returns
    -------
    TensorSelection

    Raises
    ------
    ValueError
        A requested shell that the series does not have, no diffusion-weighted shell
        at or below ``bmax``, no b = 0 volume, fewer than ``min_directions``
        directions, or directions that do not determine a tensor.
    """
    tol = gradients.shell_tolerance if tolerance is None else float(tolerance)
    table = gradients.shells
    b0_idx = np.flatnonzero(gradients.b0_mask)
    dw_shells = [(b, idx) for b, idx in table if not gradients.b0_mask[idx[0]]]
    available = ", ".join(_fmt_b(b) for b, _ in table)
    requested: tuple[float, ...] | None = None
    if shells is not None:
        requested = tuple(float(b) for b in shells)
        chosen: list[int] = []
        for b in requested:
            if b <= gradients.b0_threshold:
                continue
            dist = [abs(sb - b) for sb, _ in dw_shells]
            if not dist or min(dist) > tol:
                raise ValueError(
                    f"requested tensor shell b = {b:g} s/mm^2 is not in the series (shells: "
                    f"b = {available}, matched within {tol:g} s/mm^2); check dwi.tensor_shells"
                )
            best = int(np.argmin(dist))
            if best not in chosen:
                chosen.append(best)
        if not chosen:
            raise ValueError(
                f"dwi.tensor_shells {list(requested)} names no diffusion-weighted shell "
                f"(shells: b = {available})"
            )
        use = sorted(chosen)
        limit = None
    else:
        limit = None if bmax is None else float(bmax)
        if limit is not None and limit <= 0:
            raise ValueError(f"bmax must be positive or None, got {bmax}")
        use = [
            i for i, (b, _) in enumerate(dw_shells)
            if limit is None or b <= limit * (1.0 + BMAX_SLACK)
        ]
        if dw_shells and not use:
            raise ValueError(
                f"no diffusion-weighted shell at b <= {limit:g} s/mm^2 (shells: b = "
                f"{available}); raise dwi.tensor_bmax or set it to null"
            )
    if b0_idx.size == 0:
        raise ValueError(
            f"the tensor fit needs a b = 0 volume (b <= {gradients.b0_threshold:g} s/mm^2); "
            f"the series has shells b = {available}"
        )
    used = [dw_shells[i] for i in use]
    dropped = [s for i, s in enumerate(dw_shells) if i not in use]
    dw_idx = np.concatenate([idx for _, idx in used]) if used else np.zeros(0, int)
    indices = np.sort(np.concatenate([b0_idx, dw_idx])).astype(int)
    indices.setflags(write=False)
    shell_text = ", ".join(["0", *(_fmt_b(b) for b, _ in used)])
    n_dirs = count_unique_directions(gradients.bvecs[dw_idx]) if dw_idx.size else 0
    if n_dirs < min_directions:
        raise ValueError(
            f"the tensor fit needs at least {min_directions} distinct gradient directions; "
            f"the chosen shells (b = {shell_text}) have {n_dirs}"
        )
    from pipeline.dwi.tensor import design_matrix

    vec = gradients.bvecs[indices]
    nrm = np.linalg.norm(vec, axis=1, keepdims=True)
    unit = np.divide(vec, nrm, out=np.zeros_like(vec), where=nrm > 0)
    if np.linalg.matrix_rank(design_matrix(gradients.bvals[indices], unit)) < 7:
        raise ValueError(
            f"the gradient directions of the chosen shells (b = {shell_text}) do not determine "
            "a tensor (degenerate design matrix)"
        )
    n_dropped = int(sum(idx.size for _, idx in dropped))
    warning = None
    if dropped and requested is None:
        warning = (
            f"tensor fitted on b <= {limit:g} s/mm^2 (b = {shell_text}); "
            f"shell{'s' if len(dropped) > 1 else ''} b = "
            f"{', '.join(_fmt_b(b) for b, _ in dropped)} ({_volumes_word(n_dropped)}) left out: "
            "the tensor model is not valid at high b (set dwi.tensor_bmax: null to use all "
            "shells)"
        )
    return TensorSelection(
        indices=indices,
        shells=(0.0, *(float(b) for b, _ in used)),
        dropped_shells=tuple(float(b) for b, _ in dropped),
        n_dropped=n_dropped,
        bmax=limit,
        requested_shells=requested,
        warning=warning,
    )
