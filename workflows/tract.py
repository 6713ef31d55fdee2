"""Tractography and tractometry workflow (Nipype) of one subject-session.

Reads the diffusion stage's derivatives (tensor maps, brain / WM / lesion masks
in DWI space, the dwi -> T1w transform) and the structural T1w -> MNI transform;
nothing is re-estimated. ``init_tract_wf`` composes:

1. :class:`Track`: whole-brain tractography seeded in white matter and lesions,
   on the tensor's principal direction or on a CSA / CSD fit of the
   preprocessed series (``tract.model``; :func:`pipeline.tract.tracking.track_tensor`,
   :func:`~pipeline.tract.tracking.track_odf`), explicit lesion policy.
2. :class:`Tractometry`: bundle recognition with the waypoint ROIs of the bundle
   file in MNI mm (streamlines mapped through dwi -> T1w -> MNI), cleaning,
   oriented 100-node profiles (plain and lesion-masked), density maps in DWI and
   MNI space, the profile and summary tables
   (:func:`pipeline.tract.profiles.tractometry`).
3. :class:`TractQC`: bundles over FA and the profiles of every bundle.
4. :class:`TractDerivatives`: the one writer (atomic, with provenance).

A bundle that is not found (or too small) never stops the job: its rows carry
NaN values, a status and a reason, and the log says so.
"""

from __future__ import annotations

import logging
import shutil
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

from workflows.nodeio import CANONICAL_GRADIENT_KEYS, dwi_gradients, load_array, save_array

__all__ = ["bundle_entity", "diffusion_inputs", "init_tract_wf", "tracking_params"]

log = logging.getLogger(__name__)

METRICS = ("fa", "md", "ad", "rd")
#: Diffusion kurtosis maps profiled along the bundles when the diffusion stage wrote them.
KURTOSIS_METRICS = ("mk", "ak", "rk", "kfa")


def bundle_entity(name: str) -> str:
    """BIDS entity value of a bundle name (``CST_L`` -> ``CSTL``)."""
    return "".join(c for c in name if c.isalnum())


def tracking_params(config: dict[str, Any]):
    """:class:`~pipeline.tract.tracking.TrackingParams` from the ``tract`` section."""
    from pipeline.tract.tracking import TrackingParams

    t = config["tract"]
    keys = ("method", "seeds_per_voxel", "step_size_mm", "max_angle_deg", "min_length_mm",
            "max_length_mm", "fa_threshold", "seed_fa_threshold", "lesion_policy")
    return TrackingParams(**{k: t[k] for k in keys}, seed=int(config["seed"]))


def _save_tractogram(streamlines, reference: nib.Nifti1Image, path: Path) -> list[Path]:
    """Write streamlines (world RAS mm) on the grid of ``reference`` (.trk or .trx by suffix)."""
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from dipy.io.streamline import save_tractogram

    sft = StatefulTractogram(streamlines, reference, Space.RASMM)
    save_tractogram(sft, str(path), bbox_valid_check=False)
    return [Path(path)]


def _load_tractogram(path: str, reference: nib.Nifti1Image):
    from dipy.io.stateful_tractogram import Space
    from dipy.io.streamline import load_tractogram

    sft = load_tractogram(path, reference, to_space=Space.RASMM, bbox_valid_check=False)
    return sft.streamlines


# --------------------------------------------------------------------------- tracking


class _TrackInputSpec(BaseInterfaceInputSpec):
    params = traits.Dict(mandatory=True, desc="the configuration keys this node reads (_node_params)")
    fa = File(exists=True, mandatory=True)
    v1 = File(exists=True, mandatory=True, desc="principal eigenvector, world RAS+")
    brain = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True, desc="white-matter mask in DWI space")
    lesion = File(exists=True, mandatory=True, desc="lesion mask in DWI space")
    dwi = File(exists=True, desc="preprocessed series (tract.model csa / csd)")
    bval = File(exists=True)
    bvec = File(exists=True, desc="rotated b-vectors of the preprocessed series")
    confounds = File(exists=True, desc="per-volume outlier flags of the diffusion stage")


class _TrackOutputSpec(TraitedSpec):
    tractogram = File(exists=True)
    parameters = traits.Dict()


class Track(SimpleInterface):
    """Whole-brain tensor tractography (DIPY LocalTracking), seeds in WM and lesions."""

    input_spec = _TrackInputSpec
    output_spec = _TrackOutputSpec

    def _run_interface(self, runtime):
        from pipeline.gradients import affine_rotation
        from pipeline.tract.tracking import track_odf, track_tensor, tracking_mask

        cfg = self.inputs.params
        params = tracking_params(cfg)
        fa_img = nib.load(self.inputs.fa)
        fa = np.asarray(fa_img.dataobj, dtype=np.float32)
        lesion = load_array(self.inputs.lesion, np.float32)
        brain = load_array(self.inputs.brain) > 0
        wm = load_array(self.inputs.wm) > 0
        seed = wm | (lesion > 0)
        model = cfg["tract"]["model"]
        extra: dict[str, Any] = {}
        if model == "tensor":
            # the derivative stores v1 in world RAS+; tracking works in voxel-array axes
            v1 = load_array(self.inputs.v1, np.float32) @ affine_rotation(fa_img.affine)
            streamlines = track_tensor(v1, fa, fa_img.affine, brain_mask=brain, seed_mask=seed,
                                       lesion=lesion, params=params)
            directions = "tensor principal eigenvector"
        else:
            odf, excluded = self._fit_odf(cfg, fa, wm, tracking_mask(fa, brain, lesion, params))
            streamlines = track_odf(odf, fa, fa_img.affine, brain_mask=brain, seed_mask=seed,
                                    lesion=lesion, params=params)
            directions = {"csa": "CSA q-ball ODF peaks (DIPY CsaOdfModel)",
                          "csd": "CSD fibre ODF (DIPY ConstrainedSphericalDeconvModel)"}[model]
            extra = {"orientation_model": odf.describe(), "excluded_volumes": excluded}
        path = Path(runtime.cwd) / f"tractogram.{cfg['tract']['tractogram_format']}"
        _save_tractogram(streamlines, fa_img, path)
        self._results["tractogram"] = str(path)
        self._results["parameters"] = {
            **params.to_dict(), "model": model, "n_streamlines": len(streamlines),
            "n_seed_voxels": int(seed.sum()), "directions": directions, **extra,
            "stopping": "binary: brain & FA >= fa_threshold"
                        + (", lesion voxels always allowed" if params.lesion_policy == "pass" else ""),
        }
        return runtime

    def _fit_odf(self, cfg: dict, fa: np.ndarray, wm: np.ndarray, mask: np.ndarray):
        """CSA / CSD fit of the preprocessed series in the tracking mask, outliers left out.

        Returns the fit and the excluded volumes (0-based).
        """
        import pandas as pd

        from pipeline.dwi.motion import flagged_volumes
        from pipeline.errors import InputError
        from pipeline.tract.odf import OdfParams, fit_odf

        i = self.inputs
        img = nib.load(i.dwi)
        grads = dwi_gradients(i.bval, i.bvec, i.dwi, cfg)
        excluded: list[int] = []
        if cfg["dwi"]["exclude_outliers"] and isdefined(i.confounds):
            conf = pd.read_csv(i.confounds, sep="\t")
            excluded = [int(k) for k in np.flatnonzero(flagged_volumes(conf))]
        keep = np.setdiff1d(np.arange(grads.n_volumes), excluded)
        t = cfg["tract"]
        params = OdfParams(model=t["model"], sh_order=t["sh_order"],
                           response_fa_threshold=t["response_fa_threshold"])
        data = np.asarray(img.dataobj, dtype=np.float32)[..., keep]
        try:
            odf = fit_odf(data, grads.select(keep).dipy_gtab(), mask, params=params, wm=wm, fa=fa)
        except ValueError as exc:
            raise InputError(i.dwi, f"tract.model {t['model']}: {exc}") from None
        return odf, excluded


# --------------------------------------------------------------------------- tractometry


class _TractometryInputSpec(BaseInterfaceInputSpec):
    params = traits.Dict(mandatory=True, desc="the configuration keys this node reads (_node_params)")
    tractogram = File(exists=True, mandatory=True)
    maps = traits.Dict(mandatory=True, desc="fa, md, ad, rd -> file (DWI space)")
    lesion = File(exists=True, mandatory=True)
    xfm = File(exists=True, mandatory=True, desc="dwi -> T1w")
    mni_xfm = File(exists=True, mandatory=True, desc="T1w -> MNI")
    subject = traits.Str(mandatory=True)
    session = traits.Str(mandatory=True)


class _TractometryOutputSpec(TraitedSpec):
    bundles = traits.Dict(desc="bundle -> .trk / .trx (DWI world mm)")
    density = traits.Dict(desc="bundle -> streamline-count map on the DWI grid")
    density_mni = traits.Dict(desc="bundle -> streamline-count map on the MNI template grid")
    profiles = File(exists=True)
    summary = File(exists=True)
    parameters = traits.Dict()


class Tractometry(SimpleInterface):
    """Recognise, clean and profile every defined bundle; density maps; tables."""

    input_spec = _TractometryInputSpec
    output_spec = _TractometryOutputSpec

    def _run_interface(self, runtime):
        from dipy.tracking.streamline import Streamlines

        from pipeline.registration import Transform
        from pipeline.templates import load_mni_template
        from pipeline.tract.bundles import load_bundle_definitions
        from pipeline.tract.profiles import (
            bundle_density,
            profiles_dataframe,
            summary_dataframe,
            tractometry,
        )

        cfg = self.inputs.params
        t = cfg["tract"]
        fa_img = nib.load(self.inputs.maps["fa"])
        streamlines = _load_tractogram(self.inputs.tractogram, fa_img)
        to_mni = Transform.load(self.inputs.xfm).compose(Transform.load(self.inputs.mni_xfm))
        definitions = load_bundle_definitions(t["bundles"])
        maps = {m: load_array(path, np.float32) for m, path in self.inputs.maps.items()}
        lesion = load_array(self.inputs.lesion, np.float32)
        clean = ({"enabled": True, "distance_threshold": t["clean_distance_sd"],
                  "length_threshold": t["clean_length_sd"], "n_iterations": t["clean_iterations"]}
                 if t["clean"] else {"enabled": False})
        results = tractometry(streamlines, definitions, maps, fa_img.affine,
                              to_mni=to_mni.source_to_target, lesion=lesion,
                              n_nodes=t["n_nodes"], min_streamlines=t["min_streamlines"],
                              clean=clean)
        tpl = load_mni_template(cfg["anat"]["template_resolution"])
        tpl_img = tpl.image("brain")
        cwd = Path(runtime.cwd)
        bundles, density, density_mni = {}, {}, {}
        for name, r in results.items():
            if r.status != "ok":
                log.warning("sub-%s ses-%s bundle %s: %s (%s); its profile rows are NaN",
                            self.inputs.subject, self.inputs.session, name, r.status, r.reason)
                continue
            ent = bundle_entity(name)
            ext = t["tractogram_format"]
            bundles[name] = str(_save_tractogram(Streamlines(r.streamlines), fa_img,
                                                 cwd / f"bundle_{ent}.{ext}")[0])
            dens = bundle_density(r.streamlines, fa_img.affine, fa_img.shape[:3])
            density[name] = save_array(dens, fa_img, cwd / f"density_{ent}.nii.gz", np.float32)
            dmni = bundle_density(r.streamlines_mni, tpl_img.affine, tpl_img.shape[:3])
            density_mni[name] = save_array(dmni, tpl_img, cwd / f"density_mni_{ent}.nii.gz",
                                           np.float32)
        prof = profiles_dataframe(results, self.inputs.subject, self.inputs.session)
        summ = summary_dataframe(results, self.inputs.subject, self.inputs.session)
        for df in (prof, summ):  # diffusivities in um^2/ms, as in the ROI table
            cols = [c for c in df.columns if c.startswith(("mean_md", "mean_ad", "mean_rd"))]
            df[cols] = df[cols] * 1e3
        diff = prof["metric"].isin(["md", "ad", "rd"])
        prof.loc[diff, "value"] = prof.loc[diff, "value"] * 1e3
        prof.to_csv(cwd / "profiles.tsv", sep="\t", index=False, na_rep="n/a")
        summ.to_csv(cwd / "summary.tsv", sep="\t", index=False, na_rep="n/a")
        self._results.update(
            bundles=bundles, density=density, density_mni=density_mni,
            profiles=str(cwd / "profiles.tsv"), summary=str(cwd / "summary.tsv"),
            parameters={
                "bundle_definitions": str(t["bundles"] or "configs/tracts.yaml (shipped)"),
                "bundles": {n: {"status": r.status, "reason": r.reason,
                                "n_streamlines": r.n_streamlines} for n, r in results.items()},
                "n_nodes": t["n_nodes"], "min_streamlines": t["min_streamlines"],
                "cleaning": clean, "mni_grid": f"{tpl.space} {cfg['anat']['template_resolution']} mm",
                "profile": "Gaussian-weighted mean over streamlines at each node (AFQ); "
                           "node 1 at the end nearest the bundle's start ROI",
            },
        )
        return runtime


# --------------------------------------------------------------------------- QC


class _TractQcInputSpec(BaseInterfaceInputSpec):
    fa = File(exists=True, mandatory=True)
    brain = File(exists=True, mandatory=True)
    density = traits.Dict(mandatory=True)
    profiles = File(exists=True, mandatory=True)


class _TractQcOutputSpec(TraitedSpec):
    figures = traits.Dict()


class TractQC(SimpleInterface):
    """Bundles over FA (density > 0) and the FA / MD / AD / RD profiles."""

    input_spec = _TractQcInputSpec
    output_spec = _TractQcOutputSpec

    def _run_interface(self, runtime):
        import matplotlib

        matplotlib.use("Agg")
        import pandas as pd

        from pipeline.report.figures import (
            Overlay,
            bundle_colours,
            mosaic,
            plot_tract_profiles,
            save_figure,
        )

        cwd = Path(runtime.cwd)
        fa_img = nib.load(self.inputs.fa)
        brain = load_array(self.inputs.brain) > 0
        density = sorted(self.inputs.density.items())
        overlays = [Overlay(load_array(p) > 0, colour, name, filled=True, alpha=0.45)
                    for (name, p), colour in zip(density, bundle_colours(len(density)), strict=True)]
        figs = {}
        fig = mosaic(np.asarray(fa_img.dataobj, dtype=np.float32), fa_img.affine, overlays,
                     title="recognised bundles (streamline density > 0) on FA", focus=brain)
        figs["bundles"] = save_figure(fig, cwd / "bundles.svg")
        prof = pd.read_csv(self.inputs.profiles, sep="\t", na_values="n/a")
        units = {"fa": "FA", "md": "MD (um^2/ms)", "ad": "AD (um^2/ms)", "rd": "RD (um^2/ms)"}
        figs["profiles"] = save_figure(plot_tract_profiles(prof, METRICS, units),
                                       cwd / "profiles.svg")
        self._results["figures"] = figs
        return runtime


# --------------------------------------------------------------------------- derivatives


class _TractSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    subject = traits.Str(mandatory=True)
    session = traits.Str(mandatory=True)
    config = traits.Dict(mandatory=True)
    sources = traits.List(traits.Str())
    tractogram = File(exists=True, mandatory=True)
    tracking_parameters = traits.Dict()
    bundles = traits.Dict()
    density = traits.Dict()
    density_mni = traits.Dict()
    profiles = File(exists=True, mandatory=True)
    summary = File(exists=True, mandatory=True)
    tractometry_parameters = traits.Dict()
    figures = traits.Dict()


class _TractSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str())


PROFILE_COLUMNS = {
    "subject": {"Description": "participant label"},
    "session": {"Description": "session label"},
    "bundle": {"Description": "bundle name (configs/tracts.yaml or tract.bundles)"},
    "node": {"Description": "node along the bundle, 1 = the end nearest the bundle's start ROI"},
    "metric": {"Description": "fa, md, ad or rd"},
    "value": {"Description": "Gaussian-weighted profile value; md/ad/rd in um^2/ms (= 1e-3 mm^2/s)"},
    "lesion_masked": {"Description": "True: samples inside lesions left out of the node average"},
}

SUMMARY_COLUMNS = {
    "subject": {"Description": "participant label"},
    "session": {"Description": "session label"},
    "bundle": {"Description": "bundle name"},
    "status": {"Description": "ok | not_found | too_few"},
    "reason": {"Description": "why the bundle has no profile (empty when status is ok)"},
    "n_recognised": {"Description": "streamlines matching the bundle's ROIs before cleaning"},
    "n_streamlines": {"Description": "streamlines kept after cleaning"},
    "lesion_node_fraction": {"Description": "fraction of nodes whose core lies in a lesion voxel"},
    **{f"mean_{m}{s}": {"Description": f"mean of the {m.upper()} profile over nodes"
                        + (", lesion samples excluded" if s else ""),
                        **({"Units": "um^2/ms"} if m != "fa" else {})}
       for m in METRICS for s in ("", "_lesion_masked")},
    **{f"mean_{m}{s}": {"Description": f"mean of the {m.upper()} (diffusion kurtosis) profile "
                        "over nodes" + (", lesion samples excluded" if s else ""),
                        "Units": "unitless"}
       for m in KURTOSIS_METRICS for s in ("", "_lesion_masked")},
}


class TractDerivatives(SimpleInterface):
    """Write the tract outputs of one subject-session (atomic, with provenance)."""

    input_spec = _TractSinkInputSpec
    output_spec = _TractSinkOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from pipeline.templates import SPACE
        from workflows.derivatives import DerivativesWriter

        i = self.inputs
        cfg = dict(i.config)
        w = DerivativesWriter(i.output_dir, config=cfg)
        ent = {"sub": i.subject, "ses": i.session, "datatype": "dwi"}
        params = {"tract": dict(cfg.get("tract", {})), "tracking": i.tracking_parameters,
                  "tractometry": i.tractometry_parameters}
        out: list[str] = []

        def meta(description):
            return w.provenance(sources=i.sources, parameters=params, seed=cfg.get("seed"),
                                extra={"Description": description})

        tcfg = cfg["tract"]

        def tractogram(src, description, **spec):  # the node wrote the file: copy its bytes
            out.append(str(w.write_with(lambda p: [Path(shutil.copyfile(src, p))],
                                        meta=meta(description), **ent, space="dwi",
                                        model=tcfg["model"], suffix="tractography",
                                        extension=Path(src).suffix, **spec)))

        if tcfg["save_tractogram"]:
            tractogram(i.tractogram, f"whole-brain {tcfg['model']} tractogram (world RAS mm)",
                       desc="wholebrain")
        for name, path in i.bundles.items():
            tractogram(path, f"bundle {name}, cleaned, oriented (node 1 at its start ROI)",
                       bundle=bundle_entity(name))
        for space, maps in (("dwi", i.density), (SPACE, i.density_mni)):
            for name, path in maps.items():
                out.append(str(w.write_nifti(
                    nib.load(path), meta=meta(f"streamline count per voxel of bundle {name}"),
                    **ent, space=space, bundle=bundle_entity(name), desc="density",
                    suffix="dwimap")))
        for src, columns, suffix, description in (
            (i.profiles, PROFILE_COLUMNS, "tractprofiles", "tract profiles (long format)"),
            (i.summary, SUMMARY_COLUMNS, "tractstats", "per-bundle status, counts and means"),
        ):
            table = pd.read_csv(
                src,
                sep="\t",
                na_values="n/a",
                keep_default_na=False,
                dtype={"subject": str, "session": str},
            )
            out.append(str(w.write_tsv(table, columns=columns, meta=meta(description), **ent,
                                       space="dwi", model="tensor", suffix=suffix)))
        for name, path in i.figures.items():
            out.append(str(w.write_bytes(Path(path).read_bytes(), sub=i.subject, ses=i.session,
                                         datatype="figures", desc=name, suffix="tract",
                                         extension=".svg")))
        self._results["out_files"] = out
        return runtime


# --------------------------------------------------------------------------- workflow


def diffusion_inputs(
    out: Path, subject: str, session: str, *, model: str = "tensor"
) -> dict[str, str]:
    """The diffusion and structural outputs of a subject-session the tract stage reads.

    ``model`` csa / csd also needs the preprocessed series, its rotated
    gradients and the per-volume outlier flags (``dwi.save_preproc`` true).

    Raises :class:`~pipeline.errors.InputError` naming the first missing file.
    """
    from pipeline.errors import InputError
    from pipeline.templates import SPACE
    from workflows.derivatives import build_path

    dwi = {"sub": subject, "ses": session, "datatype": "dwi"}
    files = {
        **{m: build_path(out, space="dwi", model="tensor", param=m, suffix="dwimap",
                         extension=".nii.gz", **dwi) for m in (*METRICS, "v1")},
        "brain": build_path(out, space="dwi", desc="brain", suffix="mask", extension=".nii.gz", **dwi),
        "wm": build_path(out, space="dwi", desc="WM", suffix="mask", extension=".nii.gz", **dwi),
        "lesion": build_path(out, space="dwi", desc="lesion", suffix="mask", extension=".nii.gz", **dwi),
        "xfm": build_path(out, mode="image", suffix="xfm", extension=".json",
                          **{"from": "dwi", "to": "T1w"}, **dwi),
        "mni_xfm": build_path(out, mode="image", suffix="xfm", extension=".json",
                              **{"from": "T1w", "to": SPACE}, **{**dwi, "datatype": "anat"}),
    }
    for m in KURTOSIS_METRICS:  # profiled too when the diffusion stage fitted the DKI
        path = build_path(out, space="dwi", model="dki", param=m, suffix="dwimap",
                          extension=".nii.gz", **dwi)
        if path.exists():
            files[m] = path
    if model != "tensor":
        files.update({
            key: build_path(out, space="dwi", desc="preproc", suffix="dwi", extension=ext, **dwi)
            for key, ext in (("dwi", ".nii.gz"), ("bval", ".bval"), ("bvec", ".bvec"))
        })
        files["confounds"] = build_path(out, desc="confounds", suffix="timeseries",
                                        extension=".tsv", **dwi)
    for key, path in files.items():
        if not path.exists():
            hint = (f" (tract.model {model} needs the preprocessed series: dwi.save_preproc true)"
                    if key in ("dwi", "bval", "bvec") else "")
            raise InputError(path, "diffusion or structural output missing: run the anat and dwi "
                             "stages of this subject-session before the tract stage" + hint)
    return {k: str(v) for k, v in files.items()}


def _node_params(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per node, only the configuration keys it reads (shaped like the configuration), so
    that an unrelated change (e.g. ``nbs.threshold``) does not rerun the tracking."""
    t = config["tract"]
    track = ("model", "tractogram_format", "sh_order", "response_fa_threshold", "method",
             "seeds_per_voxel", "step_size_mm", "max_angle_deg", "min_length_mm",
             "max_length_mm", "fa_threshold", "seed_fa_threshold", "lesion_policy")
    metry = ("bundles", "clean", "clean_distance_sd", "clean_length_sd", "clean_iterations",
             "n_nodes", "min_streamlines", "tractogram_format")
    return {
        "track": {"seed": config["seed"], "tract": {k: t[k] for k in track},
                  "dwi": {"exclude_outliers": config["dwi"]["exclude_outliers"]},
                  "validation": {k: config["validation"][k] for k in CANONICAL_GRADIENT_KEYS}},
        "tractometry": {"tract": {k: t[k] for k in metry},
                        "anat": {"template_resolution": config["anat"]["template_resolution"]}},
    }


def init_tract_wf(
    *,
    config: dict[str, Any],
    inputs: dict[str, str],
    subject: str,
    session: str,
    output_dir: str,
    name: str = "tract_wf",
) -> pe.Workflow:
    """Tractography + tractometry workflow of one subject-session.

    Parameters
    ----------
    config : dict
        The whole resolved configuration (``tract``, ``anat`` and ``seed`` used).
    inputs : dict
        From :func:`diffusion_inputs`: ``fa``, ``md``, ``ad``, ``rd``, ``v1``,
        ``brain``, ``wm``, ``lesion`` (DWI space), ``xfm`` (dwi -> T1w) and
        ``mni_xfm`` (T1w -> MNI); optionally ``mk``, ``ak``, ``rk``, ``kfa`` (DKI maps,
        profiled too); with ``tract.model`` csa / csd also ``dwi``,
        ``bval``, ``bvec`` (preprocessed series) and ``confounds``.
    """
    required = {*METRICS, "v1", "brain", "wm", "lesion", "xfm", "mni_xfm"}
    odf_inputs = ("dwi", "bval", "bvec", "confounds")
    if config["tract"]["model"] != "tensor":
        required |= set(odf_inputs)
    missing = required - set(inputs)
    if missing:
        raise ValueError(f"init_tract_wf: inputs {sorted(missing)} missing")
    wf = pe.Workflow(name=name)
    p = _node_params(config)
    track = pe.Node(Track(params=p["track"],
                          **{k: inputs[k] for k in ("fa", "v1", "brain", "wm", "lesion")},
                          **{k: inputs[k] for k in odf_inputs if k in inputs}), name="track")
    profiled = (*METRICS, *(m for m in KURTOSIS_METRICS if m in inputs))
    metry = pe.Node(Tractometry(params=p["tractometry"], maps={m: inputs[m] for m in profiled},
                                lesion=inputs["lesion"], xfm=inputs["xfm"],
                                mni_xfm=inputs["mni_xfm"], subject=subject, session=session),
                    name="tractometry")
    wf.connect(track, "tractogram", metry, "tractogram")
    qc = pe.Node(TractQC(fa=inputs["fa"], brain=inputs["brain"]), name="qc")
    wf.connect([(metry, qc, [("density", "density"), ("profiles", "profiles")])])
    sink = pe.Node(TractDerivatives(output_dir=output_dir, subject=subject, session=session,
                                    config=config, sources=sorted(inputs.values())),
                   name="derivatives")
    wf.connect([
        (track, sink, [("tractogram", "tractogram"), ("parameters", "tracking_parameters")]),
        (metry, sink, [("bundles", "bundles"), ("density", "density"),
                       ("density_mni", "density_mni"), ("profiles", "profiles"),
                       ("summary", "summary"), ("parameters", "tractometry_parameters")]),
        (qc, sink, [("figures", "figures")]),
    ])
    return wf
