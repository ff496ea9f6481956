#!/usr/bin/env bash
# Create .venv with everything labeler needs; safe to run again (it only fills in what is missing).
# torch and torchvision are pinned and installed first: a bare `torch` requirement on a
# machine without it makes pip fetch a multi-GB CUDA build from the index. 2.14.1/0.29.1 are
# matching builds that also run on CPU, so transformers' torchvision image and video
# processors are there, as on a GPU deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${LABELER_VENV:-.venv}
TORCH_SPEC=${LABELER_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
EXTRAS=${1:-}   # "test" adds the test tools

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  $PIP install $TORCH_SPEC
fi
target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
if ! "$VENV/bin/python" -c "import labeler" 2>/dev/null || [ -n "$EXTRAS" ] || [ pyproject.toml -nt "$VENV/.labeler-installed" ]; then
  echo "installing labeler${EXTRAS:+ with [$EXTRAS]}"
  $PIP install -e "$target" 2>&1 | grep -v "^WARNING: Location" || true
  touch "$VENV/.labeler-installed"
fi
if [[ "$EXTRAS" == *test* ]] && ! "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('ensemble_boxes')" 2>/dev/null; then
  # The tests check labeler's weighted boxes fusion against the authors' implementation.
  # Only its numpy module is used (loaded from its file); --no-deps keeps out numba, which
  # its other modules need and which would pin numpy.
  $PIP install --no-deps "ensemble-boxes==1.0.9" 2>&1 | grep -v "^WARNING: Location" || true
fi
