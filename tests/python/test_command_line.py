"""Bad command-line values and bad output paths: exit status 2, a message that names the value and
what would work, and nothing written anywhere."""
import os

import h5py
import pytest

from conftest import TINY, files_under
from mounts import mounted_tmpfs


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "error: --shard 3/2: shard index 3 is out of range; shards of 2 are numbered 0 to 1"),
    (["--shard", "2/2"], "error: --shard 2/2: shard index 2 is out of range; shards of 2 are numbered 0 to 1"),
    (["--shard", "0/0"], "error: --shard 0/0: the number of shards must be >= 1"),
    (["--shard", "-1/2"], "error: --shard index '-1' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--shard", "1/x"], "error: --shard count 'x' is not valid; give an integer from 0 to 100000"),
    (["--shard", "0/200000"], "error: --shard count '200000' is not valid; give an integer from 0 to 100000"),
    (["--shard", "3"], "error: --shard 3 is not valid; use K/N (shard K of N, 0-based) or slurm/N"),
    (["--shard", "slurm/4"], "error: --shard slurm/4 needs SLURM_ARRAY_TASK_ID, which is set only inside a Slurm "
                             "array task; outside Slurm give the shard as K/4"),
    (["--threads", "-2"], "error: --threads -2 is not valid; give a thread count from 1 to 4096"),
    (["--threads", "0"], "error: --threads 0 is not valid; give a thread count from 1 to 4096"),
    (["--threads", "99999"], "error: --threads 99999 is not valid; give a thread count from 1 to 4096"),
    (["--threads", "two"], "error: --threads 'two' is not a number"),
    (["--threads", ""], "error: --threads: empty value; give a number"),  # it ran with every processor
    (["--shard", ""], "error: --shard: empty value; give K/N or slurm/N"),  # it ran every point
    (["--seed", ""], "error: --seed '' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--seed", "-1"], "error: --seed '-1' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--seed", "1.5"], "error: --seed '1.5' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--seed", "99999999999999999999"],
     "error: --seed '99999999999999999999' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--parallel", "fast"], "error: --parallel fast is not valid; use auto, trials or samples"),
    (["--frobnicate"], "error: unknown option --frobnicate for selfnorm run"),
    (["--thread", "2"], "error: unknown option --thread for selfnorm run; did you mean --threads?"),
    (["extra"], "error: unexpected argument 'extra' for selfnorm run"),
    ([os.fsdecode(b"x\xe9")], "error: unexpected argument 'x\\xE9' for selfnorm run"),  # printable, not Latin-1
    (["--quiet=false"], "error: --quiet is a flag and takes no value: give --quiet alone, or leave it out"),
])
def test_bad_run_options_exit_2_and_write_nothing(run, write_config, tmp_path, args, message):
    cfg = write_config(TINY)
    env = {"SLURM_ARRAY_TASK_ID": ""}
    r = run("run", cfg, "-o", tmp_path / "out.h5", *args, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == message
    assert files_under(tmp_path) == ["config.json"]


def test_a_missing_command_or_argument_exits_2(run, tmp_path):
    for args, message in [((), "error: A subcommand is required: one of run, validate, merge, status, print-config, "
                                "activations, theory"),
                          (("valdate", "x.json"), "error: unknown command 'valdate'; did you mean 'validate'? (the "
                                                  "commands: run, validate, merge, status, print-config, activations, "
                                                  "theory)"),
                          (("theory", "slove"), "error: unknown theory command 'slove'; did you mean 'solve'? (the "
                                                "theory commands: map, jacobian, fixed-point, solve, dropout, "
                                                "depth-scales)"),
                          (("theory", "solve", "--meen", "0"), "error: unknown option --meen for selfnorm theory "
                                                               "solve; did you mean --mean?"),
                          (("theory", "map", "--mu", "abc"), "error: --mu 'abc' is not a number"),
                          (("theory", "map", "--mu="), "error: --mu needs a value; give a number"),
                          (("theory", "map", "--mu"), "error: --mu needs a value; give a number"),
                          (("run", "x.json", "-o"), "error: --output needs a value"),
                          (("run",), "error: config is required"),
                          (("merge", "-o", "x.h5"), "error: shards is required"),
                          (("status", "x.json"), "error: --shards is required"),
                          # It used to list the default folder's shards, without a word.
                          (("status", "x.json", "--shards", "2", "--dir", ""), "error: --dir: empty value; give a "
                                                                                 "folder")]:
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.splitlines()[0] == message
        assert r.stderr.splitlines()[1] == "Run `selfnorm --help` or `selfnorm COMMAND --help` for the options."
    assert run("--help").returncode == 0 and run("run", "--help").returncode == 0
    assert files_under(tmp_path) == []


def test_bad_status_options_exit_2(run, write_config, tmp_path):
    cfg = write_config(TINY)
    for shards, message in [("0", "error: --shards '0' is not valid; give an integer from 1 to 100000"),
                            # 2^66 once became INT64_MAX shards, listed one by one: a hang.
                            ("73786976294838206464", "error: --shards '73786976294838206464' is not valid; give an "
                                                     "integer from 1 to 100000")]:
        r = run("status", cfg, "--shards", shards, timeout=30)
        assert r.returncode == 2
        assert r.stderr.strip() == message


def test_bf16x6_is_refused_for_a_float64_run(run, write_config, tmp_path):
    """float64 products always run on the FMA units, so asking for the tile units would be ignored."""
    cfg = write_config(dict(TINY, precision="float64"))
    r = run("run", cfg, "--matmul", "bf16x6", "-o", tmp_path / "f.h5", cwd=tmp_path)
    if "need a CPU with AMX-BF16" in r.stderr:
        pytest.skip("this CPU has no AMX-BF16, so --matmul bf16x6 is refused for every config: " + r.stderr)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --matmul bf16x6: every point of this run is float64, whose products always "
                                "run on the FMA units (the tile units have no float64); leave --matmul out, or use "
                                "it with a float32 config")
    assert files_under(tmp_path) == ["config.json"]


def test_more_shards_than_points_are_refused(run, write_config, tmp_path):
    """Shards with no point to compute would still be required by merge."""
    cfg = write_config(dict(TINY, name="three", activation="selu", sweep={"grid": {"network.depth": [2, 3, 4]}}))
    r = run("run", cfg, "--shard", "3/4", "-o", tmp_path / "s.h5", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --shard 3/4: 4 shards is more than the 3 points of three; use at most 3 shards"
    r = run("status", cfg, "--shards", "1000", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --shards 1000: 1000 shards is more than the 3 points of three; use at most 3 " \
                               "shards"
    assert files_under(tmp_path) == ["config.json"]


def test_a_shard_folder_that_cannot_be_created_is_named_with_the_reason(run, write_config, tmp_path):
    """The default shard folder is results/<name>: its creation's failure is the error (it used to be
    ignored, and the run then said that the folder does not exist)."""
    cfg = write_config(dict(TINY, name="three", activation="selu", sweep={"grid": {"network.depth": [2, 3, 4]}}))
    (tmp_path / "results").write_text("a file where the results folder would be\n")
    r = run("run", cfg, "--shard", "0/3", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: cannot create the shard folder results/three (Not a directory); create it, "
                                "or give the shard's file with -o")


def test_status_says_what_it_finds_in_place_of_the_shards(run, write_config, tmp_path):
    cfg = write_config(dict(TINY, name="three", activation="selu", sweep={"grid": {"network.depth": [2, 3, 4]}}))
    r = run("status", cfg, "--shards", "3", "--dir", cfg, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: --dir {cfg} is a file, not a folder; give the folder that holds the shard "
                                "files (by default results/<name>)")
    r = run("status", cfg, "--shards", "3", cwd=tmp_path)
    assert r.returncode == 0
    assert "3 points in 3 shards under results/three (no such folder yet)" in r.stdout
    folder = tmp_path / "results" / "three"
    folder.mkdir(parents=True)
    for k in range(3):
        assert run("run", cfg, "--shard", f"{k}/3", "--quiet", cwd=tmp_path).returncode == 0
    merge_line = "all shards complete; merge them with: selfnorm merge -o results/three.h5 " \
                 "results/three/shard-*-of-3.h5"
    assert run("status", cfg, "--shards", "3", cwd=tmp_path).stdout.splitlines()[-1] == merge_line
    (tmp_path / "results" / "three.h5").write_text("merged before\n")
    assert run("status", cfg, "--shards", "3", cwd=tmp_path).stdout.splitlines()[-1] == \
        merge_line + "  (results/three.h5 exists: merged already?)"
    (tmp_path / "results" / "three.h5").unlink()
    assert run("run", cfg, "-o", folder / "shard-0-of-2.h5", "--quiet", cwd=tmp_path).returncode == 0
    (folder / "shard-1-of-2.h5").write_text("not a result\n")
    r = run("status", cfg, "--shards", "2", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.splitlines()[1:] == [
        "  shard 0  2 points  taken by a complete result of this config, not a shard",
        "  shard 1  1 point  taken by a file that is not a selfnorm result: move it away before resubmitting",
        "0 of 2 shards complete",
        "the folder holds shard files of other splits (--shards 3); is --shards 2 the split the run used?",
        "not complete: 0-1  (sbatch --array=0-1); move the files away before resubmitting: 1",
    ]
    # A shard cut short (a full disk, a copy that stopped) is not resubmitted: its task would fail at
    # once, since a run never writes over a file that is not a readable result.
    shard1 = folder / "shard-1-of-3.h5"
    shard1.write_bytes(shard1.read_bytes()[:2000])
    r = run("status", cfg, "--shards", "3", cwd=tmp_path)
    assert r.stdout.splitlines()[2] == ("  shard 1  1 point  damaged or cut short (an HDF5 file that is not a readable "
                                        "result): move it away before resubmitting")
    r = run("status", cfg, "--shards", "3", "--missing", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == ""
    assert r.stderr.strip() == ("note: left out: 1 shard whose file is damaged, cut short or not a selfnorm result "
                                "(1), which a run never writes over; move the files away, then run status again")
    # A checkpoint that cannot be resumed says why (it used to read "checkpoint of another config"
    # whatever the reason).
    (folder / "shard-2-of-3.h5").unlink()
    (folder / "shard-2-of-3.h5.partial").mkdir()
    (folder / "shard-2-of-3.h5.partial" / "point-2.h5").write_text("not a result\n")
    r = run("status", cfg, "--shards", "3", cwd=tmp_path)
    assert r.returncode == 0
    line = r.stdout.splitlines()[3]
    assert line.startswith("  shard 2  1 point  checkpoint not resumable: checkpoint "
                           "results/three/shard-2-of-3.h5.partial/point-2.h5 cannot be read ("), line


def test_config_paths_that_are_not_configs(run, tmp_path):
    cases = [
        (tmp_path / "missing.json", f"error: {tmp_path}/missing.json: cannot read the config (no such file); check "
                                    "the path"),
        (tmp_path, f"error: {tmp_path}: is a folder, not a config file; give the path of a JSON config such as "
                   "configs/default.json"),
        ("/dev/zero", "error: /dev/zero: is larger than 16 MiB, far more than any config (a few KiB); is it the "
                      "right file?"),
    ]
    for path, message in cases:
        for command in ("run", "validate", "print-config"):
            r = run(command, path, cwd=tmp_path)
            assert r.returncode == 2, (command, path, r.stderr)
            assert r.stderr.strip() == message
    assert files_under(tmp_path) == []


def test_output_paths_that_cannot_hold_a_result(run, write_config, tmp_path):
    cfg = write_config(TINY)
    (tmp_path / "folder").mkdir()
    cases = [
        (tmp_path / "nowhere" / "x.h5", f"error: output folder {tmp_path}/nowhere does not exist; create it or "
                                        "choose another path with -o"),
        (tmp_path / "config.json" / "x.h5", f"error: output folder {tmp_path}/config.json is a file, not a folder; "
                                            "choose another path with -o"),
        (tmp_path / "folder", f"error: {tmp_path}/folder is a folder; -o needs a file name ending in .h5"),
        # Root passes every permission check, and /proc is writable by its mode: only creating a
        # file there fails. The lock file, created before any work, is what finds out.
        ("/proc/selfnorm-test.h5", "error: cannot create files in the output folder /proc (No such file or "
                                   "directory, although the folder exists: it does not hold ordinary files, as /proc "
                                   "does; selfnorm creates its lock file /proc/selfnorm-test.h5.lock before any "
                                   "work); choose another path with -o"),
    ]
    for out, message in cases:
        r = run("run", cfg, "-o", out, cwd=tmp_path)
        assert r.returncode == 2, (out, r.stderr)
        assert r.stderr.strip() == message
        r = run("merge", "-o", out, cfg, cwd=tmp_path)
        assert r.returncode == 2, (out, r.stderr)
        assert r.stderr.strip() == message
    assert files_under(tmp_path) == ["config.json", "folder"]


def test_files_that_are_not_results_are_never_written_over(run, write_config, tmp_path):
    """An existing file is replaced only if it is a selfnorm result, and only with --overwrite: a
    config, an empty or damaged file, or a file in the checkpoint folder's place stays as it was."""
    cfg = write_config(TINY)
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "notes.h5").write_text("a researcher's notes\n")
    (tmp_path / "run.h5.partial").write_text("not a checkpoint folder\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out, message in [
        (tmp_path / "empty.h5", f"error: {tmp_path}/empty.h5 exists and is not a selfnorm result file (cannot open "
                                f"{tmp_path}/empty.h5 as an HDF5 file"),
        (tmp_path / "notes.h5", f"error: {tmp_path}/notes.h5 exists and is not a selfnorm result file (cannot open "
                                f"{tmp_path}/notes.h5 as an HDF5 file"),
        (tmp_path / "run.h5", f"error: {tmp_path}/run.h5.partial exists and is not a folder; selfnorm keeps the "
                              f"finished points of an unfinished run of {tmp_path}/run.h5 there: move the file away "
                              "or choose another path with -o"),
        (cfg, f"error: -o {cfg}: the result file's name must end in .h5 (selfnorm writes HDF5 files); for example "
              f"-o {tmp_path}/config.h5"),
        # The example is a name that would do: not x.h5.partial.h5, nor .h5.h5.
        (tmp_path / "x.h5.partial", f"error: -o {tmp_path}/x.h5.partial: the result file's name must end in .h5 "
                                    f"(selfnorm writes HDF5 files); for example -o {tmp_path}/x.h5"),
        (tmp_path / ".h5", f"error: -o {tmp_path}/.h5: the result file needs a name before .h5; for example -o "
                           f"{tmp_path}/result.h5"),
        ("", "error: --output: an empty path; give a file name ending in .h5"),
        # 241 bytes fit a file system's 255, but not the temporary name written beside it: the run
        # used to fail at its end, every point computed.
        (tmp_path / ("b" * 238 + ".h5"), f"error: -o {tmp_path}/{'b' * 238}.h5: the file name has 241 bytes, and "
                                         "selfnorm writes files named after it with up to 20 more (.<name>.tmp-<pid>-"
                                         "<n> while writing), over this file system's limit of 255; choose a name of "
                                         "at most 235 bytes"),
    ]:
        for overwrite in ([], ["--overwrite"]):
            r = run("run", cfg, "-o", out, *overwrite, cwd=tmp_path)
            assert r.returncode == 2, (out, r.stderr)
            assert r.stderr.startswith(message), r.stderr
    # The message goes on to say what would work.
    r = run("run", cfg, "-o", tmp_path / "notes.h5", "--overwrite", cwd=tmp_path)
    assert r.stderr.rstrip().endswith("selfnorm replaces only its own results, even with --overwrite: move the "
                                          "file away or choose another path with -o")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_merge_never_writes_over_one_of_its_shards(run, write_config, tmp_path):
    cfg = write_config(dict(TINY, sweep={"grid": {"network.depth": [2, 3, 4]}}))
    shards = [tmp_path / f"shard-{k}-of-3.h5" for k in range(3)]
    for k, shard in enumerate(shards):
        assert run("run", cfg, "--shard", f"{k}/3", "-o", shard, "--quiet").returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = run("merge", "-o", f"{tmp_path}/./{shards[0].name}", "--overwrite", *shards, cwd=tmp_path)  # the same file
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"error: -o {tmp_path}/./shard-0-of-3.h5 is also one of the shards to merge; write "
                                "the merged result to another file (the shards stay as they are)")
    r = run("merge", "-o", tmp_path / "merged.h5", tmp_path, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"error: {tmp_path} is a folder; merge takes the shard files inside it, such as "
                                f"{tmp_path}/shard-*-of-N.h5")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run("merge", "-o", tmp_path / "merged.h5", *shards).returncode == 0


def test_a_read_only_folder_is_refused_before_any_work(run, write_config, tmp_path):
    """chmod 0555 does not stop root (it bypasses permission bits), so the folder is a read-only
    tmpfs mount: that refuses every writer, root included, with EROFS."""
    cfg = write_config(TINY)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = run("run", cfg, "-o", ro / "x.h5")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"error: output folder {ro} is not writable (Read-only file system); choose "
                                    "another path with -o")
        assert r.stdout == ""
        assert files_under(ro) == []


def test_a_merged_file_says_how_its_shards_computed_the_statistics(run, write_config, tmp_path):
    cfg = write_config(dict(TINY, sweep={"grid": {"network.depth": [2, 3]}}))
    shards = [tmp_path / f"shard-{k}-of-2.h5" for k in range(2)]
    for k, threads in enumerate((2, 1)):
        assert run("run", cfg, "--shard", f"{k}/2", "--threads", threads, "-o", shards[k], "--quiet").returncode == 0
    assert run("merge", "-o", tmp_path / "merged.h5", *shards).returncode == 0
    with h5py.File(shards[0], "r") as s, h5py.File(tmp_path / "merged.h5", "r") as m:
        assert m.attrs["gemm_backend"] == s.attrs["gemm_backend"]  # the shards' kernels, not the merge's
        assert m.attrs["threads"] == -1  # the shards ran with 2 and 1 threads
        assert " merge -o " in m.attrs["command_line"] and " run " in s.attrs["command_line"]  # each its own
