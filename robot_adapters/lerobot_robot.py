"""Build a LeRobot robot (SO-100/101, Koch, ... or a plugin) from `--robot.*` flags with lerobot's own parser.

Like lerobot's `lerobot_record.py`, the stock camera and robot packages are imported first so their types
are registered (each one that this lerobot version lacks, or whose import fails, is skipped). lerobot's
parser (draccus) reports problems as argparse exits, exception chains or YAML tracebacks; here each becomes
one `RobotFlagError` line naming the flag (`--robot.port is required ...`), and a driver SDK that is not
installed becomes one `ImportError` line naming lerobot's extra that provides it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import re
from typing import Any

log = logging.getLogger("robot_adapters")

STOCK_CAMERAS = ("opencv.configuration_opencv", "realsense.configuration_realsense",
                 "reachy2_camera.configuration_reachy2_camera", "zmq.configuration_zmq")
# lerobot 0.4.4's `lerobot_record.py` list (+ lekiwi), then the names older releases used (0.3.x)
STOCK_ROBOTS = ("bi_openarm_follower", "bi_so_follower", "earthrover_mini_plus", "hope_jr", "koch_follower", "lekiwi",
                "omx_follower", "openarm_follower", "reachy2", "so_follower", "unitree_g1",
                "so100_follower", "so101_follower", "bi_so100_follower", "stretch3", "viperx")
# a driver module a robot imports when it is built → the lerobot extra that installs it
EXTRA_FOR_MODULE = {"scservo_sdk": "feetech", "dynamixel_sdk": "dynamixel", "pyrealsense2": "intelrealsense",
                    "reachy2_sdk": "reachy2", "zmq": "lekiwi", "can": "damiao", "pygame": "hopejr",
                    "pinocchio": "unitree-g1", "placo": "kinematics", "stretch_body": "stretch"}


class RobotFlagError(ValueError):
    """A `--robot.*` flag lerobot's parser refused; the message is one line naming the flag."""


def register_stock_types() -> list[str]:
    """Import lerobot's stock camera and robot config packages (registering their types) and third-party
    plugins; returns the packages that could not be imported (missing in this version, or broken)."""
    skipped = []
    quiet = logging.root.manager.disable
    logging.disable(max(quiet, logging.INFO))  # lerobot logs "Could not import realsense" for cameras not used
    try:
        for name in [f"lerobot.cameras.{m}" for m in STOCK_CAMERAS] + [f"lerobot.robots.{m}" for m in STOCK_ROBOTS]:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 — absent in this version, or broken: the others still register
                skipped.append(name)
    finally:
        logging.disable(quiet)
    if skipped:
        log.debug("lerobot packages not registered: %s", ", ".join(skipped))
    import lerobot.utils.import_utils as iu

    register = getattr(iu, "register_third_party_plugins", None) or getattr(iu, "register_third_party_devices", None)
    if register is not None:
        register()
    return skipped


def _first_line(text: object) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def _flag_values(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _yaml_culprit(args: list[str]) -> str:
    """The flag whose value is not valid YAML (draccus parses every value as YAML), or "--robot.*"."""
    import yaml

    for flag, value in _flag_values(args).items():
        try:
            yaml.safe_load(value)
        except yaml.YAMLError:
            return f"--{flag}"
    return "--robot.*"


def _explain(exc: BaseException, args: list[str], robot_type: str) -> str:
    """One line for a draccus parse failure, naming the flag."""
    import draccus.utils as du
    import yaml

    if isinstance(exc, du.DecodingError):
        path = ".".join(exc.key_path)
        missing = re.search(r"Missing required field\(s\) (.*?)(?: for (\w+))?$", _first_line(exc.message))
        if missing:
            fields = re.findall(r"`([^`]+)`", missing.group(1)) or [missing.group(1)]
            flags = ", ".join(f"--{path}.{f}" if path else f"--{f}" for f in fields)
            return f"{flags} {'is' if len(fields) == 1 else 'are'} required for --robot.type={robot_type}"
        given = _flag_values(args).get(path)
        said = _first_line(exc.message).rstrip(":")
        return (f"--{path}: {said[:1].lower()}{said[1:]}"
                + (f" (got {given!r})" if given is not None else ""))
    if isinstance(exc, yaml.YAMLError):
        problem = getattr(exc, "problem", None) or _first_line(exc)
        return f"{_yaml_culprit(args)}: not valid YAML ({problem})"
    cause = exc
    while cause.__cause__ is not None:  # draccus wraps the config class's own error (e.g. a camera's __post_init__)
        cause = cause.__cause__
    where = _first_line(exc).removesuffix(" using the given arguments.").replace("Couldn't instantiate class", "cannot build")
    detail = "" if cause is exc else f": {_first_line(cause)}"
    return f"--robot.* flags for --robot.type={robot_type}: {where}{detail}"


def robot_type_of(args: list[str]) -> str:
    """The last `--robot.type=` value (lerobot's configs share classes between types: ask the flags)."""
    return next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("--robot.type=")), "?")


def parse_robot_config(args: list[str]) -> Any:
    """`--robot.type=... --robot.<field>=...` → lerobot's RobotConfig subclass instance (nothing is built)."""
    import draccus
    from lerobot.robots import RobotConfig

    register_stock_types()
    robot_type = robot_type_of(args)
    wrapper = dataclasses.make_dataclass("RobotFlags", [("robot", RobotConfig)])  # a real type, not a string
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):  # argparse's usage + error, turned into one line below
            return draccus.parse(config_class=wrapper, args=args).robot
    except SystemExit as exc:
        said = [ln.split(": error: ", 1)[1] for ln in err.getvalue().splitlines() if ": error: " in ln]
        if exc.code in (0, None) or not said:
            raise
        msg = said[-1]
        if "invalid choice" in msg and "--robot.type" in msg:
            known = ", ".join(sorted(RobotConfig.get_known_choices()))
            msg = f"--robot.type: unknown robot type {robot_type!r}; known here: {known}"
        elif msg.startswith("unrecognized arguments"):
            msg = f"{msg} (not a field of --robot.type={robot_type})"
        raise RobotFlagError(msg) from None
    except Exception as exc:  # noqa: BLE001 — draccus / yaml / the config's own checks: one named line
        raise RobotFlagError(_explain(exc, args, robot_type)) from None


def build_robot(config: Any, robot_type: str) -> Any:
    """lerobot's `make_robot_from_config` (nothing is connected); a missing driver SDK names its extra."""
    from lerobot.robots import make_robot_from_config

    try:
        return make_robot_from_config(config)
    except ModuleNotFoundError as exc:
        module = (exc.name or _first_line(exc)).split(".")[0]
        extra = EXTRA_FOR_MODULE.get(module)
        how = f"pip install 'lerobot[{extra}]'" if extra else "install the lerobot extra for this robot"
        raise ImportError(f"--robot.type={robot_type} needs the Python module '{module}', which is not "
                          f"installed: {how}") from None
    except ImportError as exc:  # lerobot 0.6 checks driver SDKs itself: its one line already names the extra
        raise ImportError(f"--robot.type={robot_type}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 — a driver's constructor: one line naming the robot type
        raise RobotFlagError(f"--robot.type={robot_type}: cannot build the robot: {_first_line(exc)}") from None


def make_lerobot_robot(args: list[str]) -> Any:
    """Parse the flags, then build (not connect) the robot."""
    return build_robot(parse_robot_config(args), robot_type_of(args))
