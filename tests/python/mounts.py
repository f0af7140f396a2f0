"""Small file systems made by the tests themselves: tmpfs mounts of a given size or read-only.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the tests that need a mount are skipped with the
reason. The mount is always undone, also when the test fails.
"""
import contextlib
import os
import subprocess

import pytest


@contextlib.contextmanager
def mounted_tmpfs(folder, options):
    """Mounts a tmpfs with `options` ("size=256k", "ro,size=1m") on `folder` (created if needed)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (for a full or read-only file system)")
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "selfnorm-test", str(folder)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
