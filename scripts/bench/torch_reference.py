#!/usr/bin/python3
"""selfnorm's Monte Carlo job written in PyTorch, as the baseline for the benchmark.

    /usr/bin/python3 scripts/bench/torch_reference.py configs/bench/reference.json

It reads the same JSON config as `selfnorm run` (the subset below) and does the same work: per
trial, fresh LeCun-normal weights W_l ~ N(0, 1/fan_in) drawn with torch.randn, inputs x_0 ~ N(0, 1),
forward h_l = x_{l-1} W_l, x_l = f(h_l), backward from an upstream gradient g ~ N(0, 1) at the
output (loss sum(x_L * g)): dL/dh_l = dL/dx_l * f'(h_l), dL/dx_{l-1} = dL/dh_l W_l^T for l >= 2,
and optionally dL/dW_l = x_{l-1}^T dL/dh_l. That is L forward and L - 1 backward GEMMs (plus L for
weight gradients), the count `selfnorm validate` reports.

Per layer and trial it records selfnorm's statistics, accumulated in float64 as selfnorm does:
mean and population variance of h_l and of x_l over all B*n entries, the second moment of x_l,
the spread (variance across units) of the per-unit means of x_l, the mean squares of dL/dx_l,
dL/dh_l and dL/dW_l. It prints the last layer's values (mean +- standard error over trials) and its
wall time; --json writes every layer.

The random streams are torch's, not selfnorm's, so the two agree statistically (within a few
standard errors), not bit for bit.

Best configuration on the project's machine (2 cores), measured and documented in
scripts/bench/README.md; these are the defaults:
- explicit matmuls under torch.no_grad into preallocated buffers (--mode explicit); autograd
  (--mode autograd) does the same work and is slower;
- torch.set_num_threads(2) and OpenBLAS's own pool at 2 threads (--threads);
- OMP_WAIT_POLICY=PASSIVE, so torch's OpenMP pool and OpenBLAS's pool stop spinning against each
  other on 2 cores (--omp-wait-policy keep leaves the environment alone);
- OPENBLAS_CORETYPE unset, so OpenBLAS picks its AVX-512 kernels; an environment that forces
  Haswell halves its GEMM speed (--openblas-coretype keep uses the environment's value). On an
  AVX-512 CPU newer than the OpenBLAS (Debian's 0.3.21 takes Intel's Emerald Rapids for a Prescott
  and runs SSE3 kernels, which made the whole job 3x slower), bench.py passes
  --openblas-coretype SkylakeX, OpenBLAS's AVX-512 kernels.
The environment variables are set before torch is imported, since OpenBLAS and libgomp read them
once when they load.

Supported config subset: activation selu or relu with default parameters, init lecun_normal
without weight_mean, weight_variance or biases, normal inputs, no alpha dropout, no sweep, one
width for every layer. Anything else is refused with a message.
"""

import argparse
import json
import math
import os
import sys
import time

T_START = time.perf_counter()

# Klambauer et al. 2017, eq. (14): alpha01 and lambda01, as torch.nn.functional.selu uses them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946

# Statistic names as in selfnorm's result files (sim/core/engine.cpp, stat_catalog).
STATS = [
    "preactivation_mean",
    "preactivation_var",
    "activation_mean",
    "activation_var",
    "activation_msq",
    "unit_mean_spread",
    "grad_activation_msq",
    "grad_preactivation_msq",
    "grad_weight_msq",
]


def fail(message):
    print(f"torch_reference.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="selfnorm experiment config (JSON)")
    p.add_argument("--trials", type=int, help="override monte_carlo.trials")
    p.add_argument("--depth", type=int, help="override network.depth")
    p.add_argument("--width", type=int, help="override network.width")
    p.add_argument("--batch", type=int, help="override monte_carlo.batch")
    p.add_argument("--activation", choices=["selu", "relu"], help="override the activation")
    p.add_argument("--precision", choices=["float32", "float64"], help="override precision")
    p.add_argument("--weight-gradients", choices=["on", "off"], help="override monte_carlo.weight_gradients")
    p.add_argument("--seed", type=int, help="override the seed (torch.manual_seed of a private generator)")
    p.add_argument("--mode", choices=["explicit", "autograd"], default="explicit",
                   help="explicit matmuls under no_grad (default, faster) or autograd with hooks")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch.set_num_threads and OpenBLAS threads (default: all processors)")
    p.add_argument("--blas-threads", type=int,
                   help="OpenBLAS's threads, when they should differ from --threads (default: --threads)")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY for torch's OpenMP pool (default PASSIVE; 'keep' leaves the environment)")
    p.add_argument("--openblas-coretype", default="unset",
                   help="OPENBLAS_CORETYPE: 'unset' (default: OpenBLAS detects the CPU), 'keep' (the "
                        "environment's value), or a core name such as Haswell or SkylakeX")
    p.add_argument("--json", metavar="OUT", help="write every layer's statistics and the timings to OUT")
    return p.parse_args(argv)


def load_job(args):
    """The job as a flat dict, from the config and the overrides; refuses what it cannot run."""
    try:
        with open(args.config) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"cannot read config {args.config} ({e})")
    problems = []
    known = {"name", "description", "seed", "precision", "network", "activation", "init", "input",
             "alpha_dropout", "monte_carlo", "output"}
    for key in cfg:
        if key not in known:
            hint = " (sweeps: run one point per config)" if key == "sweep" else ""
            problems.append(f"{key}: not supported here{hint}")
    net = cfg.get("network", {})
    if "widths" in net:
        problems.append("network.widths: not supported (one width for every layer; use network.width)")
    act = cfg.get("activation", "selu")
    if isinstance(act, dict):
        extra = sorted(set(act) - {"name"})
        if extra:
            problems.append(f"activation: parameters {extra} not supported (defaults only)")
        act = act.get("name", "selu")
    if not isinstance(act, str) or act not in ("selu", "relu"):
        problems.append(f"activation: {act!r} not supported (selu or relu)")
    init = cfg.get("init", {})
    if init.get("name", "lecun_normal") != "lecun_normal":
        problems.append("init.name: only lecun_normal is supported")
    for key, default in (("weight_mean", 0), ("weight_variance", 1), ("bias_mean", 0), ("bias_variance", 0)):
        if init.get(key, default) != default:
            problems.append(f"init.{key}: only the default {default} is supported")
    inp = cfg.get("input", {})
    if inp.get("distribution", "normal") != "normal":
        problems.append("input.distribution: only normal is supported")
    if cfg.get("alpha_dropout", {}).get("keep_probability", 1) != 1:
        problems.append("alpha_dropout: not supported")
    mc = cfg.get("monte_carlo", {})
    job = {
        "name": cfg.get("name", os.path.splitext(os.path.basename(args.config))[0]),
        "seed": cfg.get("seed", 0),
        "precision": cfg.get("precision", "float32"),
        "depth": net.get("depth", 64),
        "width": net.get("width", 512),
        "activation": act,
        "input_mean": float(inp.get("mean", 0.0)),
        "input_variance": float(inp.get("variance", 1.0)),
        "trials": mc.get("trials", 8),
        "batch": mc.get("batch", 256),
        "weight_gradients": bool(mc.get("weight_gradients", False)),
    }
    for key in ("trials", "depth", "width", "batch", "activation", "precision", "seed"):
        value = getattr(args, key)
        if value is not None:
            job[key] = value
    if args.weight_gradients is not None:
        job["weight_gradients"] = args.weight_gradients == "on"
    for key in ("trials", "depth", "width", "batch"):
        if not isinstance(job[key], int) or job[key] < 1:
            problems.append(f"{key}: must be an integer >= 1, got {job[key]!r}")
    if job["precision"] not in ("float32", "float64"):
        problems.append(f"precision: must be float32 or float64, got {job['precision']!r}")
    if problems:
        fail(f"config {args.config} cannot be run by the PyTorch reference:\n  " + "\n  ".join(problems))
    return job


def gemm_flop(job):
    """GEMM floating-point operations, counted as `selfnorm validate` counts them."""
    per_gemm = 2.0 * job["batch"] * job["width"] ** 2
    gemms = job["depth"] + (job["depth"] - 1) + (job["depth"] if job["weight_gradients"] else 0)
    return per_gemm * gemms * job["trials"]


def set_environment(args):
    """Threads, wait policy and OpenBLAS core type: before torch loads OpenBLAS and libgomp."""
    if args.openblas_coretype == "unset":
        os.environ.pop("OPENBLAS_CORETYPE", None)
    elif args.openblas_coretype != "keep":
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype
    if args.omp_wait_policy != "keep":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    # Debian's torch links the pthread build of OpenBLAS, whose pool is separate from torch's.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads or args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)


class Recorder:
    """Per-trial, per-layer statistics; values are Python floats (double)."""

    def __init__(self, trials, depth):
        self.depth = depth
        self.values = {s: [[math.nan] * depth for _ in range(trials)] for s in STATS}

    def put(self, stat, trial, layer, value):
        self.values[stat][trial][layer - 1] = float(value)

    def summary(self, stat, layer):
        """Mean over trials and its standard error, as selfnorm reports them."""
        v = [row[layer - 1] for row in self.values[stat]]
        t = len(v)
        mean = sum(v) / t
        if t < 2:
            return mean, math.nan
        var = sum((x - mean) ** 2 for x in v) / (t - 1)
        return mean, math.sqrt(var / t)


class Explicit:
    """Forward and backward by explicit matmuls under no_grad, into buffers allocated once.

    Allocating a fresh B x n tensor per operation costs page faults on every call (large blocks
    go straight to mmap); preallocated buffers with out= avoid them.
    """

    def __init__(self, torch, job, dtype, generator):
        self.torch = torch
        self.job = job
        self.dtype = dtype
        self.gen = generator
        B, n, L = job["batch"], job["width"], job["depth"]
        empty = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt)
        self.weights = [empty(n, n) for _ in range(L)]
        # x_l for every layer when weight gradients need x_{l-1}, else two ping-pong buffers.
        self.xs = [empty(B, n) for _ in range(L + 1 if job["weight_gradients"] else 2)]
        # x_l = f(h_l) of every layer, from which the backward pass takes f'(h_l).
        self.kept = [empty(B, n) for _ in range(L)]
        self.delta = [empty(B, n), empty(B, n)]
        self.acc = empty(B, n, dt=torch.float64)          # float64 copy for the statistics
        self.colsum = empty(n, dt=torch.float64)
        self.gw = empty(n, n) if job["weight_gradients"] else None
        self.acc_w = empty(n, n, dt=torch.float64) if job["weight_gradients"] else None

    def x(self, l):
        return self.xs[l] if self.job["weight_gradients"] else self.xs[l % 2]

    def moments(self, t, acc):
        """Mean and population variance of t's entries, from float64 sums of x and x^2.

        One read each, no write: in float64 the cancellation in E[x^2] - E[x]^2 costs about
        log10(mean^2 / variance) of the 16 digits, harmless at these statistics' scales.
        """
        acc.copy_(t)
        flat = acc.view(-1)
        mean = flat.sum().item() / flat.numel()
        msq = self.torch.dot(flat, flat).item() / flat.numel()
        return mean, max(0.0, msq - mean * mean)

    def sum_sq(self, t, acc):
        acc.copy_(t)
        flat = acc.view(-1)
        return self.torch.dot(flat, flat).item()

    def trial(self, k, rec):
        torch, job = self.torch, self.job
        B, n, L = job["batch"], job["width"], job["depth"]
        entries = B * n
        x0 = self.x(0)
        torch.randn(B, n, generator=self.gen, out=x0)
        if job["input_variance"] != 1.0 or job["input_mean"] != 0.0:
            x0.mul_(math.sqrt(job["input_variance"])).add_(job["input_mean"])
        selu = job["activation"] == "selu"
        for l in range(1, L + 1):
            w = self.weights[l - 1]
            torch.randn(n, n, generator=self.gen, out=w)
            w.mul_(1.0 / math.sqrt(n))
            h = self.x(l)  # h_l, then x_l = f(h_l) in place
            torch.matmul(self.x(l - 1), w, out=h)
            mean, var = self.moments(h, self.acc)
            rec.put("preactivation_mean", k, l, mean)
            rec.put("preactivation_var", k, l, var)
            if selu:
                torch.nn.functional.selu(h, inplace=True)
            else:
                torch.relu_(h)
            self.kept[l - 1].copy_(h)
            self.acc.copy_(h)
            torch.sum(self.acc, dim=0, out=self.colsum)
            mean = self.colsum.sum().item() / entries
            flat = self.acc.view(-1)
            msq = torch.dot(flat, flat).item() / entries
            unit_means = self.colsum / B
            rec.put("unit_mean_spread", k, l, torch.var(unit_means, unbiased=False).item())
            rec.put("activation_mean", k, l, mean)
            rec.put("activation_var", k, l, max(0.0, msq - mean * mean))
            rec.put("activation_msq", k, l, msq)

        delta = self.delta[L % 2]  # dL/dx_L = g, then dL/dh_L in place
        torch.randn(B, n, generator=self.gen, out=delta)
        for l in range(L, 0, -1):
            delta = self.delta[l % 2]
            rec.put("grad_activation_msq", k, l, self.sum_sq(delta, self.acc) / entries)
            # dL/dh_l = dL/dx_l f'(h_l), from x_l by the fused kernels autograd itself uses: for
            # selu f'(h) = lambda for x > 0, else x + lambda alpha; for relu 1 where x > 0. (Built
            # from gt, add and masked_fill_ instead, f' cost about a fifth of the job's time.)
            if selu:
                torch.ops.aten.elu_backward.grad_input(delta, SELU_ALPHA, SELU_LAMBDA, 1.0, True, self.kept[l - 1],
                                                       grad_input=delta)
            else:
                torch.ops.aten.threshold_backward.grad_input(delta, self.kept[l - 1], 0, grad_input=delta)
            rec.put("grad_preactivation_msq", k, l, self.sum_sq(delta, self.acc) / entries)
            if job["weight_gradients"]:
                torch.matmul(self.x(l - 1).t(), delta, out=self.gw)
                rec.put("grad_weight_msq", k, l, self.sum_sq(self.gw, self.acc_w) / (n * n))
            if l > 1:
                torch.matmul(delta, self.weights[l - 1].t(), out=self.delta[(l - 1) % 2])


class Autograd:
    """The same job with autograd: forward tracked from h_1 on, statistics from tensor hooks.

    h_1 is made the leaf, so autograd computes dL/dx_l and dL/dh_l but not dL/dx_0 (no extra
    GEMM); the weights require grad only when weight gradients are asked for.
    """

    def __init__(self, torch, job, dtype, generator):
        self.torch = torch
        self.job = job
        self.dtype = dtype
        self.gen = generator

    def trial(self, k, rec):
        torch, job = self.torch, self.job
        B, n, L = job["batch"], job["width"], job["depth"]
        F = torch.nn.functional
        act = F.selu if job["activation"] == "selu" else F.relu
        f64 = torch.float64

        def moments(t):
            t = t.detach().to(f64)
            mean = t.mean()
            return mean.item(), torch.mean((t - mean) ** 2).item()

        def msq(t):
            t = t.detach().to(f64)
            return torch.mean(t * t).item()

        def hook(stat, l):
            def f(grad):
                rec.put(stat, k, l, msq(grad))
            return f

        with torch.enable_grad():
            x = torch.randn(B, n, generator=self.gen, dtype=self.dtype)
            if job["input_variance"] != 1.0 or job["input_mean"] != 0.0:
                x = x * math.sqrt(job["input_variance"]) + job["input_mean"]
            for l in range(1, L + 1):
                w = torch.randn(n, n, generator=self.gen, dtype=self.dtype) * (1.0 / math.sqrt(n))
                if job["weight_gradients"]:
                    w.requires_grad_(True)
                    w.register_hook(hook("grad_weight_msq", l))
                h = x @ w
                if l == 1 and not h.requires_grad:
                    h.requires_grad_(True)
                mean, var = moments(h)
                rec.put("preactivation_mean", k, l, mean)
                rec.put("preactivation_var", k, l, var)
                h.register_hook(hook("grad_preactivation_msq", l))
                x = act(h)
                xd = x.detach().to(f64)
                unit_means = xd.mean(dim=0)
                rec.put("unit_mean_spread", k, l, torch.var(unit_means, unbiased=False).item())
                mean = xd.mean().item()
                var = torch.mean((xd - mean) ** 2).item()
                rec.put("activation_mean", k, l, mean)
                rec.put("activation_var", k, l, var)
                rec.put("activation_msq", k, l, var + mean * mean)
                if l < L:
                    x.register_hook(hook("grad_activation_msq", l))
            g = torch.randn(B, n, generator=self.gen, dtype=self.dtype)
            rec.put("grad_activation_msq", k, L, msq(g))
            x.backward(g)


def fmt(mean, sem):
    if math.isnan(sem):
        return f"{mean:.6g}"
    return f"{mean:.6g} +- {sem:.2g}"


def main(argv):
    args = parse_args(argv)
    job = load_job(args)
    if args.threads < 1 or (args.blas_threads is not None and args.blas_threads < 1):
        fail("--threads and --blas-threads must be >= 1")
    set_environment(args)
    t_import = time.perf_counter()
    import torch  # after set_environment: OpenBLAS and libgomp read the environment when they load

    torch.set_num_threads(args.threads)
    t_ready = time.perf_counter()

    dtype = torch.float32 if job["precision"] == "float32" else torch.float64
    gen = torch.Generator().manual_seed(int(job["seed"]))
    engine = (Explicit if args.mode == "explicit" else Autograd)(torch, job, dtype, gen)
    rec = Recorder(job["trials"], job["depth"])
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(job["trials"]):
            engine.trial(k, rec)
    compute_s = time.perf_counter() - t0
    total_s = time.perf_counter() - T_START
    flop = gemm_flop(job)

    L = job["depth"]
    print(f"torch_reference: {job['name']}: {job['activation']}, L={L}, n={job['width']}, B={job['batch']}, "
          f"T={job['trials']}, {job['precision']}, weight gradients {'on' if job['weight_gradients'] else 'off'}, "
          f"mode {args.mode}")
    print(f"  torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"last layer ({L}) statistics, mean +- standard error over {job['trials']} trials:")
    for stat in STATS:
        if stat == "grad_weight_msq" and not job["weight_gradients"]:
            continue
        print(f"  {stat:24s} {fmt(*rec.summary(stat, L))}")
    if L >= 2:
        m1, _ = rec.summary("activation_msq", L - 1)
        m2, _ = rec.summary("activation_msq", L)
        print(f"  activation_msq ratio layer {L}/{L - 1}: {m2 / m1:.6g}")
    print(f"compute {compute_s:.3f} s ({flop / compute_s * 1e-9:.1f} GFLOP/s of GEMM, {flop * 1e-9:.1f} GFLOP), "
          f"import {t_ready - t_import:.3f} s, total {total_s:.3f} s")
    if args.json:
        out = {
            "job": job,
            "mode": args.mode,
            "threads": args.threads,
            "torch_version": torch.__version__,
            "environment": {k: os.environ.get(k) for k in
                            ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
            "gemm_flop": flop,
            "compute_s": compute_s,
            "import_s": t_ready - t_import,
            "total_s": total_s,
            "statistics": {
                stat: {"mean": [rec.summary(stat, l)[0] for l in range(1, L + 1)],
                       "sem": [rec.summary(stat, l)[1] for l in range(1, L + 1)]}
                for stat in STATS if stat != "grad_weight_msq" or job["weight_gradients"]
            },
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, allow_nan=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
