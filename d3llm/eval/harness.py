"""The ``d3llm`` model of lm-evaluation-harness (lm-eval 0.4.x; ``pip install 'd3llm[eval]'``).

Importing this module registers the model under the name ``d3llm``. lm-eval 0.4.x has no plugin hook for models
of other packages, so use it through ``d3llm lm-eval`` (which imports this module, then runs lm-eval's own CLI with
the arguments unchanged) or from Python::

    d3llm lm-eval --model d3llm --model_args pretrained=DIR,method=multi_block,threshold=0.5 \\
        --tasks gsm8k_cot_zeroshot --apply_chat_template --batch_size 16

    import lm_eval
    from d3llm.eval.harness import D3LLMHarnessModel
    lm = D3LLMHarnessModel(pretrained="DIR", method="multi_block", threshold=0.5)
    results = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_cot_zeroshot"], apply_chat_template=True)
    lm.stats                                   # tokens, NFE, TPF, tokens/s of the generate_until requests

``model_args``: ``pretrained`` (model folder, default the shipped teacher), ``method`` (a decoder of
``d3llm.generate``; default the folder's), ``device``,
``dtype``, ``batch_size``, ``threads`` (torch's CPU threads; default as every d3llm command: one for a model
under 50M parameters, else torch's), every decoder parameter (``threshold``, ``block_size``, ``max_new_tokens``, ``steps``,
``cache``, ...), and for log-likelihoods ``mc_num`` (128), ``mc_batch_size`` (32), ``seed`` (1234),
``check_greedy`` (true).

* ``generate_until``: the requests of one generation setting are requests of one :class:`d3llm.Engine` with at
  most ``batch_size`` rows decoding at a time (a row that finishes makes room for the next). The task's stop
  strings (``until``) are checked on each row's committed text as it grows (special tokens kept, as LLaDA's
  adapter does): a row whose text holds one is cancelled at once, so it spends no more forwards, and its text is
  cut before the stop string, then special tokens are removed. Committed text never changes, so the answer is the
  one a full decode would give, cut at the same place. Decoder settings are the model arguments, then the model
  folder's ``generation_config.json`` (as for
  ``d3llm.generate``); a task's ``max_gen_toks`` is not used (a diffusion model decodes a fixed canvas, and LLaDA's
  adapter ignores it too), a task's sampling temperature (``do_sample``) applies unless ``temperature`` is a model
  argument. A warm-up
  batch is decoded first and not counted; TPF counts the tokens of the cut text (re-tokenized, end-of-text excluded)
  per forward, as SPEC 8.1.
* ``loglikelihood``: the masked-diffusion Monte-Carlo estimate that LLaDA's evaluation uses (the ELBO bound of
  SMDM/LLaDA). For a context c and continuation x of length L: ``mc_num`` samples in batches of
  ``mc_batch_size``; in each batch the numbers of masked continuation tokens are stratified over [1, L] (an
  evenly spaced comb with a random offset), the masked positions drawn uniformly, and the estimate is
  ``-mean over samples of sum over masked positions of CE / (masked / L)``. The noise is seeded by ``seed`` and
  the context's tokens, so every choice of a multiple-choice question sees the same masks (common random numbers)
  and a rerun gives the same numbers. Dream's shifted logits are handled inside the model (position i scores
  token i for both families). ``is_greedy`` (when ``check_greedy``) decodes the continuation one token per forward
  with ``vanilla`` and compares.
* ``loglikelihood_rolling`` (perplexity tasks): the same estimator over the whole text, in windows that fit the
  model (:meth:`D3LLMHarnessModel.rolling_windows`): the first window scores up to ``max_length`` tokens with an
  empty context (LLaDA, whose position i scores token i everywhere; the shifted families, Dream and the causal
  baseline, condition the first token on ``prefix_token_id``, as lm-eval's HF model does), each later one scores
  the next ``max_length // 2`` tokens given the ``max_length // 2`` tokens before them. The sum is an estimate of
  ``log p(text)`` that is a lower bound in expectation (the ELBO: word and byte perplexities are upper bounds, as
  the masked-diffusion literature reports them), and it is seeded like ``loglikelihood``.
"""

from __future__ import annotations

import time
import warnings
import zlib
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

import d3llm
from d3llm.errors import ConfigError


@register_model("d3llm")
class D3LLMHarnessModel(TemplateLM):
    """lm-eval model over a d3llm model folder (see the module docstring for the arguments)."""

    backend = "causal"
    instances: list[D3LLMHarnessModel] = []  # every model built in this process (the CLI reports their stats)

    def __init__(self, pretrained: str | None = None, method: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str | None = 8, max_batch_size: int | None = None,
                 mc_num: int = 128, mc_batch_size: int = 32, seed: int = 1234, check_greedy: bool = True,
                 threads: int | str | None = None, **decoder_params) -> None:
        super().__init__()
        if pretrained is None:
            from d3llm.assets import default_model_path

            pretrained = str(default_model_path())
        decoder_params.pop("trust_remote_code", None)  # never honoured: no checkpoint code is run
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes device "cuda:0" when --device is not given; use the CPU then, as HFLM does
            warnings.warn(f"d3llm: device {device!r} requested but CUDA is not available; using the CPU")
            device = "cpu"
        self.model = d3llm.load_model(pretrained, device=device, dtype=dtype)
        from d3llm.cli.options import apply_threads

        # torch's CPU threads as every d3llm command sets them (one for a small model: with torch's default, one
        # per core, `d3llm lm-eval --model teacher --tasks arith --limit 200` decoded 72 tokens/s instead of 1,100
        # on our 2-core machine while other jobs ran)
        apply_threads(None if threads is None else _positive_int(threads, "threads"), self.model)
        self.tokenizer = d3llm.load_tokenizer(pretrained)
        self.pretrained = str(pretrained)
        self.method = method
        self.decoder_params = dict(decoder_params)
        self.batch_size = _positive_int(1 if batch_size in (None, "auto") or str(batch_size).startswith("auto")
                                        else batch_size, "batch_size")
        self.mc_num = _positive_int(mc_num, "mc_num")
        self.mc_batch_size = min(_positive_int(mc_batch_size, "mc_batch_size"), self.mc_num)
        if self.mc_num % self.mc_batch_size:
            raise ConfigError(f"mc_num={mc_num} must be a multiple of mc_batch_size={mc_batch_size} "
                              "(the mask counts are stratified within each batch)")
        self.seed = int(seed)
        self.check_greedy = bool(check_greedy)
        self._device = self.model.device
        self._warm = False
        self.stats = {"requests": 0, "tokens": 0, "nfe": 0, "wall_s": 0.0, "tpf": 0.0, "tokens_per_s": 0.0}
        self._check_params()  # bad decoder settings fail now, not after lm-eval has built its requests
        D3LLMHarnessModel.instances.append(self)

    # -- tokenizer ------------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.model.eos_token_id

    @property
    def max_length(self) -> int:
        return self.model.config.max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.rstrip("/").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # -- generate_until ---------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        from d3llm.decoding.defaults import resolve_decoder
        from d3llm.errors import D3LLMError

        try:
            self.method = resolve_decoder(self.model, self.method, dict(self.decoder_params))[0]
        except D3LLMError as exc:
            raise ConfigError(f"model_args: {exc}") from None

    def _decoder_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """Decoder parameters and stop strings of one request's generation kwargs."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        if eos_text and eos_text not in until:
            until.append(eos_text)
        params = dict(self.decoder_params)
        if "temperature" not in params and kwargs.get("do_sample") and kwargs.get("temperature"):
            params["temperature"] = float(kwargs["temperature"])
        return params, until

    def _cut(self, ids: list[int], until: list[str]) -> tuple[str, int]:
        """The decoded text cut at the first stop string (special tokens removed) and its token count for TPF."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        for stop in until:
            if stop and stop in text:
                text = text.split(stop)[0]
        counted = [t for t in self.tok_encode(text) if t != self.eot_token_id]
        return self.tokenizer.decode(self.tok_encode(text), skip_special_tokens=True), len(counted)

    def _stopped(self, ids: list[int], until: list[str]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return any(stop and stop in text for stop in until)

    def _decode(self, prompts: list[list[int]], params: dict, until: list[str]):
        """Decode ``prompts`` on one engine, cancelling a row once its committed text holds a stop string; yields
        ``(index, committed ids, nfe)`` as each row leaves."""
        engine = d3llm.Engine(self.model, self.method, max_batch=self.batch_size, **params)
        for i, prompt in enumerate(prompts):
            engine.add_request(prompt, request_id=i, seed=self.seed)
        taken: dict[int, list[int]] = defaultdict(list)
        while engine.has_work:
            for event in engine.step():
                ids = taken[event.request_id]
                if event.new_tokens:
                    ids.extend(event.new_tokens)
                    if not event.finished and self._stopped(ids, until):
                        engine.cancel(event.request_id)  # it leaves at the next step, with its committed prefix
                if event.finished:
                    yield event.request_id, ids, event.output.nfe

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[repr(sorted(req.args[1].items()))].append(i)
        out: list[str | None] = [None] * len(requests)
        bar = _Bar(len(requests), "d3llm generate_until", disable_tqdm)
        for indices in groups.values():
            params, until = self._decoder_settings(requests[indices[0]].args[1])
            prompts = [self.tok_encode(requests[i].args[0]) for i in indices]
            if not self._warm:
                d3llm.generate(self.model, prompts[: self.batch_size], self.method, seed=self.seed, **params)
                self._warm = True

            t0 = time.perf_counter()
            for j, ids, nfe in self._decode(prompts, params, until):
                i = indices[j]
                text, counted = self._cut(ids, until)
                out[i] = text
                self.stats["tokens"] += counted
                self.stats["nfe"] += nfe
                self.stats["requests"] += 1
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.advance(1, self.stats)
            self.stats["wall_s"] += time.perf_counter() - t0
        bar.close()
        s = self.stats
        s["tpf"] = s["tokens"] / s["nfe"] if s["nfe"] else 0.0
        s["tokens_per_s"] = s["tokens"] / s["wall_s"] if s["wall_s"] else 0.0
        return out

    # -- loglikelihood ----------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out = []
        bar = _Bar(len(requests), "d3llm loglikelihood", disable_tqdm)
        for (context, continuation), context_ids, target_ids in requests:
            if not target_ids:
                raise ConfigError(f"loglikelihood: the continuation {continuation!r} encodes to no tokens")
            if len(context_ids) + len(target_ids) > self.max_length:
                raise ConfigError(f"loglikelihood: context ({len(context_ids)} tokens) + continuation "
                                  f"({len(target_ids)}) exceed the model's maximum length {self.max_length}")
            ll = self.monte_carlo_loglikelihood(context_ids, target_ids)
            greedy = self.is_greedy(context_ids, target_ids) if self.check_greedy else False
            out.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (ll, greedy))
            bar.advance(1, None)
        bar.close()
        return out

    @torch.inference_mode()
    def monte_carlo_loglikelihood(self, context_ids: list[int], target_ids: list[int]) -> float:
        """Monte-Carlo estimate of ``log p(target | context)`` (a lower bound in expectation; see the module)."""
        device = self.model.device
        p, n, b = len(context_ids), len(target_ids), self.mc_batch_size
        seq = torch.tensor(context_ids + target_ids, dtype=torch.long, device=device)
        target = seq[p:]
        generator = torch.Generator(device="cpu")
        generator.manual_seed((self.seed * 1_000_003 + zlib.crc32(repr(context_ids).encode())) % 2**63)
        mask_id = self.model.config.mask_token_id
        total = 0.0
        for _ in range(self.mc_num // b):
            offset = torch.randint(1, n + 1, (), generator=generator).item()
            counts = torch.round(torch.linspace(offset, offset + (b - 1) * n / b, b)).long()
            counts = (counts - 1) % n + 1                                                  # [b] in [1, n]
            ranks = torch.rand(b, n, generator=generator).argsort(dim=1).argsort(dim=1)     # random permutation
            masked = (ranks < counts[:, None]).to(device)                                   # [b, n]
            x = seq.repeat(b, 1)
            x[:, p:] = torch.where(masked, torch.full_like(masked, mask_id, dtype=torch.long), x[:, p:])
            logits = self.model(x).logits[:, p:].float()                                   # [b, n, V]
            ce = F.cross_entropy(logits[masked], target.expand(b, n)[masked], reduction="none")
            ratio = (counts.to(device).float() / n)[:, None].expand(b, n)[masked]
            total += float((ce / ratio).sum()) / b
        return -total / (self.mc_num // b)

    def is_greedy(self, context_ids: list[int], target_ids: list[int]) -> bool:
        """Whether one-token-per-forward greedy decoding (``vanilla``) of ``len(target)`` tokens gives the target."""
        n = len(target_ids)
        result = d3llm.generate(self.model, [context_ids], "vanilla", max_new_tokens=n, block_size=n, steps=n,
                                temperature=0.0)
        return result.generated[0].tolist() == list(target_ids)

    def rolling_windows(self, ids: list[int]) -> list[tuple[list[int], list[int]]]:
        """``(context, target)`` pairs whose targets split ``ids`` in order, each pair at most ``max_length`` tokens
        long (see the module docstring)."""
        length = self.max_length
        lead = [] if self.model.family == "llada" else [self.prefix_token_id]  # the shifted families score token
        first = length - len(lead)                                            # i at position i - 1
        windows = [(lead, ids[:first])]
        stride = length // 2
        for start in range(first, len(ids), stride):
            target = ids[start : start + stride]
            windows.append((ids[max(start + len(target) - length, 0) : start], target))
        return windows

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        bar = _Bar(len(requests), "d3llm loglikelihood_rolling", disable_tqdm)
        for (text,) in (req.args for req in requests):
            ids = self.tok_encode(text)
            if not ids:
                raise ConfigError(f"loglikelihood_rolling: the text {text[:40]!r} encodes to no tokens")
            ll = sum(self.monte_carlo_loglikelihood(context, target) for context, target in self.rolling_windows(ids))
            out.append(ll)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), ll)
            bar.advance(1, None)
        bar.close()
        return out


def _positive_int(value, name: str) -> int:
    """An int from lm-eval's argument parsing (ints, or strings of digits from --batch_size)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())) \
            or int(value) <= 0:
        raise ConfigError(f"{name}={value!r}: expected a positive integer")
    return int(value)


class _Bar:
    """A rich progress bar over lm-eval requests (TPF shown for generation)."""

    def __init__(self, total: int, title: str, disabled: bool) -> None:
        self.progress = None
        if disabled or total == 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.task = self.progress.add_task(title, total=total, info="")
        self.t0 = time.perf_counter()
        self.progress.start()

    def advance(self, k: int, stats: dict | None) -> None:
        if self.progress is not None:
            info = f"TPF {stats['tokens'] / max(stats['nfe'], 1):.2f}" if stats else ""
            self.progress.update(self.task, advance=k, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
