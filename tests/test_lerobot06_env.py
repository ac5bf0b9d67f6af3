"""scripts/lerobot06_env.sh and `make test-lerobot-0.6` without building anything: the non-root SKIPPED path,
the LEROBOT06_OUT check, and the flock that keeps concurrent builds/runs on one shared root apart (a stale
stamp makes build/run rebuild under the exclusive lock; a matching one needs only the shared lock)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lerobot06_env.sh"


def _env(tmp_path: Path, uid: int | None = None) -> dict:
    """Environment with LEROBOT06_HOME in tmp_path and a mirror that fails at once (nothing can download);
    `uid` puts a fake `id` first on PATH."""
    env = dict(os.environ, LEROBOT06_HOME=str(tmp_path / "home"), DEBIAN_MIRROR="http://127.0.0.1:9/debian",
               HOST_PY="/bin/false")
    if uid is not None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
        (bin_dir / "id").chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def _script(args: list[str], env: dict, timeout: float = 60) -> tuple[int | None, str]:
    """(exit status or None when it was still running at `timeout`, stdout+stderr); the group is killed."""
    p = subprocess.Popen(["bash", str(SCRIPT), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, out


def test_preflight_skips_when_not_root(tmp_path):
    rc, out = _script(["preflight", "outputs/lerobot06"], _env(tmp_path, uid=1000))
    assert rc == 3 and out.startswith("SKIPPED make test-lerobot-0.6") and "uid 1000" in out


@pytest.mark.parametrize("out_dir", ["/tmp/lerobot06", "..", ".", "outputs/../..", ""])
def test_preflight_rejects_an_out_dir_outside_the_checkout(tmp_path, out_dir):
    rc, out = _script(["preflight", out_dir], _env(tmp_path, uid=0))
    assert rc == 2 and "LEROBOT06_OUT" in out and "bind-mounted" in out


def test_preflight_accepts_a_folder_inside_the_checkout(tmp_path):
    assert _script(["preflight", "outputs/lerobot06"], _env(tmp_path, uid=0)) == (0, "")


@pytest.mark.parametrize(("uid", "out_dir", "want_rc", "want"), [
    (1000, "outputs/lerobot06", 0, "SKIPPED"), (0, "/tmp/elsewhere", 2, "must be a relative path")])
def test_make_target_skips_or_refuses(tmp_path, uid, out_dir, want_rc, want):
    """`-o install`: the venv check is not what is under test (and must not run here)."""
    p = subprocess.run(["make", "--no-print-directory", "-o", "install", "test-lerobot-0.6",
                        f"LEROBOT06_OUT={out_dir}"], env=_env(tmp_path, uid=uid), cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == want_rc and want in p.stdout + p.stderr
    assert "lerobot06-steps" not in p.stdout and "build" not in p.stdout


def _fake_root(tmp_path: Path, stamp: str | None) -> Path:
    home = tmp_path / "home"
    (home / "trixie-root" / "usr" / "bin").mkdir(parents=True)
    (home / "trixie-root" / "usr" / "bin" / "python3.13").write_text("")
    (home / "trixie-root" / "usr" / "bin" / "python3.13").chmod(0o755)
    if stamp is not None:
        (home / "trixie-root" / "opt" / "venv").mkdir(parents=True)
        (home / "trixie-root" / "opt" / "venv" / ".smolvla-cls-stamp").write_text(stamp + "\n")
    return home


def _hold(home: Path, mode: int):
    f = open(home / "lock", "a")  # noqa: SIM115 - held across the subprocess
    fcntl.flock(f, mode)
    return f


@pytest.mark.skipif(os.geteuid() != 0, reason="build/run need root")
@pytest.mark.parametrize("cmd", [["build"], ["run", "true"]])
def test_stale_stamp_rebuilds_only_under_the_exclusive_lock(tmp_path, cmd):
    """A stamp that exists but does not match: `run` (not just `build`) goes to rebuild, and waits while
    another run holds the shared lock instead of deleting the venv under it."""
    home = _fake_root(tmp_path, "0123456789abcdef")
    f = _hold(home, fcntl.LOCK_SH)
    try:
        rc, out = _script(cmd, _env(tmp_path), timeout=3)
    finally:
        f.close()
    assert rc is None and "waiting for another build/run" in out and "ready" not in out
    assert (home / "trixie-root" / "opt" / "venv" / ".smolvla-cls-stamp").read_text() == "0123456789abcdef\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="build/run need root")
def test_matching_stamp_is_ready_under_a_shared_lock_and_waits_for_a_build(tmp_path):
    home = _fake_root(tmp_path, None)
    rc, out = _script(["stamp"], _env(tmp_path))
    assert rc == 0 and len(out.strip()) == 16
    stamp = home / "trixie-root" / "opt" / "venv" / ".smolvla-cls-stamp"
    stamp.parent.mkdir(parents=True)
    stamp.write_text(out)
    f = _hold(home, fcntl.LOCK_SH)  # another run in progress: a no-op build does not queue behind it
    try:
        rc, out = _script(["build"], _env(tmp_path), timeout=30)
    finally:
        f.close()
    assert rc == 0 and "ready" in out and "waiting" not in out
    f = _hold(home, fcntl.LOCK_EX)  # a build in progress: even a no-op build waits for it
    try:
        rc, out = _script(["build"], _env(tmp_path), timeout=3)
    finally:
        f.close()
    assert rc is None and "waiting for another build/run" in out
