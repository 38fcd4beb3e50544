"""Pseudo-trajectory distillation (SPEC 6 and 7): the teacher's decoding order as training signal.

    from d3llm.distill import read_trajectories
    traj = read_trajectories("runs/traj")      # verified Parquet shards
    traj.state(i, k)                           # the teacher's canvas of record i after step k
"""

from d3llm.distill.store import TrajectoryError, TrajectorySet, read_trajectories, state_at

__all__ = ["TrajectoryError", "TrajectorySet", "read_trajectories", "state_at"]
