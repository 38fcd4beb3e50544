"""``d3llm lm-eval ARGS...``: lm-evaluation-harness with the ``d3llm`` model registered.

lm-eval 0.4.x has no plugin hook for the models of other packages, so this command imports d3llm's model (which
registers it as ``d3llm``) and hands the arguments to lm-eval's own command line, after translating d3llm's short
forms (:mod:`d3llm.cli.lm_eval_args`; a one-line note shows the translated command)::

    d3llm lm-eval --model teacher --tasks arith --limit 50          # offline: the shipped task, the chat template
    d3llm lm-eval --model DIR --model_args method=multi_block,threshold=0.5 \\
        --tasks gsm8k_cot_zeroshot --batch_size 16                  # a hub task: needs the hub
    d3llm lm-eval --model d3llm --model_args pretrained=DIR,mc_num=128 --tasks my_mc --include_path tasks/

``--model NAME|DIR`` (a shipped model or a model folder; none: the shipped teacher) means ``--model d3llm
--model_args pretrained=FOLDER``, and a d3llm model gets ``d3llm eval``'s defaults unless given: the chat template
for a chat model (``--no_apply_chat_template`` keeps raw prompts), ``--batch_size 8``, ``--device cpu`` without
CUDA. ``--tasks arith`` means the shipped ``d3llm_arith`` (``--include_path`` added). lm-eval's own model names
(``d3llm``, ``hf``, ...) and every other argument pass unchanged.

After lm-eval's table it prints the TPF, NFE and tokens/s of the run's generate_until requests. Needs
``pip install 'd3llm[eval]'``; see d3llm.eval.harness for the model arguments.
"""

from __future__ import annotations

import argparse
import sys

from d3llm.cli.options import add_parser


TRANSLATION_HELP = __doc__.split("\n\n")[3].replace("``", "")  # the paragraph on d3llm's short forms


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "lm-eval", "lm-evaluation-harness with the d3llm model (arguments go to lm-eval)", __doc__)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER,
                   help="lm-eval's own arguments (--model NAME|DIR and --tasks arith translated, see above)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.errors import ConfigError

    try:
        import lm_eval.models  # noqa: F401  (lm-eval's own models stay available next to ours)
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise ConfigError("lm-evaluation-harness is not installed: pip install 'd3llm[eval]'") from None
    import torch
    from lm_eval.api.registry import MODEL_REGISTRY

    from d3llm.cli.lm_eval_args import translate
    from d3llm.eval.harness import D3LLMHarnessModel

    if args.lm_eval_args[-1:] in (["-h"], ["--help"]):
        print(f"d3llm lm-eval: {TRANSLATION_HELP}\n", flush=True)  # then lm-eval's own help
    translation = translate(args.lm_eval_args, set(MODEL_REGISTRY.keys()),
                            device=None if torch.cuda.is_available() else "cpu")
    argv = translation.argv
    if translation.changed:
        print(translation.note(), file=sys.stderr, flush=True)
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except ValueError as exc:
        if "not found" not in str(exc):
            raise
        # lm-eval's own answer to a task name it does not know, as a one-line error instead of its traceback
        raise ConfigError(f"lm-eval: {exc}; `d3llm lm-eval ls tasks` lists the tasks lm-eval knows (add "
                          f"--include_path DIR for local YAML tasks)") from None
    finally:
        sys.argv = saved
    for lm in D3LLMHarnessModel.instances:
        s = lm.stats
        if s["requests"]:
            print(f"d3llm ({lm.method}, {lm.pretrained}): generate_until requests {s['requests']}, tokens {s['tokens']}, "
                  f"NFE {s['nfe']}, TPF {s['tpf']:.2f}, {s['tokens_per_s']:.1f} tokens/s "
                  f"(decoding wall time {s['wall_s']:.2f} s, warm-up excluded)")
    return 0
