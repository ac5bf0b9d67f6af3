"""Development and evaluation tools around the runtime: simulated episodes, the gate sweep, soak, plots.

Never installed on a robot (the robot installs `runtime/` alone). May import `runtime` and `simtask`
(numpy-only), matplotlib and tqdm; never torch, lerobot, transformers, smolvla_cls or export.
"""
