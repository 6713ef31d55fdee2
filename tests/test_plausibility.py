"""Plausibility checks of the structural stage (pipeline.anat.plausibility)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.anat.plausibility import (
    LIMITS,
    contrast_checks,
    structural_checks,
)


def test_values_inside_the_limits_pass_and_outside_fail():
    ok = structural_checks({"icv_l": 1.4, "mni_scale": 1.3, "bias_field_ratio": 1.5})
    assert not ok.flagged and ok.reason() == ""
    bad = structural_checks({"icv_l": 2.9, "mni_scale": 1.3, "bias_field_ratio": 2.3e6})
    assert bad.flagged
    assert [c.name for c in bad.failed] == ["icv_l", "bias_field_ratio"]
    assert "2.9" in bad.reason() and "brain extraction failed" in bad.reason()
    # the limits themselves are plausible and both ends are inclusive
    lo, hi, _ = LIMITS["icv_l"]
    assert not structural_checks({"icv_l": lo}).flagged
    assert not structural_checks({"icv_l": hi}).flagged
    assert structural_checks({"icv_l": hi + 1e-6}).flagged


def test_unmeasured_values_pass_and_say_so_and_unknown_names_are_errors():
    report = structural_checks({"flair_csf_wm_ratio": None, "icv_l": float("nan")})
    assert not report.flagged
    assert all("not measured" in c.message for c in report.checks)
    table = report.table()
    assert list(table.columns) == ["name", "value", "lower", "upper", "unit", "passed", "message"]
    with pytest.raises(KeyError, match="icv"):
        structural_checks({"icv": 1.4})


def test_contrast_checks_tell_flair_from_t2w():
    rng = np.random.default_rng(0)
    shape = (20, 20, 20)
    wm = np.zeros(shape, bool)
    wm[:10] = True
    gm = np.zeros(shape, bool)
    gm[10:15] = True
    csf = np.zeros(shape, bool)
    csf[15:] = True
    masks = {"wm": wm, "gm": gm, "csf": csf}

    def image(wm_v, gm_v, csf_v):
        return np.where(wm, wm_v, np.where(gm, gm_v, csf_v)) + rng.normal(0, 5, shape)

    t1 = image(1000, 650, 250)
    flair = image(700, 1000, 120)
    t2 = image(600, 800, 1800)
    good = structural_checks(contrast_checks(t1w=t1, flair=flair, masks=masks))
    assert not good.flagged
    swapped = structural_checks(contrast_checks(t1w=t1, flair=t2, masks=masks))
    assert [c.name for c in swapped.failed] == ["flair_csf_wm_ratio"]
    # a T2w given as the T1w fails both T1w contrast checks
    wrong_t1 = structural_checks(contrast_checks(t1w=t2, flair=None, masks=masks))
    assert {c.name for c in wrong_t1.failed} == {"t1w_csf_wm_ratio", "t1w_gm_wm_ratio"}
