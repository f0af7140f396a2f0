#!/usr/bin/env bash
# The README's second command: installs what is missing, builds selfnorm and runs the whole test
# suite (C++ unit tests, command-line and Python tests) through CTest, then the checking builds:
#   build-check  clang with AddressSanitizer + UndefinedBehaviorSanitizer: the unit tests (but the
#                slow statistical ones), the Python tests of the error paths, and a short run of the
#                config-parser fuzzer (SELFNORM_FUZZ_SECONDS, default 25);
#   build-tsan   clang with ThreadSanitizer and LLVM's OpenMP with Archer: the determinism tests.
# Extra arguments go to the main ctest, e.g. `scripts/test.sh -R config`. SELFNORM_CHECKS=0 skips
# the checking builds. Every phase runs; the script fails if any failed, after a summary.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

require_packages "${SELFNORM_BUILD_PACKAGES[@]}" "${SELFNORM_PYTHON_PACKAGES[@]}" "${SELFNORM_TEST_PACKAGES[@]}" || exit 1

summary=()
failed=0
# Runs one phase ("$1" names it), timing it and recording its outcome.
phase() {
  local name=$1
  shift
  local start=$SECONDS
  log "$name"
  if "$@"; then
    summary+=("$(printf '  %-44s passed   %4d s' "$name" $((SECONDS - start)))")
  else
    summary+=("$(printf '  %-44s FAILED   %4d s' "$name" $((SECONDS - start)))")
    failed=1
  fi
}

main_tests() {
  build_selfnorm && ctest --test-dir "$SELFNORM_BUILD" --output-on-failure "$@"
}
check_tests() {
  rm -f "$SELFNORM_ROOT/build-check/fuzz/summary.txt"
  build_checking "$SELFNORM_ROOT/build-check" "selfnorm selfnorm_tests selfnorm_amx_tests selfnorm_fuzz_config" \
      -DSELFNORM_FUZZ=ON \
      -DSELFNORM_SANITIZE=address,undefined -DSELFNORM_FUZZ_SECONDS="${SELFNORM_FUZZ_SECONDS:-25}" &&
    ctest --test-dir "$SELFNORM_ROOT/build-check" --output-on-failure --parallel "$(nproc)"
}
thread_tests() {
  build_checking "$SELFNORM_ROOT/build-tsan" "selfnorm_thread_tests selfnorm_thread_amx_tests" -DSELFNORM_SANITIZE=thread &&
    ctest --test-dir "$SELFNORM_ROOT/build-tsan" --output-on-failure
}

phase "build and test (g++, Release)" main_tests "$@"
if [ "${SELFNORM_CHECKS:-1}" != 0 ]; then
  phase "ASan + UBSan build, tests and fuzzing (clang)" check_tests
  phase "TSan + Archer build and tests (clang, libomp)" thread_tests
fi

echo
echo "selfnorm test summary:"
printf '%s\n' "${summary[@]}"
[ -f "$SELFNORM_ROOT/build-check/fuzz/summary.txt" ] && sed 's/^/  /' "$SELFNORM_ROOT/build-check/fuzz/summary.txt"
echo "  total $((SECONDS / 60)) min $((SECONDS % 60)) s"
exit $failed
