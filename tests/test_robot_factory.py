"""`--robot.*` flags for a real LeRobot robot: lerobot's stock robot types parse into their own config class
(nothing connected), and every mistake (unknown type, missing port, bad value, bad YAML, a driver SDK that is
not installed) is one line naming the flag or the lerobot extra — never a traceback (the factory used to
fail on every robot but sim_reach: a string annotation draccus could not resolve, and no type registered)."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("lerobot.robots")
pytest.importorskip("draccus")

from lerobot.robots import RobotConfig

from robot_adapters.factory import make_robot
from robot_adapters.lerobot_robot import RobotFlagError, parse_robot_config, register_stock_types

PORT = "/dev/ttyX"
SERIAL_ARMS = ("so101_follower", "so100_follower", "koch_follower", "omx_follower")


def test_lerobots_stock_arms_are_registered():
    register_stock_types()
    known = set(RobotConfig.get_known_choices())
    assert {"so100_follower", "so101_follower", "koch_follower"} <= known


@pytest.mark.parametrize("robot_type", SERIAL_ARMS)
def test_a_stock_arm_parses_into_its_own_config_class(robot_type):
    register_stock_types()
    if robot_type not in RobotConfig.get_known_choices():
        pytest.skip(f"{robot_type} is not a robot type in this lerobot version")
    cfg = parse_robot_config([f"--robot.type={robot_type}", f"--robot.port={PORT}", "--robot.id=arm"])
    assert type(cfg) is RobotConfig.get_choice_class(robot_type)
    assert cfg.port == PORT and cfg.id == "arm" and cfg.cameras == {}


def test_cameras_parse_with_lerobots_opencv_type():
    cfg = parse_robot_config(["--robot.type=so101_follower", f"--robot.port={PORT}",
                              "--robot.cameras={top: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}"])
    cam = cfg.cameras["top"]
    assert type(cam).__name__ == "OpenCVCameraConfig" and (cam.width, cam.height, cam.fps) == (640, 480, 30)


@pytest.mark.parametrize("flags, needle", [
    (["--robot.type=no_such_robot"], "--robot.type: unknown robot type 'no_such_robot'; known here:"),
    (["--robot.type=so101_follower"], "--robot.port is required for --robot.type=so101_follower"),
    (["--robot.type=so101_follower", f"--robot.port={PORT}", "--robot.speed=3"], "--robot.speed=3 (not a field"),
    (["--robot.type=so101_follower", f"--robot.port={PORT}", "--robot.max_relative_target=abc"],
     "--robot.max_relative_target: could not decode"),
    (["--robot.type=so101_follower", f"--robot.port={PORT}", "--robot.cameras={top: [unclosed"],
     "--robot.cameras: not valid YAML"),
    (["--robot.type=so101_follower", f"--robot.port={PORT}", "--robot.cameras={top: {type: webcam9}}"],
     "--robot.cameras.top: couldn't find a choice class for 'webcam9'"),
], ids=["unknown-type", "missing-port", "unknown-field", "bad-value", "bad-yaml", "unknown-camera"])
def test_flag_mistakes_are_one_line_naming_the_flag(flags, needle, capsys):
    with pytest.raises(RobotFlagError) as exc:
        make_robot(flags)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no chained library traceback
    assert capsys.readouterr().err == ""  # argparse's usage text was swallowed, not printed
    if "unknown robot type" in needle:
        assert "so101_follower" in msg  # the types this lerobot knows are listed


def test_a_missing_driver_sdk_names_the_lerobot_extra(monkeypatch):
    """Building an SO-101 needs feetech's SDK: when absent, one line says which extra installs it."""
    monkeypatch.setitem(sys.modules, "scservo_sdk", None)  # absent, whatever this machine has installed
    with pytest.raises(ImportError) as exc:
        make_robot(["--robot.type=so101_follower", f"--robot.port={PORT}"])
    msg = str(exc.value)
    # 0.4.4 fails importing the module (named here); 0.6 checks the distribution first and names it itself
    assert ("'scservo_sdk'" in msg or "'feetech-servo-sdk'" in msg) and "pip install 'lerobot[feetech]'" in msg
    assert "so101_follower" in msg and "\n" not in msg and exc.value.__cause__ is None


def test_koch_needs_dynamixel_or_builds_without_connecting(monkeypatch):
    try:
        import dynamixel_sdk  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"lerobot\[dynamixel\]"):
            make_robot(["--robot.type=koch_follower", f"--robot.port={PORT}"])
        return
    robot = make_robot(["--robot.type=koch_follower", f"--robot.port={PORT}"])
    assert not robot.is_connected  # built, never connected


def test_runtime_robot_reports_a_missing_port_on_one_line(capsys):
    from runtime.cli import main
    from tests.serve_fixtures import robot_artifacts

    rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=so101_follower"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: --robot.port is required for --robot.type=so101_follower"
