#!/usr/bin/env bash
# Set up (first run only) and run the main job on embedded defaults: a local Ray, generated
# sample images, a tiny OWLv2 built offline. Writes Parquet under demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/labeler demo "$@"
