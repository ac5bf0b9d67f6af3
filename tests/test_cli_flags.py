"""The `python -m runtime` / `python -m evaluation run` command lines as a user meets them: a bad flag is one
`error: ...` line naming the flag typed, exit code 2, before anything is loaded; `runtime serve` stops promptly
on SIGTERM at any moment; a port is never silently shared or wrapped; robot flags take `=` or a space."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.cli import main
from tests.fake_artifacts import cached_fake_artifacts
from tests.serve_fixtures import robot_artifacts, running_server

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ runtime serve: flags refused by name, rc 2
@pytest.mark.parametrize("flags, needle", [
    (["--stats-every", "-1"], "--stats-every must be 0 (never) or a number of seconds in [0.1, 86400]"),
    (["--stats-every", "nan"], "--stats-every must be"), (["--stats-every", "1e-9"], "--stats-every must be"),
    (["--stats-every", "inf"], "--stats-every must be"),
    (["--port", "99999"], "--port=99999 must be an integer in [0, 65535]"), (["--port", "-1"], "--port=-1 must be"),
    (["--max-sessions", "0"], "--max-sessions=0 must be"), (["--max-observation-mb", "nan"], "--max-observation-mb"),
    (["--engines", "some/engines"], "--engines some/engines needs --backend tensorrt"),
])
def test_serve_flags_are_refused_by_name_before_loading(tmp_path, capsys, flags, needle):
    """The artifact folder is empty: each refusal comes before anything is loaded, as `error: <flag> ...`, rc 2
    (like info / robot / evaluation run; never a busy loop of counter logs or a silently wrapped port)."""
    assert main(["serve", "--artifacts", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {needle}") and err.count("\n") == 1, err


def test_a_second_server_on_the_same_port_is_refused_in_one_line():
    with running_server() as (_, port):
        out = subprocess.run([sys.executable, "-m", "runtime", "serve", "--artifacts", str(robot_artifacts()),
                              "--port", str(port)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
                             check=False)
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"error: 127.0.0.1:{port} is in use (another `runtime serve`?): stop that server or choose another --port"]


def test_grpc_does_not_share_a_port(monkeypatch):
    """Even past the early probe (a port taken in between), gRPC's bind refuses: SO_REUSEPORT is off."""
    from runtime.serve import server as server_module

    monkeypatch.setattr(server_module, "check_port_free", lambda host, port: None, raising=False)
    with running_server() as (_, port), \
            pytest.raises(RuntimeError, match=f"could not bind 127.0.0.1:{port}: the port is in use"):
        server_module.build_server(server_module.ServeConfig(artifacts=robot_artifacts(), port=port))


# ------------------------------------------------------------------ runtime serve: SIGTERM at any moment
def test_serve_stops_promptly_on_sigterm_every_time():
    for delay in (0.0, 0.13, 0.31):  # right after it serves, and between counter logs every 0.1 s
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--artifacts", str(robot_artifacts()),
                                 "--port", "0", "--stats-every", "0.1"], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:  # wait until it serves
                if "serving" in line:
                    break
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            stdout, stderr = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr
        assert time.monotonic() - start < 5 and "SIGTERM: stopping" in stderr and "sessions" in json.loads(stdout)


SIGNAL_WHILE_LOCKED = """
import signal, sys, threading, time, types
import runtime.serve.command as command
from runtime.cli import main

svc = types.SimpleNamespace(interface=types.SimpleNamespace(state_names=("x",), state_dim=1),
                            stats=lambda: {"ok": 1}, close=lambda: None)
server = types.SimpleNamespace(start=lambda: None, stop=lambda grace: types.SimpleNamespace(wait=lambda: None))
command.build_server = lambda cfg, allow_public=False: (server, svc, 1234)
fired = []

def armed():  # once the command's own SIGTERM handler is in place
    return not fired and signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None) and not fired.append(1)

wait, sleep = threading.Event.wait, time.sleep
def locked_wait(self, timeout=None):
    if armed():
        with self._cond:  # SIGTERM lands while this thread holds the Event's (non-reentrant) lock
            signal.raise_signal(signal.SIGTERM)
    return wait(self, timeout)
def signalled_sleep(seconds):
    if armed():
        signal.raise_signal(signal.SIGTERM)
    sleep(seconds)
threading.Event.wait, time.sleep = locked_wait, signalled_sleep
sys.exit(main(["serve", "--artifacts", "unused", "--stats-every", "0.1"]))
"""


def test_sigterm_inside_the_wait_cannot_deadlock():
    """The reported hang, made deterministic: the signal arrives while the serve loop's thread holds the lock of
    whatever it waits on. A handler that took that lock (Event.set) would wait for itself forever."""
    out = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_LOCKED], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0 and json.loads(out.stdout) == {"ok": 1}, out.stderr


def test_stop_requests_take_any_number_of_signals():
    from runtime.serve.command import StopRequests

    stop = StopRequests()
    with stop.installed():
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


# ------------------------------------------------------------------ runtime robot: unknown flags, space form
def test_only_the_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=sim_reach", "--bogus"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines()[-1] == "python -m runtime robot: error: unrecognized arguments: --bogus"


def test_robot_flags_take_a_space_or_an_equals_sign():
    from runtime.cli import robot_flags

    assert robot_flags(["--robot.type", "sim_reach", "--robot.episodes=2", "--robot.offset", "-1"]) == (
        ["--robot.type=sim_reach", "--robot.episodes=2", "--robot.offset=-1"], [])
    # a following flag is never taken as the value; a stray word is unknown
    assert robot_flags(["--robot.id", "--fps", "stray"]) == (["--robot.id"], ["--fps", "stray"])


def test_runtime_robot_runs_with_space_separated_robot_flags(capsys):
    rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type", "sim_reach", "--robot.episodes", "1",
               "--fps", "60", "--max-ticks", "3", "--inference", "inline"])
    assert rc == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["ticks"] == 3


def test_robot_engines_need_tensorrt(capsys):
    assert main(["robot", "--artifacts", str(robot_artifacts()), "--engines", "e", "--robot.type=sim_reach"]) == 2
    assert capsys.readouterr().err == "error: --engines e needs --backend tensorrt (the backend is onnxruntime)\n"


@pytest.mark.parametrize("command", ["robot", "serve"])
def test_engines_flag_reaches_the_tensorrt_backend(tmp_path, capsys, command):
    """--engines names the folder whose identity record is checked (before TensorRT is imported)."""
    engines = tmp_path / "my-engines"
    engines.mkdir()
    (engines / "engines.identity.json").write_text("{}")
    rc = main([command, "--artifacts", str(robot_artifacts()), "--backend", "tensorrt", "--engines", str(engines),
               *(["--robot.type=sim_reach"] if command == "robot" else ["--port", "0"])])
    assert rc == 2 and f"{engines}/engines.identity.json: not an engine identity record" in capsys.readouterr().err


# ------------------------------------------------------------------ field names → the flags typed
def test_info_names_the_digest_flag(capsys):
    assert main(["info", "--artifacts", str(cached_fake_artifacts()), "--expect-digest", "foo"]) == 2
    assert capsys.readouterr().err.startswith("error: --expect-digest must look like sha256:<64 hex digits>")


def test_robot_names_the_digest_flag(capsys):
    assert main(["robot", "--artifacts", str(robot_artifacts()), "--expect-digest", "foo",
                 "--robot.type=sim_reach"]) == 2
    assert capsys.readouterr().err.startswith("error: --expect-digest must look like")


@pytest.mark.parametrize("flags, needle", [
    (["--check-every", "0"], "--check-every"), (["--num-steps", "0"], "--num-steps"),
    (["--tick-budget-ms", "-1"], "--tick-budget-ms"), (["--run-timeout-ms", "-5"], "--run-timeout-ms"),
    (["--expect-digest", "x"], "error: --expect-digest must"),
])
def test_evaluation_run_names_the_flags(capsys, flags, needle):
    """Refused by argparse (ranges) or by the policy (the digest's form): either way one line naming the flag."""
    from evaluation.episodes import main as evaluation_main

    try:
        rc = evaluation_main(["run", "--artifacts", str(cached_fake_artifacts()), "--episodes", "1", "--warmup", "0",
                              *flags])
    except SystemExit as exc:  # argparse's own refusal: usage + "argument --flag: ..."
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "_" not in err.splitlines()[-1].split(":")[0], err


def test_only_a_leading_field_name_is_rewritten():
    from runtime.cli_flags import as_flags

    assert as_flags("serve: stream_deadline_s=0 must be") == "--stream-deadline-s=0 must be"
    assert as_flags("runs must be in [1, 1000]", {"runs": "--warmup"}) == "--warmup must be in [1, 1000]"
    assert as_flags("runsX must be", {"runs": "--warmup"}) == "runsX must be"  # a whole leading word only
    assert as_flags("/data/num_steps/manifest.json: dims.num_steps must be") == "/data/num_steps/manifest.json: dims.num_steps must be"
    assert as_flags("seeds must be") == "seeds must be" and as_flags("num_steps") == "num_steps"
