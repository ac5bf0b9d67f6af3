"""LeRobot's stock robot client (`lerobot.async_inference.robot_client`, unmodified) with the simulated reach
robot registered, so path (a) of docs/07-robot.md runs without hardware:

    python -m robot_adapters.robot_client --robot.type=sim_reach --task="reach the red target" \\
        --server_address=127.0.0.1:8080 --policy_type=smolvla --pretrained_name_or_path=served-by-runtime \\
        --actions_per_chunk=10 --chunk_size_threshold=1.0 --fps=10
"""

from lerobot.async_inference.robot_client import async_client
from lerobot.utils.import_utils import register_third_party_plugins

import robot_adapters.config_sim_reach  # noqa: F401  (registers --robot.type=sim_reach)


def main() -> None:
    """As the stock `__main__`: installed `lerobot_robot_*` / `lerobot_camera_*` plugins first, then the client."""
    register_third_party_plugins()
    async_client()


if __name__ == "__main__":
    main()
