#!/usr/bin/env bash
# The README's first command: installs what is missing, builds selfnorm and runs the default
# experiment (every activation through 64 layers of width 512), leaving results/default.h5 and
# its figures results/default_*.png (scripts/plot.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

require_packages "${SELFNORM_BUILD_PACKAGES[@]}" "${SELFNORM_PYTHON_PACKAGES[@]}"
build_selfnorm
cd "$SELFNORM_ROOT"
log "running configs/default.json"
"$SELFNORM_BUILD/selfnorm" run configs/default.json -o results/default.h5 --overwrite
log "drawing the figures (scripts/plot.py)"
"$SELFNORM_PYTHON" scripts/plot.py results/default.h5
