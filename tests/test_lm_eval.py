"""The lm-evaluation-harness model: `d3llm lm-eval` on local YAML tasks with the shipped teacher."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d3llm.cli.main import main
from d3llm.tasks.data import load_dataset

# multi_block at a loose entropy threshold, so that the teacher makes some mistakes worth comparing
DECODER = dict(method="multi_block", threshold=4.0, cache_delay_iter=1)
PROBLEMS = 16

GEN_TASK = """\
task: arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["<|eot_id|>"]
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MC_TASK = """\
task: arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""


def _lm_eval(args, out):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_DATASETS_CACHE=str(out / "hf-cache"))
    proc = subprocess.run([sys.executable, "-m", "d3llm.cli.main", "lm-eval", *args, "--output_path", str(out),
                           "--log_samples"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(out / "*" / "results_*.json"))[0]).read_text())
    samples = [json.loads(line) for line in open(glob.glob(str(out / "*" / "samples_*.jsonl"))[0])]
    return proc, results, samples


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    test = load_dataset("arith:test")
    rows = [{"question": test[i].question, "answer": test[i].answer, "target": test[i].gold} for i in range(PROBLEMS)]
    (folder / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "arith_gen.yaml").write_text(GEN_TASK.format(data=folder / "arith.jsonl"))
    with open(folder / "arith_mc.jsonl", "w") as fh:
        for r in rows[:5]:
            gold = int(r["target"])
            stem = r["answer"].rsplit("#### ", 1)[0]
            wrong = [gold + 11 if gold <= 88 else gold - 11, gold + 1 if gold < 99 else gold - 1]
            fh.write(json.dumps({"question": r["question"], "label": 0,
                                 "choices": [stem + f"#### {v}" for v in (gold, *wrong)]}) + "\n")
    (folder / "arith_mc.yaml").write_text(MC_TASK.format(data=folder / "arith_mc.jsonl"))
    return folder


def test_generate_until_matches_d3llm_eval(tasks, tmp_path, capsys):
    model_args = ",".join(f"{k}={v}" for k, v in DECODER.items())
    proc, results, samples = _lm_eval(["--model", "d3llm", "--model_args", model_args, "--tasks", "arith_gen",
                                       "--include_path", str(tasks), "--apply_chat_template", "--batch_size", "5",
                                       "--device", "cpu"], tmp_path / "gen")
    lm_exact = results["results"]["arith_gen"]["exact_match,strict-match"]

    # d3llm eval on the same problems, same decoder settings (the rest from the folder's generation_config.json)
    flags = ["--method", "multi_block", "--threshold", "4.0", "--cache-delay-iter", "1"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--task", str(tasks / "arith.jsonl"), *flags, "--json", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())
    assert ours["n"] == PROBLEMS == len(samples)
    assert 100.0 * lm_exact == pytest.approx(ours["strict"])
    assert 0 < ours["strict"] < 100, "pick a setting where the teacher makes some mistakes"
    # the same text for every problem: lm-eval's prompt (chat template on request) is the one d3llm eval builds
    texts = {int(s["doc_id"]): s["resps"][0][0] for s in samples}
    assert [texts[i] for i in range(PROBLEMS)] == [r["prediction"] for r in ours["records"]]
    # TPF and NFE of the run are printed next to lm-eval's table
    line = next(s for s in proc.stdout.splitlines() if s.startswith("d3llm (multi_block"))
    assert f"generate_until requests {PROBLEMS}" in line and "TPF" in line
    assert f"NFE {ours['nfe']}" in line  # same forwards; tokens differ by the cut end-of-turn marker


def test_stop_strings_cancel_rows_as_soon_as_their_committed_text_holds_one():
    """A stop string ends the row in the decoder (it is cancelled, spending no more forwards), and its text is the
    full decode's text cut at the stop string."""
    from types import SimpleNamespace

    from d3llm.eval.harness import D3LLMHarnessModel

    test = load_dataset("arith:test")
    questions = [test[i].question for i in range(5)]

    def run(until):
        lm = D3LLMHarnessModel(batch_size=2, threshold=0.5)
        contexts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
        texts = lm.generate_until([SimpleNamespace(args=(c, {"until": until})) for c in contexts],
                                  disable_tqdm=True)
        return texts, lm.stats["nfe"]

    full, nfe_full = run(["<|eot_id|>"])
    cut, nfe_cut = run(["\n"])
    assert all("\n" in text for text in full)  # every answer has several lines: the stop string fires
    assert cut == [text.split("\n")[0] for text in full]
    assert nfe_cut < nfe_full


def test_loglikelihood_prefers_the_right_answer(tasks, tmp_path):
    proc, results, samples = _lm_eval(["--model", "d3llm", "--model_args", "mc_num=64,mc_batch_size=32",
                                       "--tasks", "arith_mc", "--include_path", str(tasks), "--apply_chat_template",
                                       "--device", "cpu"], tmp_path / "mc")
    assert results["results"]["arith_mc"]["acc,none"] == 1.0
    for s in samples:  # a clear margin: the teacher is sure of these sums
        lls = [float(r[0]) for r in s["filtered_resps"]]
        assert lls[0] > max(lls[1:]) + 3.0, lls


def test_monte_carlo_estimate_is_exact_for_one_token_and_repeats():
    from d3llm.assets import default_model_path
    from d3llm.eval.harness import D3LLMHarnessModel

    lm = D3LLMHarnessModel(pretrained=str(default_model_path()), mc_num=8, mc_batch_size=4)
    context = lm.tok_encode("Mia has 58 cards. How many cards does Mia have now?")
    target = lm.tok_encode(" 5")
    assert len(target) == 1
    # one target token: every sample masks it, so the estimate is its exact log-probability given the context
    x = torch.tensor([context + [lm.model.config.mask_token_id]])
    with torch.inference_mode():
        exact = torch.log_softmax(lm.model(x).logits[0, -1].float(), -1)[target[0]].item()
    assert lm.monte_carlo_loglikelihood(context, target) == pytest.approx(exact, abs=1e-5)
    longer = lm.tok_encode(" Now 58 - 44 = 14.")
    first = lm.monte_carlo_loglikelihood(context, longer)
    assert lm.monte_carlo_loglikelihood(context, longer) == first  # seeded by the context: reruns agree
    assert first < 0


def test_the_model_sets_torch_threads_as_every_d3llm_command():
    from d3llm.eval.harness import D3LLMHarnessModel

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        D3LLMHarnessModel()
        assert torch.get_num_threads() == 1  # a small model: one thread (d3llm.cli.options.apply_threads)
        D3LLMHarnessModel(threads="2")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_loglikelihood_rolling_is_the_monte_carlo_estimate_over_windows():
    """Perplexity tasks: the estimator of `loglikelihood` over the whole text (empty context for LLaDA), in
    windows that fit the model and score every token once."""
    from types import SimpleNamespace

    from d3llm.eval.harness import D3LLMHarnessModel

    lm = D3LLMHarnessModel(mc_num=4, mc_batch_size=4)
    text = load_dataset("arith:test")[0].answer
    ids = lm.tok_encode(text)
    assert lm.rolling_windows(ids) == [([], ids)]  # a short text: one window, no context
    [ll] = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    assert ll == lm.monte_carlo_loglikelihood([], ids) and ll < 0
    # one token and no context: every sample masks it, so the estimate is its exact log-probability
    x = torch.tensor([[lm.model.config.mask_token_id]])
    with torch.inference_mode():
        exact = torch.log_softmax(lm.model(x).logits[0, 0].float(), -1)[ids[0]].item()
    assert lm.monte_carlo_loglikelihood([], ids[:1]) == pytest.approx(exact, abs=1e-4)  # a batch of 4 vs of 1
    # a text longer than the model: targets split it in order, each window fits, later ones see the tokens before
    long = (ids * (2 * lm.max_length // len(ids) + 1))[: lm.max_length + lm.max_length // 2 + 7]
    windows = lm.rolling_windows(long)
    assert [t for _, target in windows for t in target] == long and len(windows) == 3
    start = 0
    for context, target in windows:
        assert len(context) + len(target) <= lm.max_length
        assert context == long[max(start - len(context), 0) : start]
        start += len(target)
    assert [len(c) for c, _ in windows] == [0, lm.max_length // 2, lm.max_length - 7]
    rolled = lm.loglikelihood_rolling([SimpleNamespace(args=(lm.tokenizer.decode(long),))], disable_tqdm=True)
    assert rolled[0] < ll


def test_bad_model_args_are_clear():
    from d3llm.errors import ConfigError
    from d3llm.eval.harness import D3LLMHarnessModel

    with pytest.raises(ConfigError, match="mc_num=100 must be a multiple of mc_batch_size=32"):
        D3LLMHarnessModel(mc_num=100)
    with pytest.raises(ConfigError, match="model_args: unknown parameter 'treshold'"):
        D3LLMHarnessModel(treshold=0.5)
    with pytest.raises(ConfigError, match="batch_size='x'"):
        D3LLMHarnessModel(batch_size="x")


def test_an_unknown_task_is_a_one_line_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "d3llm.cli.main", "lm-eval", "--model", "d3llm", "--tasks",
                           "no_such_task", "--limit", "1"], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("d3llm lm-eval: error:")]
    assert len(error) == 1 and "no_such_task" in error[0] and "ls tasks" in error[0], proc.stderr[-3000:]


# -- d3llm's short forms: `d3llm lm-eval --model teacher --tasks arith` (d3llm/cli/lm_eval_args.py) ---------------

LM_EVAL_MODELS = {"d3llm", "hf", "local-chat-completions", "vllm"}


def _translate(argv, **kwargs):
    from d3llm.cli.lm_eval_args import translate

    return translate(argv, LM_EVAL_MODELS, **kwargs)


def test_a_shipped_name_and_the_task_alias_become_lm_evals_arguments():
    from d3llm.assets import STUDENT, TEACHER
    from d3llm.eval.lm_tasks import TASKS_DIR

    t = _translate(["--model", "teacher", "--tasks", "arith", "--limit", "200"], device="cpu")
    assert t.argv == ["run", "--model", "d3llm", "--model_args", f"pretrained={TEACHER}", "--tasks", "d3llm_arith",
                      "--include_path", str(TASKS_DIR), "--apply_chat_template", "--batch_size", "8",
                      "--device", "cpu", "--limit", "200"]
    assert t.folder == str(TEACHER)
    note = t.note()
    assert "\n" not in note and note.startswith("d3llm lm-eval: ") and note.endswith(" ".join(t.argv))
    assert "task arith is d3llm_arith" in note and "chat template applied" in note
    # a folder, the user's own model_args kept beside pretrained, an explicit `run`, the user's own flags kept
    t = _translate(["run", "--model", str(STUDENT), "--model_args", "method=vanilla,steps=48", "--tasks=arith,gsm8k",
                    "--batch_size", "2", "--apply_chat_template", "--device", "cuda:1"], device="cpu")
    assert t.argv == ["run", "--model", "d3llm", "--model_args", f"pretrained={STUDENT}", "--model_args",
                      "method=vanilla,steps=48", "--tasks", "d3llm_arith,gsm8k", "--include_path", str(TASKS_DIR),
                      "--apply_chat_template", "--batch_size", "2", "--device", "cuda:1"]
    # no --model: the shipped teacher, as in every d3llm command; a model without a chat template gets raw prompts
    t = _translate(["--tasks", "d3llm_arith", "--no_apply_chat_template"])
    assert t.folder == str(TEACHER) and "--apply_chat_template" not in t.argv
    assert "--no_apply_chat_template" not in t.argv  # d3llm's own flag never reaches lm-eval
    assert "--apply_chat_template" not in _translate(["--model", "teacher", "--tasks", "arith"],
                                                     is_chat=lambda folder: False).argv


def test_lm_evals_own_models_and_tasks_pass_unchanged():
    from d3llm.assets import STUDENT
    from d3llm.eval.lm_tasks import TASK_FILES, TASKS_DIR

    argv = ["--model", "hf", "--model_args", "pretrained=gpt2", "--tasks", "hellaswag", "--limit", "4"]
    t = _translate(argv, device="cpu")
    assert t.argv == ["run", *argv] and t.folder is None and not t.changed and t.note() is None
    # --model d3llm keeps its model_args (pretrained may be a shipped name) and gets d3llm eval's defaults
    t = _translate(["--model", "d3llm", "--model_args", "pretrained=student", "--tasks", "gsm8k_cot_zeroshot"])
    assert t.folder == str(STUDENT) and "--include_path" not in t.argv
    assert t.argv[:5] == ["run", "--model", "d3llm", "--model_args", "pretrained=student"]
    assert "--apply_chat_template" in t.argv and not any("task" in change for change in t.changes)
    # a user's own task folder: lm-eval takes one --include_path, so d3llm's task is named by its YAML file
    t = _translate(["--model", "hf", "--tasks", "arith,mine", "--include_path", "/my/tasks"])
    assert t.argv == ["run", "--model", "hf", "--tasks", f"{TASK_FILES['d3llm_arith']},mine",
                      "--include_path", "/my/tasks"]
    assert _translate(["ls", "tasks"]).argv == ["ls", "--include_path", str(TASKS_DIR), "tasks"]
    for args in (["--help"], ["run", "--help"], ["validate", "--tasks", "arith"], []):
        assert _translate(args).argv == (args if args[:1] != ["--help"] else ["--help"])


@pytest.mark.parametrize("argv,words", [
    (["--model", "techer", "--tasks", "arith"], "--model techer: no model folder, no shipped model (teacher, student, "
                                                "ar) and no lm-eval model of that name (did you mean 'teacher'?)"),
    (["--model", "teacher", "--model_args", "pretrained=/x", "--tasks", "arith"], "give one"),
    (["--model", "hf", "--no_apply_chat_template", "--tasks", "arith"], "--no_apply_chat_template is for d3llm's"),
    (["--model", "teacher", "--tasks"], "--tasks needs a value"),
])
def test_bad_short_forms_are_one_line_errors(argv, words):
    from d3llm.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        _translate(argv)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_the_offline_task_by_its_short_names_scores_as_d3llm_eval(tmp_path, capsys):
    """`d3llm lm-eval --model teacher --tasks arith` offline, no user files: the score and every answer of
    `d3llm eval` on the same problems (same prompts, decoder, defaults)."""
    limit = 4
    proc, results, samples = _lm_eval(["--model", "teacher", "--tasks", "arith", "--limit", str(limit)],
                                      tmp_path / "short")
    note = [line for line in proc.stderr.splitlines() if line.startswith("d3llm lm-eval: ")]
    assert len(note) == 1 and "lm-eval run --model d3llm --model_args pretrained=" in note[0], proc.stderr[-3000:]
    lm_exact = results["results"]["d3llm_arith"]["exact_match,strict-match"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "teacher", "--limit", str(limit), "--json", "--out", str(out)]) == 0
    ours = json.loads(out.read_text())
    assert 100.0 * lm_exact == pytest.approx(ours["strict"]) and len(samples) == ours["n"] == limit
    texts = {int(s["doc_id"]): s["resps"][0][0] for s in samples}
    assert [texts[i] for i in range(limit)] == [r["prediction"] for r in ours["records"]]
    assert f"NFE {ours['nfe']}" in proc.stdout
