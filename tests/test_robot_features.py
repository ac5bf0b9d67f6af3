"""The robot must fit the artifact before it moves: its `observation_features` / `action_features` (motor
names, cameras, camera aspect ratio) are compared with the manifest's robot section before `connect()`, each
mismatch named; and at run time a camera frame of another aspect ratio than the recorded one is refused
(the policy would see a squeezed scene), while another resolution of the same aspect is resized as before."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime.manifest import Manifest
from runtime.robot_interface import ASPECT_TOLERANCE, MAX_SHAPES_SEEN, RobotInterface, RobotInterfaceError
from runtime.robot_loop import SyncSource, run_robot
from tests.serve_fixtures import robot_artifacts

RECORDED = (64, 64)  # the fixture's robot section: camera 'top' 64x64, motors x, y, actions dx, dy


@pytest.fixture(scope="module")
def iface() -> RobotInterface:
    return RobotInterface.from_manifest(Manifest.load(robot_artifacts()))


def obs_with(frame) -> dict:
    return {"x": 0.1, "y": 0.2, "top": frame}


# ------------------------------------------------------------------------- frames at run time
@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400))
def test_a_frame_is_refused_exactly_when_its_aspect_differs(iface, h, w):
    frame = np.zeros((h, w, 3), np.uint8)
    off = abs((w / h) / (RECORDED[1] / RECORDED[0]) - 1)
    if off <= ASPECT_TOLERANCE:
        assert iface.observation(obs_with(frame))["observation.images.top"] is frame  # passed on, resized later
    else:
        with pytest.raises(RobotInterfaceError) as exc:
            iface.observation(obs_with(frame))
        msg = str(exc.value)
        assert "camera 'top'" in msg and f"{h}x{w}" in msg and "64x64" in msg


def test_float_chw_frames_are_measured_in_their_own_layout(iface):
    iface.observation(obs_with(np.zeros((3, 128, 128), np.float32)))  # 128x128: same aspect
    with pytest.raises(RobotInterfaceError, match="gives 48x160 frames"):
        iface.observation(obs_with(np.zeros((3, 48, 160), np.float32)))


def test_the_check_is_cached_per_shape_and_bounded(iface):
    iface._shapes_ok.clear()
    frame = np.zeros((96, 96, 3), np.uint8)
    for _ in range(5):
        iface.observation(obs_with(frame))
    assert len(iface._shapes_ok) == 1
    for side in range(1, 3 * MAX_SHAPES_SEEN):
        iface.observation(obs_with(np.zeros((side, side, 3), np.uint8)))
    assert 0 < len(iface._shapes_ok) <= MAX_SHAPES_SEEN


def test_without_a_robot_section_any_aspect_is_resized():
    from tests.fake_artifacts import cached_fake_artifacts

    bare = RobotInterface.from_manifest(Manifest.load(cached_fake_artifacts(chunk_size=10, n_action_steps=10)))
    assert not bare.recorded
    out = bare.observation(obs_with(np.zeros((48, 160, 3), np.uint8)), state_names=("x", "y"))
    assert out["observation.images.top"].shape == (48, 160, 3)


def test_the_loop_faults_on_a_wide_camera_and_stops_safely(iface):
    class WideCam(SimReachRobot):
        def get_observation(self):
            return {**super().get_observation(), "top": np.zeros((48, 160, 3), np.uint8)}

    from runtime.policy import EdgePolicy

    with EdgePolicy(robot_artifacts()) as policy:
        robot = WideCam(SimReachSettings(episodes=2))
        rep = run_robot(robot, SyncSource(policy, iface), iface, policy.guard.stop_action, fps=200, max_ticks=10)
    assert rep.faults == 3 and "camera 'top' gives 48x160" in rep.stop_reason and rep.stops_sent == 1
    assert len(robot.sent) == 1  # only the stop action


# ------------------------------------------------------------------------- features before connect
SIM_OBS = {"x": float, "y": float, "top": (64, 64, 3)}
SIM_ACT = {"dx": float, "dy": float}


@pytest.mark.parametrize("obs, act, needle", [
    ({"shoulder.pos": float, "elbow.pos": float, "top": (64, 64, 3)}, SIM_ACT, "motor 'x' missing"),
    ({**SIM_OBS, "z": float}, SIM_ACT, "motor 'z' not in the artifact"),
    ({"x": float, "y": float, "front": (64, 64, 3)}, SIM_ACT, "camera 'observation.images.top' missing on the robot (it has ['observation.images.front'])"),
    ({"x": float, "y": float}, SIM_ACT, "camera 'observation.images.top' missing on the robot"),
    ({**SIM_OBS, "top": (480, 640, 3)}, SIM_ACT, "camera 'top' gives 480x640 frames"),
    ({**SIM_OBS, "top": (64, 64, 1)}, SIM_ACT, "observation_features['top'] must be (H, W, 3)"),
    (SIM_OBS, {"dx": float, "dz": float}, "action_features: motor 'dy' missing, motor 'dz' not in the artifact"),
    (SIM_OBS, {"dx": float}, "action_features: motor 'dy' missing"),
    (SIM_OBS, None, "action_features must be a dict"),
])
def test_robot_features_that_do_not_fit_are_named(iface, obs, act, needle):
    with pytest.raises(RobotInterfaceError) as exc:
        iface.check_robot_features(obs, act)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_fitting_features_pass_whatever_the_order_or_resolution(iface):
    iface.check_robot_features({"top": (480, 480, 3), "y": float, "x": float}, {"dy": float, "dx": float})
    iface.check_robot_features({**SIM_OBS, "top": (None, None, 3)}, SIM_ACT)  # camera size not set: checked per frame
    iface.check_robot(SimReachRobot())
    # a camera the artifact does not use (a monitoring camera) is ignored, whatever its shape
    iface.check_robot_features({**SIM_OBS, "wrist": (480, 640, 3), "depth": (480, 640, 1)}, SIM_ACT)


def test_run_robot_refuses_another_robot_before_connecting(iface):
    class OtherArm(SimReachRobot):
        observation_features = property(lambda s: {"shoulder.pos": float, "elbow.pos": float, "top": (64, 64, 3)})
        action_features = property(lambda s: {"shoulder.pos": float, "elbow.pos": float})
        connects = 0

        def connect(self, calibrate=True):
            OtherArm.connects += 1

    class Source:
        closes = 0

        def close(self):
            Source.closes += 1

    with pytest.raises(RobotInterfaceError, match="motor 'shoulder.pos' not in the artifact"):
        run_robot(OtherArm(), Source(), iface, np.zeros(2), fps=100)
    assert OtherArm.connects == 0 and Source.closes == 1  # never connected; the source was not leaked
