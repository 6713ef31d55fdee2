"""Structural workflow (Nipype): brain mask, bias correction, registrations,
tissue segmentation, lesions, lesion and volume tables, QC figures.

``init_anat_wf`` builds a two-level graph whose nodes are the interfaces below;
each interface only loads files, calls :mod:`pipeline` functions and saves the
results in its node directory. :class:`AnatDerivatives` writes the final files
through the one derivatives writer.
"""

from __future__ import annotations

import json
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

__all__ = ["MNI_SPACE", "init_anat_wf"]

from pipeline.templates import SPACE as MNI_SPACE
from workflows.nodeio import save_array as _save
from workflows.nodeio import xfm_json as _xfm_main_file

# --------------------------------------------------------------------------- brain + bias


class _BrainInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="raw T1w image")
    prior_mask = File(exists=True, desc="template brain mask on the T1w grid")
    method = traits.Enum("deepbet", "threshold", usedefault=True)
    skull_stripped = traits.Either(traits.Enum("auto"), traits.Bool(), default="auto",
                                   usedefault=True)


class _BrainOutputSpec(TraitedSpec):
    mask = File(exists=True)
    preproc = File(exists=True, desc="bias-corrected T1w")
    brain = File(exists=True, desc="bias-corrected, skull-stripped T1w")
    parameters = traits.Dict()


class BrainMask(SimpleInterface):
    """Brain extraction then bias correction (:mod:`pipeline.anat.brain`)."""

    input_spec = _BrainInputSpec
    output_spec = _BrainOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.brain import correct_bias, extract_brain

        t1 = nib.load(self.inputs.t1w)
        prior = None
        if isdefined(self.inputs.prior_mask):
            prior = np.asanyarray(nib.load(self.inputs.prior_mask).dataobj) > 0.5
        result = extract_brain(t1, method=self.inputs.method,
                               skull_stripped=self.inputs.skull_stripped, prior_mask=prior)
        corrected, field = correct_bias(t1, result.mask, return_field=True)
        data = np.asarray(corrected.dataobj, dtype=np.float32)
        cwd = Path(runtime.cwd)
        self._results["mask"] = _save(result.mask, t1, cwd / "mask.nii.gz", np.uint8)
        self._results["preproc"] = _save(data, t1, cwd / "preproc.nii.gz")
        self._results["brain"] = _save(data * result.mask, t1, cwd / "brain.nii.gz")
        inside = field[result.mask]
        raw = np.asarray(t1.dataobj, dtype=np.float32)
        self._results["parameters"] = {
            "method": result.method, **dict(result.parameters),
            "bias_field_range": [float(inside.min()), float(inside.max())],
            "intensity_p999_raw": float(np.percentile(raw[result.mask], 99.9)),
            "intensity_p999_corrected": float(np.percentile(data[result.mask], 99.9)),
        }
        return runtime


class _ToReferenceInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="raw T1w of the session")
    xfm = File(exists=True, mandatory=True, desc="session T1w -> subject reference transform")
    reference = File(exists=True, mandatory=True, desc="subject reference image (target grid)")


class _ToReferenceOutputSpec(TraitedSpec):
    t1w = File(exists=True, desc="T1w on the subject reference grid")


class ToSubjectReference(SimpleInterface):
    """The session's T1w resampled once onto the within-subject reference grid."""

    input_spec = _ToReferenceInputSpec
    output_spec = _ToReferenceOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.reference import to_reference
        from pipeline.registration import Transform

        img = to_reference(nib.load(self.inputs.t1w), Transform.load(self.inputs.xfm),
                           nib.load(self.inputs.reference))
        path = Path(runtime.cwd) / "t1w_on_reference.nii.gz"
        nib.save(img, path)
        self._results["t1w"] = str(path)
        return runtime


# --------------------------------------------------------------------------- registrations


class _TemplateRegInputSpec(BaseInterfaceInputSpec):
    brain = File(exists=True, mandatory=True)
    syn = traits.Bool(True, usedefault=True)
    resolution_mm = traits.Float(2.0, usedefault=True)


class _XfmOutputSpec(TraitedSpec):
    xfm = File(exists=True, desc="transform JSON (warp file beside it when non-linear)")


class TemplateRegistration(SimpleInterface):
    """T1w brain -> MNI152 2009 template: affine (MI) + SyN (CC), DIPY."""

    input_spec = _TemplateRegInputSpec
    output_spec = _XfmOutputSpec

    def _run_interface(self, runtime):
        from pipeline.registration import register_to_template

        xfm = register_to_template(
            nib.load(self.inputs.brain),
            syn=self.inputs.syn,
            resolution_mm=self.inputs.resolution_mm,
        )
        files = xfm.save(Path(runtime.cwd) / "T1w_to_MNI_xfm.json")
        self._results["xfm"] = _xfm_main_file(files)
        return runtime


class _RigidInputSpec(BaseInterfaceInputSpec):
    fixed = File(exists=True, mandatory=True, desc="bias-corrected T1w (target)")
    fixed_mask = File(exists=True, mandatory=True)
    moving = File(exists=True, mandatory=True, desc="image to align (source)")
    source = traits.Str(mandatory=True)
    prior_xfm = File(exists=True, desc="session T1w -> subject reference transform (the fixed "
                     "image is on the reference grid; the moving one in the session's space)")


class _RigidOutputSpec(TraitedSpec):
    xfm = File(exists=True)
    resampled = File(exists=True, desc="moving image resampled on the fixed grid")
    quality = traits.Dict(desc="registration-quality record (NMI, header comparison)")


class RigidToT1w(SimpleInterface):
    """Another contrast of the same session onto the T1w: rigid mutual-information
    registration from the header alignment, kept only if it beats the header
    (:func:`pipeline.registration.register_rigid_or_keep_header`)."""

    input_spec = _RigidInputSpec
    output_spec = _RigidOutputSpec

    def _run_interface(self, runtime):
        from pipeline.registration import (
            Transform,
            register_rigid_or_keep_header,
            registration_quality,
        )

        prior = Transform.load(self.inputs.prior_xfm) if isdefined(self.inputs.prior_xfm) else None
        fixed = nib.load(self.inputs.fixed)
        mask = nib.load(self.inputs.fixed_mask)
        moving = nib.load(self.inputs.moving)
        result = register_rigid_or_keep_header(
            fixed, moving, static_mask=mask, source=self.inputs.source, target="T1w", prior=prior
        )
        xfm = result.transform
        cwd = Path(runtime.cwd)
        self._results["xfm"] = _xfm_main_file(
            xfm.save(cwd / f"{self.inputs.source}_to_T1w_xfm.json")
        )
        self._results["quality"] = {**result.quality(),
                                    **registration_quality(fixed, moving, xfm, mask=mask)}
        same_grid = moving.shape[:3] == fixed.shape[:3] and np.allclose(moving.affine, fixed.affine, atol=1e-4)
        if result.kept_header and same_grid and prior is None:  # already on the T1w grid: no interpolation at all
            out = nib.Nifti1Image(np.asarray(moving.dataobj, dtype=np.float32), fixed.affine)
        else:
            out = xfm.resample(moving, fixed, order=1)
        nib.save(out, cwd / "resampled.nii.gz")
        self._results["resampled"] = str(cwd / "resampled.nii.gz")
        return runtime


class _WarpTemplateInputSpec(BaseInterfaceInputSpec):
    xfm = File(exists=True, mandatory=True, desc="T1w -> MNI transform")
    reference = File(exists=True, mandatory=True, desc="T1w image (target grid)")
    resolution = traits.Int(2, usedefault=True)


class _WarpTemplateOutputSpec(TraitedSpec):
    maps = traits.Dict(desc="name -> file of template maps on the T1w grid")


#: Template maps brought into each subject's T1w space (interpolation order).
TEMPLATE_MAPS = {
    "brain": 1, "gm": 1, "wm": 1, "csf": 1,
    "ventricles": 0, "cortex": 0, "infratentorial": 0, "hemisphere": 0,
}


class WarpTemplate(SimpleInterface):
    """Template priors and anatomical masks resampled into T1w space (inverse warp)."""

    input_spec = _WarpTemplateInputSpec
    output_spec = _WarpTemplateOutputSpec

    def _run_interface(self, runtime):
        from pipeline.registration import Transform
        from pipeline.templates import load_mni_template

        tpl = load_mni_template(self.inputs.resolution)
        to_t1 = Transform.load(self.inputs.xfm).inverse()
        ref = nib.load(self.inputs.reference)
        maps = {}
        for name, order in TEMPLATE_MAPS.items():
            img = tpl.image(name)
            if order == 1:
                img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
            out = to_t1.resample(img, ref, order=order)
            path = Path(runtime.cwd) / f"{name}.nii.gz"
            nib.save(out, path)
            maps[name] = str(path)
        self._results["maps"] = maps
        return runtime


# --------------------------------------------------------------------------- lesions + tissues


class _LesionInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    brain_mask = File(exists=True, mandatory=True)
    maps = traits.Dict(mandatory=True)
    provided_mask = File(exists=True, desc="lesion mask from the lesion derivatives")
    provided_space = traits.Enum("T1w", "FLAIR")
    flair_xfm = File(exists=True, desc="FLAIR -> T1w transform")
    flair_in_t1w = File(exists=True, desc="FLAIR resampled on the T1w grid")
    t1w_xfm = File(exists=True, desc="native T1w -> processing grid (subject reference)")
    auto = traits.Bool(True, usedefault=True)
    min_volume_mm3 = traits.Float(3.0, usedefault=True)


class _LesionOutputSpec(TraitedSpec):
    mask = File(desc="lesion mask on the T1w grid (empty when none)")
    method = traits.Str()


class LesionMask(SimpleInterface):
    """The session's lesion mask in T1w space: the provided one, or FLAIR-based.

    A provided mask is resampled with nearest-neighbour interpolation (through the
    FLAIR -> T1w rigid transform for masks in FLAIR space). Without a mask, and
    with a FLAIR, hyperintensities in white matter are segmented automatically.
    Without either, the mask is empty and the method says so.
    """

    input_spec = _LesionInputSpec
    output_spec = _LesionOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.lesions import segment_lesions_flair
        from pipeline.registration import Transform

        ref = nib.load(self.inputs.reference)
        out = Path(runtime.cwd) / "lesion_mask.nii.gz"
        if isdefined(self.inputs.provided_mask):
            mask_img = nib.load(self.inputs.provided_mask)
            if self.inputs.provided_space == "FLAIR":
                xfm = Transform.load(self.inputs.flair_xfm)
            elif isdefined(self.inputs.t1w_xfm):
                xfm = Transform.load(self.inputs.t1w_xfm)
            else:
                xfm = Transform.identity("T1w", "T1w")
            data = xfm.resample_mask(mask_img, ref)
            method = f"provided (space-{self.inputs.provided_space}, linear resampling >= 0.5)"
        elif self.inputs.auto and isdefined(self.inputs.flair_in_t1w):
            wm = np.asanyarray(nib.load(self.inputs.maps["wm"]).dataobj)
            brain = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
            data, params = segment_lesions_flair(
                nib.load(self.inputs.flair_in_t1w), wm, brain,
                gm_prob=np.asanyarray(nib.load(self.inputs.maps["gm"]).dataobj),
                csf_prob=np.asanyarray(nib.load(self.inputs.maps["csf"]).dataobj),
            )
            method = f"automatic FLAIR segmentation {json.dumps(params, default=str)}"
        else:
            data = np.zeros(ref.shape[:3], dtype=bool)
            method = "none (no lesion mask provided and no FLAIR for automatic segmentation)"
        self._results["mask"] = _save(data, ref, out, np.uint8)
        self._results["method"] = method
        return runtime


class _SegmentInputSpec(BaseInterfaceInputSpec):
    preproc = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    maps = traits.Dict(mandatory=True)
    lesion_mask = File(exists=True, mandatory=True)
    nawm_margin_mm = traits.Float(2.0, usedefault=True)
    min_volume_mm3 = traits.Float(3.0, usedefault=True)


class _SegmentOutputSpec(TraitedSpec):
    probseg = traits.Dict(desc="tissue -> probability map file")
    dseg = File(exists=True)
    nawm = File(exists=True)
    lesions = File(exists=True, desc="lesion table TSV")
    lesion_totals = File(exists=True)
    volumes = File(exists=True)
    parameters = traits.Dict()


class SegmentAndMeasure(SimpleInterface):
    """Tissue segmentation with template priors, then lesion and volume tables."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from pipeline.anat.lesions import (
            classify_lesions,
            label_lesions,
            lesion_totals,
            normal_appearing_wm,
        )
        from pipeline.anat.segment import segment_tissues
        from pipeline.anat.volumes import tissue_volumes

        cwd = Path(runtime.cwd)
        t1 = nib.load(self.inputs.preproc)
        zooms = np.asarray(t1.header.get_zooms()[:3], dtype=float)
        brain = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
        maps = {k: np.asanyarray(nib.load(v).dataobj) for k, v in self.inputs.maps.items()}
        lesion = np.asanyarray(nib.load(self.inputs.lesion_mask).dataobj) > 0
        lesion &= brain
        seg = segment_tissues(
            t1, brain, priors={k: maps[k] for k in ("gm", "wm", "csf")}, lesion_mask=lesion
        )
        probseg = {}
        for k in ("gm", "wm", "csf"):
            probseg[k] = _save(getattr(seg, k), t1, cwd / f"{k}.nii.gz")
        dseg = _save(seg.labels, t1, cwd / "dseg.nii.gz", np.uint8)
        nawm = normal_appearing_wm(seg.labels == 3, lesion, margin_mm=self.inputs.nawm_margin_mm,
                                   voxel_size=zooms)
        nawm_file = _save(nawm, t1, cwd / "nawm.nii.gz", np.uint8)

        labels, _n = label_lesions(lesion, zooms, min_volume_mm3=self.inputs.min_volume_mm3)
        table = classify_lesions(
            labels, affine=t1.affine, ventricles=maps["ventricles"] > 0.5,
            cortex=maps["cortex"] > 0.5, infratentorial=maps["infratentorial"] > 0.5,
            brain_mask=brain,
        )
        totals = lesion_totals(table)
        cortex_gm = (maps["cortex"] > 0.5) & (seg.labels == 2)
        vols = tissue_volumes(
            seg, voxel_volume_mm3=float(np.prod(zooms)), lesion_mask=lesion,
            nawm_mask=nawm, cortex_mask=cortex_gm,
        )
        # both lesion volumes, named: every lesion voxel (volumes.tsv lesion_mm3) and the
        # lesions the tables count (components of at least lesion_min_volume_mm3)
        vols["lesion_tabulated_mm3"] = float(totals.loc[totals["location"] == "total",
                                                        "volume_mm3"].sum())
        table.to_csv(cwd / "lesions.tsv", sep="\t", index=False, na_rep="n/a")
        totals.to_csv(cwd / "totals.tsv", sep="\t", index=False, na_rep="n/a")
        pd.DataFrame([vols]).to_csv(cwd / "volumes.tsv", sep="\t", index=False, na_rep="n/a")
        self._results.update(
            probseg=probseg, dseg=dseg, nawm=nawm_file,
            lesions=str(cwd / "lesions.tsv"), lesion_totals=str(cwd / "totals.tsv"),
            volumes=str(cwd / "volumes.tsv"),
            parameters={"segmentation": seg.method, **dict(seg.parameters),
                        "nawm_lesion_margin_mm": self.inputs.nawm_margin_mm},
        )
        return runtime


# --------------------------------------------------------------------------- plausibility


class _ChecksInputSpec(BaseInterfaceInputSpec):
    preproc = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    brain_mask = File(exists=True, mandatory=True)
    brain_parameters = traits.Dict(mandatory=True, desc="BrainMask parameters")
    volumes = File(exists=True, mandatory=True, desc="volumes TSV")
    maps = traits.Dict(mandatory=True, desc="template maps on the T1w grid")
    mni_xfm = File(exists=True, mandatory=True)
    flair_in_t1w = File(exists=True)
    flair_quality = traits.Dict(desc="FLAIR -> T1w registration-quality record")
    reference_xfm = File(exists=True, desc="session T1w -> subject reference (first / unbiased)")


class _ChecksOutputSpec(TraitedSpec):
    checks = File(exists=True, desc="plausibility checks TSV")
    flagged = traits.Bool()


class StructuralChecks(SimpleInterface):
    """Plausibility checks of the session's structural results
    (:mod:`pipeline.anat.plausibility`)."""

    input_spec = _ChecksInputSpec
    output_spec = _ChecksOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from pipeline.anat.brain import dilate, voxel_sizes
        from pipeline.anat.plausibility import contrast_checks, structural_checks
        from pipeline.registration import Transform
        from pipeline.templates import load_mni_template

        t1 = nib.load(self.inputs.preproc)
        data = np.asarray(t1.dataobj, dtype=np.float32)
        mask = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
        vols = pd.read_csv(self.inputs.volumes, sep="\t").iloc[0]
        bp = self.inputs.brain_parameters
        maps = {k: np.asanyarray(nib.load(v).dataobj) for k, v in self.inputs.maps.items()}
        # T1w -> MNI: linear scaling and where the brain mask lands in the template
        xfm = Transform.load(self.inputs.mni_xfm)
        tpl = load_mni_template(2)
        warped = xfm.resample_mask(nib.Nifti1Image(mask.astype(np.uint8), t1.affine),
                                   tpl.image("brain"))
        inside = dilate(np.asarray(tpl.brain, bool), 5.0, voxel_sizes(tpl.affine))
        overlap = float((warped & inside).sum() / warped.sum()) if warped.any() else 0.0
        field_lo, field_hi = bp.get("bias_field_range", [np.nan, np.nan])
        wm_l = float(vols["wm_mm3"]) + float(vols["lesion_mm3"])
        measures = {
            "icv_l": float(vols["icv_mm3"]) / 1e6,
            "brain_l": float(vols["brain_mm3"]) / 1e6,
            "mni_scale": 1.0 / abs(float(np.linalg.det(xfm.affine[:3, :3]))),
            "mni_overlap": overlap,
            "bias_field_ratio": field_hi / field_lo if field_lo > 0 else np.inf,
            "intensity_gain": bp.get("intensity_p999_corrected", np.nan)
            / bp.get("intensity_p999_raw", np.nan),
            "intensity_range": bp.get("intensity_p999_raw"),
            "lesion_wm_fraction": float(vols["lesion_mm3"]) / wm_l if wm_l > 0 else None,
        }
        flair = None
        if isdefined(self.inputs.flair_in_t1w):
            flair = np.asarray(nib.load(self.inputs.flair_in_t1w).dataobj, dtype=np.float32)
        if isdefined(self.inputs.flair_quality) and self.inputs.flair_quality:
            q = self.inputs.flair_quality
            measures["flair_displacement_mm"] = (
                0.0 if q.get("kept_header_alignment") else q.get("registered_displacement_from_header_mm")
            )
            measures["flair_nmi_sharpness"] = q.get("nmi_sharpness")
        if isdefined(self.inputs.reference_xfm):
            from pipeline.registration import Transform

            q = Transform.load(self.inputs.reference_xfm).quality or {}
            measures["reference_nmi_sharpness"] = q.get("nmi_sharpness")
        tissue = {
            "wm": (maps["wm"] >= 0.9) & mask,
            "gm": (maps["cortex"] > 0.5) & (maps["gm"] >= 0.7) & mask,
            "csf": (maps["ventricles"] > 0.5) & mask,
        }
        measures.update(contrast_checks(t1w=data, flair=flair, masks=tissue))
        report = structural_checks(measures)
        path = Path(runtime.cwd) / "checks.tsv"
        report.table().to_csv(path, sep="\t", index=False, na_rep="n/a")
        self._results["checks"] = str(path)
        self._results["flagged"] = report.flagged
        return runtime


# --------------------------------------------------------------------------- QC figures


class _QcInputSpec(BaseInterfaceInputSpec):
    preproc = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    dseg = File(exists=True, mandatory=True)
    lesion_mask = File(exists=True, mandatory=True)
    nawm = File(exists=True, mandatory=True)
    xfm = File(exists=True, mandatory=True)
    flair_in_t1w = File(exists=True)


class _QcOutputSpec(TraitedSpec):
    figures = traits.Dict(desc="figure name -> SVG file")


class AnatQC(SimpleInterface):
    """QC figures: brain mask and tissue outlines, T1w in MNI with template
    outlines, lesion and NAWM outlines on FLAIR (or T1w)."""

    input_spec = _QcInputSpec
    output_spec = _QcOutputSpec

    def _run_interface(self, runtime):
        import matplotlib

        matplotlib.use("Agg")

        from pipeline.registration import Transform
        from pipeline.report.figures import Overlay, mosaic, save_figure
        from pipeline.templates import load_mni_template

        cwd = Path(runtime.cwd)
        t1 = nib.load(self.inputs.preproc)
        data = np.asarray(t1.dataobj, dtype=np.float32)
        mask = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
        dseg = np.asanyarray(nib.load(self.inputs.dseg).dataobj)
        lesion = np.asanyarray(nib.load(self.inputs.lesion_mask).dataobj) > 0
        nawm = np.asanyarray(nib.load(self.inputs.nawm).dataobj) > 0
        figs = {}

        def save(fig, name):
            figs[name] = save_figure(fig, cwd / f"{name}.svg")

        save(mosaic(data, t1.affine, [Overlay(mask, "red", "brain mask"),
                                      Overlay(dseg == 2, "lime", "GM"),
                                      Overlay(dseg == 3, "deepskyblue", "WM")],
                    title="Brain mask and tissue segmentation on the bias-corrected T1w"),
             "brainseg")
        tpl = load_mni_template(2)
        in_mni = Transform.load(self.inputs.xfm).resample(
            nib.Nifti1Image(data * mask, t1.affine), tpl.image("brain"), order=1
        )
        save(mosaic(np.asarray(in_mni.dataobj), tpl.affine,
                    [Overlay(tpl.brain, "red", "MNI brain"), Overlay(tpl.wm > 0.5, "yellow", "MNI WM")],
                    title=f"T1w in {MNI_SPACE} space with template outlines"),
             "t1w2mni")
        bg = data
        label = "T1w"
        if isdefined(self.inputs.flair_in_t1w):
            bg = np.asarray(nib.load(self.inputs.flair_in_t1w).dataobj, dtype=np.float32)
            label = "FLAIR"
        save(mosaic(bg, t1.affine, [Overlay(lesion, "red", "lesions"),
                                    Overlay(nawm, "deepskyblue", "NAWM")],
                    focus=mask, title=f"Lesions and NAWM on {label}"),
             "lesions")
        self._results["figures"] = figs
        return runtime


# --------------------------------------------------------------------------- derivatives


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str(mandatory=True)
    config = traits.Dict(mandatory=True, desc="resolved configuration (whole)")
    sources = traits.List(traits.Str(), desc="raw input files")
    preproc = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    brain_parameters = traits.Dict()
    probseg = traits.Dict(mandatory=True)
    dseg = File(exists=True, mandatory=True)
    nawm = File(exists=True, mandatory=True)
    hemisphere = traits.Dict(mandatory=True, desc="template maps (uses 'hemisphere')")
    lesion_mask = File(exists=True, mandatory=True)
    lesion_method = traits.Str(mandatory=True)
    lesions = File(exists=True, mandatory=True)
    lesion_totals = File(exists=True, mandatory=True)
    volumes = File(exists=True, mandatory=True)
    seg_parameters = traits.Dict()
    mni_xfm = File(exists=True, mandatory=True)
    flair_xfm = File(exists=True)
    flair_in_t1w = File(exists=True)
    flair_quality = traits.Dict(desc="FLAIR -> T1w registration-quality record")
    checks = File(exists=True, mandatory=True, desc="plausibility checks TSV")
    figures = traits.Dict(mandatory=True)
    grid = traits.Str("the session's own T1w grid", usedefault=True,
                      desc="which grid the outputs are on")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str())


#: Column descriptions of the tables written by the structural stage.
LESION_COLUMNS = {
    "lesion_id": {"Description": "connected component label in the lesion mask (26-connectivity)"},
    "volume_mm3": {"Description": "lesion volume", "Units": "mm^3"},
    "centroid_x": {"Description": "centroid, T1w world x (RAS+)", "Units": "mm"},
    "centroid_y": {"Description": "centroid, T1w world y (RAS+)", "Units": "mm"},
    "centroid_z": {"Description": "centroid, T1w world z (RAS+)", "Units": "mm"},
    "location": {"Description": "periventricular, juxtacortical, deep or infratentorial "
                 "(definitions in pipeline/anat/lesions.py)"},
    "distance_to_ventricles_mm": {"Description": "smallest distance to the ventricles", "Units": "mm"},
    "distance_to_cortex_mm": {"Description": "smallest distance to cortical GM", "Units": "mm"},
    "n_voxels": {"Description": "number of voxels of the lesion"},
    "infratentorial_fraction": {"Description": "fraction of lesion voxels in the template infratentorial region"},
    "in_brain_fraction": {"Description": "fraction of lesion voxels inside the brain mask"},
}


#: Column descriptions of the volumes table (fractions: ``<name>_fraction_icv``).
VOLUME_COLUMNS = {
    "icv_mm3": {"Description": "intracranial volume: the brain mask", "Units": "mm^3"},
    "gm_mm3": {"Description": "grey matter (sum of partial-volume fractions)", "Units": "mm^3"},
    "wm_mm3": {"Description": "white matter (sum of partial-volume fractions)", "Units": "mm^3"},
    "csf_mm3": {"Description": "CSF (sum of partial-volume fractions)", "Units": "mm^3"},
    "lesion_mm3": {"Description": "every voxel of the lesion mask", "Units": "mm^3"},
    "lesion_tabulated_mm3": {"Description": "lesions counted in the lesion tables: connected "
                             "components of at least anat.lesion_min_volume_mm3", "Units": "mm^3"},
    "brain_mm3": {"Description": "brain parenchyma: GM + WM + lesion", "Units": "mm^3"},
    "nawm_mm3": {"Description": "normal-appearing WM", "Units": "mm^3"},
    "cortical_gm_mm3": {"Description": "GM inside the template cortex", "Units": "mm^3"},
    "bpf": {"Description": "brain parenchymal fraction: brain / ICV"},
    "voxel_volume_mm3": {"Description": "volume of one voxel of the grid", "Units": "mm^3"},
}

#: Column descriptions of the plausibility-checks table.
CHECK_COLUMNS = {
    "name": {"Description": "check (pipeline/anat/plausibility.py LIMITS)"},
    "value": {"Description": "measured value (n/a: not measured)"},
    "lower": {"Description": "smallest plausible value (n/a: none)"},
    "upper": {"Description": "largest plausible value (n/a: none)"},
    "unit": {"Description": "unit of value, lower and upper"},
    "passed": {"Description": "True if the value is within its limits"},
    "message": {"Description": "what was measured and, if it failed, the likely cause"},
}


class AnatDerivatives(SimpleInterface):
    """Write the structural outputs of one subject-session (atomic, with provenance)."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from pipeline.registration import Transform
        from workflows.derivatives import DerivativesWriter

        i = self.inputs
        cfg = dict(i.config)
        w = DerivativesWriter(i.output_dir, config=cfg)
        ent = {"sub": i.subject, "ses": i.session, "datatype": "anat"}
        params = dict(cfg.get("anat", {}))
        out: list[str] = []

        def meta(extra=None, sources=None):
            return w.provenance(
                sources=sources if sources is not None else i.sources,
                parameters=params, seed=cfg.get("seed"), extra=extra,
            )

        def nifti(path, description, **spec):
            img = nib.load(path)
            out.append(
                str(w.write_nifti(img, meta=meta({"Description": description}), **ent, **spec))
            )

        params["grid"] = i.grid
        nifti(i.preproc, "T1w after brain extraction and bias correction",
              desc="preproc", suffix="T1w")
        nifti(i.brain_mask, f"brain mask ({i.brain_parameters.get('method', '')})",
              desc="brain", suffix="mask")
        for tissue, lab in (("gm", "GM"), ("wm", "WM"), ("csf", "CSF")):
            nifti(
                i.probseg[tissue],
                f"{lab} probability (lesion voxels 0)",
                label=lab,
                suffix="probseg",
            )
        dseg_meta = {"Description": "hard tissue labels", "Labels": {"0": "background", "1": "CSF",
                     "2": "GM", "3": "WM", "4": "lesion"}}
        out.append(str(w.write_nifti(nib.load(i.dseg), meta=meta(dseg_meta), **ent, suffix="dseg")))
        hemi_meta = {"Description": "hemisphere from the MNI template midline",
                     "Labels": {"0": "outside", "1": "left", "2": "right"}}
        out.append(str(w.write_nifti(nib.load(i.hemisphere["hemisphere"]), meta=meta(hemi_meta),
                                     **ent, desc="hemi", suffix="dseg")))
        nifti(i.lesion_mask, f"lesion mask on the T1w grid: {i.lesion_method}",
              label="lesion", suffix="mask")
        nifti(i.nawm, "normal-appearing WM: hard WM minus lesions dilated by "
              f"{params.get('nawm_lesion_margin_mm')} mm", label="NAWM", suffix="mask")
        xfm = Transform.load(i.mni_xfm)
        out.append(str(w.write_with(xfm.save, **ent, **{"from": "T1w", "to": MNI_SPACE},
                                    mode="image", suffix="xfm", extension=".json")))
        if isdefined(i.flair_xfm):
            fx = Transform.load(i.flair_xfm)
            out.append(str(w.write_with(fx.save, **ent, **{"from": "FLAIR", "to": "T1w"},
                                        mode="image", suffix="xfm", extension=".json")))
            quality = i.flair_quality if isdefined(i.flair_quality) else {}
            kept = quality.get("kept_header_alignment")
            how = ("header alignment kept (a rigid registration did not improve it)" if kept
                   else "rigidly registered")
            img = nib.load(i.flair_in_t1w)
            out.append(str(w.write_nifti(img, meta=meta({"Description": f"FLAIR on the T1w grid: {how}",
                                                          "RegistrationQuality": quality}),
                                         **ent, space="T1w", desc="preproc", suffix="FLAIR")))
        checks = pd.read_csv(i.checks, sep="\t", keep_default_na=False, na_values=["n/a"])
        failed = checks.loc[~checks["passed"].astype(bool)]
        out.append(str(w.write_tsv(
            checks, columns=CHECK_COLUMNS,
            meta=meta({"Description": "plausibility checks of the structural results "
                       "(pipeline/anat/plausibility.py); a failed check flags the session",
                       "Flagged": bool(len(failed)), "FailedChecks": list(failed["name"]),
                       "Reason": "; ".join(failed["message"])}),
            **ent, desc="plausibility", suffix="checks")))
        tables = (
            (i.lesions, {"suffix": "lesions"}, LESION_COLUMNS, "one row per lesion"),
            (i.lesion_totals, {"desc": "summary", "suffix": "lesions"}, None,
             "lesion count and volume per location class"),
            (i.volumes, {"suffix": "volumes"}, VOLUME_COLUMNS,
             "tissue volumes (mm^3) and fractions of intracranial volume"),
        )
        for path, spec, columns, desc in tables:
            df = pd.read_csv(path, sep="\t")
            out.append(str(w.write_tsv(df, columns=columns,
                                       meta=meta({"Description": desc, "LesionMethod": i.lesion_method,
                                                  "Segmentation": i.seg_parameters}),
                                       **ent, **spec)))
        for name, path in i.figures.items():
            out.append(str(w.write_bytes(Path(path).read_bytes(), sub=i.subject, ses=i.session,
                                         datatype="figures", desc=name, suffix="T1w",
                                         extension=".svg")))
        self._results["out_files"] = out
        return runtime


# --------------------------------------------------------------------------- workflow


def init_anat_wf(
    *,
    config: dict[str, Any],
    t1w: str,
    flair: str | None,
    lesion_mask: str | None,
    lesion_space: str | None,
    subject: str,
    session: str,
    output_dir: str,
    reference_xfm: str | None = None,
    reference_image: str | None = None,
    name: str = "anat_wf",
) -> pe.Workflow:
    """Structural workflow of one subject-session.

    Parameters
    ----------
    config : dict
        The resolved configuration (:meth:`pipeline.config.Config.to_dict`): its ``anat``
        section sets the nodes' parameters; the whole is stored with the outputs.
    t1w, flair : str
        Raw T1w (required) and FLAIR (optional) images.
    lesion_mask, lesion_space : str or None
        A provided lesion mask and its space (``T1w`` or ``FLAIR``).
    reference_xfm, reference_image : str or None
        Longitudinal mode (``anat.anatomical_reference`` first/unbiased): the
        session T1w -> subject reference transform and the reference image; the
        T1w is resampled once onto the reference grid and every output is on it.
    """
    anat_config = config["anat"]
    wf = pe.Workflow(name=name)
    sources = [p for p in (t1w, flair, lesion_mask, reference_xfm) if p]
    if (reference_xfm is None) != (reference_image is None):
        raise ValueError("reference_xfm and reference_image go together")
    method = anat_config["brain_extraction"]
    brain_opts = {"method": method, "skull_stripped": anat_config["skull_stripped"]}
    warp = pe.Node(WarpTemplate(resolution=int(anat_config["template_resolution"])),
                   name="template_to_t1w")
    if method == "threshold":
        # two passes: the template brain, registered with the first mask, constrains the second
        brain0 = pe.Node(BrainMask(**brain_opts), name="brain_initial")
        brain = pe.Node(BrainMask(**brain_opts), name="brain_refined")
        t1_targets = ((brain0, "t1w"), (warp, "reference"), (brain, "t1w"))
    else:  # the learned mask needs no template prior
        brain0 = brain = pe.Node(BrainMask(**brain_opts), name="brain")
        t1_targets = ((brain, "t1w"), (warp, "reference"))
    if reference_xfm:
        to_ref = pe.Node(ToSubjectReference(t1w=t1w, xfm=reference_xfm, reference=reference_image),
                         name="to_subject_reference")
        wf.connect([(to_ref, node, [("t1w", field)]) for node, field in t1_targets])
    else:
        for node, field in t1_targets:
            setattr(node.inputs, field, t1w)
    reg = pe.Node(
        TemplateRegistration(
            syn=anat_config["syn"], resolution_mm=float(anat_config["template_resolution"])
        ),
        name="t1w_to_mni",
    )
    wf.connect([(brain0, reg, [("brain", "brain")]), (reg, warp, [("xfm", "xfm")])])
    if brain is not brain0:
        wf.connect([(warp, brain, [(("maps", _pick, "brain"), "prior_mask")])])
    lesions = pe.Node(
        LesionMask(
            auto=anat_config["auto_lesions"], min_volume_mm3=anat_config["lesion_min_volume_mm3"]
        ),
        name="lesion_mask",
    )
    if lesion_mask:
        lesions.inputs.provided_mask = lesion_mask
        lesions.inputs.provided_space = lesion_space
        if reference_xfm and lesion_space == "T1w":
            lesions.inputs.t1w_xfm = reference_xfm
    wf.connect([
        (brain, lesions, [("preproc", "reference"), ("mask", "brain_mask")]),
        (warp, lesions, [("maps", "maps")]),
    ])
    seg = pe.Node(
        SegmentAndMeasure(nawm_margin_mm=anat_config["nawm_lesion_margin_mm"],
                          min_volume_mm3=anat_config["lesion_min_volume_mm3"]),
        name="segment",
    )
    wf.connect([
        (brain, seg, [("preproc", "preproc"), ("mask", "brain_mask")]),
        (warp, seg, [("maps", "maps")]),
        (lesions, seg, [("mask", "lesion_mask")]),
    ])
    checks = pe.Node(StructuralChecks(), name="plausibility")
    if reference_xfm:
        checks.inputs.reference_xfm = reference_xfm
    wf.connect([
        (brain, checks, [("preproc", "preproc"), ("mask", "brain_mask"),
                         ("parameters", "brain_parameters")]),
        (seg, checks, [("volumes", "volumes")]),
        (warp, checks, [("maps", "maps")]),
        (reg, checks, [("xfm", "mni_xfm")]),
    ])
    qc = pe.Node(AnatQC(), name="qc")
    wf.connect([
        (brain, qc, [("preproc", "preproc"), ("mask", "brain_mask")]),
        (seg, qc, [("dseg", "dseg"), ("nawm", "nawm")]),
        (lesions, qc, [("mask", "lesion_mask")]),
        (reg, qc, [("xfm", "xfm")]),
    ])
    sink = pe.Node(
        AnatDerivatives(output_dir=output_dir, subject=subject, session=session,
                        config=config, sources=sources,
                        grid=(f"subject reference ({anat_config['anatomical_reference']}): "
                              f"{Path(reference_image).name}") if reference_image else "the session's own T1w grid"),
        name="derivatives",
    )
    wf.connect([
        (brain, sink, [("preproc", "preproc"), ("mask", "brain_mask"), ("parameters", "brain_parameters")]),
        (seg, sink, [("probseg", "probseg"), ("dseg", "dseg"), ("nawm", "nawm"), ("lesions", "lesions"),
                     ("lesion_totals", "lesion_totals"), ("volumes", "volumes"),
                     ("parameters", "seg_parameters")]),
        (warp, sink, [("maps", "hemisphere")]),
        (lesions, sink, [("mask", "lesion_mask"), ("method", "lesion_method")]),
        (reg, sink, [("xfm", "mni_xfm")]),
        (qc, sink, [("figures", "figures")]),
        (checks, sink, [("checks", "checks")]),
    ])
    if flair:
        flair_reg = pe.Node(RigidToT1w(moving=flair, source="FLAIR"), name="flair_to_t1w")
        if reference_xfm:  # the FLAIR is in the session's space, the T1w on the reference grid
            flair_reg.inputs.prior_xfm = reference_xfm
        wf.connect([
            (brain, flair_reg, [("preproc", "fixed"), ("mask", "fixed_mask")]),
            (flair_reg, lesions, [("xfm", "flair_xfm"), ("resampled", "flair_in_t1w")]),
            (flair_reg, qc, [("resampled", "flair_in_t1w")]),
            (flair_reg, sink, [("xfm", "flair_xfm"), ("resampled", "flair_in_t1w"),
                               ("quality", "flair_quality")]),
            (flair_reg, checks, [("resampled", "flair_in_t1w"), ("quality", "flair_quality")]),
        ])
    elif lesion_mask and lesion_space == "FLAIR":
        raise ValueError(f"{lesion_mask}: lesion mask in FLAIR space but no FLAIR image")
    return wf


def _pick(mapping: dict, key: str) -> str:
    return mapping[key]
