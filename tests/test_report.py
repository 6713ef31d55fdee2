"""HTML QC reports: unit tests of the renderer and the collectors, and the group page in Chromium.

The subject-session pages of a real tiny run are rendered in Chromium by the
tests at the end of ``tests/test_dwi_workflow.py`` (they reuse its fixture); the
browser helpers live here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputError
from pipeline.report.html import Figure, Report, Section, local_references, render_report
from workflows.report import (
    group_report_path,
    session_report,
    session_report_path,
    write_group_report,
    write_session_report,
)

SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="120pt" height="60pt" viewBox="0 0 120 60">'
       '<rect width="120" height="60" fill="#3a7"/></svg>\n')


# --------------------------------------------------------------------------- browser helpers


def chromium_executable() -> str:
    """Path of a Chromium / Chrome binary; fails under CI=true, skips locally when absent."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium not found on PATH (CI installs Debian's chromium; see .ci/run)")
    pytest.skip("chromium not installed (apt-get install -y --no-install-recommends chromium)")
    raise AssertionError  # unreachable: pytest.skip raises


_CHECK_JS = """<script>
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img, object').forEach(function (el) {
    var src = el.getAttribute('src') || el.getAttribute('data') || '';
    out.push({tag: el.tagName.toLowerCase(), src: src.slice(0, 120), complete: !!el.complete,
              width: el.naturalWidth || 0, height: el.naturalHeight || 0});
  });
  var pre = document.createElement('pre');
  pre.id = 'msmri-image-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def render_in_chromium(page: Path, screenshot: Path, *, height: int = 4000) -> list[dict]:
    """Load ``page`` in headless Chromium; return each image's load status; save a screenshot.

    A copy of the page with a small script (records ``naturalWidth`` of every
    ``<img>`` / ``<object>`` after the load event into the DOM) is written next
    to it, so relative figure paths resolve exactly as for the page itself, and
    removed afterwards. The screenshot path is printed (``screenshot: <path>``).
    """
    exe = chromium_executable()
    page = Path(page).resolve()
    probe = page.with_name(f".{page.stem}.check.html")
    probe.write_text(page.read_text().replace("</body>", _CHECK_JS + "\n</body>"))
    profile = screenshot.parent / f".chromium-profile-{page.stem}"
    try:
        res = _chromium(exe, profile, "--dump-dom", probe.as_uri())
        assert res.returncode == 0, res.stderr[-2000:]
        dom = res.stdout
        start = dom.find('<pre id="msmri-image-check">')
        assert start >= 0, f"the image check did not run in Chromium: {res.stderr[-2000:]}"
        text = dom[start:].split(">", 1)[1].split("</pre>", 1)[0]
        import html as _html

        images = json.loads(_html.unescape(text))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = _chromium(exe, profile, f"--window-size=1280,{height}", f"--screenshot={screenshot}",
                         page.as_uri())
        assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
        print(f"screenshot: {screenshot}")
    finally:
        probe.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    return images


def assert_report_is_complete(page: Path, screenshot: Path, *, min_images: int = 1) -> list[dict]:
    """Every local reference exists, and every image loads in Chromium with a size."""
    text = page.read_text()
    missing = [p for p in local_references(text, page) if not p.exists()]
    assert not missing, f"{page.name} refers to files that do not exist: {missing}"
    images = render_in_chromium(page, screenshot)
    assert len(images) >= min_images, images
    broken = [i for i in images if not i["complete"] or i["width"] <= 0]
    assert not broken, f"images that did not load in Chromium: {broken}"
    return images


def _screenshot_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("MSMRI_SCREENSHOT_DIR", tmp_path / "screenshots"))


# --------------------------------------------------------------------------- synthetic outputs


def _derivatives(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "msmri derivatives", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "msmri", "Version": "0.1.0"}]}))
    return root


def _inventory(out: Path, sub: str, ses: str, *, skipped: dict[str, str] | None = None) -> Path:
    skipped = skipped or {}
    rows = [{"modality": m, "path": f"sub-{sub}/ses-{ses}/x_{m}.nii.gz",
             "status": "skipped" if m in skipped else "used", "note": skipped.get(m, "")}
            for m in ("T1w", "FLAIR", "dwi", "bold")]
    folder = out / f"sub-{sub}/ses-{ses}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sub-{sub}_ses-{ses}_inventory.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    path.with_suffix(".json").write_text(json.dumps({
        "warnings": [], "notes": [], "SoftwareVersions": {"msmri": "0.1.0", "numpy": "2.0.0"}}))
    return path


def _anat(out: Path, sub: str, ses: str, versions: dict[str, str]) -> None:
    folder = out / f"sub-{sub}/ses-{ses}/anat"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"sub-{sub}_ses-{ses}"
    pd.DataFrame([{"icv_mm3": 1.5e6, "gm_mm3": 7e5, "wm_mm3": 5e5, "csf_mm3": 3e5,
                   "lesion_mm3": 1200.0, "nawm_mm3": 4.8e5, "bpf": 0.8}]).to_csv(
        f"{stem}_volumes.tsv", sep="\t", index=False)
    Path(f"{stem}_volumes.json").write_text(json.dumps({
        "LesionMethod": "provided", "Parameters": {"syn": True, "template_resolution": 2},
        "SoftwareVersions": versions, "DateGenerated": "2026-01-01"}))
    figs = out / f"sub-{sub}/ses-{ses}/figures"
    figs.mkdir(parents=True, exist_ok=True)
    for name in ("brainseg", "t1w2mni"):  # the lesions figure is missing on purpose
        (figs / f"sub-{sub}_ses-{ses}_desc-{name}_T1w.svg").write_text(SVG)


# --------------------------------------------------------------------------- unit tests


def test_missing_figure_is_a_clear_not_available_entry(tmp_path):
    there = tmp_path / "figures/a.svg"
    there.parent.mkdir()
    there.write_text(SVG)
    figures = (
        Figure(there, "present"),
        Figure(tmp_path / "figures/gone.svg", "absent", reason="the stage did not draw it"),
        Figure(None, "never"),
    )
    report = Report("t", (Section("s", "S", items=figures),))
    page = tmp_path / "r.html"
    text = render_report(report, location=page)
    assert text.count("<img ") == 1 and 'src="figures/a.svg"' in text
    assert "figure not available (<code>gone.svg</code>): the stage did not draw it" in text
    assert text.count("figure not available") == 2
    assert local_references(text, page) == [there.resolve()]
    embedded = render_report(report, location=page, embed=True)
    assert "data:image/svg+xml;base64," in embedded and local_references(embedded, page) == []


def test_stages_not_run_or_without_input_say_so(tmp_path):
    out = _derivatives(tmp_path / "out")
    _inventory(out, "01", "m00", skipped={"bold": "no resting-state BOLD found"})
    _anat(out, "01", "m00", {"msmri": "0.1.0"})
    report = session_report(out, "01", "m00")
    status = {s.id: (s.status, s.reason) for s in report.sections}
    assert status["anat"][0] == "ok"
    assert status["dwi"][0] == "not run" and "roistats.tsv" in status["dwi"][1]
    assert status["tract"][0] == "not run" and "run the tract stage" in status["tract"][1]
    assert status["func"] == ("no input", "no resting-state BOLD found")
    page = write_session_report(out, "01", "m00")
    assert page == session_report_path(out, "01", "m00") == out / "sub-01_ses-m00.html"
    text = page.read_text()
    assert "Stages not run or excluded" in text
    assert (
        "Diffusion: not run" in text
        and "Resting-state fMRI: no input (no resting-state BOLD found)" in text
    )
    assert "figure not available (<code>sub-01_ses-m00_desc-lesions_T1w.svg</code>)" in text
    assert all(p.exists() for p in local_references(text, page))
    assert not list(out.glob(".*tmp*"))  # atomic write: no temporary file left


def test_excluded_run_shows_its_reason(tmp_path):
    out = _derivatives(tmp_path / "out")
    _inventory(out, "01", "m00")
    folder = out / "sub-01/ses-m00/func"
    folder.mkdir(parents=True)
    pd.DataFrame([{"subject": "01", "session": "m00", "mean_fd_mm": 0.9, "excluded": 1,
                   "exclusion_reason": "only 150 s left after censoring (< 240 s)"}]).to_csv(
        folder / "sub-01_ses-m00_task-rest_desc-summary_bold.tsv", sep="\t", index=False)
    (folder / "sub-01_ses-m00_task-rest_desc-summary_bold.json").write_text(json.dumps(
        {"Excluded": True, "ExclusionReason": "only 150 s left after censoring (< 240 s)"}))
    func = {s.id: s for s in session_report(out, "01", "m00").sections}["func"]
    assert func.status == "excluded" and "150 s" in func.reason
    text = write_session_report(out, "01", "m00").read_text()
    assert "run EXCLUDED from connectivity analysis: only 150 s left" in text


def test_flagged_structural_results_show_a_banner_and_the_checks(tmp_path):
    out = _derivatives(tmp_path / "out")
    _inventory(out, "01", "m00")
    _anat(out, "01", "m00", {"msmri": "0.1.0"})
    stem = out / "sub-01/ses-m00/anat/sub-01_ses-m00_desc-plausibility_checks"
    reason = "intracranial volume (brain mask) = 2.9 l (plausible: 1-2.1): brain extraction failed"
    pd.DataFrame([{"name": "icv_l", "value": 2.9, "lower": 1.0, "upper": 2.1, "unit": "l",
                   "passed": False, "message": reason}]).to_csv(f"{stem}.tsv", sep="\t", index=False)
    Path(f"{stem}.json").write_text(json.dumps({"Flagged": True, "FailedChecks": ["icv_l"],
                                                "Reason": reason}))
    report = session_report(out, "01", "m00")
    anat = next(s for s in report.sections if s.id == "anat")
    assert anat.status == "flagged" and "2.9 l" in anat.reason
    assert len(report.banners) == 1 and "icv_l" in report.banners[0].text
    text = write_session_report(out, "01", "m00").read_text()
    assert text.index('class="note error banner"') < text.index('<section id="summary"')
    assert "Plausibility checks" in text and "include_flagged" in text
    # an unflagged session shows the table and no banner
    Path(f"{stem}.json").write_text(json.dumps({"Flagged": False, "FailedChecks": [], "Reason": ""}))
    report = session_report(out, "01", "m00")
    assert not report.banners and next(s for s in report.sections if s.id == "anat").status == "ok"


def test_methods_name_the_software_versions_of_the_sidecars(tmp_path):
    out = _derivatives(tmp_path / "out")
    _inventory(out, "01", "m00")
    _anat(out, "01", "m00", {"msmri": "0.1.0", "dipy": "9.8.7", "nipype": "6.5.4",
                             "nibabel": "5.4.3"})
    text = write_session_report(out, "01", "m00").read_text()
    methods = text.split('<section id="methods">', 1)[1]
    for name, version in (("dipy", "9.8.7"), ("nipype", "6.5.4"), ("nibabel", "5.4.3"),
                          ("numpy", "2.0.0")):
        assert f"{name} {version}" in methods, (name, version)
    assert (
        "Garyfallidis E" in methods and "doi.org/10.3389/fninf.2011.00013" in methods
    )  # DIPY, Nipype
    assert "SyN" in methods and "several versions" not in methods
    # a second session processed with another DIPY: both versions are stated, flagged
    (out / "sub-01/ses-m00/sub-01_ses-m00_inventory.json").write_text(json.dumps(
        {"SoftwareVersions": {"dipy": "1.0.0"}}))
    text = write_session_report(out, "01", "m00").read_text()
    assert "1.0.0, 9.8.7" in text and "several versions" in text


def test_bad_output_folder_gives_a_clear_error_naming_the_path(tmp_path):
    raw = tmp_path / "bids"
    raw.mkdir()
    (raw / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')
    with pytest.raises(InputError, match='"DatasetType": "derivative"') as err:
        session_report(raw, "01", "m00")
    assert str(raw / "dataset_description.json") in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"dataset_description\.json at its root") as err:
        write_group_report(empty)
    assert str(empty) in str(err.value) and not group_report_path(empty).exists()
    with pytest.raises(InputError, match="directory not found"):
        session_report(tmp_path / "nowhere", "01", "m00")
    out = _derivatives(tmp_path / "out")
    with pytest.raises(InputError, match="no outputs for sub-01 ses-m00") as err:
        session_report(out, "01", "m00")
    assert str(out / "sub-01/ses-m00") in str(err.value)
    with pytest.raises(InputError, match="no group outputs"):
        write_group_report(out)


# --------------------------------------------------------------------------- group report


@pytest.fixture(scope="module")
def group_outputs(tmp_path_factory):
    """Group DTI, tract and NBS outputs of the group tests' synthetic tables (about 20 s)."""
    from tests.conftest import build_bids
    from tests.test_group import _write_func_outputs, _write_roi_tables, _write_tract_tables
    from workflows.cli import main

    root = tmp_path_factory.mktemp("group_report")
    bids = build_bids(root / "bids")
    out = root / "out"
    _write_roi_tables(out, np.random.default_rng(4), missing={("05", "m06")})
    _write_tract_tables(out, np.random.default_rng(7), n_subjects=5, lost={("03", "m06", "CC")})
    _write_func_outputs(out, np.random.default_rng(3), n_subjects=6, excluded={"06"})
    assert main([str(bids), str(out), "group", "--stages", "dwi_stats", "tract_stats", "nbs",
                 "report"]) == 0
    return out


def test_group_report_states_limits_exactness_and_exclusions(group_outputs):
    page = group_report_path(group_outputs)
    text = page.read_text()
    for title in ("DTI (ROIs)", "Tracts", "Network-based statistic", "QC-FC (residual motion)",
                  "Exclusions and their reasons", "Methods"):
        assert f">{title}<" in text, title
    # four complete pairs: the exact Wilcoxon cannot reach 0.05, and the page says so
    assert "wilcoxon [m06 - baseline]: cannot reach p &lt; 0.05 with this design" in text
    assert "cannot reach p&lt;0.05</td>" in text and "Benjamini-Hochberg" in text
    # 5 usable NBS pairs: 32 sign patterns enumerated, smallest two-sided p 1/16
    assert "Inference EXACT: all 32 distinct relabellings enumerated" in text
    assert "smallest attainable FWE p = 0.0625" in text and "cannot reach p &lt; 0.05" in text
    # exclusions with their reasons: sub-05 lacks m06 (DTI), sub-03's CC was not found, sub-06's run
    exclusions = text.split('id="exclusions"', 1)[1].split("</section>", 1)[0]
    assert "150 s" in exclusions and "<td>05</td>" in exclusions and "CC" in exclusions
    assert 'QC-FC (residual motion)<span class="badge notrun">not run</span>' in text
    assert "Zalesky A" in text and "Benjamini Y" in text
    for svg in group_outputs.glob("group/*.svg"):  # every group figure is on the page
        assert f'src="group/{svg.name}"' in text, svg.name


def test_group_report_renders_in_chromium(group_outputs, tmp_path):
    page = group_report_path(group_outputs)
    n_svg = len(list(group_outputs.glob("group/*.svg")))
    images = assert_report_is_complete(page, _screenshot_dir(tmp_path) / "group.png",
                                       min_images=n_svg)
    assert len(images) == n_svg, (len(images), n_svg)
    print(f"group report: {page.stat().st_size / 1024:.0f} kB, {len(images)} figures")


def test_chromium_check_catches_an_image_that_does_not_load(tmp_path):
    """The browser check itself: a figure file that exists but is not an image is reported."""
    (tmp_path / "good.svg").write_text(SVG)
    (tmp_path / "bad.svg").write_text("this is not an SVG document\n")
    page = tmp_path / "page.html"
    page.write_text('<html><body><img src="good.svg"><img src="bad.svg"></body></html>')
    images = {Path(i["src"]).name: i for i in render_in_chromium(page, tmp_path / "shot.png")}
    assert images["good.svg"]["width"] > 0
    assert images["bad.svg"]["width"] == 0
    with pytest.raises(AssertionError, match="did not load in Chromium"):
        assert_report_is_complete(page, tmp_path / "shot2.png")


def test_dwi_and_bold_flags_show_banners(tmp_path):
    from workflows.dwi import _exclusion_meta
    from workflows.func import _registration_flag

    out = _derivatives(tmp_path / "out")
    _inventory(out, "01", "m00")
    dwi = out / "sub-01/ses-m00/dwi"
    dwi.mkdir(parents=True)
    summary = {"excluded": [4, 5], "excluded_fraction": 2 / 32, "flagged": False, "reason": "",
               "warning": None}
    meta = _exclusion_meta({"exclusions": summary},
                           {"nmi_sharpness": 0.08, "threshold": 0.2, "passed": False})
    (dwi / "sub-01_ses-m00_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    func = out / "sub-01/ses-m00/func"
    func.mkdir(parents=True)
    flag = _registration_flag({"nmi_sharpness": 0.05, "threshold": 0.2, "passed": False})
    (func / "sub-01_ses-m00_task-rest_desc-summary_bold.json").write_text(json.dumps(flag))
    banners = [b.text for b in session_report(out, "01", "m00").banners]
    assert any(b.startswith("DWI flagged: b = 0 -> T1w registration failed") for b in banners)
    assert any(b.startswith("BOLD flagged: BOLD -> T1w registration failed") for b in banners)


def test_tract_profile_figure_gives_each_bundle_one_colour_in_every_panel():
    import pandas as pd

    from pipeline.report.figures import plot_tract_profiles

    rows = [{"bundle": b, "metric": m, "node": k, "value": 0.5 + k / 100,
             "lesion_masked": int(b == "CST_L" and k in (3, 4))}
            for b in ("OR_R", "CST_L") for m in ("fa", "md", "ad", "rd") for k in range(10)]
    fig = plot_tract_profiles(pd.DataFrame(rows), ("fa", "md", "ad", "rd"), {"fa": "FA"})
    axes = fig.axes
    assert len(axes) == 4 and axes[0].get_ylabel() == "FA" and axes[1].get_ylabel() == "md"
    colours = [{ln.get_label(): ln.get_color() for ln in ax.lines if not ln.get_label().startswith("_")}
               for ax in axes]
    assert all(c == colours[0] for c in colours) and set(colours[0]) == {"CST_L", "OR_R"}
    assert colours[0]["CST_L"] != colours[0]["OR_R"]
    dotted = [ln for ln in axes[0].lines if ln.get_linestyle() == ":"]
    assert sum(len(ln.get_xdata()) for ln in dotted) == 2  # the two lesion samples of CST_L
