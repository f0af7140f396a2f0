#!/usr/bin/python3
"""selfnorm's benchmark: the reference job through selfnorm and through PyTorch side by side, then
how selfnorm's cost grows with width, depth, batch, threads, parallel mode, precision and weight
gradients.

    /usr/bin/python3 scripts/bench/bench.py                 # full: 7-20 minutes on 2 cores
    /usr/bin/python3 scripts/bench/bench.py --quick         # every table, smaller jobs
    /usr/bin/python3 scripts/bench/bench.py --smoke         # a few seconds: every code path, for CI
    /usr/bin/python3 scripts/bench/bench.py --check         # selfnorm vs PyTorch statistics, selu and relu
    /usr/bin/python3 scripts/bench/bench.py --torch-configs # PyTorch's configurations side by side
    /usr/bin/python3 scripts/bench/bench.py --device cuda   # the reference and the large job on the GPU

Every figure is the median over --repeat runs (default 3) of the whole process's wall time, and
the runs of the programs compared in one table are interleaved, so a burst of load from another
process on a shared machine hits them alike; quote ratios from one invocation. GFLOP/s counts GEMM
floating-point operations exactly as `selfnorm validate` does (forward L GEMMs, backward L - 1,
weight gradients L more, 2 B n^2 each, times T). Peak RSS comes from os.wait4 on each child.
"""

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_SCRIPT = Path(__file__).resolve().parent / "torch_reference.py"
REFERENCE = ROOT / "configs" / "bench" / "reference.json"

# The machine's peak is measured by fma_peak (scripts/bench/fma_peak.cpp, built beside selfnorm):
# independent FMAs on every processor, best of 3 rounds. Without it, the figures of the project's
# 2-core machines (/work/shared/MACHINE.md: 3.58 GHz x 2 FMA pipes of 512 bits x 2 flop per FMA = 229
# GFLOP/s per core in float32, 115 in float64) stand in. --peak-gflops overrides both.
PEAK_GFLOPS = {"float32": 458.0, "float64": 229.0}


def measure_peak(selfnorm, threads):
    """(peaks, source): the peak of `threads` threads from fma_peak, else MACHINE.md's figures."""
    probe = Path(selfnorm).resolve().parent / "fma_peak"
    if probe.exists():
        try:
            out = subprocess.run([str(probe), "--threads", str(threads)], capture_output=True, text=True, timeout=120,
                                 check=True).stdout
            got = json.loads(out)
            peaks = {"float32": got["float32_gflops"], "float64": got["float64_gflops"]}
            if got.get("amx_bf16_gflops"):
                # bf16x6 float32 products take six bfloat16 products each: their ceiling.
                peaks["bf16x6"] = got["amx_bf16_gflops"] / 6
            return (peaks,
                    f"measured by {display_path(probe)} ({got['isa']} FMAs on {threads} threads, best of 3)")
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            return dict(PEAK_GFLOPS), f"MACHINE.md's figures: {display_path(probe)} failed ({e})"
    return dict(PEAK_GFLOPS), f"MACHINE.md's figures for 2 cores ({display_path(probe)} not built)"


# FP32 peak (no tensor cores) of NVIDIA's H100 SXM and H200 SXM: 132 SMs x 128 FP32 lanes x 2 flop per
# FMA x 1.98 GHz boost = 67 TFLOP/s (NVIDIA's data sheets); --gpu-peak-tflops overrides it.
GPU_PEAK_TFLOPS = 67.0

# The GPU jobs (--device cuda): the reference job and the large one of the GPU issue, with the
# figures PyTorch 2.11 reached for the same work on an H100 80GB (forward and backward, per-layer
# statistics, weights drawn on the GPU), quoted, not measured here.
GPU_JOBS = {
    "full": [("reference", {"trials": 8, "depth": 64, "width": 1024, "batch": 1024}),
             ("large", {"trials": 64, "depth": 256, "width": 4096, "batch": 4096})],
    "quick": [("reference", {"trials": 8, "depth": 64, "width": 1024, "batch": 1024}),
              ("large, 4 of 64 trials", {"trials": 4, "depth": 256, "width": 4096, "batch": 4096})],
    "smoke": [("reference", {"trials": 2, "depth": 8, "width": 64, "batch": 128}),
              ("large", {"trials": 2, "depth": 16, "width": 256, "batch": 256})],
}
TORCH_H100 = {"reference": {"fp32": 0.21}, "large": {"fp32": 97.0, "tf32": 21.0}}

# Statistics compared between selfnorm and PyTorch (names as in selfnorm's result files).
CHECK_STATS = ["preactivation_mean", "preactivation_var", "activation_mean", "activation_var", "activation_msq",
               "unit_mean_spread", "grad_activation_msq", "grad_preactivation_msq", "grad_weight_msq"]

# Job sizes per mode. The width, threads, parallel, precision and weight-gradient rows vary one
# thing from "reference"; the depth and batch rows vary one thing from the narrower "base". Every
# row is normalised to the reference row. In full mode "reference" is --config's own size.
SIZES = {
    "full": {
        "reference": {"trials": 8, "depth": 64, "width": 1024, "batch": 1024},
        "widths": [(256, 8), (512, 8), (1024, 8), (2048, 2)],  # (width, trials): fewer trials at 2048
        "base": {"trials": 8, "depth": 64, "width": 512, "batch": 1024},
        "depths": [16, 64, 256],
        "batches": [256, 1024, 4096],
    },
    "quick": {
        "reference": {"trials": 2, "depth": 64, "width": 1024, "batch": 1024},
        "widths": [(256, 2), (512, 2), (1024, 2), (2048, 1)],
        "base": {"trials": 2, "depth": 64, "width": 256, "batch": 1024},
        "depths": [16, 64, 256],
        "batches": [256, 1024, 4096],
    },
    "smoke": {
        # 8 trials: enough for the statistics check to give a verdict.
        "reference": {"trials": 8, "depth": 8, "width": 64, "batch": 128},
        "widths": [(32, 8), (64, 8), (128, 2)],
        "base": {"trials": 8, "depth": 8, "width": 32, "batch": 128},
        "depths": [4, 8],
        "batches": [64, 128],
    },
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selfnorm", type=Path, default=Path(os.environ.get("SELFNORM_BIN", ROOT / "build" / "selfnorm")),
                   help="selfnorm binary (default: $SELFNORM_BIN or build/selfnorm)")
    p.add_argument("--config", type=Path, default=REFERENCE,
                   help="the reference job (default configs/bench/reference.json); --quick and --smoke "
                        "shrink its trials, depth, width and batch")
    p.add_argument("--repeat", type=int, help="runs per measurement; the median is quoted (default 3, smoke 1)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller jobs: fewer trials, narrower scaling rows")
    size.add_argument("--smoke", action="store_true", help="tiny jobs, one run each: exercises every path in seconds")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all processors)")
    p.add_argument("--peak-gflops", type=float,
                   help="float32 peak of this machine in GFLOP/s (default: measured by fma_peak, built beside "
                        "selfnorm; float64 is taken as half)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: time the reference job and the large one (T=64, L=256, n=4096, B=4096) on the "
                        "GPU, FP32 and TF32, instead of the CPU tables")
    p.add_argument("--gpu-peak-tflops", type=float, default=GPU_PEAK_TFLOPS,
                   help=f"the GPU's FP32 peak in TFLOP/s (default {GPU_PEAK_TFLOPS:g}, H100/H200 SXM)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    p.add_argument("--torch-scaling", action="store_true",
                   help="also run PyTorch (best configuration) on each scaling row it can run")
    p.add_argument("--check", action="store_true",
                   help="only compare selfnorm's and PyTorch's statistics, selu and relu at a small size")
    p.add_argument("--torch-configs", action="store_true",
                   help="only time PyTorch's configurations (mode, threads, wait policy, OpenBLAS core type)")
    p.add_argument("--large-repeat", type=int, default=1,
                   help="with --device cuda: runs of the large job (default 1; it takes minutes)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every measurement to OUT")
    p.add_argument("--workdir", type=Path, help="keep configs and outputs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.repeat < 1 or args.threads < 1:
        p.error("--repeat and --threads must be >= 1")
    # Checked now, not when the report is written at the end of a run of up to 20 minutes.
    if args.json is not None:
        if args.json.is_dir():
            p.error(f"--json {args.json} is a folder; give a file for the report, e.g. {args.json / 'bench.json'}")
        try:
            tempfile.TemporaryFile(dir=args.json.parent).close()
        except OSError as e:
            p.error(f"--json {args.json}: cannot write in {args.json.parent} ({e.strerror}); give a file in a "
                    "folder that exists and can be written")
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        p.error(f"--workdir {args.workdir} is a file; give a folder for the configs and outputs (it is created if "
                "missing)")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


# ---------------------------------------------------------------------------------------------
# Machine and provenance


def cpuinfo_value(key):
    """The value of the first `key` line of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    return cpuinfo_value("model name") or platform.processor() or "unknown CPU"


def git_commit():
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(args):
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                          "OPENBLAS_NUM_THREADS", "OPENBLAS_L2_SIZE")}
    selfnorm_version = run_text([str(args.selfnorm), "--version"])
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": git_commit(),
        "cpu": cpu_model(),
        "processors": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "environment": env,
        "selfnorm": selfnorm_version,
        "python": f"{sys.executable} {platform.python_version()}",
    }


def run_text(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"({e})"


def print_header(info, args, peaks):
    print("selfnorm benchmark")
    print(f"  command   {info['command']}   (in {info['cwd']})")
    print(f"  date      {info['date_utc']}, git {info['git_commit']}")
    print(f"  machine   {info['cpu']}, {info['processors']} processors ({info['affinity']} usable), "
          f"Linux {info['kernel']}, load average {' '.join(f'{x:.2f}' for x in info['load_average'])}")
    env = ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in info["environment"].items())
    print(f"  env       {env}")
    print(f"  selfnorm  {info['selfnorm']}")
    print(f"  python    {info['python']}")
    print(f"  peak      float32 {peaks['float32']:g} GFLOP/s, float64 {peaks['float64']:g} GFLOP/s "
          f"({info['peak_source']})")
    if "bf16x6" in peaks:
        print(f"            AMX tile units: bfloat16 {6 * peaks['bf16x6']:.0f} GFLOP/s, so float32 as bf16x6 (six "
              f"bfloat16 products each) at most {peaks['bf16x6']:.0f}; 'of peak' is always of the float32 FMA peak")
    print(f"  runs      median of {args.repeat} per figure, wall time of the whole process, {args.threads} threads")
    print()


# ---------------------------------------------------------------------------------------------
# Running one child


def busy_cpu_seconds():
    """CPU time the whole machine has spent busy since boot (all processors), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(cmd, env=None, cwd=None):
    """Runs cmd to completion; returns wall time, peak RSS (from wait4), CPU time, the load that
    other processes put on the machine meanwhile, and the child's output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN deltas would mix children.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy1 = busy_cpu_seconds()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        own = usage.ru_utime + usage.ru_stime
        # Processors' worth of CPU that everything else used during the run (this script's own
        # share is negligible: it sleeps in wait4). 0.0 on an idle machine; up to the processor
        # count minus what the child used. Resolution 1/CLK_TCK s, so meaningful for runs > 1 s.
        background = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - own) / wall)
        return {
            "rc": proc.returncode,
            "wall_s": wall,
            "maxrss_mib": usage.ru_maxrss / 1024.0,  # ru_maxrss is in KiB on Linux
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "background_cpus": background,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


class Failure(Exception):
    pass


def checked(result, what):
    if result["rc"] != 0:
        tail = (result["stderr"].strip() or result["stdout"].strip())[-2000:]
        raise Failure(f"{what} failed with status {result['rc']}:\n{tail}")
    return result


# ---------------------------------------------------------------------------------------------
# Jobs


def make_config(base, trials, depth, width, batch, precision=None, weight_gradients=None):
    cfg = json.loads(json.dumps(base))
    cfg.pop("sweep", None)
    cfg.setdefault("network", {})
    cfg["network"].pop("widths", None)
    cfg["network"]["depth"] = depth
    cfg["network"]["width"] = width
    cfg.setdefault("monte_carlo", {})
    cfg["monte_carlo"]["trials"] = trials
    cfg["monte_carlo"]["batch"] = batch
    if precision is not None:
        cfg["precision"] = precision
    if weight_gradients is not None:
        cfg["monte_carlo"]["weight_gradients"] = weight_gradients
    return cfg


class Job:
    """One selfnorm configuration to time: a config plus the command-line choices."""

    def __init__(self, label, cfg, threads, parallel="auto", matmul="auto"):
        self.label = label
        self.cfg = cfg
        self.threads = threads
        self.parallel = parallel
        self.matmul = matmul
        self.path = None
        self.gflop = None

    @property
    def key(self):
        return json.dumps([self.cfg, self.threads, self.parallel, self.matmul], sort_keys=True)

    @property
    def shape(self):
        mc = self.cfg["monte_carlo"]
        return (mc["trials"], self.cfg["network"]["depth"], self.cfg["network"]["width"], mc["batch"])

    @property
    def precision(self):
        return self.cfg.get("precision", "float32")

    @property
    def weight_gradients(self):
        return bool(self.cfg["monte_carlo"].get("weight_gradients", False))

    def prepare(self, workdir, index, selfnorm):
        self.path = workdir / f"job{index:02d}.json"
        self.path.write_text(json.dumps(self.cfg, indent=1))
        r = checked(run_child([str(selfnorm), "validate", str(self.path), "--json", "--threads", str(self.threads)]),
                    f"selfnorm validate {self.path}")
        self.gflop = json.loads(r["stdout"])["gemm_gflop"]

    def selfnorm_cmd(self, selfnorm, out):
        cmd = [str(selfnorm), "run", str(self.path), "-o", str(out), "--overwrite", "--quiet",
               "--threads", str(self.threads)]
        if self.parallel != "auto":
            cmd += ["--parallel", self.parallel]
        if self.matmul != "auto":
            cmd += ["--matmul", self.matmul]
        return cmd


def products_of(h5_path):
    """How the run's products were computed (the result file's point_matmul), or "?"."""
    try:
        import h5py
        with h5py.File(h5_path, "r") as f:
            values = {v.decode() if isinstance(v, bytes) else str(v) for v in f["point_matmul"][()]}
        return ",".join(sorted(values))
    except (ImportError, OSError, KeyError):
        return "?"


class TorchVariant:
    """One way of running torch_reference.py."""

    def __init__(self, label, mode="explicit", coretype="unset", wait_policy="PASSIVE"):
        self.label = label
        self.mode = mode
        self.coretype = coretype
        self.wait_policy = wait_policy

    def cmd(self, job, json_out):
        return [sys.executable, str(TORCH_SCRIPT), str(job.path), "--threads", str(job.threads), "--mode", self.mode,
                "--openblas-coretype", self.coretype, "--omp-wait-policy", self.wait_policy, "--json", str(json_out)]


def torch_available():
    """torch's version if this Python has it, without importing it (an import costs seconds)."""
    import importlib.metadata
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def torch_blas():
    """The BLAS library Debian's torch does its GEMMs with: libblas.so.3 is an alternative, the
    reference implementation (libblas3, which python3-torch pulls in) unless OpenBLAS is installed."""
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        lib = Path(folder) / "libblas.so.3"
        if lib.exists():
            return os.path.realpath(lib)
    return None


# OpenBLAS's AVX-512 kernel sets (its names for OPENBLAS_CORETYPE).
OPENBLAS_AVX512_CORES = {"SkylakeX", "Cooperlake", "SapphireRapids"}


def cpu_has_avx512():
    """The AVX-512 subsets OpenBLAS's SkylakeX kernels use."""
    return {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= set((cpuinfo_value("flags") or "").split())


def openblas_corename(blas, coretype="unset"):
    """The kernel set OpenBLAS at `blas` loads with OPENBLAS_CORETYPE=coretype ('unset': its own
    detection), asked in a child process since OpenBLAS reads the variable once, when it loads."""
    probe = ("import ctypes, sys\n"
             "lib = ctypes.CDLL(sys.argv[1])\n"
             "lib.openblas_get_corename.restype = ctypes.c_char_p\n"
             "print(lib.openblas_get_corename().decode())")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype != "unset":
        env["OPENBLAS_CORETYPE"] = coretype
    return subprocess.run([sys.executable, "-c", probe, blas], env=env, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def openblas_cores():
    """(detected, best): the kernels OpenBLAS picks by itself on this CPU (None if torch's BLAS is
    not OpenBLAS), and the OPENBLAS_CORETYPE of PyTorch's best configuration: 'unset' where
    OpenBLAS finds its best kernels by itself, else SkylakeX, its AVX-512 kernels, on an AVX-512
    CPU that this OpenBLAS does not recognise (Debian's 0.3.21 takes Intel's Emerald Rapids, CPU
    model 207, for a Prescott and runs SSE3 kernels)."""
    blas = torch_blas()
    if not blas or "openblas" not in blas:
        return None, "unset"
    try:
        detected = openblas_corename(blas)
    except (OSError, subprocess.SubprocessError):
        return None, "unset"
    if detected not in OPENBLAS_AVX512_CORES and cpu_has_avx512():
        return detected, "SkylakeX"
    return detected, "unset"


def torch_best():
    """PyTorch's best configuration (see torch_reference.py), with the core type for this CPU."""
    return TorchVariant("torch best", coretype=openblas_cores()[1])


def coretype_label(coretype):
    if coretype == "unset":
        return "unset"
    if coretype == "keep":
        return f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')} (environment)"
    return f"{coretype} (OpenBLAS detects {openblas_cores()[0]})"


def summarise(runs, gflop, peak):
    walls = [r["wall_s"] for r in runs]
    med = statistics.median(walls)
    return {
        "runs": len(runs),
        "wall_s": walls,
        "median_s": med,
        "min_s": min(walls),
        "max_s": max(walls),
        "gflops": gflop / med,
        "peak_fraction": gflop / med / peak,
        "maxrss_mib": max(r["maxrss_mib"] for r in runs),
        "cpu_s": statistics.median(r["user_s"] + r["sys_s"] for r in runs),
        "background_cpus": (statistics.median(r["background_cpus"] for r in runs)
                            if all(r["background_cpus"] is not None for r in runs) else None),
        "compute_s": statistics.median(r["compute_s"] for r in runs) if "compute_s" in runs[0] else None,
    }


# ---------------------------------------------------------------------------------------------
# Tables


def fmt_table(header, rows, align=None):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    align = align or ["<"] + [">"] * (len(header) - 1)
    line = lambda cells: "| " + " | ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == ">" else ("-" * (w + 2)) for a, w in zip(align, widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def fmt_gflop(x):
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def fmt_background(figures):
    b = figures.get("background_cpus")
    return "" if b is None else f"{b:.2f}"


def describe_shape(job):
    t, l, n, b = job.shape
    extra = [job.precision]
    if job.weight_gradients:
        extra.append("weight gradients")
    return f"T={t}, L={l}, n={n}, B={b}, {', '.join(extra)}"


def reference_table(args, ref, peaks, torch_version, workdir):
    """selfnorm and PyTorch on the reference job, runs interleaved; returns the figures. Where fma_peak
    reads more before a run than at the start, `peaks` is raised to the highest reading (for this
    table and every later one): a low reading is the host's load, not the machine's peak."""
    programs = [("selfnorm", None)]
    notes = []
    if torch_version and not args.no_torch:
        programs.append(("torch best", torch_best()))
        env_coretype = os.environ.get("OPENBLAS_CORETYPE")
        if env_coretype and args.smoke:
            notes.append("(smoke: PyTorch with the environment's OPENBLAS_CORETYPE runs in the configurations table "
                         "below instead, to save a process)")
        elif env_coretype:
            programs.append(("torch env", TorchVariant("torch env", coretype="keep")))
        else:
            notes.append("OPENBLAS_CORETYPE is not set here, so PyTorch's figure is the best configuration only.")
    elif args.no_torch:
        notes.append("PyTorch skipped (--no-torch).")
    else:
        notes.append(f"PyTorch skipped: torch is not importable under {sys.executable} "
                     "(install Debian's python3-torch and libopenblas0-pthread to compare).")
    runs = {name: [] for name, _ in programs}
    outputs = {}
    # The host's load moves the peak by several percent within an hour, so fma_peak also runs just
    # before each selfnorm run, and each run's fraction of that peak is reported beside the table's.
    remeasure = not args.peak_gflops and (Path(args.selfnorm).resolve().parent / "fma_peak").exists()
    first_peaks = dict(peaks)
    for rep in range(args.repeat):
        for name, variant in programs:
            if variant is None:
                out = workdir / "reference.h5"
                peak_before = None
                if remeasure:
                    measured = measure_peak(args.selfnorm, ref.threads)[0]
                    peak_before = measured[ref.precision]
                    for key in peaks.keys() & measured.keys():
                        peaks[key] = max(peaks[key], measured[key])
                r = checked(run_child(ref.selfnorm_cmd(args.selfnorm, out)), "selfnorm run (reference)")
                r["peak_before"] = peak_before
                r["products"] = products_of(out)
                outputs[name] = out
            else:
                out = workdir / f"reference_{variant.label.replace(' ', '_')}.json"
                r = checked(run_child(variant.cmd(ref, out)), f"torch_reference.py ({name})")
                r["compute_s"] = json.loads(out.read_text())["compute_s"]
                outputs[name] = out
            runs[name].append(r)
            print(f"  [{name}] run {rep + 1}/{args.repeat}: {r['wall_s']:.2f} s", file=sys.stderr, flush=True)
    peak = peaks[ref.precision]
    if peaks != first_peaks:
        notes.append(f"'of peak' here and below divides by the highest fma_peak reading of this invocation: "
                     f"{peaks['float32']:g} GFLOP/s float32, {peaks['float64']:g} float64 (the header's "
                     f"{first_peaks['float32']:g} and {first_peaks['float64']:g} were read at the start)")
    figures = {name: summarise(runs[name], ref.gflop, peak) for name, _ in programs}
    base = figures["selfnorm"]["median_s"]
    rows = []
    for name, variant in programs:
        f = figures[name]
        label = f"selfnorm, {ref.threads} threads, {runs[name][0]['products']} products" if variant is None else (
            f"torch: {variant.mode}, {ref.threads} threads, OMP_WAIT_POLICY={variant.wait_policy}, OPENBLAS_CORETYPE="
            f"{coretype_label(variant.coretype)}")
        rows.append([label, f"{f['median_s']:.2f}", f"{f['min_s']:.2f}-{f['max_s']:.2f}",
                     "" if f["compute_s"] is None else f"{f['compute_s']:.2f}", f"{f['cpu_s']:.2f}",
                     fmt_gflop(f["gflops"]),
                     f"{100 * f['peak_fraction']:.0f}%", f"{f['maxrss_mib']:.0f}", f"{f['median_s'] / base:.2f}",
                     "" if f["compute_s"] is None else f"{f['compute_s'] / base:.2f}", fmt_background(f)])
    print(f"Reference job: {display_path(args.config)}, {activation_name(ref.cfg)}, {describe_shape(ref)}, "
          f"{fmt_gflop(ref.gflop)} GFLOP of GEMM")
    print(fmt_table(["program", "median s", "min-max s", "compute s", "CPU s", "GFLOP/s", "of peak",
                     "peak RSS MiB", "time / selfnorm", "compute / selfnorm", "other load"], rows))
    print("('median s': wall time of the whole process, which GFLOP/s, 'of peak' and the ratio use; 'compute s': "
          "PyTorch's own timing of the job, without starting Python and importing torch; 'CPU s': user + system "
          "time of the process, all threads; 'other load': median processors' worth of CPU that other processes "
          "used during the runs, from /proc/stat: figures taken with other load near 0 are the ones to trust)")
    per_run = [r for r in runs["selfnorm"] if r["peak_before"]]
    if per_run:
        before = [r["peak_before"] for r in per_run]
        fractions = [ref.gflop / r["wall_s"] / r["peak_before"] for r in per_run]
        figures["selfnorm"]["peaks_before"] = before
        figures["selfnorm"]["peak_fraction_per_run"] = fractions
        print(f"fma_peak just before each selfnorm run: {min(before):.1f}-{max(before):.1f} GFLOP/s ({ref.precision}); "
              f"each run's fraction of that peak: {100 * min(fractions):.0f}-{100 * max(fractions):.0f}%, "
              f"median {100 * statistics.median(fractions):.0f}%")
    for name, variant in programs:
        if variant is not None:
            print(twice_as_fast_note(name, figures[name], ref.gflop, peak, ref.precision))
    products = runs["selfnorm"][0]["products"]
    figures["selfnorm"]["products"] = products
    if products == "bf16x6" and "bf16x6" in peaks:
        print(f"selfnorm's float32 products ran on the AMX tile units (bf16x6): "
              f"{100 * figures['selfnorm']['gflops'] / peaks['bf16x6']:.0f}% of their bf16x6 ceiling "
              f"({peaks['bf16x6']:.0f} GFLOP/s), {100 * figures['selfnorm']['peak_fraction']:.0f}% of the FMA peak")
    for n in notes:
        print(n)
    print()
    return figures, outputs, runs["selfnorm"]


def twice_as_fast_note(name, torch_figures, gflop, peak, precision):
    """What running in half of PyTorch's time would take: the GFLOP/s and the fraction of the FMA peak.
    Above 100%, no FMA product can get there on this machine; the note says so."""
    def need(seconds):
        rate = gflop / (seconds / 2)
        return rate, rate / peak
    rate, fraction = need(torch_figures["median_s"])
    text = (f"twice as fast as {name} ({torch_figures['median_s']:.2f} s) needs {fmt_gflop(rate)} GFLOP/s, "
            f"{100 * fraction:.0f}% of the {precision} FMA peak")
    if torch_figures["compute_s"] is not None:
        c_rate, c_fraction = need(torch_figures["compute_s"])
        text += f"; on its own timing ({torch_figures['compute_s']:.2f} s), {fmt_gflop(c_rate)}, {100 * c_fraction:.0f}%"
    if fraction > 1:
        text += " (above the peak: out of reach for FMA products here)"
    return text


def display_path(p):
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def activation_name(cfg):
    a = cfg.get("activation", "selu")
    return a.get("name", "selu") if isinstance(a, dict) else a


def scaling_jobs(args, base_cfg, sizes):
    """The scaling table's rows: (group, label, job)."""
    r = sizes["reference"]
    s = sizes["base"]
    t = args.threads
    rows = [("reference", "reference", Job("reference", make_config(base_cfg, **r), t))]
    for n, trials in sizes["widths"]:
        rows.append(("width", f"n={n}" + (f" (T={trials})" if trials != r["trials"] else ""),
                     Job("", make_config(base_cfg, trials, r["depth"], n, r["batch"]), t)))
    for depth in sizes["depths"]:
        rows.append(("depth", f"L={depth} (n={s['width']})",
                     Job("", make_config(base_cfg, s["trials"], depth, s["width"], s["batch"]), t)))
    for batch in sizes["batches"]:
        rows.append(("batch", f"B={batch} (n={s['width']})",
                     Job("", make_config(base_cfg, s["trials"], s["depth"], s["width"], batch), t)))
    for threads in sorted({1, t}):
        rows.append(("threads", f"{threads} thread{'s' if threads > 1 else ''}",
                     Job("", make_config(base_cfg, **r), threads)))
    for mode in ("trials", "samples"):
        rows.append(("parallel", f"--parallel {mode}", Job("", make_config(base_cfg, **r), t, mode)))
    rows.append(("products", "--matmul fma", Job("", make_config(base_cfg, **r), t, matmul="fma")))
    rows.append(("precision", "float64", Job("", make_config(base_cfg, **r, precision="float64"), t)))
    rows.append(("weight gradients", "weight gradients on",
                 Job("", make_config(base_cfg, **r, weight_gradients=True), t)))
    return rows


def scaling_table(args, base_cfg, sizes, peaks, torch_version, workdir, known=None):
    """Times every row; `known` maps a job key to runs already made in this invocation (the
    reference table's), which are reused rather than repeated."""
    rows = scaling_jobs(args, base_cfg, sizes)
    unique = {}
    for _, _, job in rows:
        unique.setdefault(job.key, job)
    jobs = list(unique.values())
    rows = [(group, label, unique[job.key]) for group, label, job in rows]
    for i, job in enumerate(jobs):
        job.prepare(workdir, 100 + i, args.selfnorm)
    with_torch = args.torch_scaling and torch_version and not args.no_torch
    known = known or {}
    runs = {job.key: list(known.get(job.key, [])) for job in jobs}
    torch_runs = {job.key: [] for job in jobs}
    best = torch_best()
    for rep in range(args.repeat):
        for i, job in enumerate(jobs):
            msg = f"  [scaling {i + 1}/{len(jobs)}] run {rep + 1}/{args.repeat}:"
            if job.key not in known:
                r = checked(run_child(job.selfnorm_cmd(args.selfnorm, workdir / "scaling.h5")),
                            f"selfnorm run ({describe_shape(job)}, {job.threads} threads, --parallel {job.parallel})")
                r["products"] = products_of(workdir / "scaling.h5")
                runs[job.key].append(r)
                msg += f" {r['wall_s']:.2f} s"
            if with_torch and job.parallel == "auto":
                out = workdir / "scaling_torch.json"
                tr = checked(run_child(best.cmd(job, out)), f"torch_reference.py ({describe_shape(job)})")
                tr["compute_s"] = json.loads(out.read_text())["compute_s"]
                torch_runs[job.key].append(tr)
                msg += f" torch {tr['wall_s']:.2f} s"
            if msg.endswith(":"):
                continue
            print(msg, file=sys.stderr, flush=True)
    figures = {job.key: summarise(runs[job.key], job.gflop, peaks[job.precision]) for job in jobs}
    torch_figures = {job.key: summarise(torch_runs[job.key], job.gflop, peaks[job.precision])
                     for job in jobs if torch_runs[job.key]}

    def unit_cost(job):
        t, l, n, b = job.shape
        return figures[job.key]["median_s"] / (t * l * b * n * n)

    ref_cost = unit_cost(rows[0][2])
    header = ["group", "case", "T", "L", "n", "B", "threads", "parallel", "precision", "products", "GFLOP", "median s",
              "min-max s", "CPU s", "GFLOP/s", "of peak", "time/(T L B n^2) vs reference", "other load"]
    if torch_figures:
        header += ["torch s", "torch / selfnorm"]
    table = []
    out_rows = []
    for group, label, job in rows:
        f = figures[job.key]
        t, l, n, b = job.shape
        products = runs[job.key][0].get("products", "?") if runs[job.key] else "?"
        cells = [group, label, t, l, n, b, job.threads, job.parallel, job.precision, products, fmt_gflop(job.gflop),
                 f"{f['median_s']:.2f}", f"{f['min_s']:.2f}-{f['max_s']:.2f}",
                 f"{f['cpu_s']:.2f}", fmt_gflop(f['gflops']), f"{100 * f['peak_fraction']:.0f}%",
                 f"{unit_cost(job) / ref_cost:.2f}", fmt_background(f)]
        tf = torch_figures.get(job.key)
        if torch_figures:
            cells += ["", ""] if tf is None else [f"{tf['median_s']:.2f}", f"{tf['median_s'] / f['median_s']:.2f}"]
        table.append(cells)
        out_rows.append({"group": group, "case": label, "trials": t, "depth": l, "width": n, "batch": b,
                         "threads": job.threads, "parallel": job.parallel, "precision": job.precision,
                         "products": products,
                         "weight_gradients": job.weight_gradients, "gflop": job.gflop, **f,
                         "unit_cost_vs_reference": unit_cost(job) / ref_cost,
                         "torch": tf})
    print(f"How selfnorm's cost grows ({len(jobs)} distinct jobs: a job in several groups ran once, and the "
          "reference row's runs are the reference table's)")
    print(fmt_table(header, table, align=["<", "<"] + [">"] * (len(header) - 2)))
    print("(GFLOP counts weight gradients' L extra GEMMs; 'time/(T L B n^2)' uses the median and is 1.00 where "
          "the cost is proportional to T L B n^2; 'products': the result file's point_matmul, bf16x6 on the AMX "
          "tile units (float32 at batch >= 256 where the CPU has them) or fma; 'CPU s': median user + system time, "
          "all threads, which "
          "load from other processes disturbs less than wall time; 'other load' as above)")
    print()
    return out_rows


# ---------------------------------------------------------------------------------------------
# The project's performance goals

# The goals are set for the reference job (configs/bench/reference.json) on 2 threads; each is
# checked against this invocation's own figures, and a figure the run did not take is 'not measured'.
GOAL_REFERENCE_PEAK = 0.75    # reference job: fraction of the float32 FMA peak, end to end
GOAL_TORCH_RATIO = 2.0        # PyTorch's best configuration's wall time / selfnorm's, same invocation
GOAL_RSS_MIB = 1024.0         # peak resident memory of the reference job
GOAL_FLOAT64_PEAK = 0.70      # the reference job in float64: fraction of the float64 FMA peak
GOAL_WIDTH256_PEAK = 0.50     # the reference job at width 256: fraction of the float32 FMA peak


def percent_down(fraction):
    """A fraction as a percentage to 0.1, rounded down, so that a figure short of a goal never reads as
    the goal itself (69.96% is 69.9%, not 70.0%)."""
    return f"{math.floor(1000 * fraction + 1e-9) / 10:.1f}%"


def times_down(ratio):
    """A ratio to 0.01, rounded down, for the same reason (1.996 is 1.99x, not 2.00x)."""
    return f"{math.floor(100 * ratio + 1e-9) / 100:.2f}x"


def goals(report, repeat=3):
    """[(goal, this run's figure, met)] for the reference table and scaling rows of a full
    benchmark's report (the JSON that --json writes); met is None where the figure was not taken,
    and for every goal where each figure is a median of fewer than 3 runs."""
    out = _goals(report)
    if repeat < 3:
        return [(g, v + f" (median of {repeat})" if m is not None else v, None) for g, v, m in out]
    return out


def _goals(report):
    ref = report["reference"]["figures"]
    sn = ref["selfnorm"]
    rows = {row["case"]: row for row in report.get("scaling") or []}
    out = [(f"reference job at least {100 * GOAL_REFERENCE_PEAK:.0f}% of the float32 FMA peak",
            f"{percent_down(sn['peak_fraction'])} ({sn['median_s']:.2f} s)", sn["peak_fraction"] >= GOAL_REFERENCE_PEAK)]
    torch = ref.get("torch best")
    if torch is None:
        out.append((f"at least {GOAL_TORCH_RATIO:g}x faster than PyTorch's best configuration", "not measured", None))
    else:
        ratio = torch["median_s"] / sn["median_s"]
        text = f"{times_down(ratio)} ({torch['median_s']:.2f} s against {sn['median_s']:.2f} s"
        if torch.get("compute_s") is not None:
            # PyTorch's own timing leaves out starting Python and importing torch, which selfnorm's
            # wall time has no counterpart of: the goal is judged on the less favourable ratio.
            compute_ratio = torch["compute_s"] / sn["median_s"]
            text += f"; on PyTorch's own timing {times_down(compute_ratio)}, which the verdict uses"
            ratio = min(ratio, compute_ratio)
        out.append((f"at least {GOAL_TORCH_RATIO:g}x faster than PyTorch's best configuration", text + ")",
                    ratio >= GOAL_TORCH_RATIO))
    out.append((f"peak memory under {GOAL_RSS_MIB / 1024:g} GiB", f"{sn['maxrss_mib']:.0f} MiB",
                sn["maxrss_mib"] < GOAL_RSS_MIB))

    def row_goal(case, goal, threshold, precision):
        row = rows.get(case)
        if row is None:
            return (goal, "not measured", None)
        return (goal, f"{percent_down(row['peak_fraction'])} of the {precision} peak ({row['median_s']:.2f} s)",
                row["peak_fraction"] >= threshold)

    out.append(row_goal("float64", f"float64 at least {100 * GOAL_FLOAT64_PEAK:.0f}% of the float64 FMA peak",
                        GOAL_FLOAT64_PEAK, "float64"))
    out.append(row_goal("n=256", f"width 256 at least {100 * GOAL_WIDTH256_PEAK:.0f}% of the float32 FMA peak",
                        GOAL_WIDTH256_PEAK, "float32"))
    modes = [rows.get(f"--parallel {m}") for m in ("trials", "samples")]
    goal = "both thread modes measured (--parallel trials, samples)"
    if all(modes):
        out.append((goal, f"{modes[0]['median_s']:.2f} s, {modes[1]['median_s']:.2f} s", True))
    else:
        out.append((goal, "not measured", None))
    out.append(("random numbers under 5% of the run", "not measured here: scripts/bench/profile.sh", None))
    return out


def print_goals(rows):
    print("The project's performance goals for the reference job, against this run's figures")
    verdict = {True: "met", False: "NOT met", None: "-"}
    print(fmt_table(["goal", "this run", "met"], [[g, v, verdict[m]] for g, v, m in rows], align=["<", "<", "<"]))
    print()


# ---------------------------------------------------------------------------------------------
# Statistics: selfnorm against PyTorch


def compare_statistics(h5_path, torch_json, label, trials):
    """z-scores of the difference, per statistic, over all layers; prints the last layer's values."""
    try:
        import h5py
    except ImportError:
        print(f"statistics check skipped: h5py is not importable under {sys.executable}")
        return None
    t = json.loads(Path(torch_json).read_text())["statistics"]
    result = {}
    rows = []
    missing = []
    with h5py.File(h5_path, "r") as f:
        for stat in CHECK_STATS:
            if stat not in f and stat not in t:
                continue  # neither computed it (grad_weight_msq without weight gradients)
            if stat not in f or stat not in t:
                missing.append(stat)
                continue
            a, sa = f[stat][0, :], f[stat + "_sem"][0, :]
            b, sb = t[stat]["mean"], t[stat]["sem"]
            zs = []
            for x, sx, y, sy in zip(a, sa, b, sb):
                se = math.hypot(sx, sy)
                zs.append((x - y) / se if se > 0 else (0.0 if x == y else math.inf))
            # A NaN (a statistic or standard error that is NaN on one side) is a disagreement: max()
            # would skip it unless it came first.
            zmax = max((math.inf if math.isnan(z) else abs(z)) for z in zs)
            L = len(zs)
            # A relative difference only means something for a value clearly away from zero.
            rel = abs(a[-1] - b[-1]) / abs(a[-1]) if abs(a[-1]) > 3 * sa[-1] else math.nan
            result[stat] = {"max_abs_z": zmax, "last_selfnorm": float(a[-1]), "last_selfnorm_sem": float(sa[-1]),
                            "last_torch": b[-1], "last_torch_sem": sb[-1], "last_z": zs[-1]}
            rows.append([stat, f"{a[-1]:.6g} +- {sa[-1]:.2g}", f"{b[-1]:.6g} +- {sb[-1]:.2g}",
                         "-" if math.isnan(rel) else f"{rel:.2%}",
                         f"{zs[-1]:+.2f}", f"{zmax:.2f}"])
    print(f"Statistics, selfnorm vs PyTorch: {label}; layer {L} shown, z = difference / combined standard error")
    print(fmt_table(["statistic", "selfnorm", "torch", "rel. diff", "z (last layer)", f"max |z| (layers 1-{L})"],
                    rows))
    worst = max(v["max_abs_z"] for v in result.values()) if result else math.inf
    if missing:
        print(f"  missing from one program's output: {', '.join(missing)}")
        worst = math.inf
    # Different random streams: agreement is statistical. With ~9 statistics x L layers, |z| up to
    # about 4 happens by chance; far beyond it means the two compute different things. Standard
    # errors estimated from a handful of trials are themselves too noisy for a verdict.
    if trials >= 8:
        verdict = "agree" if worst < 5 else "DISAGREE"
        print(f"  largest |z| over every statistic and layer: {worst:.2f} -> {verdict} (|z| < 5 expected)")
    else:
        verdict = "no verdict"
        print(f"  largest |z| over every statistic and layer: {worst:.2f}; no verdict: standard errors from "
              f"{trials} trials are too uncertain (8 or more needed)")
    print()
    result["_verdict"] = verdict
    return result


def check_mode(args, base_cfg, torch_version, workdir):
    """selu and relu at a small size through both programs; relu's second moment should halve.
    The smoke run checks relu only: its reference job has already compared selu."""
    if not torch_version:
        print(f"--check needs PyTorch: `import torch` fails under {sys.executable}")
        return {}
    size = {"trials": 8, "depth": 8, "width": 64, "batch": 128} if args.smoke else \
        {"trials": 32, "depth": 16, "width": 256, "batch": 256}
    results = {}
    for act in ("relu",) if args.smoke else ("selu", "relu"):
        cfg = make_config(base_cfg, **size)
        cfg["activation"] = act
        job = Job(act, cfg, args.threads)
        job.prepare(workdir, 200 + len(results), args.selfnorm)
        out = workdir / f"check_{act}.h5"
        checked(run_child(job.selfnorm_cmd(args.selfnorm, out)), f"selfnorm run (check {act})")
        tj = workdir / f"check_{act}.json"
        checked(run_child(torch_best().cmd(job, tj)), f"torch_reference.py (check {act})")
        results[act] = compare_statistics(out, tj, f"{act}, {describe_shape(job)}", size["trials"])
        if act == "relu":
            import h5py
            with h5py.File(out, "r") as f:
                q = f["activation_msq"][0, :]
            t = json.loads(tj.read_text())["statistics"]["activation_msq"]["mean"]
            ratios_s = [q[i + 1] / q[i] for i in range(len(q) - 1)]
            ratios_t = [t[i + 1] / t[i] for i in range(len(t) - 1)]
            print(f"relu activation_msq(l+1)/activation_msq(l), layers 1..{len(q)}: selfnorm "
                  f"{min(ratios_s):.4f}-{max(ratios_s):.4f}, torch {min(ratios_t):.4f}-{max(ratios_t):.4f} "
                  "(mean-field: exactly 1/2)")
            print()
            results[act]["_msq_ratio"] = {"selfnorm": [min(ratios_s), max(ratios_s)],
                                          "torch": [min(ratios_t), max(ratios_t)]}
    return results


# ---------------------------------------------------------------------------------------------
# PyTorch's configurations


def torch_configs_mode(args, ref, peaks, workdir, variants=None):
    """Times torch_reference.py in each configuration (mode, threads, wait policy, core type),
    interleaved, on the reference job; by default every combination."""
    if variants is None:
        variants = []
        for coretype in dict.fromkeys(("unset", openblas_cores()[1], "keep")):
            if coretype == "keep" and not os.environ.get("OPENBLAS_CORETYPE"):
                continue
            for wait in ("PASSIVE", "keep"):
                for mode in ("explicit", "autograd"):
                    for threads in sorted({1, args.threads}):
                        variants.append((mode, threads, wait, coretype))
    runs = {v: [] for v in variants}
    for rep in range(args.repeat):
        for v in variants:
            mode, threads, wait, coretype = v
            job = Job("", ref.cfg, threads)
            job.path, job.gflop = ref.path, ref.gflop
            out = workdir / "torch_config.json"
            r = checked(run_child(TorchVariant("", mode, coretype, wait).cmd(job, out)), f"torch_reference.py {v}")
            r["compute_s"] = json.loads(out.read_text())["compute_s"]
            runs[v].append(r)
            print(f"  [{mode}, {threads} threads, wait {wait}, coretype {coretype}] run {rep + 1}/{args.repeat}: "
                  f"{r['wall_s']:.2f} s", file=sys.stderr, flush=True)
    figures = {v: summarise(runs[v], ref.gflop, peaks[ref.precision]) for v in variants}
    best = min(figures.values(), key=lambda f: f["median_s"])["median_s"]
    rows = []
    env_wait = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    for v in variants:
        mode, threads, wait, coretype = v
        f = figures[v]
        rows.append([mode, threads, "PASSIVE" if wait == "PASSIVE" else f"{env_wait} (environment)",
                     coretype_label(coretype), f"{f['median_s']:.2f}",
                     f"{f['compute_s']:.2f}", f"{f['cpu_s']:.2f}", fmt_gflop(f['gflops']), f"{f['maxrss_mib']:.0f}",
                     f"{f['median_s'] / best:.2f}", fmt_background(f)])
    print(f"PyTorch configurations on the reference job ({describe_shape(ref)}, {fmt_gflop(ref.gflop)} GFLOP)")
    print(fmt_table(["mode", "threads", "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE", "median s", "compute s", "CPU s",
                     "GFLOP/s", "peak RSS MiB", "time / best", "other load"], rows))
    print()
    return [{"mode": v[0], "threads": v[1], "wait_policy": v[2], "coretype": v[3], **figures[v]} for v in variants]


# ---------------------------------------------------------------------------------------------
# The GPU


def gpu_mode(args, base_cfg, workdir):
    """The GPU jobs through `selfnorm run --device cuda`, FP32 then TF32, runs interleaved. Wall time
    is the whole process (CUDA start-up and the result file included); GPU and GEMM seconds come from
    the CUDA events selfnorm records (the result file's gpu_seconds, gpu_gemm_seconds)."""
    import h5py

    probe = make_config(base_cfg, trials=1, depth=2, width=8, batch=8)
    probe_path = workdir / "gpu_probe.json"
    probe_path.write_text(json.dumps(probe))
    r = run_child([str(args.selfnorm), "run", str(probe_path), "-o", str(workdir / "gpu_probe.h5"), "--overwrite",
                   "--quiet", "--device", "cuda"])
    if r["rc"] == 4:
        reason = (r["stderr"].strip().splitlines() or ["(no message)"])[-1]
        print(f"GPU benchmark skipped: {reason}")
        return {"skipped": reason}
    checked(r, "selfnorm run --device cuda (probe)")
    with h5py.File(workdir / "gpu_probe.h5", "r") as f:
        gpu_name = str(f.attrs["gpu_name"])
    peak = args.gpu_peak_tflops
    print(f"GPU       {gpu_name}; FP32 peak {peak:g} TFLOP/s"
          f" ({'--gpu-peak-tflops' if peak != GPU_PEAK_TFLOPS else 'H100/H200 SXM data sheet'})")
    print()
    jobs = []
    for label, size in GPU_JOBS[args.mode]:
        for arith in ("FP32", "TF32"):
            job = Job(label, make_config(base_cfg, **size, precision="float32"), 1)
            job.prepare(workdir, 300 + len(jobs), args.selfnorm)
            jobs.append((label, arith, job))
    runs = {id(job): [] for _, _, job in jobs}
    for rep in range(args.repeat):
        for label, arith, job in jobs:
            if label.startswith("large") and rep >= args.large_repeat:
                continue
            out = workdir / "gpu.h5"
            cmd = [str(args.selfnorm), "run", str(job.path), "-o", str(out), "--overwrite", "--quiet", "--device",
                   "cuda"] + (["--tf32"] if arith == "TF32" else [])
            r = checked(run_child(cmd), f"selfnorm run --device cuda ({label}, {arith})")
            with h5py.File(out, "r") as f:
                r["gpu_s"] = float(f.attrs["gpu_seconds"])
                r["gemm_s"] = float(f.attrs["gpu_gemm_seconds"])
            runs[id(job)].append(r)
            print(f"  [{label}, {arith}] run {len(runs[id(job)])}: {r['wall_s']:.2f} s (GPU {r['gpu_s']:.2f} s)",
                  file=sys.stderr, flush=True)
    rows, out_rows = [], []
    for label, arith, job in jobs:
        rs = runs[id(job)]
        wall = statistics.median(x["wall_s"] for x in rs)
        gpu_s = statistics.median(x["gpu_s"] for x in rs)
        gemm_s = statistics.median(x["gemm_s"] for x in rs)
        tflop = job.gflop / 1000
        t, l, n, b = job.shape
        torch = TORCH_H100.get(label, {}).get(arith.lower())
        rows.append([label, arith, t, l, n, b, f"{tflop:.1f}", f"{wall:.3f}", len(rs), f"{gpu_s:.3f}", f"{gemm_s:.3f}",
                     f"{100 * (1 - gemm_s / gpu_s):.1f}%", f"{tflop / wall:.1f}", f"{tflop / gpu_s:.1f}",
                     f"{100 * tflop / wall / peak:.0f}%", "" if torch is None else f"{torch:g}"])
        out_rows.append({"job": label, "gemm": arith, "trials": t, "depth": l, "width": n, "batch": b,
                         "tflop": tflop, "median_wall_s": wall, "runs": len(rs), "gpu_s": gpu_s, "gemm_s": gemm_s,
                         "outside_gemm": 1 - gemm_s / gpu_s, "tflops_wall": tflop / wall,
                         "tflops_gpu": tflop / gpu_s, "peak_fraction": tflop / wall / peak,
                         "torch_h100_s": torch})
    print(f"selfnorm on the GPU ({gpu_name}), median of {args.repeat} runs (large: {args.large_repeat})")
    print(fmt_table(["job", "GEMM", "T", "L", "n", "B", "TFLOP", "wall s", "runs", "GPU s", "GEMM s",
                     "outside GEMM", "TFLOP/s (wall)", "TFLOP/s (GPU)", "of FP32 peak", "PyTorch H100 s (quoted)"],
                    rows))
    print("(wall: the whole process, CUDA start-up and the result file included; GPU s: CUDA events from each "
          "trial's first to its last kernel; GEMM s: inside cuBLAS; 'outside GEMM': the rest of the GPU time "
          "(weights, inputs, activations, statistics); TFLOP counts GEMM work as `selfnorm validate`; the PyTorch "
          "column quotes the figures measured on an H100 80GB for the same jobs, not a run here)")
    print()
    return {"gpu_name": gpu_name, "peak_tflops": peak, "rows": out_rows}


# ---------------------------------------------------------------------------------------------


def write_report(path, report):
    """Writes the JSON report through a temporary file beside `path`, renamed once complete (an earlier
    report stays whole if this one cannot be written); 0, or 1 after saying why it could not."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        try:
            part.write_text(json.dumps(report, indent=1, default=str))
            part.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
    except OSError as e:
        print(f"bench.py: error: cannot write the report {path} ({e.strerror}); the tables above hold its figures",
              file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def main(argv):
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep the tables in order with the progress on stderr
    if not args.selfnorm.exists():
        print(f"bench.py: error: selfnorm binary not found at {args.selfnorm} (build it: cmake -S . -B build -G Ninja "
              "&& ninja -C build; or pass --selfnorm)", file=sys.stderr)
        return 2
    try:
        base_cfg = json.loads(args.config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"bench.py: error: cannot read {args.config} ({e})", file=sys.stderr)
        return 2
    tmp = None
    if args.workdir:
        workdir = args.workdir
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"bench.py: error: cannot create --workdir {workdir} ({e.strerror}); choose another folder",
                  file=sys.stderr)
            return 2
    else:
        tmp = tempfile.TemporaryDirectory(prefix="selfnorm-bench-")
        workdir = Path(tmp.name)
    if args.peak_gflops:
        peaks, peak_source = {"float32": args.peak_gflops, "float64": args.peak_gflops / 2}, "--peak-gflops"
    else:
        peaks, peak_source = measure_peak(args.selfnorm, args.threads)
    info = machine_info(args)
    info["peak_source"] = peak_source
    torch_version = None if args.no_torch or args.device == "cuda" else torch_available()
    info["torch"] = torch_version
    print_header(info, args, peaks)
    if torch_version:
        blas = torch_blas()
        info["torch_blas"] = blas
        print(f"PyTorch {torch_version} under {sys.executable}, script {display_path(TORCH_SCRIPT)}, "
              f"BLAS {blas or '(not found)'}")
        detected, best = openblas_cores()
        info["openblas_core"] = detected
        info["torch_openblas_coretype"] = best
        if best != "unset":
            print(f"OpenBLAS detects this CPU as {detected}, not as an AVX-512 one: PyTorch's best configuration "
                  f"sets OPENBLAS_CORETYPE={best}.")
        if blas and "openblas" not in blas:
            print("warning: PyTorch's GEMMs go to the reference BLAS, some 50x slower than OpenBLAS, so this is not "
                  "its best configuration: install Debian's libopenblas0-pthread to compare fairly.")
        print()

    sizes = SIZES[args.mode]
    if args.mode == "full":
        mc, net = base_cfg.get("monte_carlo", {}), base_cfg.get("network", {})
        sizes = dict(sizes, reference={"trials": mc.get("trials", 8), "depth": net.get("depth", 64),
                                       "width": net.get("width", 512), "batch": mc.get("batch", 256)})
    report = {"machine": info, "peak_gflops": peaks, "repeat": args.repeat, "mode": args.mode}
    try:
        if args.device == "cuda":
            report["gpu"] = gpu_mode(args, base_cfg, workdir)
            return write_report(args.json, report) if args.json else 0
        ref = Job("reference", make_config(base_cfg, **sizes["reference"]), args.threads)
        ref.prepare(workdir, 0, args.selfnorm)
        if args.check:
            report["check"] = check_mode(args, base_cfg, torch_version, workdir)
        elif args.torch_configs:
            if not torch_version:
                print(f"--torch-configs needs PyTorch: `import torch` fails under {sys.executable}")
                return 1
            report["torch_configs"] = torch_configs_mode(args, ref, peaks, workdir)
        else:
            figures, outputs, ref_runs = reference_table(args, ref, peaks, torch_version, workdir)
            report["reference"] = {"config": ref.cfg, "gflop": ref.gflop, "figures": figures}
            if "torch best" in outputs:
                report["reference"]["statistics"] = compare_statistics(
                    outputs["selfnorm"], outputs["torch best"], f"the reference job, {describe_shape(ref)}",
                    ref.shape[0])
            if not args.no_scaling:
                report["scaling"] = scaling_table(args, base_cfg, sizes, peaks, torch_version, workdir,
                                                  known={ref.key: ref_runs})
            if args.mode == "full" and args.config.resolve() == REFERENCE and args.threads == 2:
                met = goals(report, args.repeat)
                report["goals"] = [{"goal": g, "this_run": v, "met": m} for g, v, m in met]
                print_goals(met)
            if args.smoke and torch_version:
                # The smoke run also goes through --check's and --torch-configs' code at a tiny
                # size, the latter with autograd and the environment's OPENBLAS_CORETYPE.
                report["check"] = check_mode(args, base_cfg, torch_version, workdir)
                report["torch_configs"] = torch_configs_mode(args, ref, peaks, workdir,
                                                             [("autograd", args.threads, "PASSIVE", "keep")])
    except Failure as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    return write_report(args.json, report) if args.json else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
