"""Fibre orientations from spherical-harmonic models (DIPY CSA and CSD) for tracking.

Two models besides the tensor (:mod:`pipeline.tract.tracking`):

``"csa"``
    Constant solid angle q-ball ODF (Aganj et al. 2010, DIPY
    :class:`~dipy.reconst.shm.CsaOdfModel`). Needs no response function.
``"csd"``
    Constrained spherical deconvolution (Tournier et al. 2007, DIPY
    :class:`~dipy.reconst.csdeconv.ConstrainedSphericalDeconvModel`), single
    shell, single tissue. The fibre response is estimated from the white-matter
    voxels with FA above ``response_fa_threshold`` (Tournier et al. 2004, DIPY
    :func:`~dipy.reconst.csdeconv.response_from_mask_ssst`); when fewer than
    ``min_response_voxels`` pass, the most anisotropic WM voxels are used and
    the fit records it.

Both are fitted to the b = 0 volumes plus one shell, the one with the most
directions (the highest b-value on a tie): the single-shell models assume one
b-value. :func:`fit_odf` returns the peaks (DIPY
:class:`~dipy.direction.peaks.PeaksAndMetrics`, with the SH coefficients), which
drive deterministic tracking as an EuDX direction getter, and the SH
coefficients drive probabilistic tracking.

Peaks and SH coefficients are in the frame of the gradient table passed in
(the voxel-array frame for :meth:`pipeline.dwi.gradtable.DwiGradients.dipy_gtab`),
as the tracker expects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["ODF_MODELS", "OdfFit", "OdfParams", "fit_odf", "select_single_shell"]

ODF_MODELS = ("csa", "csd")


@dataclass(frozen=True)
class OdfParams:
    """Parameters of the orientation model.

    Attributes
    ----------
    model : {"csa", "csd"}
    sh_order : int
        Maximal spherical-harmonic order (even, 2 .. 12); it needs at least
        ``(sh_order + 1)(sh_order + 2) / 2`` directions in the shell.
    response_fa_threshold : float
        CSD: WM voxels with FA above this give the fibre response.
    min_response_voxels : int
        CSD: fewer voxels above the threshold -> the ``min_response_voxels``
        most anisotropic WM voxels are used instead.
    relative_peak_threshold : float
        Peaks smaller than this fraction of the largest one are ignored.
    min_separation_angle_deg : float
        Peaks closer than this are merged.
    npeaks : int
        Peaks kept per voxel (deterministic tracking follows the one closest
        to the incoming direction).
    """

    model: str = "csd"
    sh_order: int = 6
    response_fa_threshold: float = 0.7
    min_response_voxels: int = 100
    relative_peak_threshold: float = 0.5
    min_separation_angle_deg: float = 25.0
    npeaks: int = 3

    def __post_init__(self) -> None:
        if self.model not in ODF_MODELS:
            raise ValueError(f"ODF model must be one of {ODF_MODELS}, got {self.model!r}")
        if self.sh_order % 2 or not 2 <= self.sh_order <= 12:
            raise ValueError(f"sh_order must be even and in 2 .. 12, got {self.sh_order}")
        if not 0 < self.response_fa_threshold < 1:
            raise ValueError("response_fa_threshold must be in (0, 1)")
        if self.min_response_voxels < 1 or self.npeaks < 1:
            raise ValueError("min_response_voxels and npeaks must be >= 1")

    @property
    def n_coefficients(self) -> int:
        return (self.sh_order + 1) * (self.sh_order + 2) // 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class OdfFit:
    """Result of :func:`fit_odf`.

    Attributes
    ----------
    peaks : dipy.direction.peaks.PeaksAndMetrics
        Peaks (``peak_dirs``, ``peak_values``, ``peak_indices``, ``qa``) and
        ``shm_coeff`` on the fitted voxels; zero elsewhere.
    params : OdfParams
    bvalue : float
        The shell that was fitted.
    n_volumes : int
        Volumes fitted (b = 0 and that shell).
    response : tuple or None
        CSD: ``(eigenvalues (3,), S0)`` of the fibre response; None for CSA.
    response_voxels : int
        CSD: voxels the response came from.
    response_selection : str
        CSD: how they were chosen.
    """

    peaks: Any
    params: OdfParams
    bvalue: float
    n_volumes: int
    response: tuple | None = None
    response_voxels: int = 0
    response_selection: str = ""

    @property
    def shm_coeff(self) -> np.ndarray:
        return self.peaks.shm_coeff

    @property
    def sphere(self):
        return self.peaks.sphere

    def describe(self) -> dict:
        """JSON-able summary (for provenance)."""
        out = {**self.params.to_dict(), "bvalue": self.bvalue, "n_volumes": self.n_volumes}
        if self.response is not None:
            evals, s0 = self.response
            out.update(response_eigenvalues_mm2_s=[float(v) for v in evals],
                       response_s0=float(s0), response_voxels=self.response_voxels,
                       response_selection=self.response_selection)
        return out


def select_single_shell(bvals: np.ndarray, *, b0_threshold: float = 50.0) -> np.ndarray:
    """Volume indices of b = 0 plus the shell with the most directions (highest b on a tie).

    Shells are grouped by :func:`pipeline.gradients.group_shells`.
    """
    from pipeline.gradients import group_shells

    shells = group_shells(np.asarray(bvals, float), b0_threshold=b0_threshold)
    b0 = [idx for b, idx in shells if b == 0]
    dw = [(len(idx), b, idx) for b, idx in shells if b > 0]
    if not b0 or not dw:
        raise ValueError(f"need b = 0 and one diffusion-weighted shell, got b-values {sorted(set(bvals))}")
    _, _, idx = max(dw, key=lambda t: (t[0], t[1]))
    return np.sort(np.concatenate([*b0, idx]))


def _response(gtab, data, wm: np.ndarray, fa: np.ndarray, params: OdfParams):
    from dipy.reconst.csdeconv import response_from_mask_ssst

    cand = wm & np.isfinite(fa)
    mask = cand & (fa > params.response_fa_threshold)
    selection = f"WM voxels with FA > {params.response_fa_threshold}"
    if int(mask.sum()) < params.min_response_voxels:
        n = min(params.min_response_voxels, int(cand.sum()))
        if n == 0:
            raise ValueError("CSD response: the white-matter mask is empty")
        order = np.argsort(np.where(cand, fa, -np.inf).ravel())[::-1][:n]
        mask = np.zeros(fa.shape, bool)
        mask.ravel()[order] = True
        selection = (f"only {int((cand & (fa > params.response_fa_threshold)).sum())} WM voxels "
                     f"with FA > {params.response_fa_threshold}: the {n} WM voxels of highest FA")
    response, _ = response_from_mask_ssst(gtab, data, mask.astype(np.uint8))
    return response, int(mask.sum()), selection


def fit_odf(
    data: np.ndarray,
    gtab,
    mask: np.ndarray,
    *,
    params: OdfParams | None = None,
    wm: np.ndarray | None = None,
    fa: np.ndarray | None = None,
) -> OdfFit:
    """Fit CSA or CSD in ``mask`` and extract peaks for tracking.

    Parameters
    ----------
    data : ndarray (X, Y, Z, N)
        Preprocessed DWI series.
    gtab : dipy.core.gradients.GradientTable
        Its gradients (N volumes), in the frame the tracker works in.
    mask : ndarray (X, Y, Z) bool
        Voxels to fit (normally the tracking mask).
    params : OdfParams, optional
    wm, fa : ndarray (X, Y, Z), optional
        White-matter mask and FA map; required for CSD (response function).

    Raises
    ------
    ValueError
        Shapes disagree, no usable shell, too few directions for ``sh_order``,
        CSD without ``wm``/``fa``.
    """
    from dipy.core.gradients import gradient_table
    from dipy.data import get_sphere
    from dipy.direction import peaks_from_model

    params = params or OdfParams()
    data = np.asarray(data)
    mask = np.asarray(mask, bool)
    if data.ndim != 4 or data.shape[:3] != mask.shape or data.shape[3] != len(gtab.bvals):
        raise ValueError(f"data {data.shape}, mask {mask.shape} and {len(gtab.bvals)} gradients "
                         "do not match")
    keep = select_single_shell(gtab.bvals, b0_threshold=gtab.b0_threshold)
    bvalue = float(np.median(gtab.bvals[keep][~gtab.b0s_mask[keep]]))
    sub = gradient_table(gtab.bvals[keep], bvecs=gtab.bvecs[keep], b0_threshold=gtab.b0_threshold)
    n_dirs = int((~sub.b0s_mask).sum())
    if n_dirs < params.n_coefficients:
        raise ValueError(f"sh_order {params.sh_order} needs at least {params.n_coefficients} "
                         f"directions, the b = {bvalue:g} shell has {n_dirs}; lower tract.sh_order")
    data = data[..., keep]
    response, n_resp, selection = None, 0, ""
    if params.model == "csa":
        from dipy.reconst.shm import CsaOdfModel

        model = CsaOdfModel(sub, sh_order_max=params.sh_order)
    else:
        from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel

        if wm is None or fa is None:
            raise ValueError("CSD needs the white-matter mask and FA map for its response")
        response, n_resp, selection = _response(sub, data, np.asarray(wm, bool), np.asarray(fa), params)
        model = ConstrainedSphericalDeconvModel(sub, response, sh_order_max=params.sh_order)
    sphere = get_sphere(name="repulsion724")
    peaks = peaks_from_model(
        model, data, sphere,
        relative_peak_threshold=params.relative_peak_threshold,
        min_separation_angle=params.min_separation_angle_deg,
        mask=mask, return_sh=True, return_odf=False, npeaks=params.npeaks,
    )
    return OdfFit(peaks=peaks, params=params, bvalue=bvalue, n_volumes=len(keep),
                  response=response, response_voxels=n_resp, response_selection=selection)
