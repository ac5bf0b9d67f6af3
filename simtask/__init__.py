"""simtask: a numpy-only 2-D reach task (coloured discs, one-line instructions, target jumps),
its scripted expert and a closed-loop evaluator. Never imports torch, lerobot or smolvla_cls."""

from simtask.config import ACTION_DIM, ACTION_KEY, IMAGE_KEY, PALETTE, STATE_DIM, STATE_KEY, TaskConfig
from simtask.evaluate import EpisodeResult, EvalReport, evaluate_policy
from simtask.expert import ExpertEpisode, ScriptedExpert, run_expert_episode
from simtask.policies import ColorOraclePolicy, RandomPolicy
from simtask.reach_env import ReachEnv, instruction_for
from simtask.render import render_frame, save_frame_strip
from simtask.seeding import episode_seeds

__all__ = [
    "ACTION_DIM",
    "ACTION_KEY",
    "IMAGE_KEY",
    "PALETTE",
    "STATE_DIM",
    "STATE_KEY",
    "ColorOraclePolicy",
    "EpisodeResult",
    "EvalReport",
    "ExpertEpisode",
    "RandomPolicy",
    "ReachEnv",
    "ScriptedExpert",
    "TaskConfig",
    "episode_seeds",
    "evaluate_policy",
    "instruction_for",
    "render_frame",
    "run_expert_episode",
    "save_frame_strip",
]
