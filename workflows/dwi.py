"""Diffusion workflow (Nipype): preprocessing, tensor and kurtosis maps, ROI metrics.

``init_dwi_wf`` builds a two-level graph; each interface below loads files,
calls :mod:`pipeline.dwi` functions and saves its results in its node folder:

1. :class:`LoadDwi`: one canonical gradient table, validated against the image;
   scanner-derived volumes (a trace / ADC image kept by the converter) left out
   with a warning naming them.
2. :class:`Denoise`: MP-PCA (default), Patch2Self or none; noise map saved.
3. :class:`Gibbs`: Gibbs-ringing removal (optional).
4. :class:`MotionCorrect`: every volume to the b = 0 reference, b-vectors
   rotated, confounds (motion, FD, outlier flags).
5. :class:`~workflows.interfaces.registration.EpiToT1w`: mean b = 0 -> preprocessed T1w (rigid, mutual information);
   the structural transforms are loaded, never recomputed.
6. :class:`DwiMask`: the T1w brain mask brought into DWI space, or median_otsu.
7. :class:`FitTensor`: FA, MD, AD, RD, colour FA, principal direction, residual,
   on b = 0 and the shells up to ``dwi.tensor_bmax`` (or ``dwi.tensor_shells``).
8. :class:`FitKurtosis`: MK, AK, RK, kurtosis FA on all shells when the series has
   two or more (``dwi.kurtosis``).
9. :class:`DwiRois`: NAWM (left / right / whole), WM, lesion, perilesional ring
   and optional atlas ROIs in DWI space; the ROI table.
10. :class:`DwiQC` figures and :class:`DwiDerivatives` (the one writer).

A session without a T1w (``anat=None``) skips 5, takes the mask from the DWI and
replaces 9 by :class:`DwiOnlyRois` (``wholebrain``, ``WM_FA``); what needs the structural
stage is listed as not produced in the ROI table's sidecar and the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.pipeline import engine as pe

from workflows.interfaces.registration import EpiToT1w
from workflows.nodeio import (
    CANONICAL_GRADIENT_KEYS,
    GRADIENT_KEYS,
    SERIES_EXT,
    dwi_gradients,
    load_array,
    save_array,
    validated_gradients,
)
from workflows.outputs import STAGE_OUTPUTS

__all__ = ["KURTOSIS_MAPS", "NOT_PRODUCED_WITHOUT_T1W", "ROI_METRICS", "TENSOR_MAPS", "init_dwi_wf",
           "structural_inputs"]

#: Tensor maps written as derivatives (``param-<name>``) and their description.
TENSOR_MAPS = {
    "fa": "fractional anisotropy (unitless, 0..1)",
    "md": "mean diffusivity (mm^2/s)",
    "ad": "axial diffusivity, largest eigenvalue (mm^2/s)",
    "rd": "radial diffusivity, mean of the two smaller eigenvalues (mm^2/s)",
    "rgb": "colour FA: |principal eigenvector| x FA in voxel axes (R, G, B)",
    "v1": "principal eigenvector in world (RAS+) coordinates, sign arbitrary",
    "s0": "fitted non-diffusion-weighted signal (arbitrary units)",
    "residual": "root-mean-square model-fit error of the signal relative to S0 (unitless)",
}

#: Maps summarised in the ROI table (the kurtosis ones when the DKI is fitted).
ROI_METRICS = ("fa", "md", "ad", "rd", "mk", "ak", "rk", "kfa")


def phase_encoding_axis(dwi: str, setting: str) -> tuple[int, str]:
    """Voxel axis of phase encoding for the eddy-current model and where it came from.

    ``setting`` is ``dwi.phase_encoding_axis``: ``i`` / ``j`` / ``k``, or ``auto`` = the
    BIDS ``PhaseEncodingDirection`` of the series' JSON sidecar, else ``j`` (the usual
    anterior-posterior encoding of axial EPI), said so in the returned text.
    """
    import json

    if setting in ("i", "j", "k"):
        return "ijk".index(setting), "dwi.phase_encoding_axis"
    name = Path(dwi).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    sidecar = Path(dwi).with_name(stem + ".json")
    if sidecar.exists():
        try:
            ped = str(json.loads(sidecar.read_text()).get("PhaseEncodingDirection", ""))
        except (OSError, ValueError):
            ped = ""
        if ped[:1] in ("i", "j", "k"):
            return "ijk".index(ped[0]), f"PhaseEncodingDirection {ped} ({sidecar.name})"
    return 1, ("assumed j: no PhaseEncodingDirection in a sidecar of the series; set "
               "dwi.phase_encoding_axis if it is not j")


def _save4d(data: np.ndarray, like, path: Path) -> str:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), like.affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return str(path)


# --------------------------------------------------------------------------- load + denoise


class _LoadInputSpec(BaseInterfaceInputSpec):
    dwi = File(exists=True, mandatory=True)
    bval = File(exists=True, mandatory=True)
    bvec = File(exists=True, mandatory=True)
    params = traits.Dict(mandatory=True, desc="the configuration keys this node reads (_node_params)")


class _DwiFilesSpec(TraitedSpec):
    dwi = File(exists=True)
    bval = File(exists=True)
    bvec = File(exists=True)


class _LoadOutputSpec(_DwiFilesSpec):
    warnings = traits.List(traits.Str())
    shells = traits.List(traits.Float())
    derived = traits.List(traits.Dict(), desc="scanner-derived volumes left out (raw index)")


class LoadDwi(SimpleInterface):
    """Validate the series, leave out scanner-derived volumes (trace / ADC images kept
    by the converter, :func:`pipeline.dwi.volumes.derived_volumes`) with a warning, and
    write the canonical gradient table (.bval/.bvec)."""

    input_spec = _LoadInputSpec
    output_spec = _LoadOutputSpec

    def _run_interface(self, runtime):
        import logging

        from pipeline.dwi.volumes import derived_volumes

        grads = validated_gradients(
            self.inputs.bval, self.inputs.bvec, self.inputs.dwi, self.inputs.params
        )
        cwd = Path(runtime.cwd)
        img = nib.load(self.inputs.dwi)
        data = np.asarray(img.dataobj, dtype=np.float32)
        found = derived_volumes(data, grads)
        dwi, warnings = self.inputs.dwi, list(grads.warnings)
        if found:
            keep = np.setdiff1d(np.arange(grads.n_volumes), [d.index for d in found])
            for d in found:
                logging.getLogger("msmri.dwi").warning("%s: %s", Path(dwi).name, d.warning)
                warnings.append(d.warning)
            grads = grads.select(keep)
            dwi = _save4d(data[..., keep], img, cwd / f"acquired{SERIES_EXT}")
        bval, bvec = grads.write(cwd / "dwi.bval", cwd / "dwi.bvec")
        self._results.update(dwi=dwi, bval=str(bval), bvec=str(bvec), warnings=warnings,
                             shells=[float(b) for b, _ in grads.shells],
                             derived=[{"volume": int(d.index), "reason": d.warning}
                                      for d in found])
        return runtime


class _StepInputSpec(BaseInterfaceInputSpec):
    dwi = File(exists=True, mandatory=True)
    bval = File(exists=True, mandatory=True)
    bvec = File(exists=True, mandatory=True)
    params = traits.Dict(mandatory=True, desc="the configuration keys this node reads (_node_params)")
    nprocs = traits.Int(1, usedefault=True, nohash=True, desc="processes (results do not depend on it)")


class _DenoiseOutputSpec(_DwiFilesSpec):
    noise = File(exists=True, desc="noise standard deviation map")
    parameters = traits.Dict()


class Denoise(SimpleInterface):
    """MP-PCA (default) or Patch2Self denoising (:func:`pipeline.dwi.preprocess.denoise`)."""

    input_spec = _StepInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.preprocess import HEAD_MASK_DILATION_VOX, denoise, head_mask

        cfg = self.inputs.params
        img = nib.load(self.inputs.dwi)
        grads = dwi_gradients(self.inputs.bval, self.inputs.bvec, self.inputs.dwi, cfg)
        data = np.asarray(img.dataobj, dtype=np.float32)
        method = cfg["dwi"]["denoise"]
        within = cfg["dwi"]["denoise_mask"] and method == "mppca"
        mask = head_mask(data, grads) if within else None
        out, noise = denoise(data, grads, mask=mask, method=method,
                             patch_radius=cfg["dwi"]["denoise_patch_radius"])
        cwd = Path(runtime.cwd)
        params = {"method": method, "patch_radius": cfg["dwi"]["denoise_patch_radius"],
                  "mask": f"Otsu head mask of the mean b = 0 dilated by {HEAD_MASK_DILATION_VOX} "
                          "voxels" if within else "none"}
        self._results.update(
            dwi=_save4d(out, img, cwd / f"denoised{SERIES_EXT}"), bval=self.inputs.bval,
            bvec=self.inputs.bvec, noise=save_array(noise, img, cwd / "noise.nii.gz"),
            parameters=params,
        )
        return runtime


class _GibbsOutputSpec(_DwiFilesSpec):
    pass


class Gibbs(SimpleInterface):
    """Gibbs-ringing removal in the acquired (in-plane) directions."""

    input_spec = _StepInputSpec
    output_spec = _GibbsOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.preprocess import remove_gibbs

        img = nib.load(self.inputs.dwi)
        out = remove_gibbs(np.asarray(img.dataobj, dtype=np.float32), slice_axis=2,
                           num_processes=self.inputs.nprocs)
        self._results.update(dwi=_save4d(out, img, Path(runtime.cwd) / "degibbs.nii.gz"),
                             bval=self.inputs.bval, bvec=self.inputs.bvec)
        return runtime


# --------------------------------------------------------------------------- motion


class _MotionOutputSpec(_DwiFilesSpec):
    confounds = File(exists=True, desc="per-volume motion and outlier table (TSV)")
    b0 = File(exists=True, desc="mean b = 0 reference")
    outliers = traits.List(traits.Int(), desc="flagged volumes (0-based)")
    parameters = traits.Dict()


class MotionCorrect(SimpleInterface):
    """Rigid motion correction with b-vector rotation (:mod:`pipeline.dwi.motion`)."""

    input_spec = _StepInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.motion import correct_motion
        from pipeline.dwi.preprocess import mean_b0

        cfg = self.inputs.params
        img = nib.load(self.inputs.dwi)
        grads = dwi_gradients(self.inputs.bval, self.inputs.bvec, self.inputs.dwi, cfg)
        data = np.asarray(img.dataobj, dtype=np.float32)
        cwd = Path(runtime.cwd)
        if cfg["dwi"]["motion_correction"]:
            from pipeline.dwi.motion import exclusion_reasons, exclusion_summary

            d = cfg["dwi"]
            pe_axis, pe_source = phase_encoding_axis(self.inputs.dwi, d["phase_encoding_axis"])
            mc = correct_motion(data, img.affine, grads, fd_threshold_mm=d["fd_threshold_mm"],
                                dropout_threshold=d["dropout_threshold"],
                                eddy=d["eddy_correction"], pe_axis=pe_axis)
            data, grads, b0 = mc.data, mc.gradients, mc.reference
            confounds = mc.confounds()
            reasons = exclusion_reasons(mc, d["fd_threshold_mm"])
            if not d["exclude_outliers"]:
                reasons = [""] * len(reasons)
            confounds["excluded"] = [int(bool(r)) for r in reasons]
            confounds["exclusion_reason"] = reasons
            summary = exclusion_summary(reasons, grads.dw_mask,
                                        warn_fraction=d["warn_excluded_fraction"],
                                        max_fraction=d["max_excluded_fraction"])
            outliers = summary["excluded"]
            method = ("least squares to each volume's leave-one-out tensor prediction "
                      "(b = 0 to b = 0), rigid" + (" + linear eddy-current field along the "
                      "phase-encoding axis" if d["eddy_correction"] else "")
                      + ", b-vectors rotated by the rigid part")
            params = {"motion_correction": method,
                      "phase_encoding_axis": "ijk"[pe_axis], "phase_encoding_source": pe_source,
                      "max_framewise_displacement_mm": float(np.max(mc.framewise_displacement)),
                      "mean_framewise_displacement_mm": float(np.mean(mc.framewise_displacement)),
                      "exclusions": summary}
        else:
            import pandas as pd

            b0 = mean_b0(data, grads)
            confounds = pd.DataFrame({"volume": np.arange(grads.n_volumes)})
            outliers, params = [], {"motion_correction": "none (dwi.motion_correction false)"}
        confounds.insert(0, "bval", grads.bvals)
        confounds.to_csv(cwd / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
        bval, bvec = grads.write(cwd / "dwi.bval", cwd / "dwi.bvec")
        self._results.update(
            dwi=_save4d(data, img, cwd / f"corrected{SERIES_EXT}"), bval=str(bval), bvec=str(bvec),
            confounds=str(cwd / "confounds.tsv"), b0=save_array(b0, img, cwd / "b0.nii.gz"),
            outliers=outliers, parameters=params,
        )
        return runtime


# --------------------------------------------------------------------------- registration + mask


class _MaskInputSpec(BaseInterfaceInputSpec):
    dwi = File(exists=True, mandatory=True)
    bval = File(exists=True, mandatory=True)
    bvec = File(exists=True, mandatory=True)
    params = traits.Dict(mandatory=True, desc="the configuration keys this node reads (_node_params)")
    xfm = File(exists=True, desc="dwi -> T1w (absent in a session without a T1w)")
    t1w_mask = File(exists=True)


class _MaskOutputSpec(TraitedSpec):
    mask = File(exists=True)
    method = traits.Str()


class DwiMask(SimpleInterface):
    """Brain mask in DWI space: the structural one carried over, or median_otsu."""

    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.preprocess import dwi_brain_mask
        from pipeline.registration import Transform

        cfg = self.inputs.params
        img = nib.load(self.inputs.dwi)
        ref = (img.shape[:3], img.affine)
        structural = isdefined(self.inputs.xfm) and isdefined(self.inputs.t1w_mask)
        if cfg["dwi"]["mask"] == "structural" and structural:
            to_dwi = Transform.load(self.inputs.xfm).inverse()
            mask = to_dwi.resample_mask(nib.load(self.inputs.t1w_mask), ref)
            method = "structural: T1w brain mask through the dwi -> T1w transform (linear, >= 0.5)"
        else:
            grads = dwi_gradients(self.inputs.bval, self.inputs.bvec, self.inputs.dwi, cfg)
            mask = dwi_brain_mask(np.asarray(img.dataobj, dtype=np.float32), grads)
            method = "median_otsu of the mean b = 0 image (DIPY)" + (
                "" if structural else ": no T1w in this session")
        if not mask.any():
            from pipeline.errors import InputError

            raise InputError(self.inputs.dwi, f"empty brain mask in DWI space ({method})")
        self._results["mask"] = save_array(mask, img, Path(runtime.cwd) / "mask.nii.gz", np.uint8)
        self._results["method"] = method
        return runtime


# --------------------------------------------------------------------------- tensor


class _TensorInputSpec(_StepInputSpec):
    mask = File(exists=True, mandatory=True)
    noise = File(exists=True, desc="noise SD map (RESTORE)")
    exclude = traits.List(traits.Int(), desc="volumes left out of the fit")


class _TensorOutputSpec(TraitedSpec):
    maps = traits.Dict(desc="name -> file (see TENSOR_MAPS)")
    parameters = traits.Dict()
    volumes = traits.List(traits.Int(), desc="volumes fitted (index in the preprocessed series)")


class FitTensor(SimpleInterface):
    """Diffusion tensor fit (:func:`pipeline.dwi.tensor.fit_tensor`)."""

    input_spec = _TensorInputSpec
    output_spec = _TensorOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.tensor import fit_tensor
        from pipeline.dwi.volumes import tensor_volumes

        cfg = self.inputs.params
        img = nib.load(self.inputs.dwi)
        grads = dwi_gradients(self.inputs.bval, self.inputs.bvec, self.inputs.dwi, cfg)
        data = np.asarray(img.dataobj, dtype=np.float32)
        excluded = sorted(set(self.inputs.exclude)) if isdefined(self.inputs.exclude) else []
        excluded = excluded if cfg["dwi"]["exclude_outliers"] else []
        keep = np.setdiff1d(np.arange(grads.n_volumes), excluded)
        need = cfg["validation"]["min_directions"]
        if int((~grads.b0_mask[keep]).sum()) < need or not grads.b0_mask[keep].any():
            from pipeline.errors import InputError

            raise InputError(self.inputs.dwi, f"too few volumes left after excluding outliers "
                             f"{excluded} (need one b = 0 and {need} directions, "
                             "validation.min_directions)")
        selection = tensor_volumes(grads.select(keep), bmax=cfg["dwi"]["tensor_bmax"],
                                   shells=cfg["dwi"]["tensor_shells"])
        if selection.warning:
            import logging

            logging.getLogger("msmri.dwi").warning("%s: %s", Path(self.inputs.dwi).name,
                                                   selection.warning)
        keep = keep[np.asarray(selection.indices, dtype=int)]
        kept = grads.select(keep)
        sigma = None
        method = cfg["dwi"]["tensor_method"]
        if method == "RESTORE":
            sigma = load_array(self.inputs.noise, np.float32)
        maps = fit_tensor(data[..., keep], kept.dipy_gtab(), load_array(self.inputs.mask) > 0,
                          method=method, sigma=sigma, n_procs=self.inputs.nprocs)
        cwd = Path(runtime.cwd)
        files = {}
        for name in TENSOR_MAPS:
            arr = np.asarray(getattr(maps, name))
            if name == "v1":  # voxel frame of the gradient table -> world RAS+
                arr = kept.voxel_to_world(arr.reshape(-1, 3)).reshape(arr.shape).astype(np.float32)
            files[name] = save_array(arr, img, cwd / f"{name}.nii.gz")
        self._results["maps"] = files
        self._results["parameters"] = {
            "method": method, "excluded_volumes": excluded, "n_volumes_fitted": int(keep.size),
            "volumes_fitted": [int(k) for k in keep], "shells": selection.describe(),
            "n_voxels_fitted": int(maps.n_voxels_fitted),
            "n_negative_eigenvalue_voxels": int(maps.n_negative_eigenvalue_voxels),
            "min_diffusivity_mm2_s": float(maps.min_diffusivity),
            "negative_eigenvalues": "clipped to min_diffusivity (as DIPY); voxels counted",
            "outside_mask": "0 in every map",
        }
        self._results["volumes"] = [int(k) for k in keep]
        return runtime


#: Kurtosis maps written as derivatives (``model-dki_param-<name>``) and their description.
KURTOSIS_MAPS = {
    "mk": "mean kurtosis: apparent kurtosis averaged over all directions (unitless)",
    "ak": "axial kurtosis: apparent kurtosis along the principal diffusion direction (unitless)",
    "rk": "radial kurtosis: apparent kurtosis averaged perpendicular to the principal "
          "direction (unitless)",
    "kfa": "kurtosis fractional anisotropy (unitless, 0..1)",
    "fa": "fractional anisotropy of the DKI's diffusion tensor (unitless, 0..1)",
    "md": "mean diffusivity of the DKI's diffusion tensor (mm^2/s; not lowered by kurtosis "
          "as a tensor fit at high b is)",
    "ad": "axial diffusivity of the DKI's diffusion tensor (mm^2/s)",
    "rd": "radial diffusivity of the DKI's diffusion tensor (mm^2/s)",
}


class _KurtosisOutputSpec(TraitedSpec):
    maps = traits.Dict(desc="name -> file (see KURTOSIS_MAPS); empty when not fitted")
    parameters = traits.Dict()


class FitKurtosis(SimpleInterface):
    """Diffusion kurtosis fit on all shells (:func:`pipeline.dwi.kurtosis.fit_kurtosis`).

    ``dwi.kurtosis``: ``auto`` fits when the series supports DKI (two or more non-zero
    shells, enough directions) and otherwise records why not; ``true`` makes an
    unsuitable series an error naming the file.
    """

    input_spec = _TensorInputSpec
    output_spec = _KurtosisOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.kurtosis import check_dki_scheme, fit_kurtosis
        from pipeline.errors import InputError

        cfg = self.inputs.params
        setting = cfg["dwi"]["kurtosis"]
        grads = dwi_gradients(self.inputs.bval, self.inputs.bvec, self.inputs.dwi, cfg)
        excluded = sorted(set(self.inputs.exclude)) if isdefined(self.inputs.exclude) else []
        excluded = excluded if cfg["dwi"]["exclude_outliers"] else []
        keep = np.setdiff1d(np.arange(grads.n_volumes), excluded)
        kept = grads.select(keep)
        try:
            check_dki_scheme(kept.bvals, kept.bvecs)
        except ValueError as exc:
            if setting is True:
                raise InputError(self.inputs.dwi, f"dwi.kurtosis is true but {exc}") from None
            self._results.update(maps={}, parameters={
                "fitted": False, "setting": setting,
                "reason": f"{exc} (dwi.kurtosis auto: DKI left out)"})
            return runtime
        img = nib.load(self.inputs.dwi)
        data = np.asarray(img.dataobj, dtype=np.float32)
        km = fit_kurtosis(data[..., keep], kept.dipy_gtab(), load_array(self.inputs.mask) > 0,
                          n_procs=self.inputs.nprocs)
        cwd = Path(runtime.cwd)
        self._results["maps"] = {name: save_array(np.asarray(getattr(km, name)), img,
                                                  cwd / f"dki_{name}.nii.gz")
                                 for name in KURTOSIS_MAPS}
        self._results["parameters"] = {
            "fitted": True, "setting": setting, "method": km.method,
            "shells": [float(b) for b in km.shells], "n_directions": int(km.n_directions),
            "excluded_volumes": excluded, "volumes_fitted": [int(k) for k in keep],
            "n_voxels_fitted": int(km.n_voxels_fitted), "n_failed_voxels": int(km.n_failed_voxels),
            "kurtosis_range": [float(km.min_kurtosis), float(km.max_kurtosis)],
            "implementation": "DIPY DiffusionKurtosisModel design and metrics "
                              "(pipeline.dwi.kurtosis)",
        }
        return runtime


# --------------------------------------------------------------------------- ROIs


class _RoiInputSpec(BaseInterfaceInputSpec):
    maps = traits.Dict(mandatory=True)
    mask = File(exists=True, mandatory=True, desc="DWI brain mask")
    xfm = File(exists=True, mandatory=True, desc="dwi -> T1w")
    wm_prob = File(exists=True, mandatory=True)
    lesion = File(exists=True, mandatory=True)
    hemisphere = File(exists=True, mandatory=True)
    mni_xfm = File(exists=True, mandatory=True, desc="T1w -> MNI (for atlas ROIs)")
    params = traits.Dict(mandatory=True, desc="the configuration keys this node reads (_node_params)")
    kurtosis_maps = traits.Dict(desc="FitKurtosis maps (empty or absent: no DKI)")


def _roi_maps(maps: dict, kurtosis: Any) -> dict[str, np.ndarray]:
    """The maps of the ROI table: the tensor's, and the kurtosis ones when fitted."""
    files = {k: maps[k] for k in ROI_METRICS if k in maps}
    if isdefined(kurtosis) and kurtosis:
        files.update({k: kurtosis[k] for k in ("mk", "ak", "rk", "kfa") if k in kurtosis})
    return {k: load_array(v, np.float32) for k, v in files.items()}


class _RoiOutputSpec(TraitedSpec):
    rois = traits.Dict(desc="ROI name -> mask file in DWI space")
    table = File(exists=True)
    parameters = traits.Dict()


def _atlas(cfg: dict) -> tuple[Any, dict[int, str]]:
    import pandas as pd

    from pipeline.errors import InputError

    img_path, tsv = Path(cfg["dwi"]["atlas"]), Path(cfg["dwi"]["atlas_labels"])
    for p in (img_path, tsv):
        if not p.exists():
            raise InputError(p, "dwi.atlas / dwi.atlas_labels file not found")
    table = pd.read_csv(tsv, sep="\t")
    if not {"index", "name"} <= set(table.columns):
        raise InputError(tsv, f"needs columns 'index' and 'name', has {list(table.columns)}")
    return nib.load(img_path), {
        int(i): str(n) for i, n in zip(table["index"], table["name"], strict=True)
    }


class DwiRois(SimpleInterface):
    """ROIs in DWI space from the structural outputs; the ROI table of FA/MD/AD/RD."""

    input_spec = _RoiInputSpec
    output_spec = _RoiOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.rois import atlas_rois, build_rois, nawm_lesion_loss, roi_table
        from pipeline.registration import Transform

        cfg = self.inputs.params["dwi"]
        fa_img = nib.load(self.inputs.maps["fa"])
        ref = (fa_img.shape[:3], fa_img.affine)
        to_dwi = Transform.load(self.inputs.xfm).inverse()  # T1w -> dwi
        wm = np.asarray(to_dwi.resample(nib.load(self.inputs.wm_prob), ref, order=1).dataobj)
        lesion = to_dwi.resample_mask(nib.load(self.inputs.lesion), ref)
        hemi = np.asarray(to_dwi.resample(nib.load(self.inputs.hemisphere), ref, order=0).dataobj)
        brain = load_array(self.inputs.mask) > 0
        zooms = np.sqrt((fa_img.affine[:3, :3] ** 2).sum(axis=0))
        rois = build_rois(wm, lesion, hemi, voxel_size_mm=zooms, wm_threshold=cfg["wm_threshold"],
                          lesion_margin_mm=cfg["lesion_margin_mm"], ring_mm=cfg["perilesion_ring_mm"],
                          brain_mask=brain)
        atlas_names: list[str] = []
        if cfg["atlas"]:
            atlas_img, labels = _atlas(self.inputs.params)
            mni_to_dwi = Transform.load(self.inputs.mni_xfm).inverse().compose(to_dwi)
            lab = np.asarray(mni_to_dwi.resample(atlas_img, ref, order=0).dataobj)
            extra = atlas_rois(lab, labels)
            clash = set(extra) & set(rois)
            if clash:
                raise ValueError(f"atlas ROI names {sorted(clash)} clash with built-in ROI names")
            rois.update({k: v & brain for k, v in extra.items()})
            atlas_names = list(extra)
        maps = _roi_maps(self.inputs.maps, self.inputs.kurtosis_maps)
        table = roi_table(maps, rois, lesion_loss=nawm_lesion_loss(rois))
        cwd = Path(runtime.cwd)
        table.to_csv(cwd / "rois.tsv", sep="\t", index=False, na_rep="n/a")
        files = {name: save_array(m, fa_img, cwd / f"roi_{name}.nii.gz", np.uint8)
                 for name, m in rois.items()}
        self._results.update(rois=files, table=str(cwd / "rois.tsv"), parameters={
            "wm_threshold": cfg["wm_threshold"], "lesion_margin_mm": cfg["lesion_margin_mm"],
            "perilesion_ring_mm": cfg["perilesion_ring_mm"], "atlas": cfg["atlas"],
            "atlas_rois": atlas_names,
            "resampling": "T1w -> DWI through the inverse dwi -> T1w transform: WM probability "
                          "linear, lesion mask linear >= 0.5, hemisphere nearest neighbour",
        })
        return runtime


class _DwiOnlyRoiInputSpec(BaseInterfaceInputSpec):
    maps = traits.Dict(mandatory=True)
    mask = File(exists=True, mandatory=True, desc="DWI brain mask")
    kurtosis_maps = traits.Dict(desc="FitKurtosis maps (empty or absent: no DKI)")


class DwiOnlyRois(SimpleInterface):
    """ROIs of a session without a T1w (:func:`pipeline.dwi.rois.dwi_only_rois`)."""

    input_spec = _DwiOnlyRoiInputSpec
    output_spec = _RoiOutputSpec

    def _run_interface(self, runtime):
        from pipeline.dwi.rois import WM_FA_THRESHOLD, dwi_only_rois, roi_table

        fa_img = nib.load(self.inputs.maps["fa"])
        rois = dwi_only_rois(np.asarray(fa_img.dataobj, dtype=np.float32),
                             load_array(self.inputs.mask) > 0)
        table = roi_table(_roi_maps(self.inputs.maps, self.inputs.kurtosis_maps), rois)
        cwd = Path(runtime.cwd)
        table.to_csv(cwd / "rois.tsv", sep="\t", index=False, na_rep="n/a")
        files = {name: save_array(m, fa_img, cwd / f"roi_{name}.nii.gz", np.uint8)
                 for name, m in rois.items()}
        self._results.update(rois=files, table=str(cwd / "rois.tsv"), parameters={
            "rois": {"wholebrain": "DWI brain mask",
                     "WM_FA": f"FA >= {WM_FA_THRESHOLD} in the brain mask eroded by one voxel "
                              "(diffusion-defined white matter, not comparable with NAWM)"},
            "not_produced": dict(NOT_PRODUCED_WITHOUT_T1W),
        })
        return runtime


#: Measures of the diffusion stage that need the structural stage, and why they are
#: missing from a session without a T1w (written to the ROI table's sidecar and shown
#: in the report).
NOT_PRODUCED_WITHOUT_T1W = {
    "WM, NAWM_L, NAWM_R, NAWM": "need the structural stage's white-matter segmentation (T1w)",
    "lesion, perilesion": "need the lesion mask placed on the session's T1w or FLAIR",
    "atlas ROIs (dwi.atlas)": "need the T1w -> MNI transform of the structural stage",
    "b = 0 -> T1w registration and its QC figure": "no T1w",
    "tract profiles (tract stage)": "bundle waypoints come through the T1w -> MNI transform",
}


# --------------------------------------------------------------------------- QC


class _DwiQcInputSpec(BaseInterfaceInputSpec):
    maps = traits.Dict(mandatory=True)
    b0 = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    rois = traits.Dict(mandatory=True)
    confounds = File(exists=True, mandatory=True)
    xfm = File(exists=True, desc="dwi -> T1w (absent without a T1w: no registration figure)")
    t1w = File(exists=True)
    t1w_mask = File(exists=True)
    tensor_parameters = traits.Dict(desc="FitTensor parameters (volumes and shells fitted)")


class _DwiQcOutputSpec(TraitedSpec):
    figures = traits.Dict()


class DwiQC(SimpleInterface):
    """QC figures: FA and colour FA, b = 0 on T1w, ROIs on FA, motion trace."""

    input_spec = _DwiQcInputSpec
    output_spec = _DwiQcOutputSpec

    def _run_interface(self, runtime):
        import matplotlib

        matplotlib.use("Agg")
        import pandas as pd

        from pipeline.dwi.motion import flagged_volumes
        from pipeline.registration import Transform
        from pipeline.report.figures import Overlay, mosaic, plot_motion, save_figure

        cwd = Path(runtime.cwd)
        fa_img = nib.load(self.inputs.maps["fa"])
        fa = np.asarray(fa_img.dataobj, dtype=np.float32)
        mask = load_array(self.inputs.mask) > 0
        figs = {}

        def save(fig, name):
            figs[name] = save_figure(fig, cwd / f"{name}.svg")

        tp = self.inputs.tensor_parameters if isdefined(self.inputs.tensor_parameters) else {}
        shells = ", ".join(f"{b:g}" for b in (tp.get("shells") or {}).get("tensor_shells", []))
        fitted = (f" (tensor on b = {shells} s/mm², {tp['n_volumes_fitted']} volumes)"
                  if shells else "")
        save(mosaic(fa, fa_img.affine, [Overlay(mask, "yellow", "DWI brain mask")],
                    title="FA" + fitted, focus=mask), "fa")
        rgb = np.asarray(nib.load(self.inputs.maps["rgb"]).dataobj, dtype=np.float32)
        save(mosaic(rgb, fa_img.affine, title="colour FA (red L-R, green A-P, blue S-I in voxel axes)",
                    focus=mask), "colorfa")
        if isdefined(self.inputs.xfm):
            t1 = nib.load(self.inputs.t1w)
            b0_in_t1 = Transform.load(self.inputs.xfm).resample(nib.load(self.inputs.b0), t1)
            t1_mask = load_array(self.inputs.t1w_mask) > 0
            save(mosaic(np.asarray(b0_in_t1.dataobj), t1.affine,
                        [Overlay(t1_mask, "red", "T1w brain mask")],
                        title="mean b = 0 in T1w space", focus=t1_mask), "b0toT1w")
        roi = {k: load_array(v) > 0 for k, v in self.inputs.rois.items()}
        overlays = [Overlay(roi[k], c, k, filled=True, alpha=0.35)
                    for k, c in (("NAWM_L", "tab:blue"), ("NAWM_R", "tab:green"),
                                 ("lesion", "tab:red"), ("perilesion", "tab:orange"),
                                 ("WM_FA", "tab:blue")) if k in roi]
        title = ("NAWM and lesion ROIs on FA" if "NAWM" in roi else
                 "diffusion-defined white matter (FA >= 0.2) on FA: no T1w, no NAWM / lesion ROIs")
        save(mosaic(fa, fa_img.affine, overlays, title=title, focus=mask), "rois")
        conf = pd.read_csv(self.inputs.confounds, sep="\t")
        if "framewise_displacement" in conf:
            motion_cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
            eddy = {c.replace("eddy_", ""): conf[c].to_numpy(float)
                    for c in conf.columns if c.startswith("eddy_")}
            excluded = (conf["excluded"].to_numpy(bool) if "excluded" in conf
                        else flagged_volumes(conf))
            reasons = (conf["exclusion_reason"].fillna("").astype(str) if "exclusion_reason" in conf
                       else None)
            listed = "; ".join(f"{k}: {reasons.iloc[k]}" for k in np.flatnonzero(excluded)) if (
                reasons is not None) else ""
            fig = plot_motion(conf[motion_cols].to_numpy(float),
                              conf["framewise_displacement"].to_numpy(float),
                              extra=eddy or None, extra_label="eddy current\n(mm/mm)",
                              excluded=excluded,
                              title="head motion and eddy currents during the DWI series"
                              + (f"\nexcluded {listed}" if listed else ""))
            save(fig, "motion")
        self._results["figures"] = figs
        return runtime


# --------------------------------------------------------------------------- derivatives


class _DwiSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str(mandatory=True)
    config = traits.Dict(mandatory=True)
    sources = traits.List(traits.Str())
    dwi = File(exists=True, mandatory=True, desc="preprocessed series")
    bval = File(exists=True, mandatory=True)
    bvec = File(exists=True, mandatory=True)
    noise = File(exists=True)
    denoise_parameters = traits.Dict()
    confounds = File(exists=True, mandatory=True)
    motion_parameters = traits.Dict()
    warnings = traits.List(traits.Str())
    derived = traits.List(traits.Dict(), desc="scanner-derived volumes left out")
    mask = File(exists=True, mandatory=True)
    mask_method = traits.Str()
    maps = traits.Dict(mandatory=True)
    tensor_parameters = traits.Dict()
    kurtosis_maps = traits.Dict(desc="FitKurtosis maps (empty or absent: no DKI)")
    kurtosis_parameters = traits.Dict()
    xfm = File(exists=True, desc="dwi -> T1w (absent in a session without a T1w)")
    rois = traits.Dict(mandatory=True)
    table = File(exists=True, mandatory=True)
    roi_parameters = traits.Dict()
    figures = traits.Dict(mandatory=True)


class _DwiSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str())


#: Column descriptions of the confounds table.
CONFOUND_COLUMNS = {
    "bval": {"Description": "b-value of the volume", "Units": "s/mm^2"},
    "trans_x": {"Description": "head translation along x (RAS+) relative to the b = 0 reference", "Units": "mm"},
    "trans_y": {"Description": "head translation along y", "Units": "mm"},
    "trans_z": {"Description": "head translation along z", "Units": "mm"},
    "rot_x": {"Description": "head rotation about x (pipeline.motion convention)", "Units": "rad"},
    "rot_y": {"Description": "head rotation about y", "Units": "rad"},
    "rot_z": {"Description": "head rotation about z", "Units": "rad"},
    "framewise_displacement": {"Description": "Power framewise displacement (50 mm head radius)", "Units": "mm"},
    "motion_outlier": {"Description": "1 if framewise displacement > dwi.fd_threshold_mm (never when it is null)"},
    "dropout_outlier": {"Description": "1 if an acquired slice of this volume lost signal against the leave-one-out prediction of the volume (dropout)"},
    "dropout_slices": {"Description": "indices of the dropout slices (third voxel axis)"},
    "eddy_scale": {"Description": "eddy-current scaling of the image along the phase-encoding axis (0.01 = stretched by 1 %)"},
    "eddy_shear_i": {"Description": "eddy-current shear: displacement along the phase-encoding axis per mm along voxel axis i", "Units": "mm/mm"},
    "eddy_shear_j": {"Description": "eddy-current shear: displacement along the phase-encoding axis per mm along voxel axis j", "Units": "mm/mm"},
    "eddy_shear_k": {"Description": "eddy-current shear: displacement along the phase-encoding axis per mm along voxel axis k", "Units": "mm/mm"},
    "excluded": {"Description": "1 if the volume is left out of the tensor and tract-model fits"},
    "exclusion_reason": {"Description": "why the volume is excluded (empty if kept)"},
}


def _exclusion_meta(motion: dict, registration: dict | None) -> dict:
    """Sidecar keys of the confounds table that the CLI, the report and the group stage
    read: the excluded volumes, the b = 0 -> T1w registration quality and the
    session-level flag (too many volumes excluded, or a failed registration)."""
    ex = motion.get("exclusions") or {"excluded": [], "excluded_fraction": 0.0,
                                      "warning": None, "flagged": False, "reason": ""}
    flagged, reasons = bool(ex["flagged"]), [ex["reason"]] if ex["flagged"] else []
    if registration and not registration.get("passed", True):
        flagged = True
        reasons.append(f"b = 0 -> T1w registration failed its quality check (NMI sharpness "
                       f"{registration['nmi_sharpness']:.3f} < {registration['threshold']:g})")
    return {"ExcludedVolumes": list(ex["excluded"]), "ExcludedFraction": ex["excluded_fraction"],
            "Warning": ex["warning"] or "", "RegistrationQuality": registration or {},
            "Flagged": flagged, "Reason": "; ".join(reasons)}


class DwiDerivatives(SimpleInterface):
    """Write the diffusion outputs of one subject-session (atomic, with provenance)."""

    input_spec = _DwiSinkInputSpec
    output_spec = _DwiSinkOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from pipeline.dwi.rois import describe_roi_columns
        from pipeline.registration import Transform
        from workflows.derivatives import DerivativesWriter

        i = self.inputs
        cfg = dict(i.config)
        w = DerivativesWriter(i.output_dir, config=cfg)
        ent = {"sub": i.subject, "ses": i.session, "datatype": "dwi"}
        denoise = (i.denoise_parameters if isdefined(i.denoise_parameters)
                   else {"method": "none (dwi.denoise none)"})
        params = {"dwi": dict(cfg.get("dwi", {})), "denoise": denoise,
                  "motion": i.motion_parameters, "tensor": i.tensor_parameters,
                  "kurtosis": i.kurtosis_parameters if isdefined(i.kurtosis_parameters) else {
                      "fitted": False, "reason": "dwi.kurtosis false"},
                  "rois": i.roi_parameters, "mask": i.mask_method,
                  "input_warnings": list(i.warnings),
                  "derived_volumes_left_out": list(i.derived) if isdefined(i.derived) else []}
        out: list[str] = []

        def meta(description, **extra):
            return w.provenance(sources=i.sources, parameters=params, seed=cfg.get("seed"),
                                extra={"Description": description, **extra})

        def nifti(path, description, **spec):
            out.append(str(w.write_nifti(nib.load(path), meta=meta(description), **ent, **spec)))

        if cfg.get("dwi", {}).get("save_preproc", True):
            nifti(i.dwi, "preprocessed DWI: denoised, Gibbs-corrected, motion-corrected",
                  space="dwi", desc="preproc", suffix="dwi")
            for src, ext in ((i.bval, ".bval"), (i.bvec, ".bvec")):
                out.append(str(w.write_bytes(Path(src).read_bytes(), **ent, space="dwi",
                                             desc="preproc", suffix="dwi", extension=ext)))
        if isdefined(i.noise):
            nifti(i.noise, "noise standard deviation estimated by the denoiser (signal units)",
                  space="dwi", model=i.denoise_parameters.get("method"), param="noise",
                  suffix="dwimap")
        nifti(i.mask, f"brain mask in DWI space ({i.mask_method})", space="dwi", desc="brain",
              suffix="mask")
        for name, description in TENSOR_MAPS.items():
            nifti(i.maps[name], description, space="dwi", model="tensor", param=name,
                  suffix="dwimap")
        for name, path in (i.kurtosis_maps.items() if isdefined(i.kurtosis_maps) else ()):
            nifti(path, KURTOSIS_MAPS[name], space="dwi", model="dki", param=name,
                  suffix="dwimap")
        conf = pd.read_csv(i.confounds, sep="\t", keep_default_na=False)
        out.append(str(w.write_tsv(conf, columns={k: v for k, v in CONFOUND_COLUMNS.items() if k in conf},
                                   meta=meta("per-volume head motion, eddy currents and "
                                             "volume exclusions",
                                             **_exclusion_meta(i.motion_parameters,
                                                               Transform.load(i.xfm).quality
                                                               if isdefined(i.xfm) else None)),
                                   **ent, desc="confounds", suffix="timeseries")))
        if isdefined(i.xfm):
            xfm = Transform.load(i.xfm)
            out.append(str(w.write_with(xfm.save, meta=meta("rigid mean b = 0 -> T1w"), **ent,
                                        **{"from": "dwi", "to": "T1w"}, mode="image",
                                        suffix="xfm", extension=".json")))
        for name, path in i.rois.items():
            nifti(path, f"ROI {name} in DWI space", space="dwi",
                  desc="".join(c for c in name if c.isalnum()), suffix="mask")
        table = pd.read_csv(i.table, sep="\t")
        table.insert(0, "session", i.session)
        table.insert(0, "subject", i.subject)
        columns = {"subject": {"Description": "participant label"},
                   "session": {"Description": "session label"}, **describe_roi_columns()}
        not_produced = i.roi_parameters.get("not_produced") or {}
        out.append(str(w.write_tsv(table, columns=columns,
                                   meta=meta("tensor metrics (and kurtosis metrics mk, ak, rk, "
                                             "kfa when the DKI was fitted) per ROI; "
                                             "diffusivities in um^2/ms (= 1e-3 mm^2/s)",
                                             NotProduced=not_produced),
                                   **{**ent, **STAGE_OUTPUTS["dwi"]})))
        for name, path in i.figures.items():
            out.append(str(w.write_bytes(Path(path).read_bytes(), sub=i.subject, ses=i.session,
                                         datatype="figures", desc=name, suffix="dwi",
                                         extension=".svg")))
        self._results["out_files"] = out
        return runtime


# --------------------------------------------------------------------------- workflow


def structural_inputs(out: Path, subject: str, session: str) -> dict[str, str]:
    """The structural outputs of a subject-session that the diffusion stage reads.

    Raises :class:`~pipeline.errors.InputError` naming the first missing file
    (the structural stage has to run first).
    """
    from pipeline.errors import InputError
    from pipeline.templates import SPACE
    from workflows.derivatives import build_path

    ent = {"sub": subject, "ses": session, "datatype": "anat"}
    files = {
        "t1w": build_path(out, suffix="T1w", extension=".nii.gz", desc="preproc", **ent),
        "mask": build_path(out, suffix="mask", extension=".nii.gz", desc="brain", **ent),
        "wm": build_path(out, suffix="probseg", extension=".nii.gz", label="WM", **ent),
        "lesion": build_path(out, suffix="mask", extension=".nii.gz", label="lesion", **ent),
        "hemisphere": build_path(out, suffix="dseg", extension=".nii.gz", desc="hemi", **ent),
        "mni_xfm": build_path(
            out,
            suffix="xfm",
            extension=".json",
            mode="image",
            **{"from": "T1w", "to": SPACE},
            **ent,
        ),
    }
    for path in files.values():
        if not path.exists():
            raise InputError(path, "structural output missing: run the anat stage of this "
                             "subject-session before the dwi stage")
    return {k: str(v) for k, v in files.items()}


def _node_params(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per node, only the configuration keys it reads (shaped like the configuration).

    Nipype hashes a node's inputs: passing the whole configuration made any change
    (even ``nbs.threshold``) rerun MP-PCA, motion correction and the fits.
    """
    d, v = config["dwi"], config["validation"]
    grads = {"validation": {k: v[k] for k in CANONICAL_GRADIENT_KEYS}}

    def pick(*keys: str) -> dict[str, Any]:
        return {**grads, "dwi": {k: d[k] for k in keys}}

    tensor = pick("exclude_outliers", "tensor_bmax", "tensor_shells", "tensor_method")
    tensor["validation"] = {**grads["validation"], "min_directions": v["min_directions"]}
    return {
        "load": {"validation": {k: v[k] for k in GRADIENT_KEYS}},
        "denoise": pick("denoise", "denoise_mask", "denoise_patch_radius"),
        "gibbs": {},
        "motion": pick("motion_correction", "phase_encoding_axis", "fd_threshold_mm",
                       "dropout_threshold", "eddy_correction", "exclude_outliers",
                       "warn_excluded_fraction", "max_excluded_fraction"),
        "mask": pick("mask"),
        "tensor": tensor,
        "kurtosis": pick("kurtosis", "exclude_outliers"),
        "rois": {"dwi": {k: d[k] for k in ("wm_threshold", "lesion_margin_mm",
                                           "perilesion_ring_mm", "atlas", "atlas_labels")}},
    }


def init_dwi_wf(
    *,
    config: dict[str, Any],
    dwi: str,
    bval: str,
    bvec: str,
    anat: dict[str, str] | None,
    subject: str,
    session: str,
    output_dir: str,
    nprocs: int = 1,
    name: str = "dwi_wf",
) -> pe.Workflow:
    """Diffusion workflow of one subject-session.

    Parameters
    ----------
    config : dict
        The whole resolved configuration (``dwi`` and ``validation`` sections used).
    dwi, bval, bvec : str
        Raw DWI series and its gradient files.
    anat : dict or None
        Structural outputs of the same session: ``t1w`` (preprocessed), ``mask``,
        ``wm`` (WM probability), ``lesion``, ``hemisphere``, ``mni_xfm``. None for a
        session without a T1w: brain mask from the DWI (median_otsu), no registration,
        the ROIs ``wholebrain`` and ``WM_FA`` only, and the measures that need the
        structural stage listed as not produced (:data:`NOT_PRODUCED_WITHOUT_T1W`).
    nprocs : int
        Processes for the per-volume steps (motion correction, Gibbs, tensor fit).
    """
    required = {"t1w", "mask", "wm", "lesion", "hemisphere", "mni_xfm"}
    missing = required - set(anat) if anat is not None else set()
    if missing:
        raise ValueError(f"init_dwi_wf: structural inputs {sorted(missing)} missing")
    dcfg = config["dwi"]
    wf = pe.Workflow(name=name)
    p = _node_params(config)
    load = pe.Node(LoadDwi(dwi=dwi, bval=bval, bvec=bvec, params=p["load"]), name="load")
    last = load
    if dcfg["denoise"] != "none":
        den = pe.Node(Denoise(params=p["denoise"], nprocs=nprocs), name="denoise")
        wf.connect(load, "dwi", den, "dwi")
        wf.connect(load, "bval", den, "bval")
        wf.connect(load, "bvec", den, "bvec")
        last = den
    if dcfg["gibbs"]:
        gib = pe.Node(Gibbs(params=p["gibbs"], nprocs=nprocs), name="gibbs")
        wf.connect([(last, gib, [("dwi", "dwi"), ("bval", "bval"), ("bvec", "bvec")])])
        last = gib
    moco = pe.Node(MotionCorrect(params=p["motion"], nprocs=nprocs), name="motion")
    wf.connect([(last, moco, [("dwi", "dwi"), ("bval", "bval"), ("bvec", "bvec")])])
    if anat is not None:
        to_t1 = pe.Node(EpiToT1w(t1w=anat["t1w"], t1w_mask=anat["mask"], source="dwi"),
                        name="dwi_to_t1w")
        wf.connect(moco, "b0", to_t1, "moving")
        mask = pe.Node(DwiMask(params=p["mask"], t1w_mask=anat["mask"]), name="mask")
        wf.connect(to_t1, "xfm", mask, "xfm")
    else:
        mask = pe.Node(DwiMask(params=p["mask"]), name="mask")
    wf.connect([(moco, mask, [("dwi", "dwi"), ("bval", "bval"), ("bvec", "bvec")])])
    tensor = pe.Node(FitTensor(params=p["tensor"], nprocs=nprocs), name="tensor")
    wf.connect([(moco, tensor, [("dwi", "dwi"), ("bval", "bval"), ("bvec", "bvec"),
                                ("outliers", "exclude")]),
                (mask, tensor, [("mask", "mask")])])
    if dcfg["denoise"] != "none":
        wf.connect(den, "noise", tensor, "noise")
    kurt = None
    if dcfg["kurtosis"] is not False:
        kurt = pe.Node(FitKurtosis(params=p["kurtosis"], nprocs=nprocs), name="kurtosis")
        wf.connect([(moco, kurt, [("dwi", "dwi"), ("bval", "bval"), ("bvec", "bvec"),
                                  ("outliers", "exclude")]),
                    (mask, kurt, [("mask", "mask")])])
    if anat is not None:
        rois = pe.Node(DwiRois(params=p["rois"], wm_prob=anat["wm"], lesion=anat["lesion"],
                               hemisphere=anat["hemisphere"], mni_xfm=anat["mni_xfm"]),
                       name="rois")
        wf.connect(to_t1, "xfm", rois, "xfm")
        qc = pe.Node(DwiQC(t1w=anat["t1w"], t1w_mask=anat["mask"]), name="qc")
        wf.connect(to_t1, "xfm", qc, "xfm")
    else:
        rois = pe.Node(DwiOnlyRois(), name="rois")
        qc = pe.Node(DwiQC(), name="qc")
    wf.connect([(tensor, rois, [("maps", "maps")]), (mask, rois, [("mask", "mask")])])
    if kurt is not None:
        wf.connect(kurt, "maps", rois, "kurtosis_maps")
    wf.connect([(tensor, qc, [("maps", "maps"), ("parameters", "tensor_parameters")]), (moco, qc, [("b0", "b0"), ("confounds", "confounds")]),
                (mask, qc, [("mask", "mask")]), (rois, qc, [("rois", "rois")])])
    sink = pe.Node(DwiDerivatives(output_dir=output_dir, subject=subject, session=session,
                                  config=config,
                                  sources=[dwi, bval, bvec, *(anat or {}).values()]),
                   name="derivatives")
    wf.connect([
        (load, sink, [("warnings", "warnings"), ("derived", "derived")]),
        (moco, sink, [("dwi", "dwi"), ("bval", "bval"), ("bvec", "bvec"),
                      ("confounds", "confounds"), ("parameters", "motion_parameters")]),
        (mask, sink, [("mask", "mask"), ("method", "mask_method")]),
        (tensor, sink, [("maps", "maps"), ("parameters", "tensor_parameters")]),
        (rois, sink, [("rois", "rois"), ("table", "table"), ("parameters", "roi_parameters")]),
        (qc, sink, [("figures", "figures")]),
    ])
    if anat is not None:
        wf.connect(to_t1, "xfm", sink, "xfm")
    if kurt is not None:
        wf.connect([(kurt, sink, [("maps", "kurtosis_maps"), ("parameters", "kurtosis_parameters")])])
    if dcfg["denoise"] != "none":
        wf.connect([(den, sink, [("noise", "noise"), ("parameters", "denoise_parameters")])])
    return wf
