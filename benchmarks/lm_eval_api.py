"""lm-eval's own OpenAI-API model against ``d3llm serve``, compared with the in-process ``d3llm`` lm-eval model, on
the offline ``d3llm_arith`` task (the held-out problems of the built-in task; d3llm/eval/lm_tasks.py).

It starts ``d3llm serve --model MODEL`` itself (a subprocess on a free port of 127.0.0.1, always stopped), runs
lm-eval's ``local-chat-completions`` model (``lm_eval/models/openai_completions.py``: one chat request per problem,
``max_tokens`` = the task's ``max_gen_toks``, ``--max-gen-toks``, default 256) on the first ``--limit`` problems,
then runs :class:`d3llm.eval.harness.D3LLMHarnessModel` in this process through ``lm_eval.simple_evaluate`` on the
same task, problems, generation kwargs and ``apply_chat_template``. It prints both strict exact-match scores and their
difference in points, writes a JSON record (scores, standard errors, the problems whose scores differ, the server's
warnings, the environment) and exits with status 1 when the difference exceeds ``--max-diff`` (default 2 points).

What it checks: a client that asks for ``max_tokens=256``, as any OpenAI client may, gets answers as good as the
in-process model's, which decodes the model folder's own ``max_new_tokens`` (lm-eval's ``max_gen_toks`` does not set
a diffusion model's canvas; ``--harness-args max_new_tokens=256`` makes it decode the same canvas as the server). A
model trained on short canvases only fails this check; one trained for longer canvases passes it. On the same canvas
the texts of garbled answers can still differ (the in-process model re-tokenizes its cut text before returning it,
and a garbled token sequence does not always survive the round trip); the record lists the problems whose texts
differ (``other_text_problems``) beside those scored differently.

    python benchmarks/lm_eval_api.py --threads 1                       # the shipped teacher, 500 problems
    python benchmarks/lm_eval_api.py --model DIR --out benchmarks/results/lm_eval_api.json
    python benchmarks/lm_eval_api.py --limit 20 --max-gen-toks 48      # the folder's own canvas on both sides

Needs lm-eval with its API extra (``pip install 'lm-eval[api]'``: aiohttp, tenacity, requests, tqdm) and the
serve extra. Offline: the task's problems are generated in memory and the hub is never asked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib.util import find_spec
from pathlib import Path

API_MODEL = "local-chat-completions"
SERVED_NAME = "d3llm-model"  # the model name the benchmark's server answers to
API_PACKAGES = ("aiohttp", "tenacity", "requests", "tqdm")  # what lm-eval's API models import


def positive(kind):
    """An ``argparse`` type: a number of ``kind`` greater than 0."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def output_path(spec: str) -> str:
    """An ``argparse`` type for ``--out``: a regular file or nothing yet, checked before any work (no torch import,
    so a bad argument is refused at once)."""
    from d3llm.errors import D3LLMError
    from d3llm.files import check_output_file

    try:
        check_output_file(spec, "--out")
    except D3LLMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None, metavar="DIR", help="model folder (default: the shipped teacher)")
    p.add_argument("--limit", type=positive(int), default=500, metavar="N",
                   help="problems, the first N held-out ones (default: 500)")
    p.add_argument("--max-gen-toks", type=positive(int), default=256, metavar="N",
                   help="the task's max_gen_toks, which the API model sends as max_tokens (default: 256)")
    p.add_argument("--max-diff", type=non_negative, default=2.0, metavar="POINTS",
                   help="the largest difference of the two exact-match scores, in points, that passes (default: 2)")
    p.add_argument("--out", type=output_path, default=None, metavar="FILE", help="write the JSON record here")
    p.add_argument("--threads", type=positive(int), default=1, metavar="N",
                   help="torch threads of the server and of the in-process model (default: 1)")
    p.add_argument("--num-concurrent", type=positive(int), default=4, metavar="N",
                   help="requests lm-eval's API model keeps in flight (default: 4; the server batches them)")
    p.add_argument("--batch-size", type=positive(int), default=16, metavar="N",
                   help="rows the in-process model decodes together (default: 16)")
    p.add_argument("--timeout", type=positive(int), default=300, metavar="S", help="seconds for any one request")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="another argument for d3llm serve (repeatable, e.g. --server-arg=--max-batch=32); decoder "
                        "settings given here should be given to --harness-args too")
    p.add_argument("--harness-args", default="", metavar="K=V,...",
                   help="model_args of the in-process d3llm model, in lm-eval's format (e.g. "
                        "max_new_tokens=256,threshold=0.5; default: the model folder's decoding defaults)")
    return p.parse_args(argv)


def score(results: dict, task: str) -> tuple[float, float | None]:
    """(exact match in percent, its standard error in points) of one lm-eval run."""
    row = results["results"][task]
    stderr = row.get("exact_match_stderr,strict-match")
    return 100.0 * float(row["exact_match,strict-match"]), (100.0 * float(stderr) if isinstance(stderr, float) else None)


def per_problem(results: dict, task: str) -> dict[int, dict]:
    """Each problem's logged sample: its exact match, extracted answer and response text."""
    out = {}
    for s in results["samples"][task]:
        out[int(s["doc_id"])] = {"exact": float(s["exact_match"]), "answer": s["filtered_resps"][0],
                                 "text": s["resps"][0][0], "target": s["target"]}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets and lm-eval are imported: never ask the hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    missing = [name for name in ("lm_eval", *API_PACKAGES) if find_spec(name) is None]
    if missing:
        print(f"lm_eval_api: error: {', '.join(missing)} missing: pip install 'lm-eval[api]>=0.4.13,<0.5'",
              file=sys.stderr)
        return 2

    import lm_eval
    import lm_eval.models  # registers lm-eval's own models, local-chat-completions among them
    import torch
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string

    from d3llm.assets import default_model_path
    from d3llm.decoding.defaults import resolve_decoder
    from d3llm.eval.environment import environment, write_record
    from d3llm.eval.harness import D3LLMHarnessModel
    from d3llm.eval.lm_tasks import ARITH_PROBLEMS, ARITH_TASK, TASKS_DIR
    from d3llm.serve.launch import launched_server

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on custom datasets and gen_kwargs: not news here
    torch.set_num_threads(args.threads)
    folder = args.model or str(default_model_path())
    tasks = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                        metadata={"problems": max(args.limit, ARITH_PROBLEMS)})
    common = {"tasks": [ARITH_TASK], "task_manager": tasks, "limit": args.limit, "apply_chat_template": True,
              "gen_kwargs": {"max_gen_toks": args.max_gen_toks}, "log_samples": True}
    server_args = ["--model", folder, "--served-model-name", SERVED_NAME, "--threads", str(args.threads),
                   "--no-access-log", *args.server_arg]

    print(f"{ARITH_TASK}: {args.limit} problems, model {folder}", flush=True)
    with launched_server(server_args) as server:
        t0 = time.perf_counter()
        try:
            api = lm_eval.simple_evaluate(
                model=API_MODEL, model_args={"model": SERVED_NAME, "base_url": f"{server.base_url}/chat/completions",
                                             "tokenizer_backend": None, "num_concurrent": args.num_concurrent,
                                             "max_retries": 1, "timeout": args.timeout}, **common)
        except Exception:
            print(f"lm_eval_api: the API run failed; the server's log:\n{server.stderr()[-3000:]}", file=sys.stderr)
            raise
        api_wall = time.perf_counter() - t0
        server_log = [line for line in server.stderr().splitlines() if line.strip()]

    harness_args = simple_parse_args_string(args.harness_args) if args.harness_args else {}
    lm = D3LLMHarnessModel(pretrained=folder, batch_size=args.batch_size, **harness_args)
    decoder = resolve_decoder(lm.model, lm.method, dict(lm.decoder_params))[2].as_dict()
    t0 = time.perf_counter()
    local = lm_eval.simple_evaluate(model=lm, **common)
    local_wall = time.perf_counter() - t0

    api_score, api_err = score(api, ARITH_TASK)
    local_score, local_err = score(local, ARITH_TASK)
    difference = api_score - local_score
    passed = abs(difference) <= args.max_diff
    a, b = per_problem(api, ARITH_TASK), per_problem(local, ARITH_TASK)
    differing = sorted(i for i in a if a[i]["exact"] != b[i]["exact"])
    other_text = sorted(i for i in a if a[i]["text"] != b[i]["text"])
    same_text = len(a) - len(other_text)

    def shown(value: float, err: float | None) -> str:
        return f"{value:.1f}%" + (f" (± {err:.1f})" if err is not None else "")

    print(f"  {API_MODEL} -> d3llm serve, max_tokens {args.max_gen_toks}: exact match "
          f"{shown(api_score, api_err)}  [{api_wall:.1f} s]")
    print(f"  in-process d3llm, {lm.method} max_new_tokens {decoder['max_new_tokens']}: exact match "
          f"{shown(local_score, local_err)}  [{local_wall:.1f} s, TPF {lm.stats['tpf']:.2f}]")
    print(f"  difference {difference:+.1f} points (allowed: {args.max_diff:g}); the same text on {same_text} of "
          f"{len(a)} problems; {len(differing)} scored differently -> {'PASS' if passed else 'FAIL'}")
    for line in server_log:
        print(f"  server: {line}")
    if args.out:
        record = {
            "benchmark": "lm_eval_api", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "task": ARITH_TASK, "limit": args.limit, "model_folder": folder, "max_gen_toks": args.max_gen_toks,
            "api": {"model": API_MODEL, "server_args": server_args, "exact_match": api_score, "stderr": api_err,
                    "wall_s": round(api_wall, 3), "num_concurrent": args.num_concurrent, "server_log": server_log},
            "in_process": {"model": "d3llm", "model_args": harness_args, "method": lm.method, "decoder": decoder,
                           "exact_match": local_score, "stderr": local_err, "wall_s": round(local_wall, 3),
                           "stats": lm.stats},
            "difference_points": difference, "max_diff": args.max_diff, "passed": passed,
            "same_text": same_text, "other_text_problems": other_text, "differing_problems": [
                {"doc_id": i, "target": a[i]["target"], "api": a[i]["answer"], "in_process": b[i]["answer"],
                 "api_text": a[i]["text"], "in_process_text": b[i]["text"]} for i in differing],
            "environment": {**environment(lm.model), "lm_eval": lm_eval.__version__},
        }
        print(f"wrote {write_record(args.out, record)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
