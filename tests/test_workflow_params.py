"""Cheap graph-construction tests: which configuration keys reach which Nipype node.

Nipype reruns a node when the hash of its inputs changes. Each node of the
diffusion and tract workflows receives only the configuration keys it reads, so a
change elsewhere (``nbs.threshold``) reruns nothing there, a change of a DWI
denoising key reruns the chain from the denoising node on, and the number of
processes is not hashed. The workflows are built, not run (seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config

ANAT = ("t1w", "mask", "wm", "lesion", "hemisphere", "mni_xfm")
TRACT = ("fa", "md", "ad", "rd", "v1", "brain", "wm", "lesion", "xfm", "mni_xfm")


def _config(tmp_path: Path, text: str = "") -> dict:
    files = []
    if text:
        f = tmp_path / f"cfg{abs(hash(text))}.yaml"
        f.write_text(text)
        files.append(f)
    return load_config(files).to_dict()


def _files(tmp_path: Path, names) -> dict[str, str]:
    out = {}
    for name in names:
        p = tmp_path / f"{name}.nii.gz"
        p.write_bytes(b"placeholder")
        out[name] = str(p)
    return out


def _hashes(wf) -> dict[str, str]:
    """Input hash of every node (content of files given at construction)."""
    return {
        node.name: node.inputs.get_hashval(hash_method="content")[1] for node in wf._get_all_nodes()
    }


def _dwi_wf(tmp_path: Path, config: dict, nprocs: int = 1):
    from workflows.dwi import init_dwi_wf

    f = _files(tmp_path, ("dwi", *ANAT))
    for ext in ("bval", "bvec"):
        (tmp_path / f"dwi.{ext}").write_text("0\n")
    return init_dwi_wf(config=config, dwi=f["dwi"], bval=str(tmp_path / "dwi.bval"),
                       bvec=str(tmp_path / "dwi.bvec"), anat={k: f[k] for k in ANAT},
                       subject="01", session="baseline", output_dir=str(tmp_path / "out"),
                       nprocs=nprocs)


def test_dwi_nodes_hash_only_the_keys_they_read(tmp_path):
    base = _hashes(_dwi_wf(tmp_path, _config(tmp_path)))
    assert {"load", "denoise", "motion", "mask", "tensor", "rois", "derivatives"} <= set(base)
    # an unrelated key: only the sink (which records the whole configuration) changes
    other = _hashes(_dwi_wf(tmp_path, _config(tmp_path, "nbs:\n  threshold: 4.0\n")))
    assert {n for n in base if base[n] != other[n]} == {"derivatives"}
    # the number of processes is not hashed
    assert _hashes(_dwi_wf(tmp_path, _config(tmp_path), nprocs=2)) == base
    # a denoising key: the denoising node (and the sink), not loading or the fits' own inputs
    den = _hashes(_dwi_wf(tmp_path, _config(tmp_path, "dwi:\n  denoise_patch_radius: 3\n")))
    assert {n for n in base if base[n] != den[n]} == {"denoise", "derivatives"}
    # a tensor key reaches the tensor node only
    ten = _hashes(_dwi_wf(tmp_path, _config(tmp_path, "dwi:\n  tensor_method: OLS\n")))
    assert {n for n in base if base[n] != ten[n]} == {"tensor", "derivatives"}
    # a gradient-table check reaches every node that loads the table
    grad = _hashes(_dwi_wf(tmp_path, _config(tmp_path, "validation:\n  b0_threshold: 60\n")))
    changed = {n for n in base if base[n] != grad[n]}
    assert {"load", "denoise", "motion", "mask", "tensor"} <= changed and "rois" not in changed
    # a check of the raw table only: validated once, by the loading node
    norm = _hashes(_dwi_wf(tmp_path, _config(tmp_path, "validation:\n  bvec_norm_tolerance: 0.2\n")))
    assert {n for n in base if base[n] != norm[n]} == {"load", "derivatives"}


@pytest.mark.parametrize("model", ["tensor", "csd"])
def test_tract_nodes_hash_only_the_keys_they_read(tmp_path, model):
    from workflows.tract import init_tract_wf

    extra = ("dwi", "bval", "bvec", "confounds") if model != "tensor" else ()

    def build(text: str = ""):
        cfg = _config(tmp_path, f"tract:\n  model: {model}\n" + text)
        inputs = _files(tmp_path, (*TRACT, *extra))
        return _hashes(init_tract_wf(config=cfg, inputs=inputs, subject="01", session="m06",
                                     output_dir=str(tmp_path / "out")))

    base = build()
    assert {n for n, h in build("nbs:\n  threshold: 4.0\n").items() if h != base[n]} == {
        "derivatives"
    }
    assert {n for n, h in build("  n_nodes: 50\n").items() if h != base[n]} == {
        "tractometry",
        "derivatives",
    }
    assert "track" in {n for n, h in build("  step_size_mm: 0.75\n").items() if h != base[n]}


# ------------------------------------------------------------------ graph construction


def _unconnected_mandatory(wf) -> list[str]:
    """Mandatory node inputs neither set at construction nor connected (wiring errors)."""
    from nipype.interfaces.base import isdefined

    graph = wf._create_flat_graph()
    missing = []
    for node in graph.nodes():
        fed = {conn[1] for _, _, data in graph.in_edges(node, data=True)
               for conn in data.get("connect", [])}  # fmt: skip
        for name in node.inputs.copyable_trait_names():
            trait = node.inputs.trait(name)
            if trait.mandatory and name not in fed and not isdefined(getattr(node.inputs, name)):
                missing.append(f"{node.fullname}.{name}")
    return missing


@pytest.mark.parametrize("denoise", ["mppca", "patch2self", "none"])
@pytest.mark.parametrize("gibbs", [True, False])
@pytest.mark.parametrize("kurtosis", ["auto", False])
@pytest.mark.parametrize("with_t1w", [True, False])
def test_dwi_graph_is_fully_wired(tmp_path, denoise, gibbs, kurtosis, with_t1w):
    from workflows.dwi import init_dwi_wf

    cfg = _config(tmp_path, f"dwi:\n  denoise: {denoise}\n  gibbs: {str(gibbs).lower()}\n"
                            f"  kurtosis: {str(kurtosis).lower()}\n")  # fmt: skip
    f = _files(tmp_path, ("dwi", *ANAT))
    for ext in ("bval", "bvec"):
        (tmp_path / f"dwi.{ext}").write_text("0\n")
    wf = init_dwi_wf(config=cfg, dwi=f["dwi"], bval=str(tmp_path / "dwi.bval"),
                     bvec=str(tmp_path / "dwi.bvec"),
                     anat={k: f[k] for k in ANAT} if with_t1w else None,
                     subject="01", session="baseline", output_dir=str(tmp_path / "out"))  # fmt: skip
    names = set(wf.list_node_names())
    assert ("denoise" in names) == (denoise != "none") and ("gibbs" in names) == gibbs
    assert ("kurtosis" in names) == (kurtosis is not False)
    assert ("dwi_to_t1w" in names) == with_t1w
    assert _unconnected_mandatory(wf) == []


@pytest.mark.parametrize("model", ["tensor", "csa", "csd"])
def test_tract_graph_is_fully_wired(tmp_path, model):
    from workflows.tract import init_tract_wf

    extra = ("dwi", "bval", "bvec", "confounds") if model != "tensor" else ()
    wf = init_tract_wf(config=_config(tmp_path, f"tract:\n  model: {model}\n"),
                       inputs=_files(tmp_path, (*TRACT, *extra)), subject="01", session="m06",
                       output_dir=str(tmp_path / "out"))  # fmt: skip
    assert _unconnected_mandatory(wf) == []


@pytest.mark.parametrize("strategy", ["36P", "acompcor", "24P"])
def test_func_graph_is_fully_wired(tmp_path, strategy):
    from workflows.func import init_func_wf

    f = _files(tmp_path, ("bold", "t1w", "mask", "wm", "csf", "mni_xfm"))
    wf = init_func_wf(config=_config(tmp_path, f"func:\n  strategy: {strategy}\n"),
                      bold=f["bold"], bold_json=None,
                      anat={k: f[k] for k in ("t1w", "mask", "wm", "csf", "mni_xfm")},
                      subject="01", session="m06", output_dir=str(tmp_path / "out"))  # fmt: skip
    assert "bold_to_t1w" in wf.list_node_names()
    assert _unconnected_mandatory(wf) == []


@pytest.mark.parametrize("flair", [True, False])
@pytest.mark.parametrize("method", ["threshold", "deepbet"])
def test_anat_graph_is_fully_wired(tmp_path, flair, method):
    from workflows.anat import init_anat_wf

    f = _files(tmp_path, ("t1", "flair"))
    wf = init_anat_wf(config=_config(tmp_path, f"anat:\n  brain_extraction: {method}\n"),
                      t1w=f["t1"], flair=f["flair"] if flair else None, lesion_mask=None,
                      lesion_space=None, subject="01", session="baseline",
                      output_dir=str(tmp_path / "out"))  # fmt: skip
    assert _unconnected_mandatory(wf) == []


def test_the_wiring_check_finds_an_unconnected_input(tmp_path):
    """The helper above is not vacuous: a node whose mandatory input is neither set nor
    connected is reported."""
    from nipype.pipeline import engine as pe

    from workflows.interfaces.registration import EpiToT1w

    f = _files(tmp_path, ("t1w", "mask"))
    wf = pe.Workflow(name="w")
    wf.add_nodes([pe.Node(EpiToT1w(t1w=f["t1w"], t1w_mask=f["mask"], source="dwi"), name="reg")])
    assert _unconnected_mandatory(wf) == ["w.reg.moving"]
