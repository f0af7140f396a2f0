#!/usr/bin/env bash
# The README's second command: installs what is missing, builds selfnorm and runs the whole test
# suite (C++ unit tests, command-line and Python tests) through CTest. Extra arguments go to ctest,
# e.g. `scripts/test.sh -R config`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

require_packages "${SELFNORM_BUILD_PACKAGES[@]}" "${SELFNORM_PYTHON_PACKAGES[@]}" "${SELFNORM_TEST_PACKAGES[@]}"
build_selfnorm
log "running the tests"
ctest --test-dir "$SELFNORM_BUILD" --output-on-failure "$@"
