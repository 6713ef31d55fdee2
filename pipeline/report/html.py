"""HTML quality-control reports in the NiPreps spirit (fMRIPrep / QSIPrep reports).

A report is described by plain data: a :class:`Report` holds :class:`Section`
objects, each a list of :class:`Figure`, :class:`Table`, :class:`KeyValues` and
:class:`Note` items, and a :class:`Methods` block (boilerplate text, software
versions, references). :func:`render_report` turns it into one HTML page.

The module knows nothing about the derivatives layout: the caller
(``workflows/report.py``) finds the files and builds the description. Figures
are SVG files referenced by a path relative to the report (small pages, the
figures stay the single copy) or, with ``embed=True``, inlined as data URIs (a
self-contained page to e-mail). A figure whose file does not exist is shown as a
"not available" box with the reason, never as a broken image.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

__all__ = [
    "REFERENCES",
    "Figure",
    "KeyValues",
    "Methods",
    "Note",
    "Reference",
    "Report",
    "Section",
    "Table",
    "local_references",
    "methods_boilerplate",
    "render_report",
]

#: Section status values and how they are shown.
STATUS_LABELS = {
    "ok": "done",
    "partial": "partial",
    "not run": "not run",
    "excluded": "excluded",
    "flagged": "flagged",
    "no input": "no input",
    "failed": "failed",
}


@dataclass(frozen=True)
class Figure:
    """An SVG (or PNG) figure on disk.

    Parameters
    ----------
    path : path or None
        The image file; ``None`` or a file that does not exist gives a
        "not available" entry with ``reason``.
    title, caption : str
        Heading and explanatory text shown under the figure.
    reason : str
        Why the figure may be missing (shown only when it is).
    """

    path: Path | None
    title: str
    caption: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Table:
    """A table (pandas DataFrame) with a title.

    Rows are flagged automatically from well-known columns: ``significant``
    true (bold), ``can_reach_alpha`` false ("cannot reach p < alpha" badge),
    ``status`` other than ``ok`` and ``excluded`` = 1 (warning colour).
    """

    data: Any
    title: str
    caption: str = ""
    max_rows: int = 400
    scroll: bool = False


@dataclass(frozen=True)
class KeyValues:
    """A two-column list of labelled values (e.g. a run summary)."""

    items: tuple[tuple[str, Any], ...]
    title: str = ""


@dataclass(frozen=True)
class Note:
    """A paragraph of text; ``kind`` info, ok, warning or error; ``pre`` keeps line breaks."""

    text: str
    kind: str = "info"
    pre: bool = False


@dataclass(frozen=True)
class Section:
    """One report section (navigation entry).

    Parameters
    ----------
    id : str
        HTML anchor.
    title : str
        Heading.
    status : {"ok", "partial", "not run", "excluded", "flagged", "no input", "failed"}
        Shown as a badge; anything but ``ok`` is listed with ``reason`` in the
        report's summary of missing stages.
    reason : str
        Why the stage is not complete.
    items : sequence of Figure, Table, KeyValues or Note
    """

    id: str
    title: str
    status: str = "ok"
    reason: str = ""
    items: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUS_LABELS:
            raise ValueError(
                f"section {self.id!r}: status must be one of {sorted(STATUS_LABELS)}, "
                f"got {self.status!r}"
            )


@dataclass(frozen=True)
class Reference:
    """A bibliographic reference (``key`` is used in the boilerplate as [key])."""

    key: str
    text: str
    doi: str = ""


@dataclass(frozen=True)
class Methods:
    """Citation boilerplate: paragraphs (with [key] citations), versions, references."""

    paragraphs: tuple[str, ...]
    software: tuple[tuple[str, tuple[str, ...]], ...]
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class Report:
    """A whole report page."""

    title: str
    sections: tuple[Section, ...]
    subtitle: str = ""
    methods: Methods | None = None
    footer: str = ""
    links: tuple[tuple[str, Path], ...] = field(default=())
    banners: tuple[Note, ...] = ()  # shown above every section (e.g. a plausibility flag)


# --------------------------------------------------------------------------- references

_REFS = [
    ("nipype", "Gorgolewski K, Burns CD, Madison C, Clark D, Halchenko YO, Waskom ML, Ghosh SS "
     "(2011). Nipype: a flexible, lightweight and extensible neuroimaging data processing "
     "framework in Python. Front Neuroinform 5:13.", "10.3389/fninf.2011.00013"),
    ("dipy", "Garyfallidis E, Brett M, Amirbekian B, Rokem A, van der Walt S, Descoteaux M, "
     "Nimmo-Smith I (2014). Dipy, a library for the analysis of diffusion MRI data. Front "
     "Neuroinform 8:8.", "10.3389/fninf.2014.00008"),
    ("nilearn", "Abraham A, Pedregosa F, Eickenberg M, Gervais P, Mueller A, Kossaifi J, "
     "Gramfort A, Thirion B, Varoquaux G (2014). Machine learning for neuroimaging with "
     "scikit-learn. Front Neuroinform 8:14.", "10.3389/fninf.2014.00014"),
    ("nibabel", "Brett M, Markiewicz CJ, Hanke M, et al. nibabel (software). Zenodo.",
     "10.5281/zenodo.591597"),
    ("numpy", "Harris CR, Millman KJ, van der Walt SJ, et al. (2020). Array programming with "
     "NumPy. Nature 585:357-362.", "10.1038/s41586-020-2649-2"),
    ("scipy", "Virtanen P, Gommers R, Oliphant TE, et al. (2020). SciPy 1.0: fundamental "
     "algorithms for scientific computing in Python. Nat Methods 17:261-272.",
     "10.1038/s41592-019-0686-2"),
    ("statsmodels", "Seabold S, Perktold J (2010). Statsmodels: econometric and statistical "
     "modeling with Python. Proc 9th Python in Science Conference, 92-96.", ""),
    ("networkx", "Hagberg AA, Schult DA, Swart PJ (2008). Exploring network structure, "
     "dynamics, and function using NetworkX. Proc 7th Python in Science Conference, 11-15.", ""),
    ("pandas", "McKinney W (2010). Data structures for statistical computing in Python. Proc "
     "9th Python in Science Conference, 56-61.", ""),
    ("matplotlib", "Hunter JD (2007). Matplotlib: a 2D graphics environment. Comput Sci Eng "
     "9(3):90-95.", "10.1109/MCSE.2007.55"),
    ("bids", "Gorgolewski KJ, Auer T, Calhoun VD, et al. (2016). The brain imaging data "
     "structure, a format for organizing and describing outputs of neuroimaging experiments. "
     "Sci Data 3:160044.", "10.1038/sdata.2016.44"),
    ("mni2009", "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL (2009). Unbiased "
     "nonlinear average age-appropriate brain templates from birth to adulthood. NeuroImage "
     "47(Suppl 1):S102.", "10.1016/S1053-8119(09)70884-5"),
    ("syn", "Avants BB, Epstein CL, Grossman M, Gee JC (2008). Symmetric diffeomorphic image "
     "registration with cross-correlation: evaluating automated labeling of elderly and "
     "neurodegenerative brain. Med Image Anal 12(1):26-41.", "10.1016/j.media.2007.06.004"),
    ("mppca", "Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, Fieremans E "
     "(2016). Denoising of diffusion MRI using random matrix theory. NeuroImage 142:394-406.",
     "10.1016/j.neuroimage.2016.08.016"),
    ("gibbs", "Kellner E, Dhital B, Kiselev VG, Reisert M (2016). Gibbs-ringing artifact "
     "removal based on local subvoxel-shifts. Magn Reson Med 76(5):1574-1581.",
     "10.1002/mrm.26054"),
    ("dti", "Basser PJ, Mattiello J, LeBihan D (1994). MR diffusion tensor spectroscopy and "
     "imaging. Biophys J 66(1):259-267.", "10.1016/S0006-3495(94)80775-1"),
    ("csd", "Tournier JD, Calamante F, Connelly A (2007). Robust determination of the fibre "
     "orientation distribution in diffusion MRI: non-negativity constrained super-resolved "
     "spherical deconvolution. NeuroImage 35(4):1459-1472.",
     "10.1016/j.neuroimage.2007.02.016"),
    ("csa", "Aganj I, Lenglet C, Sapiro G, Yacoub E, Ugurbil K, Harel N (2010). "
     "Reconstruction of the orientation distribution function in single- and multiple-shell "
     "q-ball imaging within constant solid angle. Magn Reson Med 64(2):554-566.",
     "10.1002/mrm.22365"),
    ("afq", "Yeatman JD, Dougherty RF, Myall NJ, Wandell BA, Feldman HM (2012). Tract profiles "
     "of white matter properties: automating fiber-tract quantification. PLoS One "
     "7(11):e49790.", "10.1371/journal.pone.0049790"),
    ("power2012", "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE (2012). Spurious "
     "but systematic correlations in functional connectivity MRI networks arise from subject "
     "motion. NeuroImage 59(3):2142-2154.", "10.1016/j.neuroimage.2011.10.018"),
    ("compcor", "Behzadi Y, Restom K, Liau J, Liu TT (2007). A component based noise "
     "correction method (CompCor) for BOLD and perfusion based fMRI. NeuroImage 37(1):90-101.",
     "10.1016/j.neuroimage.2007.04.042"),
    ("ciric2017", "Ciric R, Wolf DH, Power JD, et al. (2017). Benchmarking of participant-level "
     "confound regression strategies for the control of motion artifact in studies of "
     "functional connectivity. NeuroImage 154:174-187.",
     "10.1016/j.neuroimage.2017.03.020"),
    ("dosenbach", "Dosenbach NUF, Nardos B, Cohen AL, et al. (2010). Prediction of individual "
     "brain maturity using fMRI. Science 329(5997):1358-1361.", "10.1126/science.1194144"),
    ("seitzman", "Seitzman BA, Gratton C, Marek S, et al. (2020). A set of functionally-defined "
     "brain regions with improved representation of the subcortex and cerebellum. NeuroImage "
     "206:116290.", "10.1016/j.neuroimage.2019.116290"),
    ("fmriprep", "Esteban O, Markiewicz CJ, Blair RW, et al. (2019). fMRIPrep: a robust "
     "preprocessing pipeline for functional MRI. Nat Methods 16:111-116.",
     "10.1038/s41592-018-0235-4"),
    ("nbs", "Zalesky A, Fornito A, Bullmore ET (2010). Network-based statistic: identifying "
     "differences in brain networks. NeuroImage 53(4):1197-1207.",
     "10.1016/j.neuroimage.2010.06.041"),
    ("fdr", "Benjamini Y, Hochberg Y (1995). Controlling the false discovery rate: a practical "
     "and powerful approach to multiple testing. J R Stat Soc B 57(1):289-300.",
     "10.1111/j.2517-6161.1995.tb02031.x"),
    ("freedmanlane", "Freedman D, Lane D (1983). A nonstochastic interpretation of reported "
     "significance levels. J Bus Econ Stat 1(4):292-298.", "10.1080/07350015.1983.10509354"),
    ("nichols2002", "Nichols TE, Holmes AP (2002). Nonparametric permutation tests for "
     "functional neuroimaging: a primer with examples. Hum Brain Mapp 15(1):1-25.",
     "10.1002/hbm.1058"),
]
#: Every reference the boilerplate can cite, by key.
REFERENCES: dict[str, Reference] = {k: Reference(k, t, d) for k, t, d in _REFS}

#: Software whose version is listed, in this order, and its reference key.
_SOFTWARE_REFS = {
    "msmri": "", "nipype": "nipype", "dipy": "dipy", "nilearn": "nilearn", "nibabel": "nibabel",
    "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "networkx": "networkx",
    "statsmodels": "statsmodels", "matplotlib": "matplotlib",
}


# --------------------------------------------------------------------------- boilerplate


def _v(software: Mapping[str, Sequence[str]], name: str) -> str:
    versions = list(software.get(name, ()))
    if not versions:
        return name
    return f"{name} {' / '.join(versions)}"


def _anat_text(meta: Mapping[str, Any], sw: Mapping[str, Sequence[str]]) -> str:
    p = dict(meta.get("Parameters") or {})
    seg = dict(meta.get("Segmentation") or {})
    ref = p.get("anatomical_reference", "sessionwise")
    model = str(seg.get("model", seg.get("segmentation", "tissue model")))
    model = model.replace(" (module docstring)", "")
    text = (
        "The T1-weighted (T1w) image of each session was bias-corrected and skull-stripped, and "
        f"segmented into grey matter, white matter and CSF ({model}). "
        "It was registered to the MNI152NLin2009aSym template [mni2009] "
        + ("with an affine followed by symmetric diffeomorphic (SyN) normalisation [syn] "
           if p.get("syn", True) else "with an affine transform ")
        + f"implemented with {_v(sw, 'dipy')} [dipy], at {p.get('template_resolution', '?')} mm template "
        "resolution. "
    )
    if ref != "sessionwise":
        text += (f"Sessions of a subject were first aligned to a within-subject reference "
                 f"({ref}). ")
    method = meta.get("LesionMethod")
    text += (
        f"White-matter lesions: {method or 'lesion mask'}; lesions smaller than "
        f"{p.get('lesion_min_volume_mm3', '?')} mm³ were discarded. Normal-appearing white "
        f"matter (NAWM) is white matter minus the lesions dilated by "
        f"{p.get('nawm_lesion_margin_mm', '?')} mm."
    )
    return text


def _dwi_text(meta: Mapping[str, Any], sw: Mapping[str, Sequence[str]]) -> str:
    params = dict(meta.get("Parameters") or {})
    d = dict(params.get("dwi") or {})
    parts = []
    if d.get("denoise") == "mppca":
        parts.append(f"denoised with MP-PCA [mppca] (patch radius {d.get('denoise_patch_radius')})")
    if d.get("gibbs"):
        parts.append("corrected for Gibbs ringing [gibbs]")
    if d.get("motion_correction"):
        motion = dict(params.get("motion") or {})
        mc = motion.get("motion_correction", "rigidly realigned, b-vectors rotated")
        parts.append(f"corrected for head motion ({mc})")
    text = f"Diffusion-weighted images were {', '.join(parts) or 'used as acquired'}. "
    if d.get("exclude_outliers"):
        fd = d.get("fd_threshold_mm")
        text += ("Volumes with slice signal dropout against their leave-one-out prediction "
                 f"(threshold {d.get('dropout_threshold')} robust SD)"
                 + (f" or framewise displacement above {fd} mm" if fd else "")
                 + " were left out of the fit. ")
    tensor = dict(params.get("tensor") or {})
    text += (
        f"The diffusion tensor [dti] was fitted with {tensor.get('method', d.get('tensor_method', '?'))} "
        f"in {_v(sw, 'dipy')} [dipy] within the brain mask ({params.get('mask', d.get('mask', ''))}); "
        "fractional anisotropy (FA), mean (MD), axial (AD) and radial (RD) diffusivity were "
        "summarised (mean, median, SD) in white matter (probability ≥ "
        f"{d.get('wm_threshold')}), NAWM (lesions dilated by {d.get('lesion_margin_mm')} mm "
        f"excluded), lesions and a {d.get('perilesion_ring_mm')} mm perilesional ring, per "
        "hemisphere, in diffusion space through the inverse diffusion-to-T1w transform."
    )
    return text


def _tract_text(meta: Mapping[str, Any], sw: Mapping[str, Sequence[str]]) -> tuple[str, list[str]]:
    t = dict((meta.get("Parameters") or {}).get("tract") or {})
    model = t.get("model", "tensor")
    cites = ["dipy", "afq"]
    model_text = {"tensor": "the tensor's principal eigenvector [dti]",
                  "csd": "constrained spherical deconvolution fibre ODFs [csd]",
                  "csa": "constant-solid-angle q-ball ODFs [csa]"}.get(model, model)
    cites.append({"tensor": "dti", "csd": "csd", "csa": "csa"}.get(model, "dti"))
    text = (
        f"Whole-brain {t.get('method', 'deterministic')} tractography on {model_text} "
        f"({_v(sw, 'dipy')} [dipy]; {t.get('seeds_per_voxel')} seeds per voxel with FA > "
        f"{t.get('seed_fa_threshold')}, step {t.get('step_size_mm')} mm, maximum angle "
        f"{t.get('max_angle_deg')}°, stopping at FA < {t.get('fa_threshold')}, lengths "
        f"{t.get('min_length_mm')}-{t.get('max_length_mm')} mm). Bundles were recognised with "
        "waypoint ROIs defined in MNI space"
        + (", cleaned of outlier streamlines (pyAFQ-style) " if t.get("clean") else " ")
        + f"and sampled at {t.get('n_nodes')} nodes to give FA / MD / AD / RD tract profiles "
        f"[afq]; bundles with fewer than {t.get('min_streamlines')} streamlines are reported as "
        "not found with the reason."
    )
    return text, cites


def _func_text(meta: Mapping[str, Any], sw: Mapping[str, Sequence[str]]) -> tuple[str, list[str]]:
    f = dict((meta.get("Parameters") or {}).get("func") or {})
    cites = ["nilearn", "power2012"]
    if f.get("input") == "fmriprep":
        text = ("Resting-state BOLD runs preprocessed by fMRIPrep [fmriprep] (space "
                f"{f.get('fmriprep_space')}) were used with their confounds. ")
        cites.append("fmriprep")
    else:
        text = (
            f"Resting-state BOLD runs ({f.get('dummy_volumes', 0)} dummy volumes removed"
            + (", slice-timing corrected" if f.get("slice_timing") else "")
            + f") were rigidly realigned ({_v(sw, 'dipy')} [dipy]), registered to the T1w and "
            "resampled to MNI space in one step. "
        )
    strategy = f.get("strategy", "?")
    if "compcor" in str(strategy):
        cites.append("compcor")
    band = f"high-pass {f.get('high_pass')} Hz" + (
        f", low-pass {f.get('low_pass')} Hz" if f.get("low_pass") else ""
    )
    text += (
        f"Confounds ({strategy}"
        + (f", {f.get('n_compcor')} CompCor components per tissue [compcor]" if "compcor" in str(strategy) else "")
        + f") were regressed out with {band} filtering in {_v(sw, 'nilearn')} [nilearn]. "
        "Framewise displacement (FD) followed Power et al. [power2012]"
        + (f"; volumes with FD > {f.get('fd_threshold_mm')} mm were censored (scrubbing) and "
           f"runs with less than {f.get('min_duration_s')} s left were excluded"
           if f.get("scrubbing") else "")
        + ". "
    )
    atlas = str(f.get("atlas", ""))
    if atlas in ("seitzman", "dosenbach"):
        cites.append(atlas)
        atlas_text = f"the {atlas.capitalize()} regions [{atlas}]"
    else:
        atlas_text = f"the {atlas} parcellation"
    text += (f"Region time series were extracted from {atlas_text} and connectivity computed "
             f"as {', '.join(map(str, f.get('measures', [])))}.")
    return text, cites


def _group_text(group: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    paras, cites = [], []
    dwi = dict((group.get("dwi_stats") or {}).get("Parameters") or {})
    if dwi:
        paras.append(
            f"Longitudinal change of the per-subject ROI medians over sessions "
            f"{', '.join(map(str, dwi.get('sessions', [])))} was tested with the Friedman test "
            "(exact within-subject permutation distribution when feasible), the Wilcoxon "
            "signed-rank and paired t tests of the compared sessions, and a linear mixed model "
            f"({dwi.get('lmm_formula', 'random intercept')}) [statsmodels]. "
            f"Multiple comparisons: {dwi.get('fdr_statement', 'Benjamini-Hochberg FDR')} [fdr]. "
            "Every test reports whether its p-value is exact and the smallest p-value the "
            "design can attain."
        )
        cites += ["statsmodels", "fdr"]
    if group.get("tract_stats"):
        paras.append("Tract means were tested in the same way, and tract profiles node by node "
                     "with paired t statistics and family-wise error control along the tract "
                     "(max-t over nodes, sign-flip permutations) [nichols2002].")
        cites.append("nichols2002")
    nbs = dict((group.get("nbs") or {}).get("Parameters") or {})
    if nbs:
        cfg = dict(nbs.get("nbs") or {})
        n_perm = nbs.get("n_permutations")
        exact = (f"exact: all {n_perm} distinct sign-flip patterns enumerated" if nbs.get("exact")
                 else f"{n_perm} random permutations")
        paras.append(
            f"Connectivity change was tested with the network-based statistic [nbs] "
            f"({nbs.get('design', '')}; primary threshold {cfg.get('threshold_type', 't')} > "
            f"{cfg.get('threshold')}, component size = {cfg.get('size')}, "
            f"{cfg.get('alternative')}; {exact}; smallest attainable FWE p = "
            f"{_fmt(nbs.get('min_attainable_p'))})."
        )
        cites.append("nbs")
    if group.get("qcfc"):
        paras.append("Residual motion was assessed with QC-FC, the across-run correlation of "
                     "mean FD with each edge, with and without denoising [ciric2017, power2012].")
        cites += ["ciric2017", "power2012"]
    return paras, cites


def methods_boilerplate(
    stages: Mapping[str, Mapping[str, Any]],
    *,
    software: Mapping[str, Iterable[str]],
    version: str = "",
) -> Methods:
    """Citation boilerplate (QSIPrep style) from the stages' provenance sidecars.

    Parameters
    ----------
    stages : mapping
        Stage name (``anat``, ``dwi``, ``tract``, ``func``, or group stages
        ``dwi_stats``, ``tract_stats``, ``nbs``, ``qcfc``) -> the JSON sidecar
        (``Parameters``, ``SoftwareVersions``, ...) of that stage's main output.
        Stages that did not run are simply absent.
    software : mapping
        Package -> versions found in the sidecars (more than one when the stages
        ran with different installations; all are listed).
    version : str
        msmri version for the opening sentence.

    Returns
    -------
    Methods
        Paragraphs citing ``[key]`` references, the software table and the
        references cited.
    """
    sw = {k: tuple(dict.fromkeys(str(v) for v in vs)) for k, vs in software.items()}
    cites = ["bids", "nipype", "nibabel", "numpy", "scipy"]
    paras = [
        f"Results were produced by msmri {version or ' / '.join(sw.get('msmri', ()))} on a "
        f"BIDS dataset [bids], with workflows run by {_v(sw, 'nipype')} [nipype] on "
        f"{_v(sw, 'nibabel')} [nibabel], {_v(sw, 'numpy')} [numpy] and {_v(sw, 'scipy')} [scipy]. "
        "The text below is generated from the parameters recorded in the output sidecars; it "
        "may be copied into a manuscript."
    ]
    if "anat" in stages:
        paras.append(_anat_text(stages["anat"], sw))
        cites += ["mni2009", "syn", "dipy"]
    if "dwi" in stages:
        paras.append(_dwi_text(stages["dwi"], sw))
        d = dict((stages["dwi"].get("Parameters") or {}).get("dwi") or {})
        cites += (
            ["dipy", "dti"]
            + (["mppca"] if d.get("denoise") == "mppca" else [])
            + (["gibbs"] if d.get("gibbs") else [])
        )
    if "tract" in stages:
        text, c = _tract_text(stages["tract"], sw)
        paras.append(text)
        cites += c
    if "func" in stages:
        text, c = _func_text(stages["func"], sw)
        paras.append(text)
        cites += c
    gparas, gcites = _group_text(stages)
    paras += gparas
    cites += gcites
    if stages:
        paras.append(f"Figures were made with {_v(sw, 'matplotlib')} [matplotlib] and tables "
                     f"handled with {_v(sw, 'pandas')} [pandas].")
        cites += ["matplotlib", "pandas"]
    if "networkx" in sw and ("nbs" in stages):
        cites.append("networkx")
    import re

    text = " ".join(paras)  # number references by first citation in the text
    seen = [k.strip() for grp in re.findall(r"\[([a-z0-9, ]+)\]", text) for k in grp.split(",")]
    cites = list(dict.fromkeys([*seen, *cites]))
    ordered = list(_SOFTWARE_REFS) + sorted(set(sw) - set(_SOFTWARE_REFS))
    table = tuple((name, sw[name]) for name in ordered if name in sw)
    refs = tuple(REFERENCES[k] for k in dict.fromkeys(cites) if k in REFERENCES)
    return Methods(paragraphs=tuple(paras), software=table, references=refs)


# --------------------------------------------------------------------------- rendering

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
 background:#fafafa;line-height:1.45}
nav{position:sticky;top:0;background:#2c3e50;padding:.4em 1em;z-index:2}
nav a{color:#ecf0f1;margin-right:1.1em;text-decoration:none;font-size:.92em}
nav a:hover{text-decoration:underline}
main{max-width:1200px;margin:0 auto;padding:0 1.2em 3em}
h1{margin:.8em 0 .1em} .subtitle{color:#666;margin:0 0 1em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1.2em 0;padding:.3em 1.2em 1em}
h2{border-bottom:2px solid #2c3e50;padding-bottom:.2em} h3{margin:1.1em 0 .3em;font-size:1.05em}
.badge{display:inline-block;border-radius:4px;padding:.05em .5em;font-size:.75em;
 vertical-align:middle;margin-left:.5em;color:#fff;background:#7f8c8d}
.badge.ok{background:#27ae60} .badge.partial,.badge.excluded{background:#e67e22}
.badge.failed,.badge.flagged{background:#c0392b} .badge.warn{background:#e67e22}
figure{margin:.6em 0 1.2em} figure img{max-width:100%;height:auto;border:1px solid #eee;background:#fff}
figcaption{font-size:.88em;color:#555}
.missing{border:2px dashed #c0392b;background:#fdf2f2;color:#922;padding:1em;border-radius:4px;
 font-size:.92em}
.note{padding:.5em .8em;border-left:4px solid #3498db;background:#eef6fc;margin:.6em 0}
.note.warning{border-color:#e67e22;background:#fdf3e7} .note.error{border-color:#c0392b;
 background:#fdf2f2} .note.ok{border-color:#27ae60;background:#eefaf2}
.note.banner{font-weight:bold;font-size:1.05em;border-left-width:8px}
pre{white-space:pre-wrap;font-size:.85em;margin:0}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0}
th,td{border:1px solid #ddd;padding:.2em .45em;text-align:left}
th{background:#f0f3f5;position:sticky;top:0} tr.sig td{font-weight:bold;background:#eefaf2}
tr.warn td{background:#fdf3e7} .scroll td{white-space:nowrap} .scroll{max-height:32em;overflow:auto;display:inline-block;
 max-width:100%} .figgrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));
 gap:.5em} .kv th{width:16em} ol.refs li{margin-bottom:.3em;font-size:.9em}
"""


def _fmt(value: Any) -> str:
    """Short text for a table cell: 4 significant digits, ``n/a`` for missing values."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        import numpy as np

        if isinstance(value, np.bool_):
            return "yes" if bool(value) else "no"
        if isinstance(value, np.integer):
            return str(int(value))
        if isinstance(value, np.floating):
            value = float(value)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == int(value) and abs(value) < 1e9:
            return str(int(value))
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e12):
            return f"{value:.3e}"
        if abs(value) >= 1e4:
            return f"{value:.0f}"
        return f"{value:.4g}"
    text = str(value)
    return "n/a" if text in ("", "nan", "NaN", "None") else text


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _href(path: Path, location: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), Path(location).resolve().parent)
    return "/".join(html.escape(p, quote=True) for p in Path(rel).parts)


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


#: ``status`` column values that flag a row (missing bundle, skipped input, new lesion, ...).
_WARN_STATUS = {"not_found", "skipped", "failed", "excluded", "missing", "new", "enlarging"}


def _is_false(value: Any) -> bool:
    return str(value).strip().lower() in ("false", "0", "0.0", "no")


def _row_class(row: Mapping[str, Any]) -> str:
    if "can_reach_alpha" in row and _is_false(row["can_reach_alpha"]):
        return "warn"
    if "excluded" in row and _is_true(row["excluded"]):
        return "warn"
    if "status" in row and str(row["status"]) in _WARN_STATUS:
        return "warn"
    if "significant" in row and _is_true(row["significant"]):
        return "sig"
    return ""


def _render_table(t: Table) -> str:
    df = t.data
    out = [f"<h3>{_e(t.title)}</h3>"] if t.title else []
    if df is None or len(df) == 0:
        out.append('<div class="note">(empty table: nothing to report)</div>')
        return "\n".join(out)
    columns = [str(c) for c in df.columns]
    flag = "can_reach_alpha" in columns
    head = "".join(f"<th>{_e(c)}</th>" for c in columns) + ("<th>flag</th>" if flag else "")
    rows = []
    records = df.to_dict("records")
    for rec in records[: t.max_rows]:
        cls = _row_class(rec)
        cells = "".join(f"<td>{_e(_fmt(rec[c]))}</td>" for c in df.columns)
        if flag:
            cells += ("<td>cannot reach p&lt;0.05</td>" if _is_false(rec["can_reach_alpha"])
                      else "<td></td>")
        rows.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    wrap = ' class="scroll"' if t.scroll or len(records) > 25 else ""
    out.append(f"<div{wrap}><table><thead><tr>{head}</tr></thead><tbody>"
               + "".join(rows) + "</tbody></table></div>")
    if len(records) > t.max_rows:
        out.append(f'<div class="note">showing {t.max_rows} of {len(records)} rows; the full '
                   "table is in the TSV file</div>")
    if t.caption:
        out.append(f"<figcaption>{_e(t.caption)}</figcaption>")
    return "\n".join(out)


def _render_figure(f: Figure, location: Path, embed: bool) -> str:
    title = f"<h3>{_e(f.title)}</h3>" if f.title else ""
    caption = f"<figcaption>{_e(f.caption)}</figcaption>" if f.caption else ""
    if f.path is None or not Path(f.path).is_file():
        name = "" if f.path is None else f" (<code>{_e(Path(f.path).name)}</code>)"
        reason = f": {_e(f.reason)}" if f.reason else ""
        return (f'<figure class="unavailable">{title}<div class="missing">figure not available'
                f"{name}{reason}</div>{caption}</figure>")
    path = Path(f.path)
    if embed:
        mime = "image/svg+xml" if path.suffix == ".svg" else f"image/{path.suffix.lstrip('.')}"
        src = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    else:
        src = _href(path, location)
    return (f'<figure>{title}<img src="{src}" alt="{_e(f.title or path.name)}" '
            f'data-file="{_e(path.name)}">{caption}</figure>')


def _render_item(item: Any, location: Path, embed: bool) -> str:
    if isinstance(item, Figure):
        return _render_figure(item, location, embed)
    if isinstance(item, Table):
        return _render_table(item)
    if isinstance(item, Note):
        if item.pre:  # long text (e.g. a statistics summary): folded, first line shown
            first = item.text.strip().splitlines()[0] if item.text.strip() else ""
            body = f"<details><summary>{_e(first)}</summary><pre>{_e(item.text)}</pre></details>"
        else:
            body = _e(item.text)
        return f'<div class="note {_e(item.kind)}">{body}</div>'
    if isinstance(item, KeyValues):
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in item.items)
        title = f"<h3>{_e(item.title)}</h3>" if item.title else ""
        return f'{title}<table class="kv"><tbody>{rows}</tbody></table>'
    if isinstance(item, (list, tuple)):  # a grid of figures
        return (
            '<div class="figgrid">'
            + "".join(_render_item(i, location, embed) for i in item)
            + "</div>"
        )
    raise TypeError(f"cannot render report item of type {type(item).__name__}")


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status.replace(" ", ""))}">{_e(STATUS_LABELS[status])}</span>'


def _render_methods(m: Methods) -> str:
    import re

    numbers = {r.key: i + 1 for i, r in enumerate(m.references)}

    def cite(match: re.Match) -> str:
        keys = [k.strip() for k in match.group(1).split(",")]
        return "[" + ", ".join(f'<a href="#ref-{_e(k)}">{numbers[k]}</a>' if k in numbers else _e(k)
                               for k in keys) + "]"

    pattern = re.compile(r"\[([a-z0-9, ]+)\]")
    paras = "".join("<p>" + pattern.sub(cite, _e(p)) + "</p>" for p in m.paragraphs)
    rows = "".join(f"<tr><th>{_e(n)}</th><td>{_e(', '.join(v))}"
                   + (' <span class="badge warn">several versions</span>' if len(v) > 1 else "")
                   + "</td></tr>" for n, v in m.software)
    refs = "".join(
        f'<li id="ref-{_e(r.key)}">{_e(r.text)}'
        + (f' doi:<a href="https://doi.org/{_e(r.doi)}">{_e(r.doi)}</a>' if r.doi else "")
        + "</li>"
        for r in m.references
    )
    return (f"{paras}<h3>Software versions (from the provenance sidecars)</h3>"
            f'<table class="kv"><tbody>{rows}</tbody></table>'
            f'<h3>References</h3><ol class="refs">{refs}</ol>')


def render_report(report: Report, *, location: str | os.PathLike[str], embed: bool = False) -> str:
    """HTML text of ``report``.

    Parameters
    ----------
    report : Report
    location : path
        Where the page will be written: figure and link paths are made relative
        to its folder.
    embed : bool
        Inline the figures as base64 data URIs instead of relative links.

    Returns
    -------
    str
        A complete HTML5 document (no scripts, no external resources).
    """
    location = Path(location)
    nav = "".join(f'<a href="#{_e(s.id)}">{_e(s.title)}</a>' for s in report.sections)
    if report.methods is not None:
        nav += '<a href="#methods">Methods</a>'
    body = []
    for s in report.sections:
        parts = [f'<section id="{_e(s.id)}"><h2>{_e(s.title)}{_badge(s.status)}</h2>']
        if s.status != "ok" and s.reason:
            kind = "error" if s.status in ("failed", "flagged") else "warning"
            parts.append(
                f'<div class="note {kind}">{_e(STATUS_LABELS[s.status])}: {_e(s.reason)}</div>'
            )
        parts += [_render_item(i, location, embed) for i in s.items]
        parts.append("</section>")
        body.append("\n".join(parts))
    if report.methods is not None:
        body.append(
            f'<section id="methods"><h2>Methods</h2>{_render_methods(report.methods)}</section>'
        )
    links = ""
    if report.links:
        links = "<p>" + " · ".join(f'<a href="{_href(p, location)}">{_e(label)}</a>'
                                   for label, p in report.links) + "</p>"
    footer = f'<p class="subtitle">{_e(report.footer)}</p>' if report.footer else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(report.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<nav>{nav}</nav>\n<main>\n<h1>{_e(report.title)}</h1>\n"
        f'<p class="subtitle">{_e(report.subtitle)}</p>\n{links}\n'
        + "".join(f'<div class="note {_e(b.kind)} banner">{_e(b.text)}</div>\n'
                  for b in report.banners)
        + "\n".join(body) + f"\n{footer}\n</main>\n</body>\n</html>\n"
    )


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, val in attrs:
            if key in ("src", "href", "data") and val:
                self.found.append(val)


def local_references(text: str, location: str | os.PathLike[str]) -> list[Path]:
    """Local files an HTML page refers to (``src``, ``href``, ``data``), resolved.

    Anchors (``#...``), data URIs and ``http(s):``/``mailto:`` links are
    ignored. Use it to check that a report written at ``location`` refers only
    to files that exist.
    """
    from urllib.parse import unquote, urlparse

    parser = _Refs()
    parser.feed(text)
    base = Path(location).resolve().parent
    out = []
    for ref in parser.found:
        url = urlparse(ref)
        if ref.startswith("#") or url.scheme in ("data", "http", "https", "mailto"):
            continue
        path = unquote(url.path)
        out.append((base / path).resolve() if url.scheme in ("", "file") else Path(path))
    return out
