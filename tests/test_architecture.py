"""Layering rules: pipeline/ is a pure, cheap-to-import science library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_import_pipeline_is_cheap_and_side_effect_free(tmp_path):
    code = (
        "import os, sys; before = set(os.listdir('.')); env = dict(os.environ)\n"
        "import pipeline, pipeline.config, pipeline.errors, pipeline.validation, pipeline.gradients\n"
        "heavy = [m for m in ('dipy', 'nilearn', 'matplotlib', 'sklearn', 'nipype', 'snakemake',"
        " 'bids', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert set(os.listdir('.')) == before\n"
        "assert dict(os.environ) == env\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
