"""lm-evaluation-harness tasks shipped with d3llm, for any lm-eval model (``d3llm``, ``local-chat-completions``
against ``d3llm serve``, ``hf``, ...), offline: no hub, no data files.

``d3llm_arith`` (``tasks/arith/arith.yaml``): the held-out problems of the built-in ``arith`` task
(:class:`d3llm.tasks.data.ArithDataset`, split ``test``), generated in memory by :func:`arith_dataset` (lm-eval's
``custom_dataset`` hook). The prompt is the question alone (``--apply_chat_template`` wraps it in the model's chat
template), generation runs to the end of text (``until: []``) with ``max_gen_toks: 256`` (what an OpenAI-API model
sends as ``max_tokens``; ``--gen_kwargs max_gen_toks=N`` changes it), and the metric is strict exact match of the
``#### N`` number (the regex of lm-eval's gsm8k, first match), as ``d3llm eval``'s strict score. ``d3llm lm-eval``
accepts the short name ``arith`` (:data:`TASK_ALIASES`) and adds ``--include_path`` :data:`TASKS_DIR` itself; lm-eval
run directly needs it::

    d3llm lm-eval --model teacher --tasks arith --limit 50
    lm_eval --model local-chat-completions ... --tasks d3llm_arith --include_path TASKS_DIR --apply_chat_template

``--metadata '{"problems": N, "problem_seed": S}'`` picks another number of problems (default 500, lm-eval's
``--limit`` takes the first ones) or seed of the generator (default 0, the problems every d3llm evaluation uses).
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lm-eval's --include_path for every task below
ARITH_TASK = "d3llm_arith"
TASK_FILES = {ARITH_TASK: TASKS_DIR / "arith" / "arith.yaml"}  # every shipped task and its YAML file
TASK_ALIASES = {"arith": ARITH_TASK}  # the short names ``d3llm lm-eval --tasks`` accepts (d3llm eval's task names)
ARITH_PROBLEMS = 500  # the held-out problems of every d3llm evaluation (d3llm.tasks.data.DEFAULT_TEST_SIZE)


def arith_rows(problems: int = ARITH_PROBLEMS, problem_seed: int = 0) -> list[dict]:
    """The held-out ``arith`` problems as lm-eval documents: ``question``, ``answer`` (the worked solution ending in
    ``#### N``) and ``gold`` (N, as a string)."""
    from d3llm.errors import ConfigError
    from d3llm.tasks.data import ArithDataset

    for name, value, low in (("problems", problems, 1), ("problem_seed", problem_seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{ARITH_TASK}: metadata '{name}' must be an integer of at least {low}, got {value!r}")
    data = ArithDataset("test", problems, seed=problem_seed)
    return [{"question": ex.question, "answer": ex.answer, "gold": ex.gold} for ex in (data[i] for i in range(len(data)))]


def arith_dataset(problems: int = ARITH_PROBLEMS, problem_seed: int = 0, **ignored):
    """lm-eval's ``custom_dataset`` hook of ``d3llm_arith``: a ``datasets.DatasetDict`` with the split ``test``.
    lm-eval passes the task's metadata (``version``, ``--metadata``, and the model arguments when it builds its own
    task manager) as keyword arguments; those other than ``problems`` and ``problem_seed`` are ignored."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(arith_rows(problems, problem_seed))})
