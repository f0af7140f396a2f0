# Shared by the setup scripts: Debian packages, the build. Source it; do not run it.
# The scripts are the README's two commands; they work from any folder.

SELFNORM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SELFNORM_BUILD="${SELFNORM_BUILD:-$SELFNORM_ROOT/build}"
# Debian's python3 sees Debian's python3-* packages; another python3 first on PATH may not.
SELFNORM_PYTHON="${SELFNORM_PYTHON:-/usr/bin/python3}"

# Packages to build selfnorm and run an experiment.
SELFNORM_BUILD_PACKAGES=(g++ cmake ninja-build git libeigen3-dev libhdf5-dev nlohmann-json3-dev catch2 libcli11-dev)
# Packages for the analysis scripts and figures.
SELFNORM_PYTHON_PACKAGES=(python3 python3-numpy python3-h5py python3-xarray python3-h5netcdf python3-matplotlib)
# Packages the test suite needs on top: the checking builds use clang with its sanitizer and
# libFuzzer runtimes (libclang-rt-14-dev) and LLVM's OpenMP, which ships Archer for TSan (libomp-dev).
SELFNORM_TEST_PACKAGES=(python3-pytest python3-nbclient python3-nbformat python3-ipykernel hdf5-tools
                        clang-14 libclang-rt-14-dev libomp-dev)

log() { printf '\033[1m[selfnorm]\033[0m %s\n' "$*" >&2; }

# Installs the missing Debian packages among "$@" when run as root; otherwise prints the exact
# command to run and fails.
require_packages() {
  local missing=()
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing Debian packages: ${missing[*]}"
    echo "Install them as root, then run this command again:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
}

# Whether CMake finished generating a build system in folder $1. A configure that failed (a missing
# package, say) leaves a cache but no build system behind, and must run again.
has_build_system() {
  [ -f "$1/build.ninja" ] || [ -f "$1/Makefile" ]
}

# Configures (Release by default) and builds into $SELFNORM_BUILD.
build_selfnorm() {
  local generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  if ! has_build_system "$SELFNORM_BUILD"; then
    [ -f "$SELFNORM_BUILD/CMakeCache.txt" ] && generator=()
    log "configuring in $SELFNORM_BUILD"
    cmake -S "$SELFNORM_ROOT" -B "$SELFNORM_BUILD" "${generator[@]}" -DSELFNORM_PYTHON="$SELFNORM_PYTHON" >/dev/null || return 1
  fi
  log "building"
  cmake --build "$SELFNORM_BUILD" --parallel "$(nproc)"
}

# Configures (once) and builds one checking build with clang: $1 the folder, $2 the targets
# (space-separated), the rest CMake options. Optimised lightly (-O1): sanitizers slow the code
# anyway, and the build is a good part of CI's time. Without NDEBUG, so that the internal
# invariants' assertions are checked where the sanitizers run. The CUDA backend is left out: the sanitizers
# cannot see inside the GPU, and nvcc would add minutes for nothing.
build_checking() {
  local folder=$1 targets=$2
  shift 2
  local generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  if ! has_build_system "$folder"; then
    [ -f "$folder/CMakeCache.txt" ] && generator=()
    log "configuring $folder"
    CC=clang-14 CXX=clang++-14 cmake -S "$SELFNORM_ROOT" -B "$folder" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_FLAGS_RELEASE="-O1" -DCMAKE_C_FLAGS_RELEASE="-O1" \
      -DSELFNORM_PYTHON="$SELFNORM_PYTHON" -DSELFNORM_CUDA=OFF "$@" >/dev/null
  fi
  log "building $folder"
  # shellcheck disable=SC2086
  cmake --build "$folder" --parallel "$(nproc)" --target $targets
}
