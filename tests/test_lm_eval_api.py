"""The offline lm-eval task ``d3llm_arith`` (d3llm/eval/lm_tasks.py) and ``benchmarks/lm_eval_api.py``, which runs
lm-eval's own ``local-chat-completions`` model against ``d3llm serve`` and the in-process ``d3llm`` model on it, end
to end on a handful of problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from d3llm.errors import ConfigError
from d3llm.eval.lm_tasks import ARITH_PROBLEMS, ARITH_TASK, TASKS_DIR, arith_dataset, arith_rows
from d3llm.tasks.data import ArithDataset

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "lm_eval_api.py"
LIMIT = 8


def test_the_task_holds_the_held_out_problems_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    assert (TASKS_DIR / "arith" / "arith.yaml").is_file()
    tasks = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"problems": 7})
    assert ARITH_TASK in tasks.all_tasks
    task = tasks.load([ARITH_TASK])["tasks"][ARITH_TASK]
    docs = list(task.test_docs())
    expected = ArithDataset("test", 7)
    assert [d["question"] for d in docs] == [expected[i].question for i in range(7)]
    assert task.doc_to_text(docs[0]) == expected[0].question and task.doc_to_target(docs[0]) == expected[0].gold
    assert task.config.generation_kwargs == {"until": [], "max_gen_toks": 256, "do_sample": False}
    # the strict-match filter takes the number after ####, as d3llm eval's strict score
    assert expected[0].answer.endswith(f"#### {expected[0].gold}")
    assert len(arith_dataset(version=1.0, config_source="x.yaml")["test"]) == ARITH_PROBLEMS  # lm-eval's own keys


@pytest.mark.parametrize("kwargs,words", [({"problems": 0}, "'problems' must be an integer of at least 1"),
                                          ({"problems": "5"}, "'problems' must be an integer"),
                                          ({"problem_seed": -1}, "'problem_seed' must be an integer of at least 0")])
def test_bad_task_metadata_is_a_clear_error(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        arith_rows(**kwargs)


def run_benchmark(tmp_path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    done = subprocess.run([sys.executable, str(BENCHMARK), "--limit", str(LIMIT), "--threads", "1", "--out", str(out),
                           *args], capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env, check=False)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_the_api_model_and_the_in_process_model_agree_on_the_same_canvas(tmp_path):
    """max_gen_toks 48, the teacher folder's own canvas: the server decodes exactly what the in-process model does,
    so the scores are equal and so is every text; with max_gen_toks 16 the API answers are cut before their
    #### line and the benchmark fails (status 1)."""
    pytest.importorskip("tenacity", reason="lm-eval's API models need it: pip install 'lm-eval[api]'")
    done, record = run_benchmark(tmp_path, "--max-gen-toks", "48", "--max-diff", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api, local = record["api"], record["in_process"]
    assert api["model"] == "local-chat-completions" and local["model"] == "d3llm"
    assert local["decoder"]["max_new_tokens"] == 48 and record["max_gen_toks"] == 48
    assert api["exact_match"] == local["exact_match"] > 50  # the teacher solves these at its own length
    assert record["difference_points"] == 0 and record["passed"] is True
    assert record["same_text"] == LIMIT and record["differing_problems"] == []
    assert local["stats"]["requests"] == LIMIT
    summary = done.stdout
    assert f"local-chat-completions -> d3llm serve, max_tokens 48: exact match {api['exact_match']:.1f}%" in summary
    assert "difference +0.0 points (allowed: 0)" in summary and summary.rstrip().endswith(f"wrote {tmp_path}/"
                                                                                           "result.json")

    done, record = run_benchmark(tmp_path, "--max-gen-toks", "16")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert record["passed"] is False and record["max_diff"] == 2.0
    assert record["api"]["exact_match"] == 0 < record["in_process"]["exact_match"]
    assert record["difference_points"] == -record["in_process"]["exact_match"]
    assert len(record["differing_problems"]) > 0
    assert all("####" not in p["api_text"] for p in record["differing_problems"])
    assert "-> FAIL" in done.stdout


def test_bad_benchmark_arguments_are_one_line_errors(tmp_path):
    for args, words in ((["--limit", "0"], "--limit: must be greater than 0"),
                        (["--max-diff", "-1"], "--max-diff: must be 0 or more"),
                        (["--out", str(tmp_path)], "--out")):
        done = subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr
