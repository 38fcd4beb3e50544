"""``d3llm pipeline``: from nothing to a distilled student and its AUP report in one run folder.

A pipeline is a list of stages (:mod:`d3llm.pipeline.presets`), each one invocation of an existing command
(``d3llm train``, ``d3llm trajectories extract``, ``d3llm distill``, ``d3llm sweep``) writing into its own folder of
the run folder. :mod:`d3llm.pipeline.record` keeps ``OUT/pipeline.json`` (the settings, and a done marker per
finished stage), :mod:`d3llm.pipeline.runner` runs, verifies, skips and resumes the stages, and
:mod:`d3llm.pipeline.report` writes ``OUT/report.md`` from the sweep's results.
"""

from d3llm.pipeline.presets import PRESETS, Preset, Stage
from d3llm.pipeline.runner import run_pipeline

__all__ = ["PRESETS", "Preset", "Stage", "run_pipeline"]
