"""Registration interfaces shared by the diffusion and fMRI workflows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from workflows.nodeio import xfm_json

__all__ = ["EpiToT1w", "register_to_t1w"]


class _EpiToT1wInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="EPI reference (mean b = 0, BOLD reference)")
    t1w = File(exists=True, mandatory=True, desc="preprocessed T1w (structural stage)")
    t1w_mask = File(exists=True, mandatory=True)
    source = traits.Str(mandatory=True, desc="modality of the moving image (dwi, bold)")


class _EpiToT1wOutputSpec(TraitedSpec):
    xfm = File(exists=True, desc="<source> -> T1w transform (JSON, with its quality record)")


class EpiToT1w(SimpleInterface):
    """An EPI reference (mean b = 0 of a DWI series, BOLD reference) -> the skull-stripped
    T1w: rigid, Mattes mutual information (DIPY), optimised on a grid no finer than the
    EPI (at least 2 mm); the transform is saved with its registration-quality record
    (:func:`pipeline.registration.registration_quality`)."""

    input_spec = _EpiToT1wInputSpec
    output_spec = _EpiToT1wOutputSpec

    def _run_interface(self, runtime):
        source = self.inputs.source
        self._results["xfm"] = register_to_t1w(
            self.inputs.moving, self.inputs.t1w, self.inputs.t1w_mask, source=source,
            out=Path(runtime.cwd) / f"{source}_to_T1w_xfm.json",
        )
        return runtime


def register_to_t1w(moving: str, t1w: str, t1w_mask: str, *, source: str, out: Path) -> str:
    """Rigid ``moving`` -> skull-stripped T1w (Mattes mutual information, DIPY).

    Saves the ``source`` -> T1w transform as ``out`` (JSON, with its registration-quality
    record from :func:`pipeline.registration.registration_quality`) and returns its path.
    """
    from pipeline.registration import register_rigid, registration_quality

    t1 = nib.load(t1w)
    mask = nib.load(t1w_mask)
    brain = nib.Nifti1Image(np.asarray(t1.dataobj, dtype=np.float32)
                            * (np.asanyarray(mask.dataobj) > 0), t1.affine)
    moving_img = nib.load(moving)
    # Optimise on a grid no finer than the moving image (at least the 2 mm default): a
    # 3 mm BOLD reference gains nothing from a 2 mm grid, which has 3.4 x the voxels.
    voxel = float(min(moving_img.header.get_zooms()[:3]))
    xfm = register_rigid(brain, moving_img, static_mask=mask, source=source, target="T1w",
                         resolution_mm=max(2.0, voxel))
    xfm = dataclasses.replace(xfm, quality=registration_quality(brain, moving_img, xfm, mask=mask))
    return xfm_json(xfm.save(out))
