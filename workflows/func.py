"""Resting-state fMRI workflow (Nipype): preprocessing, confounds, denoising, connectomes.

``init_func_wf`` builds a two-level graph; each interface below loads files,
calls :mod:`pipeline.func` (and :mod:`pipeline.registration`) functions and
saves its results in its node folder:

1. :class:`LoadBold`: the run and its sidecar validated (4-D, ``RepetitionTime``,
   ``SliceTiming`` against ``SliceEncodingDirection``).
2. :class:`PreprocessBold`: dummy volumes dropped, slice timing (optional, only
   when the sidecar has ``SliceTiming``), rigid realignment, FD (Power) and DVARS,
   BOLD reference and intensity mask.
3. :class:`~workflows.interfaces.registration.EpiToT1w`: BOLD reference -> preprocessed T1w (rigid, mutual
   information, as for the DWI); the structural transforms are loaded, never
   recomputed.
4. :class:`BoldMasks`: brain, white-matter and CSF masks in BOLD space from the
   structural mask and tissue probabilities (through the inverse of step 3).
5. :class:`BoldConfounds`: the confound table (fMRIPrep column names: motion
   with expansions, WM / CSF / global signals, aCompCor, FD, DVARS).
6. :class:`BoldToMni`: the realigned run resampled once into MNI space through
   ``bold -> T1w`` composed with the structural ``T1w -> MNI`` transform.
7. :class:`RegionSignals`: mean signal of every region (spheres on a
   coordinate atlas, or a label image), with coverage; regions with too little
   coverage are NaN (never dropped).
8. :class:`DenoiseRegions`: confound regression, band-pass, detrending,
   censoring (scrubbing); a run with too little data left is *excluded* (a
   recorded reason, not an error).
9. :class:`Connectomes`: correlation, Fisher z and optionally partial correlation.
10. :class:`FuncQC` figures and :class:`FuncDerivatives` (the one writer).

Parcellation space.  Regions are defined in MNI space (coordinate atlases are
MNI millimetres, label images are MNI images), so the realigned BOLD is
resampled into MNI space and the regions are extracted there, with nilearn's
maskers.  The alternative, carrying sphere centres into BOLD space through the
inverse transforms, would keep the data on its acquisition grid but distort
the spheres by the non-linear part of the registration and make label images
need a resampling anyway; one resampling of the data treats both kinds of
atlas alike.  Confounds (tissue signals, CompCor) are computed on the native
BOLD grid, where the tissue masks are sharpest.

fMRIPrep input mode (``func.input: fmriprep``).  :func:`fmriprep_inputs` finds
the run's fMRIPrep files and :func:`init_func_fmriprep_wf` replaces steps 1-6:
:class:`LoadFmriprep` checks the ``desc-preproc_bold`` (already realigned,
registered and resampled by fMRIPrep into ``func.fmriprep_space``) and its
brain mask, and :class:`FmriprepConfounds` reads ``desc-confounds_timeseries.tsv``
through nilearn's ``load_confounds``
(:func:`pipeline.func.confounds.fmriprep_confound_set`) with the same strategy,
scrubbing and dummy-volume keys.  Steps 7-10 are the same interfaces on the
fMRIPrep grid, so regions, matrices, region table, summary and figures carry
the same names as in the raw mode; no structural output is read.  fMRIPrep's
default ``MNI152NLin2009cAsym`` and the ``MNI152NLin2009aSym`` template of the
raw mode are both ICBM 2009 non-linear averages of the MNI152 subjects in one
coordinate frame, so coordinate atlases (and label images, resampled through
world coordinates) are used on either as they are, as nilearn does; the
sidecars record the input space (``InputSpace``, :data:`SPACE_NOTE`).

Nodes receive only the parameters they use (not the whole configuration), so a
re-run that changes, e.g., the denoising strategy re-uses the cached
realignment and registrations.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
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
from workflows.nodeio import SERIES_EXT, load_array, save_array
from workflows.outputs import MEASURE_STATS, seg_name

__all__ = [
    "MEASURE_STATS",
    "SPACE_NOTE",
    "fmriprep_inputs",
    "func_structural_inputs",
    "init_func_fmriprep_wf",
    "init_func_wf",
    "seg_name",
]

log = logging.getLogger("msmri.func")

#: Connectivity measures (``func.measures``) -> (nilearn kind, ``stat-`` entity, description).


#: How the fMRIPrep space is related to the atlases' MNI frame (written to the sidecars).
SPACE_NOTE = (
    "fMRIPrep input: the BOLD is in the space of its space- entity (InputSpace); coordinate "
    "atlases and label images are applied to it in MNI millimetres as they are, treating "
    "InputSpace and MNI152NLin2009aSym (the template of the raw mode) as one coordinate frame, "
    "as nilearn does: both are ICBM 2009 non-linear averages of the MNI152 subjects, and their "
    "differences are small next to the region size"
)


def _read_tsv(path: str):
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


# --------------------------------------------------------------------------- load


class _LoadInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True)
    bold_json = File(exists=True, desc="BIDS sidecar (RepetitionTime, SliceTiming)")
    params = traits.Dict(mandatory=True, desc="min_volumes, slice_timing")


class _LoadOutputSpec(TraitedSpec):
    tr = traits.Float()
    slice_timing = traits.List(traits.Float(), desc="per slice, in voxel order; empty = none")
    slice_axis = traits.Int()
    n_volumes = traits.Int()
    warnings = traits.List(traits.Str())


def slice_timing_from_sidecar(meta: dict, shape, source) -> tuple[list[float], int]:
    """``SliceTiming`` in voxel order along the slice axis (BIDS ``SliceEncodingDirection``).

    A negative direction (``k-``) lists the slices from the last voxel index
    down, so the list is reversed.  Raises :class:`~pipeline.errors.InputError`
    naming ``source`` when the direction is invalid or the count does not match.
    """
    from pipeline.errors import InputError

    direction = str(meta.get("SliceEncodingDirection", "k"))
    if direction not in ("i", "j", "k", "i-", "j-", "k-"):
        raise InputError(source, f"SliceEncodingDirection: expected i, j, k, i-, j- or k-, "
                         f"got {direction!r}")
    axis = "ijk".index(direction[0])
    st = [float(t) for t in meta["SliceTiming"]]
    if len(st) != shape[axis]:
        raise InputError(source, f"SliceTiming has {len(st)} entries but the BOLD has "
                         f"{shape[axis]} slices along axis {axis} (SliceEncodingDirection "
                         f"{direction!r}, shape {tuple(shape[:3])})")
    if direction.endswith("-"):
        st = st[::-1]
    return st, axis


class LoadBold(SimpleInterface):
    """Validate the run and its timing metadata (:func:`pipeline.validation.validate_bold`)."""

    input_spec = _LoadInputSpec
    output_spec = _LoadOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import InputError
        from pipeline.validation import validate_bold

        i = self.inputs
        sidecar = i.bold_json if isdefined(i.bold_json) else None
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            chk = validate_bold(i.bold, sidecar, min_volumes=i.params["min_volumes"])
        notes = [str(w.message) for w in record]
        meta = json.loads(Path(sidecar).read_text())
        shape = nib.load(i.bold).shape
        st, axis = [], 2
        if i.params["slice_timing"]:
            if "SliceTiming" in meta:
                st, axis = slice_timing_from_sidecar(meta, shape, sidecar)
                bad = [t for t in st if not 0 <= t < chk.repetition_time]
                if bad:
                    raise InputError(sidecar, f"SliceTiming values must lie in [0, RepetitionTime = "
                                     f"{chk.repetition_time:g} s), got {bad[:5]}")
            else:
                notes.append(f"{sidecar}: no SliceTiming; slice-timing correction skipped")
        self._results.update(tr=chk.repetition_time, slice_timing=st, slice_axis=axis,
                             n_volumes=chk.n_volumes, warnings=notes)
        return runtime


# --------------------------------------------------------------------------- preprocessing


class _PreprocInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True)
    tr = traits.Float(mandatory=True)
    slice_timing = traits.List(traits.Float())
    slice_axis = traits.Int(2, usedefault=True)
    params = traits.Dict(mandatory=True, desc="dummy_volumes, slice_time_ref, realign_fwhm_mm")


class _PreprocOutputSpec(TraitedSpec):
    bold = File(exists=True, desc="realigned run (dummies removed)")
    boldref = File(exists=True, desc="temporal mean of the realigned run")
    mask = File(exists=True, desc="intensity brain mask of the reference")
    motion = File(exists=True, desc="motion parameters, FD, DVARS (TSV)")
    parameters = traits.Dict()


class PreprocessBold(SimpleInterface):
    """Dummies, slice timing, realignment, FD, DVARS (:func:`pipeline.func.preprocess.preprocess_bold`)."""

    input_spec = _PreprocInputSpec
    output_spec = _PreprocOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.preprocess import preprocess_bold

        i = self.inputs
        p = i.params
        st = list(i.slice_timing) if isdefined(i.slice_timing) and i.slice_timing else None
        pre = preprocess_bold(
            i.bold, tr=i.tr, n_dummy=p["dummy_volumes"], slice_timing=st, slice_axis=i.slice_axis,
            slice_time_ref=p["slice_time_ref"], fwhm_mm=p["realign_fwhm_mm"],
        )
        cwd = Path(runtime.cwd)
        nib.save(pre.image(), cwd / f"realigned{SERIES_EXT}")
        nib.save(pre.mean_image(), cwd / "boldref.nii.gz")
        nib.save(pre.mask_image(), cwd / "mask.nii.gz")
        pre.confounds().to_csv(cwd / "motion.tsv", sep="\t", index=False, na_rep="n/a")
        fd = pre.framewise_displacement
        self._results.update(
            bold=str(cwd / f"realigned{SERIES_EXT}"), boldref=str(cwd / "boldref.nii.gz"),
            mask=str(cwd / "mask.nii.gz"), motion=str(cwd / "motion.tsv"),
            parameters={
                "n_dummy_removed": pre.n_dummy, "n_volumes": pre.n_volumes,
                "repetition_time_s": pre.tr,
                "slice_timing_corrected": pre.slice_timing_corrected,
                "slice_time_ref": p["slice_time_ref"] if pre.slice_timing_corrected else None,
                "realignment": "rigid, every volume to the mean of the first 5: Gauss-Newton "
                               "least squares on the native grid (pipeline.realign), trilinear "
                               "resampling",
                "realign_fwhm_mm": p["realign_fwhm_mm"],
                "mean_framewise_displacement_mm": float(fd.mean()),
                "max_framewise_displacement_mm": float(fd.max()),
            },
        )
        return runtime


# --------------------------------------------------------------------------- registration + masks


class _MasksInputSpec(BaseInterfaceInputSpec):
    boldref = File(exists=True, mandatory=True)
    bold_mask = File(exists=True, mandatory=True, desc="intensity mask of the BOLD reference")
    xfm = File(exists=True, mandatory=True, desc="bold -> T1w")
    t1w_mask = File(exists=True, mandatory=True)
    wm_prob = File(exists=True, mandatory=True)
    csf_prob = File(exists=True, mandatory=True)
    params = traits.Dict(mandatory=True, desc="wm_threshold, csf_threshold")


class _MasksOutputSpec(TraitedSpec):
    brain = File(exists=True)
    wm = File(exists=True)
    csf = File(exists=True)
    parameters = traits.Dict()


class BoldMasks(SimpleInterface):
    """Brain, WM and CSF masks on the BOLD grid (:func:`pipeline.func.confounds.nuisance_masks`)."""

    input_spec = _MasksInputSpec
    output_spec = _MasksOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import InputError
        from pipeline.func.confounds import nuisance_masks
        from pipeline.registration import Transform

        i = self.inputs
        ref_img = nib.load(i.boldref)
        ref = (ref_img.shape[:3], ref_img.affine)
        to_bold = Transform.load(i.xfm).inverse()  # T1w -> bold
        brain = to_bold.resample_mask(nib.load(i.t1w_mask), ref) & (load_array(i.bold_mask) > 0)
        if brain.sum() < 100:
            raise InputError(i.boldref, f"brain mask in BOLD space has {int(brain.sum())} voxels: "
                             "the BOLD -> T1w registration or the BOLD field of view is wrong")
        wm = np.asarray(to_bold.resample(nib.load(i.wm_prob), ref, order=1).dataobj)
        csf = np.asarray(to_bold.resample(nib.load(i.csf_prob), ref, order=1).dataobj)
        try:
            wm_m, csf_m, notes = nuisance_masks(
                wm, csf, brain, wm_threshold=i.params["wm_threshold"],
                csf_threshold=i.params["csf_threshold"],
            )
        except ValueError as exc:
            raise InputError(i.csf_prob, f"tissue masks in BOLD space: {exc}") from exc
        cwd = Path(runtime.cwd)
        self._results.update(
            brain=save_array(brain, ref_img, cwd / "brain.nii.gz", np.uint8),
            wm=save_array(wm_m, ref_img, cwd / "wm.nii.gz", np.uint8),
            csf=save_array(csf_m, ref_img, cwd / "csf.nii.gz", np.uint8),
            parameters={
                "brain_mask": "T1w brain mask through the inverse bold -> T1w transform (linear, "
                              ">= 0.5) intersected with the BOLD intensity mask",
                "wm_mask": f"WM probability >= {i.params['wm_threshold']}, eroded once",
                "csf_mask": f"CSF probability >= {i.params['csf_threshold']}",
                "n_voxels": {"brain": int(brain.sum()), "wm": int(wm_m.sum()),
                             "csf": int(csf_m.sum())},
                "notes": notes,
            },
        )
        return runtime


# --------------------------------------------------------------------------- confounds


class _ConfoundsInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True, desc="realigned run")
    motion = File(exists=True, mandatory=True)
    brain = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True)
    csf = File(exists=True, mandatory=True)
    params = traits.Dict(mandatory=True, desc="n_compcor")


class _ConfoundsOutputSpec(TraitedSpec):
    confounds = File(exists=True)


class BoldConfounds(SimpleInterface):
    """Confound table of the run (:func:`pipeline.func.confounds.compute_confounds`)."""

    input_spec = _ConfoundsInputSpec
    output_spec = _ConfoundsOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.confounds import MOTION_COLUMNS, compute_confounds

        i = self.inputs
        motion = _read_tsv(i.motion)
        data = np.asarray(nib.load(i.bold).dataobj, dtype=np.float32)
        table = compute_confounds(
            data, motion[list(MOTION_COLUMNS)].to_numpy(float), brain_mask=load_array(i.brain) > 0,
            wm_mask=load_array(i.wm) > 0, csf_mask=load_array(i.csf) > 0,
            framewise_displacement=motion["framewise_displacement"].to_numpy(float),
            std_dvars=motion["std_dvars"].to_numpy(float), n_compcor=i.params["n_compcor"],
        )
        table["dvars"] = motion["dvars"].to_numpy(float)
        if "dvars_raw" in motion:
            table["dvars_raw"] = motion["dvars_raw"].to_numpy(float)
        path = Path(runtime.cwd) / "confounds.tsv"
        table.to_csv(path, sep="\t", index=False, na_rep="n/a")
        self._results["confounds"] = str(path)
        return runtime


# --------------------------------------------------------------------------- fMRIPrep input


class _LoadFmriprepInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True, desc="fMRIPrep desc-preproc_bold (MNI space)")
    bold_json = File(exists=True, desc="sidecar giving RepetitionTime (fMRIPrep's, else the raw)")
    mask = File(exists=True, desc="fMRIPrep desc-brain_mask of the run (optional)")
    params = traits.Dict(mandatory=True, desc="min_volumes, dummy_volumes, space")
    notes = traits.List(traits.Str(), desc="notes of the file search")


class _LoadFmriprepOutputSpec(TraitedSpec):
    tr = traits.Float()
    n_volumes = traits.Int(desc="volumes of the file (before dummy removal)")
    mask = File(exists=True, desc="brain mask on the BOLD grid")
    boldref = File(exists=True, desc="temporal mean of the kept volumes")
    parameters = traits.Dict()
    warnings = traits.List(traits.Str())


class LoadFmriprep(SimpleInterface):
    """Check an fMRIPrep run (:func:`pipeline.validation.validate_bold`), its mask and mean.

    fMRIPrep's ``desc-brain_mask`` must be on the BOLD grid; without one, the
    mask is the voxels whose temporal mean exceeds 20 % of its 98th percentile.
    """

    input_spec = _LoadFmriprepInputSpec
    output_spec = _LoadFmriprepOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import InputError
        from pipeline.validation import validate_bold

        i = self.inputs
        p = i.params
        sidecar = i.bold_json if isdefined(i.bold_json) else None
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            chk = validate_bold(i.bold, sidecar, min_volumes=p["min_volumes"])
        notes = [*(i.notes if isdefined(i.notes) else []), *(str(w.message) for w in record)]
        n = int(p["dummy_volumes"])
        if chk.n_volumes - n < p["min_volumes"]:
            raise InputError(i.bold, f"{chk.n_volumes} volumes, {chk.n_volumes - n} after "
                             f"func.dummy_volumes = {n}; at least {p['min_volumes']} needed")
        img = nib.load(i.bold)
        mean = np.asarray(img.dataobj[..., n:], dtype=np.float32).mean(axis=3)
        if isdefined(i.mask) and i.mask:
            mimg = nib.load(i.mask)
            if mimg.shape[:3] != img.shape[:3] or not np.allclose(
                mimg.affine, img.affine, atol=1e-3
            ):
                raise InputError(i.mask, f"brain mask grid {mimg.shape[:3]} differs from the BOLD "
                                 f"grid {img.shape[:3]} of {Path(i.bold).name} (affines compared "
                                 "too)")
            brain = np.asanyarray(mimg.dataobj) > 0
            how = f"fMRIPrep brain mask {Path(i.mask).name}"
        else:
            pos = mean[mean > 0]
            brain = mean > (0.2 * np.percentile(pos, 98) if pos.size else np.inf)
            how = "no fMRIPrep brain mask: temporal mean > 20 % of its 98th percentile"
            notes.append(f"{Path(i.bold).name}: {how}")
        if brain.sum() < 100:
            raise InputError(i.mask if isdefined(i.mask) else i.bold,
                             f"brain mask has {int(brain.sum())} voxels")
        cwd = Path(runtime.cwd)
        ref = nib.Nifti1Image(mean, img.affine)
        nib.save(ref, cwd / "boldref.nii.gz")
        self._results.update(
            tr=chk.repetition_time, n_volumes=chk.n_volumes,
            mask=save_array(brain, ref, cwd / "mask.nii.gz", np.uint8),
            boldref=str(cwd / "boldref.nii.gz"), warnings=notes,
            parameters={
                "input": "fmriprep", "space": p["space"],
                "n_dummy_removed": n, "n_volumes": chk.n_volumes - n,
                "repetition_time_s": chk.repetition_time,
                "voxel_mm": [float(z) for z in img.header.get_zooms()[:3]],
                "grid_shape": list(img.shape[:3]), "brain_mask": how,
                "n_brain_voxels": int(brain.sum()),
                "preprocessing": "fMRIPrep (realignment, registration and resampling into "
                                 f"{p['space']}); not redone here",
            },
        )
        return runtime


class _FmriprepConfInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True, desc="fMRIPrep desc-preproc_bold (nilearn finds "
                "the confounds from its name)")
    confounds = File(exists=True, mandatory=True, desc="desc-confounds_timeseries.tsv")
    confounds_json = File(exists=True, desc="its JSON (CompCor masks); hashed, read by nilearn")
    n_volumes = traits.Int(mandatory=True, desc="volumes of the BOLD file")
    params = traits.Dict(mandatory=True, desc="strategy, n_compcor, scrubbing, fd_threshold_mm, "
                         "scrub_before, scrub_after, min_segment, dummy_volumes")


class _FmriprepConfOutputSpec(TraitedSpec):
    confounds = File(exists=True, desc="fMRIPrep's whole table, dummies removed")
    regressors = File(exists=True, desc="the strategy's regressors (nilearn load_confounds)")
    keep = traits.List(traits.Bool(), desc="volumes kept by nilearn's scrubbing")
    notes = traits.List(traits.Str())


class FmriprepConfounds(SimpleInterface):
    """fMRIPrep confounds of a strategy (:func:`pipeline.func.confounds.fmriprep_confound_set`)."""

    input_spec = _FmriprepConfInputSpec
    output_spec = _FmriprepConfOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import InputError
        from pipeline.func.confounds import fmriprep_confound_set

        i = self.inputs
        p = i.params
        cs = fmriprep_confound_set(
            i.bold, p["strategy"], scrubbing=p["scrubbing"], fd_threshold=p["fd_threshold_mm"],
            before=p["scrub_before"], after=p["scrub_after"], min_segment=p["min_segment"],
            n_compcor=p["n_compcor"], n_dummy=p["dummy_volumes"],
        )
        n_rows = len(cs.table) + int(p["dummy_volumes"])
        if n_rows != i.n_volumes:
            raise InputError(cs.source, f"{n_rows} rows, but {Path(i.bold).name} has "
                             f"{i.n_volumes} volumes")
        if "framewise_displacement" not in cs.table.columns:  # the summary and QC need it
            raise InputError(cs.source, "missing column 'framewise_displacement'")
        cwd = Path(runtime.cwd)
        cs.table.to_csv(cwd / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
        cs.regressors.to_csv(cwd / "regressors.tsv", sep="\t", index=False, na_rep="n/a")
        self._results.update(confounds=str(cwd / "confounds.tsv"),
                             regressors=str(cwd / "regressors.tsv"),
                             keep=[bool(k) for k in cs.sample_mask], notes=list(cs.notes))
        return runtime


# --------------------------------------------------------------------------- MNI


def mni_grid(voxel_mm: float, resolution: int = 2) -> tuple[tuple[int, int, int], np.ndarray]:
    """The template's field of view on an isotropic grid of ``voxel_mm`` (same origin and axes)."""
    from pipeline.templates import load_mni_template

    tpl = load_mni_template(resolution)
    step = float(voxel_mm) / float(resolution)
    aff = np.array(tpl.affine, dtype=float)
    aff[:3, :3] = aff[:3, :3] * step
    shape = tuple(int(np.ceil(s / step)) for s in tpl.shape)
    return shape, aff


class _MniInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True, desc="realigned run")
    brain = File(exists=True, mandatory=True, desc="brain mask in BOLD space")
    xfm = File(exists=True, mandatory=True, desc="bold -> T1w")
    mni_xfm = File(exists=True, mandatory=True, desc="T1w -> MNI (structural stage)")
    params = traits.Dict(mandatory=True, desc="mni_voxel_mm, template_resolution")


class _MniOutputSpec(TraitedSpec):
    bold = File(exists=True)
    mask = File(exists=True)
    parameters = traits.Dict()


class BoldToMni(SimpleInterface):
    """The realigned run and its mask in MNI space (bold -> T1w -> MNI, one resampling)."""

    input_spec = _MniInputSpec
    output_spec = _MniOutputSpec

    def _run_interface(self, runtime):
        from pipeline.registration import Transform
        from pipeline.templates import SPACE

        i = self.inputs
        img = nib.load(i.bold)
        voxel = i.params["mni_voxel_mm"] or float(max(img.header.get_zooms()[:3]))
        grid = mni_grid(voxel, i.params["template_resolution"])
        to_mni = Transform.load(i.xfm).compose(Transform.load(i.mni_xfm))
        out = to_mni.resample(img, grid, order=1)
        mask = to_mni.resample_mask(nib.load(i.brain), grid)
        cwd = Path(runtime.cwd)
        nib.save(out, cwd / f"bold_mni{SERIES_EXT}")
        self._results.update(
            bold=str(cwd / f"bold_mni{SERIES_EXT}"),
            mask=save_array(mask, out, cwd / "mask_mni.nii.gz", np.uint8),
            parameters={"space": SPACE, "voxel_mm": voxel, "grid_shape": list(grid[0]),
                        "resampling": "trilinear, bold -> T1w (rigid) composed with T1w -> "
                                      "MNI (affine + SyN) in one step"},
        )
        return runtime


# --------------------------------------------------------------------------- regions


def _parcellation(p: dict):
    from pipeline.func.connectome import COORDINATE_ATLASES, label_parcellation, sphere_parcellation

    if p["atlas"] in COORDINATE_ATLASES:
        return sphere_parcellation(p["atlas"], radius_mm=p["sphere_radius_mm"])
    from pipeline.errors import InputError

    for path in (p["atlas"], p["atlas_labels"]):
        if not Path(path).is_file():
            raise InputError(path, "func.atlas / func.atlas_labels file not found")
    return label_parcellation(p["atlas"], p["atlas_labels"],
                              name=seg_name(p["atlas"], p["atlas_labels"]))


class _RegionInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True, desc="BOLD in MNI space")
    mask = File(exists=True, mandatory=True, desc="BOLD brain mask in MNI space")
    params = traits.Dict(mandatory=True, desc="atlas, atlas_labels, sphere_radius_mm, min_coverage "
                         "(and drop_volumes: leading volumes removed from the time series)")


class _RegionOutputSpec(TraitedSpec):
    timeseries = File(exists=True, desc="raw mean signal per region (TSV, volumes x regions)")
    regions = File(exists=True, desc="region table with coverage and valid flags (TSV)")
    parameters = traits.Dict()


class RegionSignals(SimpleInterface):
    """Region time series with coverage (:func:`pipeline.func.connectome.extract_region_timeseries`)."""

    input_spec = _RegionInputSpec
    output_spec = _RegionOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.connectome import extract_region_timeseries

        i = self.inputs
        p = i.params
        parc = _parcellation(p)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            rts = extract_region_timeseries(i.bold, parc, mask_img=nib.load(i.mask),
                                            min_coverage=p["min_coverage"])
        cwd = Path(runtime.cwd)
        ts = rts.timeseries.iloc[int(p.get("drop_volumes", 0)) :]  # dummies of an fMRIPrep run
        ts.to_csv(cwd / "timeseries.tsv", sep="\t", index=False, na_rep="n/a")
        rts.regions.assign(valid=rts.regions["valid"].astype(int)).to_csv(
            cwd / "regions.tsv", sep="\t", index=False, na_rep="n/a")
        invalid = rts.regions.loc[~rts.valid, "label"].tolist()
        self._results.update(
            timeseries=str(cwd / "timeseries.tsv"), regions=str(cwd / "regions.tsv"),
            parameters={
                "atlas": p["atlas"], "atlas_labels": p["atlas_labels"], "kind": parc.kind,
                "sphere_radius_mm": parc.radius_mm, "min_coverage": p["min_coverage"],
                "n_regions": parc.n_regions, "n_regions_valid": int(rts.valid.sum()),
                "regions_without_coverage": invalid,
                "extraction": "mean of the MNI-space BOLD in each region within the BOLD brain "
                              "mask (nilearn NiftiSpheresMasker / NiftiLabelsMasker)",
                "warnings": sorted({str(w.message) for w in record})[:10],
            },
        )
        return runtime


# --------------------------------------------------------------------------- denoising


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    timeseries = File(exists=True, mandatory=True)
    regions = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    tr = traits.Float(mandatory=True)
    params = traits.Dict(mandatory=True)
    regressors = File(exists=True, desc="fMRIPrep mode: the regressors (nilearn load_confounds); "
                      "otherwise the strategy's columns of confounds are used")
    keep = traits.List(traits.Bool(), desc="fMRIPrep mode: volumes kept (nilearn scrubbing)")
    source = traits.Str(desc="the BOLD run, named in messages", nohash=True)


class _DenoiseOutputSpec(TraitedSpec):
    denoised = File(desc="denoised region time series of the kept volumes (absent if excluded)")
    sample_mask = traits.List(traits.Bool(), desc="volumes kept after censoring")
    summary = traits.Dict(desc="strategy, kept volumes, duration, dof, exclusion")


class DenoiseRegions(SimpleInterface):
    """Confound regression, filtering and censoring (:func:`pipeline.func.confounds.denoise_with_strategy`).

    With ``regressors`` and ``keep`` (fMRIPrep mode) the regressors and the
    sample mask are given and :func:`pipeline.func.confounds.denoise` is called.
    """

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import InputError
        from pipeline.func.confounds import denoise, denoise_with_strategy, strategy_columns

        i = self.inputs
        p = i.params
        ts = _read_tsv(i.timeseries)
        table = _read_tsv(i.confounds)
        regions = _read_tsv(i.regions)
        if isdefined(i.regressors) and i.regressors:
            reg = _read_tsv(i.regressors)
            if len(reg) != len(ts) or len(i.keep) != len(ts):
                raise InputError(i.confounds, f"{len(reg)} confound rows for {len(ts)} volumes")
            regressors = reg.columns.tolist()
            res = denoise(
                ts.to_numpy(float), reg, tr=i.tr, sample_mask=np.asarray(i.keep, dtype=bool),
                high_pass=p["high_pass"], low_pass=p["low_pass"], detrend=p["detrend"],
                standardize=p["standardize"], min_duration_s=p["min_duration_s"],
                strategy=p["strategy"] + ("+scrubbing" if p["scrubbing"] else ""),
            )
        else:
            regressors = strategy_columns(p["strategy"], p["n_compcor"])
            res = denoise_with_strategy(
                ts.to_numpy(float), table, p["strategy"], tr=i.tr, scrubbing=p["scrubbing"],
                fd_threshold=p["fd_threshold_mm"], before=p["scrub_before"],
                after=p["scrub_after"], min_segment=p["min_segment"],
                min_duration_s=p["min_duration_s"], high_pass=p["high_pass"],
                low_pass=p["low_pass"], detrend=p["detrend"], standardize=p["standardize"],
                n_compcor=p["n_compcor"], source=i.confounds,
            )
        excluded, reason = res.excluded, res.reason
        n_valid = int(regions["valid"].astype(bool).sum())
        if not excluded and n_valid < 2:
            excluded = True
            reason = (f"only {n_valid} of {len(regions)} regions have coverage >= "
                      f"{p['min_coverage']}; a connectome needs at least 2")
        n_t = len(ts)
        summary = {
            "strategy": res.strategy,
            "regressors": regressors,
            "n_volumes": n_t, "n_kept": res.n_kept, "n_censored": n_t - res.n_kept,
            "duration_kept_s": res.duration_s, "min_duration_s": p["min_duration_s"],
            "dof": None if np.isnan(res.dof) else float(res.dof),
            "excluded": bool(excluded), "exclusion_reason": reason,
            "n_regions": len(regions), "n_regions_valid": n_valid,
        }
        if not excluded and res.dof < 15:
            summary["warning"] = (f"about {res.dof:.0f} residual degrees of freedom: the "
                                  "correlations are noisy (short run, band-pass and many regressors)")
            log.warning("%s: %s", i.source if isdefined(i.source) else i.timeseries,
                        summary["warning"])
        if not excluded:
            import pandas as pd

            path = Path(runtime.cwd) / "denoised.tsv"
            pd.DataFrame(res.signals, columns=ts.columns).to_csv(path, sep="\t", index=False,
                                                                 na_rep="n/a")
            self._results["denoised"] = str(path)
        self._results.update(sample_mask=[bool(k) for k in res.sample_mask], summary=summary)
        return runtime


class _ConnInputSpec(BaseInterfaceInputSpec):
    denoised = File(exists=True, desc="absent when the run was excluded")
    regions = File(exists=True, mandatory=True)
    measures = traits.List(traits.Str(), mandatory=True)


class _ConnOutputSpec(TraitedSpec):
    matrices = traits.Dict(desc="measure -> matrix TSV (labels as index and header)")


class Connectomes(SimpleInterface):
    """Connectivity matrices (:func:`pipeline.func.connectome.connectivity`); none if excluded."""

    input_spec = _ConnInputSpec
    output_spec = _ConnOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.connectome import connectivity

        i = self.inputs
        files = {}
        if isdefined(i.denoised) and i.denoised:
            ts = _read_tsv(i.denoised)
            regions = _read_tsv(i.regions)
            for measure in i.measures:
                kind = MEASURE_STATS[measure][0]
                con = connectivity(ts, kind=kind, regions=regions)
                path = Path(runtime.cwd) / f"{measure}.tsv"
                con.matrix.rename_axis("label").to_csv(path, sep="\t", na_rep="n/a")
                files[measure] = str(path)
        self._results["matrices"] = files
        return runtime


# --------------------------------------------------------------------------- QC


class _QcInputSpec(BaseInterfaceInputSpec):
    bold = File(exists=True, mandatory=True, desc="realigned run")
    brain = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    sample_mask = traits.List(traits.Bool(), mandatory=True)
    tr = traits.Float(mandatory=True)
    params = traits.Dict(mandatory=True, desc="denoising parameters")
    matrices = traits.Dict(mandatory=True)
    regions = File(exists=True, mandatory=True)
    boldref = File(exists=True, mandatory=True)
    xfm = File(exists=True, desc="raw mode: bold -> T1w")
    t1w = File(exists=True, desc="raw mode: preprocessed T1w")
    t1w_mask = File(exists=True, desc="raw mode")
    regressors = File(exists=True, desc="fMRIPrep mode: the regressors (else from confounds)")
    drop_volumes = traits.Int(0, usedefault=True, desc="leading volumes of bold not used")
    space = traits.Str(desc="fMRIPrep mode: the space of bold (MNI; figure boldtoMNI)")


class _QcOutputSpec(TraitedSpec):
    figures = traits.Dict()


class FuncQC(SimpleInterface):
    """QC figures: carpet before / after denoising, FD trace, matrix, BOLD reference on T1w.

    fMRIPrep mode (``space`` set, no T1w): the last figure is ``boldtoMNI``, the
    BOLD mean with the MNI template's brain outline (the atlases' frame).
    """

    input_spec = _QcInputSpec
    output_spec = _QcOutputSpec

    def _run_interface(self, runtime):
        import matplotlib

        matplotlib.use("Agg")

        from pipeline.func import qc
        from pipeline.func.confounds import MOTION_COLUMNS, denoise, select_confounds
        from pipeline.registration import Transform
        from pipeline.report.figures import Overlay, mosaic, plot_motion, save_figure

        i = self.inputs
        p = i.params
        cwd = Path(runtime.cwd)
        figs = {}

        def save(fig, name):
            figs[name] = save_figure(fig, cwd / f"{name}.svg")

        fmriprep = isdefined(i.space) and bool(i.space)
        data = np.asarray(nib.load(i.bold).dataobj[..., i.drop_volumes :], dtype=np.float32)
        brain = load_array(i.brain) > 0
        table = _read_tsv(i.confounds)
        fd = np.nan_to_num(table["framewise_displacement"].to_numpy(float))  # fMRIPrep: n/a first
        keep = np.asarray(i.sample_mask, dtype=bool)
        vox = data[brain].T  # (T, V)
        del data
        vox = vox[:, :: max(1, vox.shape[1] // 6000)]
        what = f"fMRIPrep BOLD, space-{i.space}" if fmriprep else "realigned BOLD"
        save(qc.plot_carpet(vox, None, tr=i.tr, fd=fd, title=f"{what} (brain voxels)"),
             "carpetraw")
        if keep.sum() >= 10:
            if isdefined(i.regressors) and i.regressors:
                conf = _read_tsv(i.regressors)
            else:
                conf = select_confounds(table, p["strategy"], n_compcor=p["n_compcor"],
                                        source=i.confounds)
            den = denoise(vox, conf, tr=i.tr, sample_mask=keep, high_pass=p["high_pass"],
                          low_pass=p["low_pass"], detrend=p["detrend"], standardize=False,
                          min_duration_s=0, strategy=p["strategy"])
            label = p["strategy"] + ("+scrubbing" if p["scrubbing"] else "")
            save(qc.plot_carpet(den.signals, None, tr=i.tr, fd=fd[keep],
                                title=f"denoised ({label}), kept volumes only"), "carpetdenoised")
        threshold = p["fd_threshold_mm"] if p["scrubbing"] else None
        title = f"head motion: {int((~keep).sum())} of {keep.size} volumes censored"
        if all(c in table for c in MOTION_COLUMNS):
            save(plot_motion(table[list(MOTION_COLUMNS)].to_numpy(float), fd,
                             x=np.arange(fd.size) * i.tr, xlabel="time (s)",
                             fd_threshold=threshold,
                             dvars_raw=table["dvars_raw"].to_numpy(float) if "dvars_raw" in table else None,
                             dvars=table["dvars"].to_numpy(float) if "dvars" in table else None,
                             excluded=~keep, excluded_label="censored", title=title), "fd")
        else:
            save(qc.plot_fd(fd, tr=i.tr, threshold=threshold, sample_mask=keep, title=title), "fd")
        if i.matrices:
            measure = "correlation" if "correlation" in i.matrices else next(iter(i.matrices))
            m = _read_tsv(i.matrices[measure]).set_index("label")
            regions = _read_tsv(i.regions)
            save(qc.plot_connectome_matrix(m, networks=regions["network"].astype(str),
                                           title=f"{measure} (grey: regions without coverage)",
                                           vlim=1.0 if measure != "fisher_z" else None),
                 "connectome")
        if fmriprep:
            from nilearn.image import resample_to_img

            from pipeline.templates import SPACE, load_mni_template

            ref = nib.load(i.boldref)
            tpl = load_mni_template(2).image("brain")
            tpl_mask = np.asarray(resample_to_img(tpl, ref, interpolation="nearest",
                                                  force_resample=True, copy_header=True).dataobj) > 0
            save(mosaic(np.asarray(ref.dataobj), ref.affine,
                        [Overlay(tpl_mask, "red", f"{SPACE} template brain (atlas frame)"),
                         Overlay(brain, "cyan", "BOLD brain mask")],
                        title=f"fMRIPrep BOLD mean (space-{i.space}) on the atlas frame",
                        focus=brain), "boldtoMNI")
        else:
            t1 = nib.load(i.t1w)
            ref_in_t1 = Transform.load(i.xfm).resample(nib.load(i.boldref), t1)
            t1_mask = load_array(i.t1w_mask) > 0
            save(mosaic(np.asarray(ref_in_t1.dataobj), t1.affine,
                        [Overlay(t1_mask, "red", "T1w brain mask")],
                        title="BOLD reference in T1w space", focus=t1_mask), "boldtoT1w")
        self._results["figures"] = figs
        return runtime


# --------------------------------------------------------------------------- derivatives


def _confound_columns(columns, fmriprep: bool = False) -> dict[str, dict[str, str]]:
    """BIDS column descriptions of the confounds table (expansions described by their suffix).

    ``fmriprep``: the table is fMRIPrep's (tissue signals, DVARS and CompCor as
    fMRIPrep computed them; its other columns are not described here).
    """
    base = {
        "trans_x": ("head translation along x (RAS+) relative to the BOLD reference", "mm"),
        "trans_y": ("head translation along y", "mm"),
        "trans_z": ("head translation along z", "mm"),
        "rot_x": ("head rotation about x (pipeline.motion convention)", "rad"),
        "rot_y": ("head rotation about y", "rad"),
        "rot_z": ("head rotation about z", "rad"),
        "white_matter": ("mean signal in the eroded white-matter mask, demeaned", None),
        "csf": ("mean signal in the CSF mask, demeaned", None),
        "global_signal": ("mean signal in the brain mask, demeaned", None),
        "framewise_displacement": ("Power framewise displacement (50 mm head radius)", "mm"),
        "dvars": ("root mean square of the temporal difference in the brain mask", None),
        "std_dvars": ("DVARS standardised by its AR(1) expectation (Nichols 2013)", None),
        "dvars_raw": ("DVARS of the data before realignment (same mask): a motion spike "
                      "without a spike here is not in the data", None),
        "censored": ("1 if the volume was removed by scrubbing (censoring)", None),
    }
    if fmriprep:
        base.update({
            "rot_x": ("head rotation about x (fMRIPrep)", "rad"),
            "white_matter": ("fMRIPrep: mean signal in its white-matter mask", None),
            "csf": ("fMRIPrep: mean signal in its CSF mask", None),
            "global_signal": ("fMRIPrep: mean signal in the brain mask", None),
            "framewise_displacement": ("Power framewise displacement (fMRIPrep; n/a at the first "
                                       "volume)", "mm"),
            "dvars": ("fMRIPrep DVARS", None),
            "std_dvars": ("fMRIPrep standardised DVARS", None),
        })
    out = {}
    for col in columns:
        root, extra = col, ""
        for suffix, text in (("_derivative1_power2", "square of the backward difference of "),
                             ("_derivative1", "backward difference (0 at the first volume) of "),
                             ("_power2", "square of ")):
            if col.endswith(suffix):
                root, extra = col[: -len(suffix)], text
                break
        if root in base:
            desc, unit = base[root]
            entry = {"Description": extra + desc}
            if unit and not extra.startswith("square"):
                entry["Units"] = unit
        elif "_comp_cor_" in col and fmriprep:
            entry = {"Description": "fMRIPrep CompCor component (its mask and variance are in "
                                    "fMRIPrep's desc-confounds_timeseries.json)"}
        elif "_comp_cor_" in col:
            tissue = {"w": "white-matter", "c": "CSF", "a": "combined"}.get(col[0], "")
            entry = {"Description": f"anatomical CompCor: principal component {col[-2:]} of the "
                                    f"{tissue} mask (detrended, variance-normalised voxels)"}
        else:
            continue
        out[col] = entry
    return out


SUMMARY_COLUMNS = {
    "subject": {"Description": "participant label"},
    "session": {"Description": "session label"},
    "task": {"Description": "BIDS task"},
    "repetition_time_s": {"Description": "repetition time", "Units": "s"},
    "n_dummy_removed": {"Description": "non-steady-state volumes removed at the start"},
    "n_volumes": {"Description": "volumes after dummy removal"},
    "mean_fd_mm": {"Description": "mean framewise displacement (Power)", "Units": "mm"},
    "max_fd_mm": {"Description": "largest framewise displacement", "Units": "mm"},
    "n_censored": {"Description": "volumes removed by scrubbing"},
    "censored_pct": {"Description": "percentage of volumes removed by scrubbing", "Units": "%"},
    "n_kept": {"Description": "volumes kept"},
    "minutes_kept": {"Description": "data kept after censoring", "Units": "min"},
    "strategy": {"Description": "denoising strategy (func.strategy [+scrubbing])"},
    "dof": {
        "Description": "approximate residual degrees of freedom after filtering and regression"
    },
    "atlas": {"Description": "parcellation (seg- entity of the matrices)"},
    "n_regions": {"Description": "regions of the parcellation (matrix size)"},
    "n_regions_valid": {"Description": "regions with enough coverage (the others are NaN)"},
    "excluded": {"Description": "1 if the run was excluded from connectivity analysis"},
    "exclusion_reason": {"Description": "why the run was excluded (n/a if not)"},
}


class _FuncSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str(mandatory=True)
    task = traits.Str(mandatory=True)
    config = traits.Dict(mandatory=True)
    sources = traits.List(traits.Str())
    warnings = traits.List(traits.Str())
    input_parameters = traits.Dict(desc="fMRIPrep mode: input, space, files, notes")
    confound_notes = traits.List(traits.Str(), desc="fMRIPrep mode: notes of the confounds")
    mni_space = traits.Str(desc="space- entity of mask_mni (default: the template space)")
    bold_mni = File(exists=True, desc="raw mode: the run in MNI space (func.save_preproc)")
    mask_mni = File(exists=True, mandatory=True)
    mni_parameters = traits.Dict()
    boldref = File(exists=True, desc="raw mode: BOLD reference (BOLD space)")
    brain = File(exists=True, desc="raw mode")
    wm = File(exists=True, desc="raw mode")
    csf = File(exists=True, desc="raw mode")
    mask_parameters = traits.Dict()
    preproc_parameters = traits.Dict()
    xfm = File(exists=True, desc="raw mode: bold -> T1w")
    confounds = File(exists=True, mandatory=True)
    timeseries = File(exists=True, mandatory=True)
    regions = File(exists=True, mandatory=True)
    region_parameters = traits.Dict()
    denoised = File(exists=True)
    sample_mask = traits.List(traits.Bool(), mandatory=True)
    summary = traits.Dict(mandatory=True)
    matrices = traits.Dict(mandatory=True)
    figures = traits.Dict(mandatory=True)


class _FuncSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str())


class FuncDerivatives(SimpleInterface):
    """Write the fMRI outputs of one subject-session (atomic, with provenance)."""

    input_spec = _FuncSinkInputSpec
    output_spec = _FuncSinkOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from pipeline.registration import Transform
        from pipeline.templates import SPACE
        from workflows.derivatives import DerivativesWriter

        i = self.inputs
        cfg = dict(i.config)
        fcfg = dict(cfg.get("func", {}))
        w = DerivativesWriter(i.output_dir, config=cfg)
        ent = {"sub": i.subject, "ses": i.session, "task": i.task, "datatype": "func"}
        seg = seg_name(fcfg["atlas"], fcfg["atlas_labels"])
        summary = dict(i.summary)
        inp = dict(i.input_parameters) if isdefined(i.input_parameters) else {}
        fmriprep = inp.get("input") == "fmriprep"
        mni_space = i.mni_space if isdefined(i.mni_space) and i.mni_space else SPACE
        if isdefined(i.confound_notes) and i.confound_notes:
            inp["confound_notes"] = list(i.confound_notes)

        def opt(value, default):
            return value if isdefined(value) else default

        params = {"func": fcfg, "input": inp or {"input": "raw"},
                  "preprocessing": i.preproc_parameters, "masks": opt(i.mask_parameters, {}),
                  "mni": opt(i.mni_parameters, {}), "regions": i.region_parameters,
                  "denoising": summary, "input_warnings": list(opt(i.warnings, []))}
        mode = ({"Input": "fmriprep", "InputSpace": mni_space, "SpaceNote": SPACE_NOTE}
                if fmriprep else {"Input": "raw"})
        out: list[str] = []

        def meta(description, **extra):
            return w.provenance(sources=i.sources, parameters=params, seed=cfg.get("seed"),
                                extra={"Description": description, **mode, **extra})

        def nifti(path, description, **spec):
            out.append(str(w.write_nifti(nib.load(path), meta=meta(description), **ent, **spec)))

        tr = float(i.preproc_parameters["repetition_time_s"])
        if fcfg.get("save_preproc") and not fmriprep:
            nifti(i.bold_mni, "preprocessed BOLD (dummies removed, realigned) in MNI space; not "
                  "denoised", space=SPACE, desc="preproc", suffix="bold")
        registration = None  # raw mode: the BOLD -> T1w quality record
        if fmriprep:
            nifti(i.mask_mni, f"BOLD brain mask on the fMRIPrep grid (space-{mni_space}; region "
                  f"coverage): {i.preproc_parameters.get('brain_mask')}", space=mni_space,
                  desc="brain", suffix="mask")
        else:
            nifti(i.mask_mni, "BOLD brain mask in MNI space (region coverage)", space=SPACE,
                  desc="brain", suffix="mask")
            nifti(i.boldref, "BOLD reference: temporal mean of the realigned run", space="bold",
                  suffix="boldref")
            nifti(i.brain, "brain mask in BOLD space", space="bold", desc="brain", suffix="mask")
            nifti(i.wm, "white-matter mask in BOLD space (tissue signal, CompCor)", space="bold",
                  label="WM", suffix="mask")
            nifti(i.csf, "CSF mask in BOLD space (tissue signal, CompCor)", space="bold",
                  label="CSF", suffix="mask")
            xfm = Transform.load(i.xfm)
            registration = xfm.quality
            out.append(str(w.write_with(xfm.save, meta=meta("rigid BOLD reference -> T1w"), **ent,
                                        **{"from": "bold", "to": "T1w"}, mode="image",
                                        suffix="xfm", extension=".json")))
        keep = np.asarray(i.sample_mask, dtype=bool)
        conf = _read_tsv(i.confounds)
        conf = pd.concat([conf.drop(columns="censored", errors="ignore"),
                          pd.Series((~keep).astype(int), name="censored")], axis=1)
        what = ("per-volume confounds: fMRIPrep's table (dummies removed) with the censored "
                "column added" if fmriprep else "per-volume confounds (fMRIPrep column names)")
        out.append(str(w.write_tsv(conf, columns=_confound_columns(conf.columns, fmriprep),
                                   meta=meta(what, RepetitionTime=tr),
                                   **ent, desc="confounds", suffix="timeseries")))
        regions = _read_tsv(i.regions).rename(columns={"label": "name"})
        reg_cols = {
            "index": {"Description": "region number (row / column order of the matrices)"},
            "name": {"Description": "region label (matrix row and column names)"},
            "x": {"Description": "MNI x of the region centre", "Units": "mm"},
            "y": {"Description": "MNI y of the region centre", "Units": "mm"},
            "z": {"Description": "MNI z of the region centre", "Units": "mm"},
            "network": {"Description": "network of the region"},
            "coverage": {"Description": "fraction of the region inside the BOLD brain mask"},
            "valid": {"Description": "1 if coverage >= func.min_coverage; 0: NaN row and column in "
                                     "every matrix and NaN time series"},
        }
        out.append(str(w.write_tsv(regions, columns=reg_cols,
                                   meta=meta(f"regions of the {seg} parcellation (label table of the "
                                             "matrices and time series)"),
                                   **ent, seg=seg, suffix="dseg")))
        raw = _read_tsv(i.timeseries)
        out.append(str(w.write_tsv(raw, meta=meta("mean BOLD signal per region (MNI space), before "
                                                  "denoising; columns = region names",
                                                  RepetitionTime=tr),
                                   **ent, seg=seg, desc="raw", suffix="timeseries")))
        stale = []
        if isdefined(i.denoised) and i.denoised and not summary["excluded"]:
            den = _read_tsv(i.denoised)
            out.append(str(w.write_tsv(den, meta=meta(
                "denoised region time series of the kept volumes (rows = volumes with censored 0 "
                "in the confounds table)", RepetitionTime=tr, Strategy=summary["strategy"]),
                **ent, seg=seg, desc="denoised", suffix="timeseries")))
        else:
            stale.append(
                w.path(**ent, seg=seg, desc="denoised", suffix="timeseries", extension=".tsv")
            )
        for measure, (_, stat, description) in MEASURE_STATS.items():
            if measure in i.matrices:
                m = _read_tsv(i.matrices[measure]).set_index("label")
                out.append(str(w.write_tsv(
                    m, index=True,
                    meta=meta(description, RelationshipMeasure=stat, NodeFile=Path(w.path(
                        **ent, seg=seg, suffix="dseg", extension=".tsv")).name,
                        Strategy=summary["strategy"],
                        InvalidRegions=regions.loc[regions["valid"] == 0, "name"].tolist()),
                    **ent, seg=seg, stat=stat, suffix="relmat")))
            else:
                stale.append(w.path(**ent, seg=seg, stat=stat, suffix="relmat", extension=".tsv"))
        # files of the other input mode (an earlier run of this session) would look current
        other = [dict(space="bold", suffix="boldref"), dict(space="bold", desc="brain", suffix="mask"),
                 dict(space="bold", label="WM", suffix="mask"),
                 dict(space="bold", label="CSF", suffix="mask"),
                 dict(space=SPACE, desc="preproc", suffix="bold"),
                 dict(space=SPACE, desc="brain", suffix="mask")] if fmriprep else [
                 dict(space=fcfg.get("fmriprep_space"), desc="brain", suffix="mask")]
        stale += [w.path(**ent, **spec, extension=".nii.gz") for spec in other]
        if fmriprep:
            stale.append(w.path(**ent, **{"from": "bold", "to": "T1w"}, mode="image", suffix="xfm",
                                extension=".json"))
        fig_ent = {"sub": i.subject, "ses": i.session, "task": i.task, "datatype": "figures"}
        stale += [w.path(**fig_ent, desc=name, suffix="bold", extension=".svg")
                  for name in ("boldtoT1w", "boldtoMNI") if name not in i.figures]
        stale = [f for f in stale if str(f) not in out]
        for path in stale:  # never leave a matrix of an earlier run that looks current
            for f in (path, path.with_suffix(".json")):
                if f.exists():
                    log.warning("removing %s (not produced by this run)", f)
                    f.unlink()
        pre = i.preproc_parameters
        fd = conf["framewise_displacement"].to_numpy(float)
        fd = fd[np.isfinite(fd)] if np.isfinite(fd).any() else np.zeros(1)  # fMRIPrep: n/a first
        row = {
            "subject": i.subject, "session": i.session, "task": i.task,
            "repetition_time_s": tr, "n_dummy_removed": pre["n_dummy_removed"],
            "n_volumes": int(keep.size), "mean_fd_mm": float(np.mean(fd)),
            "max_fd_mm": float(np.max(fd)), "n_censored": int((~keep).sum()),
            "censored_pct": 100.0 * float((~keep).mean()), "n_kept": int(keep.sum()),
            "minutes_kept": float(keep.sum()) * tr / 60.0, "strategy": summary["strategy"],
            "dof": summary["dof"], "atlas": seg, "n_regions": summary["n_regions"],
            "n_regions_valid": summary["n_regions_valid"], "excluded": int(summary["excluded"]),
            "exclusion_reason": summary["exclusion_reason"],
        }
        for name, path in i.figures.items():
            out.append(str(w.write_bytes(Path(path).read_bytes(), sub=i.subject, ses=i.session,
                                         task=i.task, datatype="figures", desc=name, suffix="bold",
                                         extension=".svg")))
        # the summary last: Snakemake's output, its presence means the stage finished
        status = (f"EXCLUDED: {summary['exclusion_reason']}" if summary["excluded"]
                  else "included")
        out.append(str(w.write_tsv(pd.DataFrame([row]), columns=SUMMARY_COLUMNS,
                                   meta=meta(f"resting-state run summary: motion, censoring, "
                                             f"exclusion ({status})", Excluded=summary["excluded"],
                                             ExclusionReason=summary["exclusion_reason"],
                                             **_registration_flag(registration)),
                                   **ent, desc="summary", suffix="bold")))
        self._results["out_files"] = out
        return runtime


def _registration_flag(registration: dict | None) -> dict:
    """Summary-sidecar keys of the BOLD -> T1w registration quality: a failed check flags
    the session, which the NBS then leaves out (unless group.include_flagged)."""
    if not registration:
        return {}
    failed = not registration.get("passed", True)
    reason = (f"BOLD -> T1w registration failed its quality check (NMI sharpness "
              f"{registration['nmi_sharpness']:.3f} < {registration['threshold']:g}): the "
              "regions would be read from the wrong anatomy" if failed else "")
    return {"RegistrationQuality": registration, "Flagged": failed, "Reason": reason}


# --------------------------------------------------------------------------- workflow


def func_structural_inputs(out: Path, subject: str, session: str) -> dict[str, str]:
    """The structural outputs of a subject-session that the fMRI stage reads.

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
        "csf": build_path(out, suffix="probseg", extension=".nii.gz", label="CSF", **ent),
        "mni_xfm": build_path(out, suffix="xfm", extension=".json", mode="image",
                              **{"from": "T1w", "to": SPACE}, **ent),
    }
    for path in files.values():
        if not path.exists():
            raise InputError(path, "structural output missing: run the anat stage of this "
                             "subject-session before the func stage")
    return {k: str(v.resolve()) for k, v in files.items()}


def _node_params(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    f = config["func"]
    denoise_keys = ("strategy", "n_compcor", "scrubbing", "fd_threshold_mm", "scrub_before",
                    "scrub_after", "min_segment", "min_duration_s", "high_pass", "low_pass",
                    "detrend", "standardize", "min_coverage")
    return {
        "load": {"min_volumes": config["validation"]["min_bold_volumes"],
                 "slice_timing": f["slice_timing"]},
        "preproc": {k: f[k] for k in ("dummy_volumes", "slice_time_ref", "realign_fwhm_mm")},
        "masks": {k: f[k] for k in ("wm_threshold", "csf_threshold")},
        "confounds": {"n_compcor": f["n_compcor"]},
        "mni": {"mni_voxel_mm": f["mni_voxel_mm"],
                "template_resolution": config["anat"]["template_resolution"]},
        "regions": {k: f[k] for k in ("atlas", "atlas_labels", "sphere_radius_mm", "min_coverage")},
        "denoise": {k: f[k] for k in denoise_keys},
        "fmriprep_load": {"min_volumes": config["validation"]["min_bold_volumes"],
                          "dummy_volumes": f["dummy_volumes"], "space": f["fmriprep_space"]},
        "fmriprep_confounds": {k: f[k] for k in ("strategy", "n_compcor", "scrubbing",
                                                 "fd_threshold_mm", "scrub_before", "scrub_after",
                                                 "min_segment", "dummy_volumes")},
    }


_ENTITY = r"_(?:{})-[a-zA-Z0-9]+"


def fmriprep_inputs(
    fmriprep_dir: str | Path,
    subject: str,
    session: str,
    *,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    raw_bold: str | Path | None = None,
    raw_json: str | Path | None = None,
) -> dict[str, Any]:
    """The fMRIPrep files of one subject-session's resting-state run.

    Looks in ``<fmriprep_dir>/sub-<subject>/ses-<session>/func/`` for
    ``sub-X_ses-Y_task-<task>[_acq-..][_run-..]_space-<space>[_res-..]_desc-preproc_bold.nii.gz``
    (the run with the same entities as the raw ``raw_bold`` if there is one,
    else the first in run order, with a note), then next to it:

    - ``..._desc-confounds_timeseries.tsv`` (required) and its ``.json``
      (CompCor metadata; nilearn needs it for ``acompcor``);
    - the BOLD's ``.json``: ``RepetitionTime`` from it, else from the raw
      sidecar ``raw_json``;
    - ``..._space-<space>[_res-..]_desc-brain_mask.nii.gz`` (optional).

    Returns
    -------
    dict
        ``bold``, ``bold_json`` (the sidecar that gives the repetition time,
        or None), ``confounds``, ``confounds_json``, ``mask`` (None when
        absent), ``sources`` (every file used) and ``notes``.

    Raises
    ------
    InputError
        Naming the expected path of a missing BOLD or confounds file.
    """
    from pipeline.errors import InputError
    from pipeline.func.confounds import fmriprep_confounds_path

    root = Path(fmriprep_dir)
    if not root.is_dir():
        raise InputError(root, "func.fmriprep_dir: fMRIPrep derivatives folder not found")
    func = root / f"sub-{subject}" / f"ses-{session}" / "func"
    pre = f"sub-{subject}_ses-{session}_task-{task}"
    middle = _ENTITY.format("acq|ce|rec|dir|run|echo")
    pattern = re.compile(rf"^{re.escape(pre)}((?:{middle})*)_space-{re.escape(space)}"
                         rf"((?:{_ENTITY.format('cohort|res|den')})*)_desc-preproc_bold\.nii(?:\.gz)?$")
    want = ""
    if raw_bold is not None:
        m = re.match(rf"^{re.escape(pre)}((?:{middle})*)_bold\.nii", Path(raw_bold).name)
        want = m.group(1) if m else ""
    found = sorted((f for f in (func.iterdir() if func.is_dir() else ()) if pattern.match(f.name)),
                   key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)])
    notes = []
    if not found:
        expected = func / f"{pre}{want}_space-{space}_desc-preproc_bold.nii.gz"
        raise InputError(expected, "fMRIPrep preprocessed BOLD not found (func.input: fmriprep; "
                         "check func.fmriprep_dir, func.fmriprep_space and bids.bold_task)")
    same = [f for f in found if pattern.match(f.name).group(1) == want]
    bold = (same or found)[0]
    if len(found) > 1:
        notes.append(f"fMRIPrep BOLD: {len(found)} files match; using {bold.name}")
    stem = bold.name.split(".nii")[0]
    tsv = fmriprep_confounds_path(bold)
    if not tsv.is_file():
        raise InputError(tsv, f"fMRIPrep confounds file of {bold.name} not found (fMRIPrep writes "
                         "desc-confounds_timeseries.tsv next to the preprocessed BOLD)")
    conf_json = tsv.with_suffix(".json")
    side = bold.with_name(stem + ".json")
    bold_json = None
    if side.is_file() and "RepetitionTime" in json.loads(side.read_text() or "{}"):
        bold_json = side
    elif raw_json is not None and Path(raw_json).is_file():
        bold_json = Path(raw_json)
        notes.append(f"RepetitionTime from the raw sidecar {bold_json.name} "
                     f"({side.name} {'has none' if side.is_file() else 'not found'})")
    elif side.is_file():
        bold_json = side  # without RepetitionTime: the check names it
    mask = bold.with_name(stem.replace("_desc-preproc_bold", "_desc-brain_mask") + ".nii.gz")
    mask = mask if mask.is_file() else None
    files = {"bold": str(bold), "bold_json": str(bold_json) if bold_json else None,
             "confounds": str(tsv), "confounds_json": str(conf_json) if conf_json.is_file() else None,
             "mask": str(mask) if mask else None}
    sources = [v for v in files.values() if v]
    return {**files, "sources": sources, "notes": notes}


def init_func_fmriprep_wf(
    *,
    config: dict[str, Any],
    files: dict[str, Any],
    subject: str,
    session: str,
    output_dir: str,
    task: str = "rest",
    name: str = "func_fmriprep_wf",
) -> pe.Workflow:
    """Resting-state fMRI workflow of one subject-session from fMRIPrep derivatives.

    Parameters
    ----------
    config : dict
        The whole resolved configuration (``func`` and ``validation`` used;
        ``func.input`` should be ``fmriprep``).
    files : dict
        :func:`fmriprep_inputs`.

    The graph: :class:`LoadFmriprep` and :class:`FmriprepConfounds`, then the
    raw mode's :class:`RegionSignals`, :class:`DenoiseRegions`,
    :class:`Connectomes`, :class:`FuncQC` and :class:`FuncDerivatives` on the
    fMRIPrep grid (no realignment, registration or tissue masks; no
    structural input).
    """
    missing = {"bold", "bold_json", "confounds", "confounds_json", "mask", "sources"} - set(files)
    if missing:
        raise ValueError(f"init_func_fmriprep_wf: files {sorted(missing)} missing")
    p = _node_params(config)
    f = config["func"]
    n_dummy = int(f["dummy_volumes"])
    wf = pe.Workflow(name=name)
    load = pe.Node(LoadFmriprep(bold=files["bold"], params=p["fmriprep_load"],
                                notes=list(files.get("notes", []))), name="load")
    if files["bold_json"]:
        load.inputs.bold_json = files["bold_json"]
    if files["mask"]:
        load.inputs.mask = files["mask"]
    conf = pe.Node(FmriprepConfounds(bold=files["bold"], confounds=files["confounds"],
                                     params=p["fmriprep_confounds"]), name="confounds")
    if files["confounds_json"]:
        conf.inputs.confounds_json = files["confounds_json"]
    wf.connect(load, "n_volumes", conf, "n_volumes")
    regions = pe.Node(RegionSignals(bold=files["bold"], params={**p["regions"],
                                                                "drop_volumes": n_dummy}),
                      name="regions")
    wf.connect(load, "mask", regions, "mask")
    den = pe.Node(DenoiseRegions(params=p["denoise"], source=files["bold"]), name="denoise")
    wf.connect([(regions, den, [("timeseries", "timeseries"), ("regions", "regions")]),
                (conf, den, [("confounds", "confounds"), ("regressors", "regressors"),
                             ("keep", "keep")]),
                (load, den, [("tr", "tr")])])
    conn = pe.Node(Connectomes(measures=list(f["measures"])), name="connectomes")
    wf.connect([(den, conn, [("denoised", "denoised")]), (regions, conn, [("regions", "regions")])])
    qc = pe.Node(FuncQC(bold=files["bold"], params=p["denoise"], drop_volumes=n_dummy,
                        space=f["fmriprep_space"]), name="qc")
    wf.connect([(load, qc, [("mask", "brain"), ("boldref", "boldref"), ("tr", "tr")]),
                (conf, qc, [("confounds", "confounds"), ("regressors", "regressors")]),
                (den, qc, [("sample_mask", "sample_mask")]), (conn, qc, [("matrices", "matrices")]),
                (regions, qc, [("regions", "regions")])])
    inputs = {"input": "fmriprep", "fmriprep_dir": f["fmriprep_dir"], "space": f["fmriprep_space"],
              "files": {k: files[k] for k in ("bold", "bold_json", "confounds", "confounds_json",
                                              "mask")},
              "space_note": SPACE_NOTE,
              "not_used": "func.slice_timing, slice_time_ref, realign_fwhm_mm, mni_voxel_mm, "
                          "wm_threshold, csf_threshold and save_preproc (fMRIPrep did these "
                          "steps; the data stay on its grid)"}
    sink = pe.Node(FuncDerivatives(output_dir=output_dir, subject=subject, session=session,
                                   task=task, config=config, sources=list(files["sources"]),
                                   input_parameters=inputs, mni_space=f["fmriprep_space"]),
                   name="derivatives")
    wf.connect([
        (load, sink, [("warnings", "warnings"), ("parameters", "preproc_parameters"),
                      ("mask", "mask_mni")]),
        (conf, sink, [("confounds", "confounds"), ("notes", "confound_notes")]),
        (regions, sink, [("timeseries", "timeseries"), ("regions", "regions"),
                         ("parameters", "region_parameters")]),
        (den, sink, [("denoised", "denoised"), ("sample_mask", "sample_mask"),
                     ("summary", "summary")]),
        (conn, sink, [("matrices", "matrices")]),
        (qc, sink, [("figures", "figures")]),
    ])
    return wf


def init_func_wf(
    *,
    config: dict[str, Any],
    bold: str,
    bold_json: str | None,
    anat: dict[str, str],
    subject: str,
    session: str,
    output_dir: str,
    task: str = "rest",
    name: str = "func_wf",
) -> pe.Workflow:
    """Resting-state fMRI workflow of one subject-session (from the raw BIDS BOLD).

    Parameters
    ----------
    config : dict
        The whole resolved configuration (``func``, ``validation`` and
        ``anat.template_resolution`` used).  Relative ``func.atlas`` /
        ``func.atlas_labels`` paths must already be resolved by the caller.
    bold, bold_json : str
        Raw BOLD run and its JSON sidecar (``None``: missing, which is an error
        naming the run).
    anat : dict
        Structural outputs of the same session (:func:`func_structural_inputs`):
        ``t1w`` (preprocessed), ``mask``, ``wm`` and ``csf`` (probabilities),
        ``mni_xfm``.
    """
    required = {"t1w", "mask", "wm", "csf", "mni_xfm"}
    missing = required - set(anat)
    if missing:
        raise ValueError(f"init_func_wf: structural inputs {sorted(missing)} missing")
    p = _node_params(config)
    wf = pe.Workflow(name=name)
    load = pe.Node(LoadBold(bold=bold, params=p["load"]), name="load")
    if bold_json:
        load.inputs.bold_json = bold_json
    pre = pe.Node(PreprocessBold(bold=bold, params=p["preproc"]), name="preprocess")
    wf.connect(load, "tr", pre, "tr")
    wf.connect(load, "slice_timing", pre, "slice_timing")
    wf.connect(load, "slice_axis", pre, "slice_axis")
    to_t1 = pe.Node(EpiToT1w(t1w=anat["t1w"], t1w_mask=anat["mask"], source="bold"),
                    name="bold_to_t1w")
    wf.connect(pre, "boldref", to_t1, "moving")
    masks = pe.Node(BoldMasks(t1w_mask=anat["mask"], wm_prob=anat["wm"], csf_prob=anat["csf"],
                              params=p["masks"]), name="masks")
    wf.connect([(pre, masks, [("boldref", "boldref"), ("mask", "bold_mask")]),
                (to_t1, masks, [("xfm", "xfm")])])
    conf = pe.Node(BoldConfounds(params=p["confounds"]), name="confounds")
    wf.connect([(pre, conf, [("bold", "bold"), ("motion", "motion")]),
                (masks, conf, [("brain", "brain"), ("wm", "wm"), ("csf", "csf")])])
    mni = pe.Node(BoldToMni(mni_xfm=anat["mni_xfm"], params=p["mni"]), name="to_mni")
    wf.connect([(pre, mni, [("bold", "bold")]), (masks, mni, [("brain", "brain")]),
                (to_t1, mni, [("xfm", "xfm")])])
    regions = pe.Node(RegionSignals(params=p["regions"]), name="regions")
    wf.connect([(mni, regions, [("bold", "bold"), ("mask", "mask")])])
    den = pe.Node(DenoiseRegions(params=p["denoise"], source=bold), name="denoise")
    wf.connect([(regions, den, [("timeseries", "timeseries"), ("regions", "regions")]),
                (conf, den, [("confounds", "confounds")]), (load, den, [("tr", "tr")])])
    conn = pe.Node(Connectomes(measures=list(config["func"]["measures"])), name="connectomes")
    wf.connect([(den, conn, [("denoised", "denoised")]), (regions, conn, [("regions", "regions")])])
    qc = pe.Node(FuncQC(t1w=anat["t1w"], t1w_mask=anat["mask"], params=p["denoise"]), name="qc")
    wf.connect([(pre, qc, [("bold", "bold"), ("boldref", "boldref")]),
                (masks, qc, [("brain", "brain")]), (conf, qc, [("confounds", "confounds")]),
                (den, qc, [("sample_mask", "sample_mask")]), (load, qc, [("tr", "tr")]),
                (conn, qc, [("matrices", "matrices")]), (regions, qc, [("regions", "regions")]),
                (to_t1, qc, [("xfm", "xfm")])])
    sources = [bold, *([bold_json] if bold_json else []), *anat.values()]
    sink = pe.Node(FuncDerivatives(output_dir=output_dir, subject=subject, session=session,
                                   task=task, config=config, sources=sources),
                   name="derivatives")
    wf.connect([
        (load, sink, [("warnings", "warnings")]),
        (pre, sink, [("boldref", "boldref"), ("parameters", "preproc_parameters")]),
        (masks, sink, [("brain", "brain"), ("wm", "wm"), ("csf", "csf"),
                       ("parameters", "mask_parameters")]),
        (to_t1, sink, [("xfm", "xfm")]),
        (conf, sink, [("confounds", "confounds")]),
        (mni, sink, [("bold", "bold_mni"), ("mask", "mask_mni"), ("parameters", "mni_parameters")]),
        (regions, sink, [("timeseries", "timeseries"), ("regions", "regions"),
                         ("parameters", "region_parameters")]),
        (den, sink, [("denoised", "denoised"), ("sample_mask", "sample_mask"),
                     ("summary", "summary")]),
        (conn, sink, [("matrices", "matrices")]),
        (qc, sink, [("figures", "figures")]),
    ])
    return wf
