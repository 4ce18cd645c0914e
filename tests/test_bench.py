"""The benchmark runs end to end on the tiny preset and reports sane, consistent figures."""

import math

import pytest
import torch

import gpt_scratch.bench as bench
from gpt_scratch.cli import main
from gpt_scratch.generate import generate


@pytest.fixture(scope="module")
def figures():
    from gpt_scratch.bench import run_benchmarks
    return run_benchmarks("tiny", "cpu", steps=2, new_tokens=16, batch_size=None)


def test_figures_are_positive_and_finite(figures):
    for name in ("matmul_flops", "train_tokens_per_s", "train_step_s", "flops_per_token", "train_flops", "mfu",
                 "gen_cached_tokens_per_s", "gen_uncached_tokens_per_s", "kv_cache_speedup", "gen_draft_tokens_per_s",
                 "package_vs_draft", "rollout_tokens_per_s"):
        assert math.isfinite(figures[name]) and figures[name] > 0, name
    assert 0 < figures["mfu"] < 1.5
    assert (figures["device"], figures["batch_size"], figures["block_size"]) == ("cpu", 8, 128)


def test_figures_are_consistent(figures):
    assert figures["train_flops"] == pytest.approx(figures["flops_per_token"] * figures["train_tokens_per_s"])
    assert figures["mfu"] == pytest.approx(figures["train_flops"] / figures["matmul_flops"])
    assert figures["train_tokens_per_s"] == pytest.approx(8 * 128 / figures["train_step_s"])
    assert figures["kv_cache_speedup"] == pytest.approx(
        figures["gen_cached_tokens_per_s"] / figures["gen_uncached_tokens_per_s"])
    assert figures["same_tokens"]  # the cache must not change what greedy decoding picks
    assert figures["package_vs_draft"] == pytest.approx(figures["gen_cached_tokens_per_s"] / figures["gen_draft_tokens_per_s"])
    assert (figures["rollout_batch"], figures["rollout_new_tokens"]) == (8, 8)  # the tiny preset's PPO settings
    assert figures["train_dtype"] == ("bfloat16 autocast" if figures["bf16_hardware"] else "float32")
    assert figures["processor"] == bench.cpu_name() and figures["processor"]


def test_the_draft_loop_decodes_what_generate_decodes():
    from gpt_scratch.model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    assert bench.draft_generate(model, [3, 4, 5], 10) == generate(model, [[3, 4, 5]], 10)[0]


def test_flops_per_token_formula():
    """tiny: L=2, C=16, T=64, V=300, tied. N = 2 blocks * (12 C^2 + 13 C) + final LayerNorm 2 C + lm_head V C."""
    from gpt_scratch.bench import flops_per_token
    from gpt_scratch.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=16))
    n = 2 * (12 * 16 * 16 + 13 * 16) + 2 * 16 + 300 * 16
    assert flops_per_token(model) == 6 * n + 12 * 2 * 16 * 64


def test_bad_arguments_are_value_errors():
    from gpt_scratch.bench import run_benchmarks
    with pytest.raises(ValueError, match="unknown preset"):
        run_benchmarks("huge", "cpu", 1, 1, None)
    with pytest.raises(ValueError, match="at least 1"):
        run_benchmarks("tiny", "cpu", 0, 1, None)


def test_cli_rejects_zero_steps(capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's exit, in this process (test_cli checks a real one)
        main(["bench", "--steps", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "--steps" in err, err


def test_best_rates_warm_up_once_then_time_the_runs_in_turn_and_keep_each_ones_best(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 3.5, 3.5, 4.5])  # (start, end): a 1 s, b 2 s, a 0.5 s, b 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    calls = []

    def run(name: str):
        def make_tokens() -> int:
            calls.append(name)
            return 10
        return make_tokens

    assert bench.best_rates({"a": run("a"), "b": run("b")}, torch.device("cpu"), repeats=2) == {"a": 20.0, "b": 10.0}
    assert calls == ["a", "b", "a", "b", "a", "b"]  # the untimed warm-ups, then two rounds in turn
