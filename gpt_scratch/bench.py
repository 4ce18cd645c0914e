"""How fast is it? Training throughput and MFU, and generation with and without the KV cache.

    python -m gpt_scratch bench                               # default preset, best device here
    python -m gpt_scratch bench --preset gpt2 --device cuda   # GPT-2 small's shape on a GPU
    figures = run_benchmarks("tiny", "cpu", steps=2, new_tokens=16, batch_size=None)

Four measurements, all in the same run on the same machine, under a header that names the CPU
(or GPU), whether it computes bf16 in hardware, and so the dtype training runs in:
1. matmul peak: the FLOP/s this device reaches on one big square matrix product, in the dtype
   training computes in. It is the practical ceiling for a transformer, whose work is almost
   all matrix products.
2. training: the preset's GPT doing real optimizer steps (train.train_step: forward, backward,
   clipping, AdamW) on random tokens -> tokens/s. Times the FLOPs one token costs gives the
   achieved FLOP/s, and achieved / peak is the MFU (model FLOPs utilisation).
3. generation: greedy decoding of one prompt, with the KV cache and without it, and chapter 3's
   draft loop (the cache, one torch.cat per token) as the yardstick for the package's generate().
4. rollouts: sampling at the RL stages' batch size (the PPO preset's prompts per step and answer
   length) -> sampled tokens/s, what the RL chapters spend most of their time on.
Each generation figure is the best of REPEATS timed runs after a warm-up run, and the three ways
of decoding are timed in turn (cache, no cache, draft, cache, ...): on a shared 2-core machine
the same 256-token decoding took from 2.2 to 3.9 ms per token from one run to the next, in
spells of seconds, so runs timed in turn meet the same spells, and the best run of each is the
one least disturbed by the rest of the machine.
The model is randomly initialised: speed does not depend on what the weights have learned.
"""

import argparse
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from gpt_scratch.args import int_range, positive_int
from gpt_scratch.generate import generate
from gpt_scratch.hardware import check_device, cpu_name, native_bf16, pick_device
from gpt_scratch.model import GPT, GPTConfig, KVCache
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.train import RunSettings, TrainConfig, make_optimizer, train_step

WARMUP_STEPS = 2  # the first steps pay one-off costs (memory allocation, kernel selection)
PROMPT_TOKENS = 8
REPEATS = 3  # timed runs per generation figure, the best one reported


def synchronize(device: torch.device) -> None:
    """GPU work runs asynchronously: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_peak(device: torch.device, repeats: int = 5) -> tuple[float, str]:
    """Best FLOP/s of an n x n matrix product (2 * n^3 FLOPs), in the dtype training computes in."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if native_bf16(device) else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best, f"{str(dtype).removeprefix('torch.')} {n}x{n}"


def flops_per_token(model: GPT) -> int:
    """Training FLOPs per token, as in the PaLM paper's appendix B: 6 * N + 12 * L * C * T.

    N counts the weights every token is multiplied by: all parameters except the embedding
    tables (a lookup is not a matmul), plus the lm_head matrix even when it is tied to wte
    (tied or not, each token is multiplied by it). Biases and LayerNorms are in N too: they
    are a rounding error. Each weight costs 2 FLOPs (multiply, add) in the forward pass and
    4 in the backward pass (gradients for the input and for the weight): 6 * N.
    12 * L * C * T is attention itself: per layer and token, q @ k^T and weights @ v each take
    C * T multiply-adds (2 * C * T FLOPs): 4 * C * T forward, three times that with backward.
    """
    c = model.config
    n = model.num_parameters(exclude_embeddings=True)
    if c.tie_weights:
        n += c.vocab_size * c.n_embd
    return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


def measure_training(model: GPT, cfg: TrainConfig, steps: int, device: torch.device) -> tuple[float, float]:
    """Time `steps` real optimizer steps on a fixed random batch -> (tokens/s, seconds/step)."""
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    shape = (cfg.batch_size, model.config.block_size + 1)
    tokens = torch.randint(0, model.config.vocab_size, shape, device=device)
    batch = (tokens[:, :-1], tokens[:, 1:])  # the data pipeline is not what we time

    for step in range(WARMUP_STEPS):
        train_step(model, optimizer, lambda s, m: batch, step, cfg, device)
    synchronize(device)
    began, seen = time.perf_counter(), 0
    for step in range(WARMUP_STEPS, WARMUP_STEPS + steps):
        seen += train_step(model, optimizer, lambda s, m: batch, step, cfg, device)[1]
    synchronize(device)
    seconds = time.perf_counter() - began
    return seen / seconds, seconds / steps


def best_rates(runs: dict[str, Callable[[], int]], device: torch.device, repeats: int = REPEATS) -> dict[str, float]:
    """Each run's best tokens/s over `repeats` rounds that time every run in turn (each returns the
    number of tokens it made).

    Every run is called once first, untimed: on a CPU every new matrix shape (and the cache makes
    one per step) costs a one-off setup on first use, which can be 10x the time of the run itself.
    """
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            began = time.perf_counter()
            made = run()
            synchronize(device)
            best[name] = max(best[name], made / (time.perf_counter() - began))
    return best


def measure_generation(model: GPT, prompt: list[int], new_tokens: int, device: torch.device) -> dict:
    """Greedy decoding of one prompt with the KV cache, without it, and with chapter 3's draft loop
    -> {"cached", "uncached", "draft": new tokens/s, "same_tokens": whether cache and no cache agree}."""
    def decode(use_cache: bool) -> list[int]:
        return generate(model, [prompt], new_tokens, use_cache=use_cache)[0]  # no eos_id: all steps run

    speeds = best_rates({"cached": lambda: len(decode(True)), "uncached": lambda: len(decode(False)),
                         "draft": lambda: len(draft_generate(model, prompt, new_tokens))}, device)
    return {**speeds, "same_tokens": decode(True) == decode(False)}


@torch.no_grad()
def draft_generate(model: GPT, prompt: list[int], new_tokens: int) -> list[int]:
    """Chapter 3's draft loop: greedy, a KV cache, and a torch.cat of the ids at every token."""
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    cache, feed = KVCache(model.config.n_layer), ids
    for _ in range(new_tokens):
        token = model(feed, kv_cache=cache)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, token], dim=1)
        feed = token  # with a cache, only the new token goes in next time
    return ids[0, len(prompt):].tolist()


def measure_rollouts(model: GPT, batch_size: int, new_tokens: int, device: torch.device) -> float:
    """Sampling (temperature 1) of batch_size answers of new_tokens each -> sampled tokens/s."""
    prompts = torch.randint(0, model.config.vocab_size, (batch_size, PROMPT_TOKENS)).tolist()

    def sample() -> int:  # no eos_id: every row runs to the end
        return sum(len(answer) for answer in generate(model, prompts, new_tokens, temperature=1.0, seed=1))

    return best_rates({"rollouts": sample}, device)["rollouts"]


def si(value: float, unit: str) -> str:
    """12_300_000_000, "FLOP/s" -> "12.3 GFLOP/s"."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def run_benchmarks(preset: str, device: str, steps: int, new_tokens: int, batch_size: int | None) -> dict:
    """Measure, print a table, and return the figures (per second, FLOP/s, MFU as a fraction)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    if steps < 1 or new_tokens < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"steps, new_tokens and batch_size must be at least 1, got {steps}, {new_tokens}, {batch_size}")
    dev = pick_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA GPU is visible here; use auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: no Apple GPU is visible here; use auto or cpu")
    torch.manual_seed(0)
    settings = PRESETS[preset]
    config = GPTConfig(vocab_size=settings["vocab_size"], **settings["model"])
    cfg = TrainConfig(batch_size=batch_size or settings["pretrain"]["batch_size"], grad_accum=1,
                      lr=settings["pretrain"]["lr"], warmup_steps=0, device=str(dev), dtype="auto")

    peak, matmul_shape = measure_matmul_peak(dev)
    model = GPT(config)
    tokens_per_s, step_s = measure_training(model, cfg, steps, dev)
    per_token = flops_per_token(model)
    achieved = per_token * tokens_per_s

    # A separate model whose context fits prompt + new tokens, so that every step really runs.
    gen_config = replace(config, block_size=max(config.block_size, PROMPT_TOKENS + new_tokens))
    gen_model = GPT(gen_config).to(dev)
    prompt = torch.randint(0, config.vocab_size, (PROMPT_TOKENS,)).tolist()
    decoding = measure_generation(gen_model, prompt, new_tokens, dev)
    cached_speed, uncached_speed, draft_speed = decoding["cached"], decoding["uncached"], decoding["draft"]
    rollout_batch, rollout_tokens = settings["ppo"]["batch_size"], settings["ppo"]["max_new_tokens"]
    rollout_model = GPT(replace(config, block_size=max(config.block_size, PROMPT_TOKENS + rollout_tokens))).to(dev)
    rollout_speed = measure_rollouts(rollout_model, rollout_batch, rollout_tokens, dev)
    bf16 = native_bf16(dev)

    figures = {
        "preset": preset, "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "processor": torch.cuda.get_device_name() if dev.type == "cuda" else cpu_name(), "bf16_hardware": bf16,
        "train_dtype": "bfloat16 autocast" if bf16 else "float32",
        "parameters": model.num_parameters(), "batch_size": cfg.batch_size, "block_size": config.block_size,
        "matmul_flops": peak, "train_tokens_per_s": tokens_per_s, "train_step_s": step_s,
        "flops_per_token": per_token, "train_flops": achieved, "mfu": achieved / peak,
        "gen_cached_tokens_per_s": cached_speed, "gen_uncached_tokens_per_s": uncached_speed,
        "kv_cache_speedup": cached_speed / uncached_speed, "same_tokens": decoding["same_tokens"],
        "gen_draft_tokens_per_s": draft_speed, "package_vs_draft": cached_speed / draft_speed,
        "rollout_batch": rollout_batch, "rollout_new_tokens": rollout_tokens, "rollout_tokens_per_s": rollout_speed,
    }
    print_table(figures, matmul_shape, steps, new_tokens)
    return figures


def print_table(f: dict, matmul_shape: str, steps: int, new_tokens: int) -> None:
    print(f"bench: preset {f['preset']} on {f['device']} ({f['processor']}), torch {f['torch']}, {f['threads']} threads")
    print(f"bf16 in hardware: {'yes' if f['bf16_hardware'] else 'no'}, so training runs in {f['train_dtype']}")
    print(f"model: {f['parameters'] / 1e6:.2f}M parameters, batch {f['batch_size']} x block {f['block_size']}")
    rows = [
        (f"matmul peak ({matmul_shape})", si(f["matmul_flops"], "FLOP/s"), "best of 5"),
        (f"training ({steps} steps)", f"{f['train_tokens_per_s']:,.0f} tokens/s", f"{f['train_step_s']:.3f} s/step"),
        ("  model FLOPs per token", si(f["flops_per_token"], "FLOP"), "6N + 12 L C T"),
        ("  achieved", si(f["train_flops"], "FLOP/s"), f"MFU {100 * f['mfu']:.1f}%"),
        (f"generate {new_tokens} tokens, KV cache", f"{f['gen_cached_tokens_per_s']:,.1f} tokens/s",
         f"each: best of {REPEATS}, timed in turn"),
        (f"generate {new_tokens} tokens, no cache", f"{f['gen_uncached_tokens_per_s']:,.1f} tokens/s",
         f"cache is {f['kv_cache_speedup']:.1f}x faster"),
        (f"generate {new_tokens} tokens, ch03 draft", f"{f['gen_draft_tokens_per_s']:,.1f} tokens/s",
         f"generate() is {f['package_vs_draft']:.2f}x the draft"),
        (f"rollouts {f['rollout_batch']} x {f['rollout_new_tokens']} tokens", f"{f['rollout_tokens_per_s']:,.0f} tokens/s",
         "sampled, temperature 1"),
    ]
    for name, value, note in rows:
        print(f"{name:<34} {value:>20}   {note}")
    if not f["same_tokens"]:
        print("warning: cached and uncached generation gave different tokens")


# The command: python -m gpt_scratch bench ------------------------------------------------------------------

@dataclass
class BenchOptions:
    steps: int = setting(10, "timed training steps", type=int_range(1, 1000), preset=False)
    new_tokens: int = setting(256, "tokens to generate", type=int_range(1, 8192), preset=False)
    batch_size: int | None = setting(None, "training batch (default: the preset's)", type=positive_int, preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, StageOptions, only=("preset",))
    add_flags(parser, RunSettings, only=("device",))
    add_flags(parser, BenchOptions)


def run(args: argparse.Namespace) -> int:
    options, device = from_flags(BenchOptions, args), from_flags(RunSettings, args).device
    check_device(device)
    run_benchmarks(from_flags(StageOptions, args).preset, device, options.steps, options.new_tokens, options.batch_size)
    return 0
