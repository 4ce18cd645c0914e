"""Text generation: greedy, temperature, top-k and top-p sampling, with a KV cache.

    new_ids = generate(model, [prompt_ids], max_new_tokens=50, temperature=0.8, top_k=40, seed=0)
    for token in stream(model, prompt_ids, max_new_tokens=50):   # one token at a time, as it comes
        ...
    texts = generate_text(model, tokenizer, ["Once upon a time"], max_new_tokens=50)

Prompts of different lengths are batched by padding them on the left (so that every row's
next token is in the last column) and passing an attention mask. Each row stops at its own
end-of-text token. temperature=0 means greedy: always take the most likely token.
"""

from dataclasses import dataclass
from typing import Iterator

import torch

from gpt_scratch.args import float_range, int_range, non_negative_int, positive_int
from gpt_scratch.data import pad_batch
from gpt_scratch.model import GPT, KVCache
from gpt_scratch.settings import setting


@dataclass
class Sampling:
    """How a model picks each next token when it answers (chat) or continues text (generate)."""
    max_new_tokens: int = setting(32, "longest answer in tokens; a conversation keeps the rest of the context",
                                  type=int_range(1, 100_000), preset=False)
    temperature: float | None = setting(0.0, "0 = greedy: always the most likely token, as the course's evaluation",
                                        type=float_range(0.0, 100.0), preset=False)
    top_k: int | None = setting(None, "sample among the k most likely tokens (needs --temperature > 0)",
                                type=positive_int, preset=False)
    top_p: float | None = setting(None, "nucleus sampling mass (needs --temperature > 0)",
                                  type=float_range(0.0, 1.0, include_low=False), preset=False)
    seed: int = setting(0, "sampling seed", type=non_negative_int, preset=False)

    def validate(self, given: set[str]) -> None:
        """Sampling flags that greedy decoding would ignore."""
        ignored = [f"--{name.replace('_', '-')}" for name in ("top_k", "top_p") if getattr(self, name) is not None]
        if self.temperature == 0 and ignored:
            why = "" if "temperature" in given else ", the default for a question"
            raise ValueError(f"{ignored[0]} has no effect with --temperature 0{why} (greedy: always the most likely "
                             f"token); give --temperature > 0 to sample")


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf."""
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to at least p.

    Example: probabilities [0.5, 0.3, 0.15, 0.05] with p=0.7 keep the first two tokens.
    """
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p  # already enough mass above this token: drop it (never the first)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick one next token per row from logits (B, vocab) -> ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def check_prompts(prompts: list[list[int]], block_size: int, crop: bool) -> list[list[int]]:
    """Refuse (or, with crop=True, cut from the left) prompts longer than the context."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    too_long = [len(p) for p in prompts if len(p) > block_size]
    if too_long and not crop:
        raise ValueError(f"a prompt has {max(too_long)} tokens but the model's context is {block_size}; "
                         f"shorten the prompt or crop it to its last {block_size} tokens (crop=True, or --crop)")
    return [p[-block_size:] for p in prompts]


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0 or temperature < 0:
        raise ValueError("max_new_tokens and temperature must not be negative")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@torch.inference_mode()  # like no_grad, and skips autograd's bookkeeping of views and versions too
def sample_steps(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 seed: int | None = None, use_cache: bool = True, crop: bool = False) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), one step at a time (the loop behind generate and stream).

    A row that has produced eos_id keeps yielding eos_id. The loop ends when every row has
    ended, after max_new_tokens, or when the sequence fills the model's context.
    """
    check_settings(max_new_tokens, temperature, top_k, top_p)
    block_size = model.config.block_size
    prompts = check_prompts(prompts, block_size, crop)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()

    # Left padding puts every row's next token in the last column. Prompts of one length need
    # no mask at all, and without one the attention takes its plain causal path (faster).
    ids, mask = pad_batch(prompts, pad_id=eos_id if eos_id is not None else 0, side="left")
    ids, mask = ids.to(device), (mask.to(device) if (mask == 0).any() else None)
    # The last sampled token needs no position of its own, so one more than the free room fits.
    steps = min(max_new_tokens, block_size - ids.shape[1] + 1)
    cache = KVCache(model.config.n_layer, max_length=block_size) if use_cache else None
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    next_input = ids
    try:
        for step in range(steps):
            if use_cache:  # the cache holds the past: only the new tokens go in
                logits = model(next_input, attention_mask=mask, kv_cache=cache)[:, -1]
            else:
                logits = model(ids, attention_mask=mask)[:, -1]
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                token = token.masked_fill(finished, eos_id)
                finished |= token == eos_id
            yield token
            if step == steps - 1 or (eos_id is not None and bool(finished.all())):  # one host sync per step
                break
            next_input = token[:, None]
            if not use_cache:
                ids = torch.cat([ids, next_input], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(next_input)], dim=1)
    finally:
        model.train(was_training)


def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             seed: int | None = None, use_cache: bool = True, crop: bool = False) -> list[list[int]]:
    """Continue each prompt; return the new token ids of each row (ending with eos_id if it came).

    Generation stops when every row has produced eos_id, after max_new_tokens, or when the
    sequence fills the model's context (block_size), whichever comes first.
    """
    steps = list(sample_steps(model, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, seed,
                              use_cache, crop))
    if not steps:
        return [[] for _ in prompts]
    rows = torch.stack(steps, dim=1).tolist()  # (B, steps): one copy to Python at the end, not one per token
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


def stream(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
           seed: int | None = None) -> Iterator[int]:
    """Continue one prompt, yielding each new token id as soon as it is sampled (for a chat).

        for token in stream(model, ids, 50, eos_id=tokenizer.eot_id):
            print(tokenizer.decode([token]), end="", flush=True)
    """
    for token in sample_steps(model, [prompt], max_new_tokens, temperature, top_k, top_p, eos_id, seed):
        yield int(token[0])
        if token[0] == eos_id:
            return


def generate_text(model: GPT, tokenizer, prompts: list[str], max_new_tokens: int, **kwargs) -> list[str]:
    """Like generate(), but with strings in and out; the text stops before the end-of-text token."""
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    outputs = generate(model, prompt_ids, max_new_tokens, eos_id=tokenizer.eot_id, **kwargs)
    texts = []
    for ids in outputs:
        if ids and ids[-1] == tokenizer.eot_id:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids))
    return texts
