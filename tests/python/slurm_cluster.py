"""A private single-node Slurm cluster in a temporary folder, for tests.

munged, slurmctld and slurmd run in the foreground as children of the test, with every file
(key, sockets, state, spool, logs, slurm.conf) under one folder; clients reach it through
SLURM_CONF. Only the processes started here are ever stopped, even when the test fails.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]


def missing_programs():
    return [p for p in DAEMONS + ["sbatch", "squeue", "sinfo"] if not shutil.which(p) and not
            Path("/usr/sbin", p).exists()]


def ensure_installed():
    """Installs slurm-wlm and munge from Debian when missing and running as root.

    Returns None when Slurm is usable, else the reason it is not.
    """
    if not missing_programs():
        return None
    if os.geteuid() != 0:
        return ("Slurm is not installed and this test is not running as root; install it with "
                "'apt-get install -y slurm-wlm munge' to run the cluster test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], env=env,
                           capture_output=True, text=True)
    if r.returncode != 0:
        return "apt-get could not install slurm-wlm and munge: " + r.stderr.strip()[-500:]
    return None if not missing_programs() else "Slurm programs still missing after installation"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sbin(name):
    path = shutil.which(name) or str(Path("/usr/sbin", name))
    return path


class SlurmCluster:
    def __init__(self, folder: Path, cpus: int = 2, memory_mb: int = 4096):
        self.folder = Path(folder)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.procs = []
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- set-up --------------------------------------------------------------------------------
    def _write_files(self):
        f = self.folder
        for d in ("munge", "state", "spool", "log", "run"):
            (f / d).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o755)  # munged requires its socket folder to be 0755
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = f / "munge" / "munge.socket"
        if len(str(self.socket)) > 100:
            raise RuntimeError(f"munge socket path too long for a Unix socket: {self.socket}")
        ctl_port, d_port = free_port(), free_port()
        self.conf.write_text(f"""\
ClusterName=selfnormtest
SlurmctldHost={self.host}
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'run' / 'slurmctld.pid'}
SlurmdPidFile={f / 'run' / 'slurmd.pid'}
SlurmctldLogFile={f / 'log' / 'slurmctld.log'}
SlurmdLogFile={f / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
MpiDefault=none
NodeName={self.host} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, args, log_name):
        log = open(self.folder / "log" / log_name, "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout=60):
        self._write_files()
        f = self.folder
        self._spawn([sbin("munged"), "--foreground", "--force", f"--socket={self.socket}",
                     f"--key-file={f / 'munge' / 'munge.key'}", f"--pid-file={f / 'run' / 'munged.pid'}",
                     f"--log-file={f / 'log' / 'munged.log'}", f"--seed-file={f / 'munge' / 'munge.seed'}"],
                    "munged.out")
        self._wait_for(lambda: self.socket.exists(), 15, "munged did not create its socket")
        self._spawn([sbin("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld.out")
        self._spawn([sbin("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait_for(self._node_idle, timeout, "the node did not become idle")
        return self

    def _node_idle(self):
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{self.logs()}")
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait_for(self, condition, timeout, message):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{message} within {timeout} s\n{self.logs()}")

    # -- use ----------------------------------------------------------------------------------
    def run(self, args, **kwargs):
        return subprocess.run(args, env=self.env, capture_output=True, text=True, **kwargs)

    def wait_until_empty(self, timeout):
        """Waits until the queue is empty; returns the seconds waited."""
        start = time.monotonic()
        self._wait_for(lambda: self.run(["squeue", "-h"]).stdout.strip() == "", timeout,
                       "jobs did not finish")
        return time.monotonic() - start

    def logs(self):
        out = []
        for log in sorted((self.folder / "log").glob("*")):
            text = log.read_text(errors="replace")[-2000:]
            out.append(f"--- {log.name}\n{text}")
        return "\n".join(out)

    # -- tear-down ------------------------------------------------------------------------------
    def stop(self):
        """Cancels this cluster's jobs, then stops the daemons this object started, and nothing else."""
        if self.procs and all(p.poll() is None for p in self.procs):
            self.run(["scancel", "--full", "--user", str(os.getuid())], timeout=30)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
