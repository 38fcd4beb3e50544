"""d3llm demo: what distillation buys. The shipped models answer a few held-out problems of the built-in task side by
side: the teacher decoding one token per forward, the teacher with d3LLM's multi-block decoder, the distilled
student with the same decoder, and an autoregressive model of the same size. Then all of them on a held-out set:
accuracy, tokens per forward, tokens/s and AUP, with the teacher's and the student's accuracy-parallelism curves
written as a PNG (and the sweep's JSON and markdown table) into --out.

--random instead tours the model code on a random tiny model: build, save in the public checkpoint layout,
reload, and check a KV-cached forward against a full one.
"""

from __future__ import annotations

import argparse
import tempfile
import time

THRESHOLDS = (0.05, 0.2, 0.5, 1.0)  # the entropy thresholds of the curves (each model's own default is added)
EXPLAINED = """\
  accuracy        answers whose '#### N' line is the right number (strict exact match)
  tokens/forward  answer tokens (up to the end of text) per model forward: the parallelism. Decoding one token per
                  forward fills every one of the {gen} canvas positions, the padding after the answer included, so
                  it scores below 1; the AR baseline stops at its end of text (about 1)
  tokens/s        answer tokens per second of decoding on this machine, {threads} torch thread(s)
  AUP             area under the accuracy-parallelism curve of that setting's decoder, the entropy threshold swept
                  over {thresholds}: higher means more tokens per forward while the accuracy holds"""


def register(sub: argparse._SubParsersAction) -> None:
    from d3llm.cli.options import add_parser, add_threads_flag

    p = add_parser(sub, "demo", "run the built-in demo: teacher, distilled student and AR side by side", __doc__)
    p.add_argument("--problems", type=int, default=3, help="held-out problems answered side by side (default: 3)")
    p.add_argument("--held-out", type=int, default=50, metavar="N",
                   help="held-out problems of the table and curves (default: 50, about 30 s on 2 cores)")
    p.add_argument("--out", default="d3llm-demo", metavar="DIR",
                   help="folder for the curves' PNG, JSON and markdown table (default: ./d3llm-demo)")
    p.add_argument("--random", action="store_true", help="tour the model code on a random tiny model instead")
    p.add_argument("--family", choices=["llada", "dream"], default=None,
                   help="family of the --random model (default: llada); only with --random")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.errors import ConfigError

    for flag, value in (("--problems", args.problems), ("--held-out", args.held_out)):
        if value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value}")
    if args.family is not None and not args.random:
        raise ConfigError(f"--family {args.family} chooses the random model of --random; the demo without --random "
                          f"runs the shipped models (LLaDA layout); add --random to tour a random {args.family} model")
    if args.random:
        return random_tour(args.family or "llada", args.threads)
    return shipped_demo(args)


def _answer(label: str, result, i: int, tokenizer, gold: str, shown: dict[str, str]) -> None:
    """One model's answer to question ``i``: forwards, tokens per forward, right or wrong, then the text (or a
    pointer to an identical text printed above)."""
    from d3llm.tasks.scoring import is_correct

    text = result.texts(tokenizer)[i]
    nfe = int(result.nfe[i])
    mark = "correct" if is_correct(text, gold) else f"wrong (gold {gold})"
    print(f"  {label:<34} {nfe:>3} forwards  {int(result.num_tokens[i]) / nfe:5.2f} tokens/forward  {mark}")
    if text in shown:
        print(f"    (the same text as {shown[text]})")
    else:
        shown[text] = label
        print("    " + text.replace("\n", "\n    "))


def shipped_demo(args: argparse.Namespace) -> int:
    import d3llm
    from d3llm.assets import SHIPPED
    from d3llm.cli.options import apply_threads
    from d3llm.eval.sweep import MethodGrid, SweepConfig, run_sweep
    from d3llm.files import make_folder
    from d3llm.models.prompts import encode_prompt
    from d3llm.tasks import load_dataset

    out = make_folder(args.out)  # before any work: a path that cannot be a folder fails now
    teacher, student, ar = ((d3llm.load_model(m.folder), d3llm.load_tokenizer(m.folder)) for m in SHIPPED)
    threads = apply_threads(args.threads, teacher[0])
    print("d3llm demo: the shipped models on held-out problems of the built-in arith task")
    for m, (model, _) in zip(SHIPPED, (teacher, student, ar)):
        print(f"  {m.name:<8} {model.num_parameters():,} parameters, {m.description}")
    mb = {name: model.generation_config.defaults_for("multi_block") for name, (model, _) in
          (("teacher", teacher), ("student", student))}
    settings = [  # (label, model, tokenizer, method)
        ("teacher, one token per forward", *teacher, "vanilla"),
        (f"teacher, multi_block (entropy {mb['teacher']['threshold']:g})", *teacher, "multi_block"),
        (f"student, multi_block (entropy {mb['student']['threshold']:g})", *student, "multi_block"),
        ("AR baseline, one token per forward", *ar, "autoregressive"),
    ]
    test = load_dataset("arith:test", size=max(args.problems, args.held_out))
    questions = [test[i] for i in range(args.problems)]
    answers = []
    for _, model, tokenizer, method in settings:
        prompts = [encode_prompt(tokenizer, ex.question) for ex in questions]
        answers.append(d3llm.generate(model, prompts, method))
    for i, ex in enumerate(questions):
        print(f"\nQ: {ex.question}")
        shown: dict[str, str] = {}
        for (label, _, tokenizer, _), result in zip(settings, answers):
            _answer(label, result, i, tokenizer, ex.gold, shown)

    thresholds = sorted({*THRESHOLDS, *(float(d["threshold"]) for d in mb.values())})
    config = SweepConfig(methods=[MethodGrid("multi_block", thresholds)], task="arith", limit=args.held_out)
    print(f"\nthe held-out set: {args.held_out} problems, each model decoding one token per forward and with "
          f"multi_block at entropy thresholds {', '.join(f'{t:g}' for t in thresholds)}")
    del teacher, student, ar
    results = run_sweep([str(m.folder) for m in SHIPPED], config, progress=not args.no_progress,
                        on_load=lambda model: apply_threads(args.threads, model), command="d3llm demo")
    _summary_table(results, dict(zip(("teacher", "student", "ar"), results["models"])), mb)
    gen = results["points"][0]["params"]["max_new_tokens"]
    print(EXPLAINED.format(gen=gen, threads=threads, thresholds=", ".join(f"{t:g}" for t in thresholds)))
    paths = _write(results, out)
    print(f"\nthe curves: {paths.get('png', '(no PNG: pip install matplotlib)')}; every point: {paths['table']}")
    return 0


def _summary_table(results: dict, labels: dict[str, str], mb: dict[str, dict]) -> None:
    """One row per setting of the side-by-side answers, measured on the held-out set, with its curve's AUP
    (``labels``: shipped name -> the sweep's model label)."""
    points = results["points"]

    def point(model: str, threshold: float | None) -> dict:
        return next(p for p in points if p["model"] == labels[model]
                    and (p["baseline"] if threshold is None else p["threshold"] == threshold))

    aup = results["aup"]["curves"]
    rows = [("teacher, one token per forward", point("teacher", None),
             aup[f"{labels['teacher']} vanilla (1 token/forward)"]),
            (f"teacher, multi_block (entropy {mb['teacher']['threshold']:g})",
             point("teacher", float(mb["teacher"]["threshold"])), aup[f"{labels['teacher']} multi_block"]),
            (f"student, multi_block (entropy {mb['student']['threshold']:g})",
             point("student", float(mb["student"]["threshold"])), aup[f"{labels['student']} multi_block"]),
            ("AR baseline, one token per forward", point("ar", None),
             aup[f"{labels['ar']} autoregressive (1 token/forward)"])]
    print(f"\n  {'setting':<36} {'accuracy':>8} {'tokens/forward':>14} {'tokens/s':>9} {'AUP':>8}")
    for label, p, score in rows:
        print(f"  {label:<36} {p['accuracy']:>7.1f}% {p['tpf']:>14.2f} {p['tokens_per_s']:>9,.0f} {score:>8.1f}")
    print()


def _write(results: dict, out) -> dict:
    from d3llm.eval.sweep import write_outputs

    try:
        import matplotlib  # noqa: F401
        png = True
    except ImportError:
        png = False
    return write_outputs(results, out, png=png)


def random_tour(family: str, threads: int | None = None) -> int:
    import torch

    import d3llm
    from d3llm.cli.options import apply_threads

    model = d3llm.build_model(f"{family}-tiny", seed=0)
    apply_threads(threads, model)
    print(f"built a random {model.config.describe()} ({model.num_parameters():,} parameters)")
    ids = torch.randint(0, model.config.vocab_size - 2, (2, 48))
    with tempfile.TemporaryDirectory() as folder:
        d3llm.save_model(model, folder)
        loaded = d3llm.load_model(folder, device="cpu")
        with torch.no_grad():
            t0 = time.perf_counter()
            full = loaded(ids, use_cache=True)
            t1 = time.perf_counter()
            cache = full.cache.truncate(32)
            sliced = loaded(ids[:, 32:], cache=cache, append=0)
            t2 = time.perf_counter()
    offset = 1 if model.family == "dream" else 0
    diff = (sliced.logits[:, offset:] - full.logits[:, 32 + offset:]).abs().max().item()
    print("saved and reloaded it from a config.json + model.safetensors folder")
    print(f"full forward over 2 x 48 positions: {1e3 * (t1 - t0):.1f} ms")
    print(f"cached forward over the last 16 positions: {1e3 * (t2 - t1):.1f} ms, max |logit diff| = {diff:.2e}")
    return 0
