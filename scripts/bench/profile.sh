#!/usr/bin/env bash
# Where selfnorm's time goes: runs a job under `perf record` and prints the top symbols and
# shared objects.
#
#   scripts/bench/profile.sh [--quick] [--threads N] [--top K] [CONFIG]
#
# CONFIG defaults to configs/bench/reference.json; --quick runs it with 2 trials instead of its
# own count. Needs Debian's linux-perf. Hardware counters are used when the kernel exposes them
# (`perf stat -e cycles true` works); in a VM without them it samples the cpu-clock timer instead.
# The perf data file is kept under $PROFILE_DIR (default: a temporary folder, path printed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
selfnorm="${SELFNORM_BIN:-$root/build/selfnorm}"
python="${SELFNORM_PYTHON:-/usr/bin/python3}"
config="$root/configs/bench/reference.json"
quick=0
threads="$(nproc)"
top=25

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --threads) threads="$2"; shift ;;
    --top) top="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "profile.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) config="$1" ;;
  esac
  shift
done

if ! command -v perf >/dev/null 2>&1; then
  echo "profile.sh: perf not found; install Debian's linux-perf (apt-get install linux-perf)" >&2
  exit 2
fi
if [ ! -x "$selfnorm" ]; then
  echo "profile.sh: selfnorm binary not found at $selfnorm; build it first (or set SELFNORM_BIN)" >&2
  exit 2
fi

dir="${PROFILE_DIR:-$(mktemp -d /tmp/selfnorm-profile.XXXXXX)}"
mkdir -p "$dir"
job="$config"
if [ "$quick" = 1 ]; then
  job="$dir/job.json"
  "$python" - "$config" "$job" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg.setdefault("monte_carlo", {})["trials"] = 2
json.dump(cfg, open(sys.argv[2], "w"), indent=1)
EOF
fi

# cycles where the PMU is visible; the cpu-clock software timer otherwise (VMs, containers).
event=cycles
if ! perf stat -x, -e cycles true 2>&1 >/dev/null | grep -q '^[0-9]'; then
  event=cpu-clock
fi

cmd=("$selfnorm" run "$job" -o "$dir/out.h5" --overwrite --quiet --threads "$threads")
echo "profile.sh: perf record -e $event -F 999 -- ${cmd[*]}" >&2
echo "profile.sh: $("$selfnorm" --version)" >&2
perf record -q -e "$event" -F 999 -o "$dir/perf.data" -- "${cmd[@]}"

# perf pads every line to the longest symbol and ends it with empty "-" columns; template names
# run to hundreds of characters.
tidy() { grep -v '^#' | grep -v '^$' | sed -E 's/([[:space:]]+-){0,2}[[:space:]]*$//' | cut -c "1-${COLUMNS:-160}"; }
echo
echo "Top symbols ($event samples, all threads; self time, children not included):"
perf report -i "$dir/perf.data" --stdio --no-children --sort symbol --percent-limit 0.3 2>/dev/null | tidy |
  head -n "$top"
echo
echo "By shared object:"
perf report -i "$dir/perf.data" --stdio --no-children --sort dso --percent-limit 0.3 2>/dev/null | tidy | head -n 10
if [ "$event" = cpu-clock ]; then
  echo
  echo "(cpu-clock timer samples: in a VM, ticks that arrive while the kernel has interrupts off are charged to"
  echo " the function that turns them back on, e.g. pvm_irq_enable; read kernel shares as approximate)"
fi
echo
echo "perf data: $dir/perf.data (perf report -i $dir/perf.data for more; add --sort symbol,dso)"
