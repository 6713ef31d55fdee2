#!/usr/bin/env bash
# Quick-start command 1: install msmri into .venv, generate the synthetic demo trial
# (5 patients x 3 sessions by default; MSMRI_DEMO_PRESET=tiny for a 1-minute run)
# and run the Snakemake workflow on it. Outputs: demo/derivatives/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PRESET=${MSMRI_DEMO_PRESET:-trial}
CORES=${MSMRI_CORES:-2}
DEMO=${MSMRI_DEMO_DIR:-demo}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
export PATH="$PWD/.venv/bin:$PATH"
if [ ! -f "$DEMO/bids/dataset_description.json" ]; then
    msmri synth "$DEMO" --preset "$PRESET"
fi
snakemake --cores "$CORES" --config bids_dir="$DEMO/bids" output_dir="$DEMO/derivatives" \
    msmri_config="$PWD/configs/demo.yaml"
echo "msmri demo finished: outputs in $DEMO/derivatives"
