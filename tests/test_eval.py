"""``d3llm eval`` and :func:`d3llm.eval.evaluate`: figures, records, user files and errors."""

import json

import pytest
import torch

import d3llm
from d3llm.cli.main import main
from d3llm.eval import evaluate
from d3llm.tasks import build_tokenizer, load_dataset, write_jsonl


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random tiny LLaDA with the task tokenizer, saved in the checkpoint layout."""
    out = tmp_path_factory.mktemp("evalmodel")
    tok = build_tokenizer(out)
    model = d3llm.build_model("llada-tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                              eos_token_id=tok.eos_token_id, max_sequence_length=256)
    d3llm.save_model(model, out, tokenizer=out)
    return out


def test_evaluate_figures_are_consistent(folder):
    model, tok = d3llm.load_model(folder, device="cpu"), d3llm.load_tokenizer(folder)
    data = load_dataset("arith:test", size=6)
    result = evaluate(model, tok, data, "multi_block", dict(max_new_tokens=32, block_size=16, threshold=0.5,
                                                            early_stop=True), batch_size=4)
    assert result.n == 6 and len(result.records) == 6
    assert result.nfe == sum(r.nfe for r in result.records) > 0
    assert result.tokens == sum(r.generated_tokens for r in result.records)
    assert result.tpf == pytest.approx(result.tokens / result.nfe)
    assert 0 <= result.strict <= 100 and 0 <= result.flexible <= 100
    assert result.strict == pytest.approx(100 * sum(r.strict for r in result.records) / 6)
    for r, ex in zip(result.records, data):
        assert r.gold == ex.gold and r.prompt_tokens > 0
        # the counted tokens stop before the first end-of-text
        ids = tok.encode(r.prediction, add_special_tokens=False)
        assert tok.eos_token_id not in ids
    assert result.environment["torch"] == torch.__version__


def test_scoring_uses_the_generated_text(folder, monkeypatch):
    """With a decoder that writes the gold solution, accuracy is 100 %; with one that writes nonsense, 0 %."""
    model, tok = d3llm.load_model(folder, device="cpu"), d3llm.load_tokenizer(folder)
    data = load_dataset("arith:test", size=3)
    import d3llm.eval.runner as runner

    real = runner.d3llm.generate

    def oracle(model, prompts, method, **kw):
        result = real(model, prompts, method, **kw)
        questions = [tok.decode(p, skip_special_tokens=True) for p in prompts]
        result.tokens = [tok.encode(next(ex.answer for ex in data if ex.question.strip() in q),
                                    add_special_tokens=False) for q in questions]
        return result

    monkeypatch.setattr(runner.d3llm, "generate", oracle)
    right = evaluate(model, tok, data, "vanilla", dict(max_new_tokens=16, block_size=16, steps=16), batch_size=2)
    assert right.strict == 100.0 and right.flexible == 100.0
    monkeypatch.setattr(runner.d3llm, "generate", real)
    wrong = evaluate(model, tok, data, "vanilla", dict(max_new_tokens=16, block_size=16, steps=16), batch_size=2)
    assert wrong.strict < 100.0


def test_cli_eval_json_and_out_file(folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(folder), "--task", "arith", "--method", "vanilla", "--steps", "16",
                 "--max-new-tokens", "16", "--block-size", "16", "--limit", "3", "--json", "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["n"] == 3 and summary["method"] == "vanilla"
    assert summary["nfe"] == 3 * 16  # vanilla with steps == max_new_tokens: one forward per token
    saved = json.loads(out.read_text())
    assert len(saved["records"]) == 3 and saved["environment"]["device"] == "cpu"


def test_cli_eval_on_a_user_jsonl_file(folder, tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    write_jsonl(data, load_dataset("arith:test", size=2))
    assert main(["eval", "--model", str(folder), "--task", str(data), "--method", "fast_dllm", "--cache", "prefix",
                 "--steps", "16", "--max-new-tokens", "16", "--block-size", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


@pytest.mark.parametrize("argv,message", [
    (["--limit", "0"], "--limit must be a positive number of examples, got 0"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--task", "nowhere.jsonl"], "dataset file 'nowhere.jsonl' does not exist"),
    (["--threshold", "2", "--method", "fast_dllm"], "fast_dllm: threshold=2.0 is outside [0.0, 1.0]"),
])
def test_cli_eval_errors(folder, capsys, argv, message):
    assert main(["eval", "--model", str(folder), *argv]) == 2
    assert message in capsys.readouterr().err
