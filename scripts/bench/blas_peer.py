#!/usr/bin/python3
"""selfnorm's matrix products against a BLAS on the same shapes, side by side in one invocation.

    /usr/bin/python3 scripts/bench/blas_peer.py [--precision float32|float64|both]
        [--direction forward|backward|both] [--width N] [--rows R] [--threads T] [--cold]
        [--repeat K] [--rounds M] [--gemm-bench PATH] [--json OUT] [--smoke]

selfnorm's side is build/gemm_bench: each of T threads multiplies its own block of R samples by
the shared weights (n x n), on the FMA kernels (--matmul fma), as a run does in samples mode. The
peer is the product a PyTorch user would write for the same batch of T R samples: one
torch.matmul on T threads, which Debian's torch hands to OpenBLAS (forward X W, backward
dL/dH W^T, as scripts/bench/torch_reference.py multiplies). The peer runs in bench.py's best
PyTorch configuration, set up by torch_reference.py's own code: OMP_WAIT_POLICY=PASSIVE, OpenBLAS's
pool at T threads, and OPENBLAS_CORETYPE unset, or SkylakeX where OpenBLAS does not recognise an
AVX-512 CPU. With --cold both sides cycle through enough weight matrices (64 MiB and more) that
every product reads its weights from memory, as a run does.

Each figure is GFLOP/s over the whole product (2 n^2 T R flop), median of K products; the M
rounds alternate selfnorm and the peer, so that a burst of load from another process hits both,
and the table gives the median over the rounds, their range, the ratio of the medians and the
fraction of the FMA peak that build/fma_peak measures at the start.

--smoke runs tiny shapes once (the test suite's check that the script works, not how fast
anything is). Without torch the peer's column says why and the script exits 0.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the peak probe, the torch check and PyTorch's best OpenBLAS core type)
import torch_reference  # noqa: E402  (the environment of PyTorch's best configuration)

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=("float32", "float64", "both"), default="both")
    p.add_argument("--direction", choices=("forward", "backward", "both"), default="both")
    p.add_argument("--width", type=int, default=1024, help="n: the weights are n x n (default 1024)")
    p.add_argument("--rows", type=int, default=512, help="samples per thread (default 512; the engine's row blocks are 128-512)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cold", action="store_true", help="weights from memory, as in a run")
    p.add_argument("--repeat", type=int, default=20, help="products per measurement, median taken (default 20)")
    p.add_argument("--rounds", type=int, default=5, help="alternating measurements of each side (default 5)")
    p.add_argument("--gemm-bench", type=Path, default=ROOT / "build" / "gemm_bench")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one round (checks the script, not speed)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--openblas-coretype", default="unset", help=argparse.SUPPRESS)  # the worker's
    args = p.parse_args(argv)
    for name in ("width", "rows", "threads", "repeat", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.smoke:
        args.width, args.rows, args.repeat, args.rounds = 48, 32, 2, 1
    return args


def worker(args):
    """The peer's side, in its own process: prints one JSON line like gemm_bench's."""
    torch_reference.set_environment(argparse.Namespace(openblas_coretype=args.openblas_coretype,
                                                       omp_wait_policy="PASSIVE", blas_threads=None,
                                                       threads=args.threads))
    import torch  # after set_environment: OpenBLAS and libgomp read the environment when they load

    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.precision == "float64" else torch.float32
    n, batch = args.width, args.rows * args.threads
    element = 8 if dtype == torch.float64 else 4
    count = max(2, int(64 * 2**20 / (n * n * element)) + 1) if args.cold else 1
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(n, n, generator=gen, dtype=dtype) / n**0.5 for _ in range(count)]
    x = torch.randn(batch, n, generator=gen, dtype=dtype)
    out = torch.empty(batch, n, dtype=dtype)
    seconds = []
    with torch.no_grad():
        for r in range(args.repeat + 1):  # the first product warms the pool up and is not counted
            w = weights[r % count]
            t0 = time.perf_counter()
            if args.direction == "forward":
                torch.matmul(x, w, out=out)
            else:
                torch.matmul(x, w.t(), out=out)
            if r:
                seconds.append(time.perf_counter() - t0)
    flop = 2.0 * n * n * batch
    print(json.dumps({"gflops": flop / statistics.median(seconds) / 1e9, "products": len(seconds),
                      "matrices": count, "torch": torch.__version__}))


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if not args.gemm_bench.is_file():
        print(f"blas_peer.py: gemm_bench not found at {args.gemm_bench}; build the project first "
              f"(cmake --build build) or pass --gemm-bench PATH", file=sys.stderr)
        return 2
    peak, peak_source = bench.measure_peak(args.gemm_bench, args.threads)
    missing = None if bench.torch_available() else f"torch is not importable under {sys.executable}"
    coretype = "unset" if missing else bench.openblas_cores()[1]
    precisions = ("float32", "float64") if args.precision == "both" else (args.precision,)
    directions = ("forward", "backward") if args.direction == "both" else (args.direction,)

    print("selfnorm's products against a BLAS, same shapes")
    print(f"  command   {' '.join([sys.executable] + sys.argv)}")
    print(f"  date      {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"  shapes    weights {args.width} x {args.width}, {args.rows} samples per thread, {args.threads} threads "
          f"({args.rows * args.threads} samples), {'weights from memory' if args.cold else 'weights in cache'}")
    print(f"  peak      float32 {peak['float32']:.1f} GFLOP/s, float64 {peak['float64']:.1f} ({peak_source})")
    print(f"  runs      {args.rounds} round{'s' if args.rounds != 1 else ''}, each side alternately, each the median of {args.repeat} products")
    if missing:
        print(f"  peer      skipped: {missing}")
    else:
        print(f"  peer      torch.matmul, OPENBLAS_CORETYPE={bench.coretype_label(coretype)}, OMP_WAIT_POLICY=PASSIVE")
    print()

    rows, record = [], []
    for precision in precisions:
        for direction in directions:
            # The options both sides take, spelled the same way.
            shape = ["--precision", precision, "--direction", direction, "--width", str(args.width), "--rows",
                     str(args.rows), "--threads", str(args.threads), "--repeat", str(args.repeat)]
            shape += ["--cold"] if args.cold else []
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(run_json([args.gemm_bench, *shape, "--matmul", "fma"])["gflops"])
                if not missing:
                    peer = [sys.executable, __file__, "--worker", *shape, "--openblas-coretype", coretype]
                    theirs.append(run_json(peer)["gflops"])
            rows.append((precision, direction, ours, theirs))
            record.append({"precision": precision, "direction": direction, "selfnorm_gflops": ours,
                           "blas_gflops": theirs})

    def cell(values):
        if not values:
            return "-", "-"
        return f"{statistics.median(values):.1f}", f"{min(values):.1f}-{max(values):.1f}"

    header = ("precision", "direction", "selfnorm GFLOP/s", "range", "of peak", "BLAS GFLOP/s", "range", "of peak",
              "selfnorm / BLAS")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for precision, direction, ours, theirs in rows:
        def frac(values):
            return f"{statistics.median(values) / peak[precision]:.0%}" if values else "-"

        ratio = f"{statistics.median(ours) / statistics.median(theirs):.2f}" if theirs else "-"
        print("| " + " | ".join((precision, direction, *cell(ours), frac(ours), *cell(theirs), frac(theirs), ratio))
              + " |")
    print("(selfnorm: build/gemm_bench --matmul fma, each thread its own samples; BLAS: one torch.matmul over "
          "all samples on the same threads; 'of peak' of the peak above)")
    if args.json:
        args.json.write_text(json.dumps({"peak": peak, "peak_source": peak_source, "peer_skipped": missing,
                                         "openblas_coretype": coretype, "width": args.width,
                                         "rows": args.rows, "threads": args.threads, "cold": args.cold,
                                         "results": record}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
