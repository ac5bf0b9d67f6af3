"""Robots for `python -m runtime robot` and LeRobot's robot client, outside the torch-free runtime core.

- `sim_reach`: a simulated robot with LeRobot's `Robot` interface backed by the embedded reach task
  (numpy only, no lerobot needed);
- `config_sim_reach`: its lerobot `RobotConfig` registration (`--robot.type=sim_reach`; imports lerobot);
- `lerobot_factory`: builds any lerobot robot from `--robot.*` flags with lerobot's own factory.
"""
