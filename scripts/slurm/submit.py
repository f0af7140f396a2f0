#!/usr/bin/python3
"""Submit a selfnorm experiment to Slurm as a job array, one task per shard, plus a merge job.

    scripts/slurm/submit.py configs/selu_alpha_lambda_sweep.json --shards 16 --cpus-per-task 4

Each array task runs `selfnorm run CONFIG --shard slurm/N --threads $SLURM_CPUS_PER_TASK`, which
takes its shard index from SLURM_ARRAY_TASK_ID, and writes results/<name>/shard-K-of-N.h5. CONFIG
is a copy of the config taken at submission (results/<name>/submitted/<sha256>/<file>), so that editing
the config while the jobs wait changes nothing they compute. A merge job, held until every task
has succeeded (--dependency=afterok with --kill-on-invalid-dep=yes, so a failed task cancels it
instead of leaving it pending forever), writes results/<name>.h5. Logs are appended to
results/<name>/logs/shard-K.out and merge.out.

A task that is killed resumes from its checkpoints when it runs again: resubmit the incomplete
shards with --only and the options of the first submission, e.g.
--only "$(selfnorm status CONFIG --shards N --missing)".
"""

import argparse
import collections
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="experiment config (JSON)")
    p.add_argument("--shards", type=int, help="number of shards N (default: one per point, at most 32)")
    p.add_argument("--cpus-per-task", type=int, default=2, help="CPUs (threads) per task (default 2)")
    p.add_argument("--mem", help="memory per task, e.g. 4G (default: the engine's estimate plus 1 GiB)")
    p.add_argument("--time", default="04:00:00", help="time limit per task (default 04:00:00)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--only", help="submit only these shards, in sbatch --array form (e.g. 2,5-7)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default results/)")
    p.add_argument("--selfnorm", type=Path, default=ROOT / "build" / "selfnorm", help="selfnorm binary")
    p.add_argument("--sbatch-arg", action="append", default=[],
                   help="extra sbatch argument for the array and the merge job (repeatable; not --array: the "
                        "shards make the array, --only chooses them)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier results: the tasks recompute shard files already there (of this config or "
                        "another) and the merge job replaces results/<name>.h5; without it an existing "
                        "results/<name>.h5 is refused, and a task finds a complete shard of this config done")
    p.add_argument("--dry-run", action="store_true", help="write the job scripts and print the commands only")
    return p.parse_args(argv)


def fail(message):
    print(f"submit.py: error: {message}", file=sys.stderr)
    sys.exit(2)


# What sbatch takes for --mem (a size, suffix K, M, G or T, any case, with an optional B;
# megabytes without one) and --time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, or
# UNLIMITED).
MEM = re.compile(r"[0-9]+([KMGT]B?)?", re.IGNORECASE)
TIME = re.compile(r"[0-9]+(:[0-9]+){0,2}|[0-9]+-[0-9]+(:[0-9]+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
# The merge job's time limit: it reads and writes the shards' statistics, a matter of seconds to
# minutes; a task time limit shorter than this is used instead (a partition may allow no more).
MERGE_MINUTES = 30


def minutes(limit):
    """The minutes of an sbatch time limit that TIME matches; None for UNLIMITED. Fails naming a
    field out of range (25:99:99)."""
    if limit.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, dash, clock = limit.partition("-")
    if not dash:
        days, clock = "0", limit
    fields = [int(f) for f in clock.split(":")]
    if dash:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, sec = (fields + [0, 0])[:3]
        bounded = [(h, 24), (m, 60), (sec, 60)]
    elif len(fields) == 1:  # minutes
        h, m, sec = 0, fields[0], 0
        bounded = []
    elif len(fields) == 2:  # MM:SS
        h, (m, sec) = 0, fields
        bounded = [(sec, 60)]
    else:  # HH:MM:SS
        h, m, sec = fields
        bounded = [(m, 60), (sec, 60)]
    if any(value >= top for value, top in bounded):
        fail(f"--time {limit}: a field is out of range (hours below 24 after a day count, minutes and seconds below "
             "60); e.g. 1-00:30:00")
    return int(days) * 1440 + h * 60 + m + math.ceil(sec / 60)


def array_indices(spec, shards):
    """The shard indices of an sbatch --array spec such as 2,5-7 (a %N throttle allowed); fails
    naming the part that is not one, or an index that is not a shard."""
    body, _, throttle = spec.partition("%")
    if throttle and not throttle.isdigit():
        fail(f"--only {spec}: the throttle after % must be a number of tasks, got '{throttle}'")
    indices = []
    for part in body.split(","):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            fail(f"--only {spec}: '{part}' is not a shard index or a range K-L; give indices as sbatch --array "
                 f"takes them, e.g. 0,3-5 (the output of selfnorm status CONFIG --shards {shards} --missing)")
        first, last = int(m[1]), int(m[2] if m[2] else m[1])
        if first > last:
            fail(f"--only {spec}: the range '{part}' ends before it starts; write it lowest first")
        if last >= shards:
            fail(f"--only {spec}: '{part}' is not within the shards 0-{shards - 1} of a split into {shards}")
        indices.extend(range(first, last + 1))
    twice = sorted(k for k, n in collections.Counter(indices).items() if n > 1)
    if twice:
        shown = ", ".join(map(str, twice[:10])) + (f" and {len(twice) - 10} more" if len(twice) > 10 else "")
        fail(f"--only {spec}: {'shard' if len(twice) == 1 else 'shards'} {shown} "
             f"{'is' if len(twice) == 1 else 'are'} given more than once; list each shard once")
    return indices


def describe(selfnorm, config, threads):
    """selfnorm validate's answer for the config: its name, points and memory. Fails with selfnorm's
    message for a bad config, and says so when `selfnorm` is not a selfnorm binary."""
    def not_selfnorm(why):
        fail(f"{selfnorm} did not answer `validate --json` as selfnorm does: {why}; pass the selfnorm binary "
             "with --selfnorm (build/selfnorm)")

    try:
        r = subprocess.run([str(selfnorm), "validate", str(config), "--json", "--threads", str(threads)],
                           capture_output=True, text=True)
    except OSError as e:
        not_selfnorm(e.strerror or e)
    if r.returncode != 0:
        message = r.stderr.strip()
        fail(message.removeprefix("error: ") or f"selfnorm validate failed with status {r.returncode}")
    try:
        info = json.loads(r.stdout)
    except json.JSONDecodeError:
        not_selfnorm(f"its output is not JSON: {r.stdout.strip()[:80]!r}")
    missing = [key for key in ("name", "points", "buffer_bytes") if not isinstance(info, dict) or key not in info]
    if missing:
        not_selfnorm(f"its JSON has no {', '.join(missing)}")
    return info


def write_whole(path, data):
    """Writes `data` to `path` through a temporary file in the same folder, renamed once complete."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        part.write_bytes(data)
        part.replace(path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # a read-only folder refuses even removing what is not there
            part.unlink()
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(path)) from e  # named by the file it was to be
        raise


def sbatch(command, what, then=""):
    """Runs sbatch; its job id. Fails with sbatch's own message, saying `what` was being submitted
    and, after it, `then` (what is queued already and how to go on)."""
    try:
        r = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        fail("sbatch is not on PATH: run submit.py where Slurm's commands are (a login node), or use --dry-run to "
             "write the job scripts only")
    if r.returncode != 0:
        fail(f"sbatch ({what}) failed: {r.stderr.strip()}{then}")
    return r.stdout.strip().split(";")[0]


def sbatch_header(args, name, extra_lines):
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    lines += [f"#SBATCH {line}" for line in extra_lines]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    return lines


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    selfnorm = args.selfnorm.resolve()
    if not selfnorm.exists():
        fail(f"{selfnorm} not found; build selfnorm first (scripts/quickstart.sh) or pass --selfnorm")
    if not selfnorm.is_file() or not os.access(selfnorm, os.X_OK):
        fail(f"--selfnorm {selfnorm} is {'a folder' if selfnorm.is_dir() else 'not executable'}; pass the selfnorm "
             "binary (build/selfnorm)")
    if args.results.exists() and not args.results.is_dir():
        fail(f"--results {args.results} is a file; give a folder for the shards, logs and merged result (it is "
             "created if missing)")
    if args.cpus_per_task < 1:
        fail("--cpus-per-task must be >= 1")
    config = args.config.resolve()
    info = describe(selfnorm, config, args.cpus_per_task)
    points = info["points"]
    shards = args.shards if args.shards is not None else min(points, 32)
    if shards < 1:
        fail("--shards must be >= 1")
    if shards > points:
        fail(f"--shards {shards} is more than the {points} points of the experiment; use at most {points}")
    if args.mem is not None and not MEM.fullmatch(args.mem):
        fail(f"--mem {args.mem} is not a memory size sbatch takes; give a number with K, M, G or T, e.g. 4G")
    if not TIME.fullmatch(args.time):
        fail(f"--time {args.time} is not a time limit sbatch takes; give minutes, HH:MM:SS or D-HH:MM:SS, e.g. "
             "04:00:00")
    task_minutes = minutes(args.time)
    for option, value in (("--partition", args.partition), ("--account", args.account)):
        if value is not None and (not value.strip() or re.search(r"\s", value)):
            fail(f"{option} '{value}' is not a Slurm name: it is empty or has spaces")
    for extra in args.sbatch_arg:
        if not extra.strip():
            fail(f"--sbatch-arg '{extra}' is empty; give an sbatch option, e.g. --sbatch-arg=--qos=normal")
        if extra == "--array" or extra.startswith(("--array=", "-a")):
            fail(f"--sbatch-arg {extra}: submit.py makes the job array itself, one task per shard (and a merge job "
                 "that is no array); choose the shards with --shards N and --only, e.g. --only 0-5 or 0-5%2")
    if args.only is not None and args.shards is None:
        # The default split is one shard per point: --only's indices would name other shards.
        fail("--only needs --shards N, the split the shards were submitted with (the N of selfnorm status CONFIG "
             "--shards N --missing)")
    if args.only is not None and not args.only.strip():
        # `--only "$(selfnorm status ... --missing)"` once every shard is complete (or being written).
        results = (Path.cwd() / args.results).resolve()
        merged = results / f"{info['name']}.h5"
        print(f"submit.py: nothing to submit: --only is empty (selfnorm status ... --missing lists neither complete "
              f"shards nor those being written); once every shard is complete, merge with: {selfnorm} merge -o "
              f"{merged} {results / info['name']}/shard-*-of-{shards}.h5"
              + (f" ({merged} exists: merge replaces it only with --overwrite)" if merged.exists() else ""),
              file=sys.stderr)
        return 0
    if args.only is not None:
        array_indices(args.only, shards)
    mem = args.mem or f"{math.ceil(info.get('memory_bytes', info['buffer_bytes']) / 2**20) + 1024}M"
    # The merge holds every point's statistics twice (the records, then the file's image): the run's
    # estimate less the engine's buffers, with half again for the predictions, plus 1 GiB.
    records = max(0, info.get("memory_bytes", info["buffer_bytes"]) - info["buffer_bytes"])
    merge_mem = f"{math.ceil(1.5 * records / 2**20) + 1024}M"
    array = args.only if args.only else f"0-{shards - 1}"

    workdir = Path.cwd().resolve()
    results = (workdir / args.results).resolve()
    run_dir = results / info["name"]
    logs = run_dir / "logs"
    shard_files = [run_dir / f"shard-{k}-of-{shards}.h5" for k in range(shards)]
    merged = results / f"{info['name']}.h5"
    if merged.exists() and not args.overwrite:
        fail(f"{merged} already exists; the merge job would replace it: pass --overwrite to allow that, or --results "
             "for another results folder")
    # The config as it is now: the tasks read their copy when they start, however long they wait.
    # It keeps the file's name, the experiment's name where the config gives none.
    text = config.read_bytes()
    snapshot = run_dir / "submitted" / hashlib.sha256(text).hexdigest()[:16] / config.name
    status_cmd = f"{selfnorm} status {snapshot} --shards {shards} --dir {run_dir}"

    run_cmd = [str(selfnorm), "run", str(snapshot), "--shard", f"slurm/{shards}", "--quiet",
               *(["--overwrite"] if args.overwrite else [])]
    array_script = run_dir / "array.sbatch"
    array_text = "\n".join(sbatch_header(args, f"selfnorm-{info['name']}", [
        f"--array={array}",
        f"--cpus-per-task={args.cpus_per_task}",
        f"--mem={mem}",
        f"--time={args.time}",
        f"--chdir={workdir}",
        f"--output={logs}/shard-%a.out",
        "--open-mode=append",
    ]) + [
        "set -euo pipefail",
        f"# Submitted from {config}. selfnorm takes its shard from SLURM_ARRAY_TASK_ID; its threads are the",
        "# task's CPUs, whatever OMP_NUM_THREADS the submitting shell exported.",
        'echo "== task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname), $(date -u +%FT%TZ)"',
        "exec " + shlex.join(run_cmd) + ' --threads "$SLURM_CPUS_PER_TASK" -o ' + shlex.quote(str(run_dir)) +
        f'/shard-"$SLURM_ARRAY_TASK_ID"-of-{shards}.h5',
        "",
    ])
    merge_cmd = [str(selfnorm), "merge", *(["--overwrite"] if args.overwrite else []), "-o", str(merged)] + \
        [str(f) for f in shard_files]
    merge_script = run_dir / "merge.sbatch"
    merge_text = "\n".join(sbatch_header(args, f"selfnorm-{info['name']}-merge", [
        "--cpus-per-task=1",
        f"--mem={merge_mem}",
        f"--time={MERGE_MINUTES if task_minutes is None else min(MERGE_MINUTES, task_minutes)}",
        f"--chdir={workdir}",
        f"--output={logs}/merge.out",
        "--open-mode=append",
    ]) + ["set -euo pipefail", 'echo "== merge job $SLURM_JOB_ID on $(hostname), $(date -u +%FT%TZ)"',
          "exec " + shlex.join(merge_cmd), ""])
    try:
        logs.mkdir(parents=True, exist_ok=True)
        if not snapshot.exists():  # named by its content: one there already is the same
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            write_whole(snapshot, text)  # a copy cut short would later pass for this config's
        write_whole(array_script, array_text.encode())
        write_whole(merge_script, merge_text.encode())
    except OSError as e:
        fail(f"cannot write {e.filename} ({e.strerror}); choose another --results")

    sbatch_array = ["sbatch", "--parsable", *args.sbatch_arg, str(array_script)]
    if args.dry_run:
        print(shlex.join(sbatch_array))
        print(shlex.join(["sbatch", "--parsable", "--dependency=afterok:<array job id>", "--kill-on-invalid-dep=yes",
                          *args.sbatch_arg, str(merge_script)]))
        print(f"submit.py: dry run: wrote {array_script}, {merge_script} and the config's copy {snapshot}; progress "
              f"once submitted: {status_cmd}", file=sys.stderr)
        return 0
    array_id = sbatch(sbatch_array, "the array job")
    sbatch_merge = ["sbatch", "--parsable", f"--dependency=afterok:{array_id}", "--kill-on-invalid-dep=yes",
                    *args.sbatch_arg, str(merge_script)]
    merge_id = sbatch(sbatch_merge, "the merge job",
                      f"; the array job {array_id} is queued: once the problem is fixed (edit {merge_script}), "
                      f"submit the merge alone with: {shlex.join(sbatch_merge)}")
    print(json.dumps({"array_job": array_id, "merge_job": merge_id, "shards": shards, "array": array,
                      "run_dir": str(run_dir), "merged": str(merged)}))
    print(f"submitted array job {array_id} ({array}) and merge job {merge_id}; progress (of the config as "
          f"submitted, whatever happens to {config.name} meanwhile): {status_cmd}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
