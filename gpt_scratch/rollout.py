"""Rollouts: the policy answers a batch of prompts, and we keep what PPO and GRPO learn from.

    batch = rollout(policy, tokenizer, ["What is 3 plus 4?", ...], max_new_tokens=24, temperature=1.0, seed=0)
    batch.responses                  # the answers as text (without the end-of-text)
    batch.ended                      # (B,) bool: did the answer end with end-of-text?
    per_token, total = completion_logprobs(policy, batch.x, batch.y)   # logprobs.py, on the sampled tokens
    batch.response_mask              # (B, T) True on the answer's tokens: where rewards and advantages live
    answer_kl(policy, reference, tokenizer, prompts, max_new_tokens=24)   # how far a trained policy has moved

Three rules make a rollout something an RL loss can trust:
1. The prompt goes through the chat template that SFT trained with (templates.py), so the
   policy answers as it learned to.
2. The answer keeps the *sampled token ids*, not a re-encoding of its text: decoding and then
   encoding again can give other tokens, and the log-probabilities must be those of what was
   sampled.
3. Every log-probability that training computes of a rollout is taken under the distribution that
   sampled it: softmax(logits / temperature) (logprobs.token_logprobs(..., temperature), as TRL's
   trainers do). So a rollout samples from that whole distribution, with no top-k or top-p filter:
   a filtered sample has other probabilities than the ones the importance ratio and the KL use.
4. Everything after a row's first end-of-text is padding. generate() stops each row at its own
   end-of-text; the batch is then padded by length (data.collate), so padding never counts. An
   answer that hit max_new_tokens without ending is marked (ended is False): a stage can
   penalise it, since a reward model only ever saw finished answers.

answer_kl measures, with rollouts, how far a trained policy has moved from its reference (the SFT
model) on held-out prompts, the yardstick every alignment stage reports: the policy samples an
answer y to each prompt, and log pi(y) - log pi_ref(y) summed over y's tokens (the k1 estimate of
ppo_math.kl_per_token) averages to KL(pi || pi_ref) over answers, in nats. Example: two answers,
the policy says them with 0.9 and 0.1, the reference with 0.5 and 0.5 -> 0.9 log(0.9/0.5) +
0.1 log(0.1/0.5) = 0.37 nats.
"""

import contextlib

from dataclasses import dataclass

import torch

from gpt_scratch.data import IGNORE, Encoded, collate
from gpt_scratch.generate import generate
from gpt_scratch.hardware import autocast_for
from gpt_scratch.logprobs import token_logprobs
from gpt_scratch.lora import adapters_off
from gpt_scratch.model import GPT
from gpt_scratch.ppo_math import kl_per_token
from gpt_scratch.templates import encode_prompt
from gpt_scratch.tokenizer import Tokenizer


@dataclass
class Rollout:
    prompts: list[str]
    examples: list[Encoded]  # prompt ids + sampled answer ids; trained marks the answer
    responses: list[str]  # the answers decoded, without the end-of-text
    ended: torch.Tensor  # (B,) bool
    x: torch.Tensor  # (B, T) inputs, right-padded
    y: torch.Tensor  # (B, T) targets: the answer's tokens, IGNORE elsewhere (prompt and padding)

    @property
    def response_mask(self) -> torch.Tensor:
        """(B, T) True where the target is an answer token (its end-of-text included)."""
        return self.y != IGNORE


def prompt_ids(tokenizer: Tokenizer, prompt: str, template: str = "chat") -> list[int]:
    """The ids the policy answers after: the prompt as a user turn, then the assistant marker."""
    return encode_prompt(tokenizer, {"prompt": prompt, "completion": ""}, template)


def rollout(policy: GPT, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
            seed: int | None = None, template: str = "chat") -> Rollout:
    """Sample one answer per prompt from softmax(logits / temperature) (batched, each row stops at its
    end-of-text) and collate the batch."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    eot = tokenizer.eot_id
    prompt_batch = [prompt_ids(tokenizer, p, template) for p in prompts]
    answers = generate(policy, prompt_batch, max_new_tokens, temperature=temperature, eos_id=eot, seed=seed)
    examples, responses, ended = [], [], []
    for prompt, answer in zip(prompt_batch, answers):
        examples.append(Encoded(prompt + answer, [False] * len(prompt) + [True] * len(answer)))
        finished = bool(answer) and answer[-1] == eot
        responses.append(tokenizer.decode(answer[:-1] if finished else answer))
        ended.append(finished)
    return collated(prompts, examples, responses, ended, pad_id=eot)


def collated(prompts: list[str], examples: list[Encoded], responses: list[str], ended: list[bool],
             pad_id: int) -> Rollout:
    """A Rollout of these rows, padded by length (data.collate) into one batch."""
    x, y = collate(examples, pad_id=pad_id, mask_prompt=True)
    return Rollout(list(prompts), list(examples), list(responses), torch.tensor(ended, dtype=torch.bool), x, y)


def join_rows(parts: list[tuple[Rollout, list[int]]], pad_id: int) -> Rollout:
    """Chosen rows of one or more rollouts as one batch, in the order given: [(batch, [row, ...]), ...].

    GRPO's dynamic sampling keeps the groups that teach something from several rollouts; the rows
    keep their sampled ids and are padded again to the longest of them.
    """
    picked = [(batch, row) for batch, rows in parts for row in rows]
    return collated([b.prompts[i] for b, i in picked], [b.examples[i] for b, i in picked],
                    [b.responses[i] for b, i in picked], [bool(b.ended[i]) for b, i in picked], pad_id)


@torch.no_grad()
def answer_kl(policy: GPT, reference: GPT | None, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
              seed: int = 0, batch_size: int = 64, dtype: str = "auto") -> float:
    """KL(policy || reference) per answer, in nats, estimated from one sampled answer per prompt.

    The policy samples at temperature 1 (its own distribution), repeatably for a seed; both models
    score the sampled tokens. reference=None means the policy itself with its LoRA adapters switched
    off (lora.adapters_off): its base model, the reference of a LoRA-trained policy.
    """
    device = next(policy.parameters()).device
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        batch = rollout(policy, tokenizer, prompts[start:start + batch_size], max_new_tokens, temperature=1.0,
                        seed=seed * 1_000_003 + start)
        x, y, mask = batch.x.to(device), batch.y.to(device), batch.response_mask.to(device)
        with autocast_for(device, dtype):
            logp = token_logprobs(policy(x), y)
            ref_logp = reference_logprobs(policy, reference, x, y)
        total += kl_per_token(logp, ref_logp, mask, "k1").sum().item()
    return total / len(prompts)


def reference_logprobs(policy: GPT, reference: GPT | None, x: torch.Tensor, y: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """log p_ref of the targets y (B, T) under softmax(logits / temperature): the reference model's, or, with
    reference None, the LoRA policy's own base (its adapters switched off: lora.adapters_off)."""
    with adapters_off(policy) if reference is None else contextlib.nullcontext():
        return token_logprobs((reference or policy)(x), y, temperature)
