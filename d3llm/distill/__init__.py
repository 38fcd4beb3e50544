"""Pseudo-trajectory distillation (SPEC 6 and 7): the teacher's decoding order as training signal.

    from d3llm.distill import read_trajectories
    traj = read_trajectories("runs/traj")      # verified Parquet shards
    traj.state(i, k)                           # the teacher's canvas of record i after step k
"""

__all__ = ["TrajectoryError", "TrajectorySet", "read_trajectories", "state_at"]


def __getattr__(name: str):  # lazy: the command-line parser imports d3llm.distill.config without numpy or torch
    if name in __all__:
        from d3llm.distill import store

        return getattr(store, name)
    raise AttributeError(f"module 'd3llm.distill' has no attribute {name!r}")
