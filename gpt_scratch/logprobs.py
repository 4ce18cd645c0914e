"""Log-probabilities of a completion given a prompt: the quantity DPO, PPO and GRPO all need.

    examples = encode_completions(tokenizer, ["What is 3 plus 4?"], ["The answer is 7."])
    x, y = collate(examples, pad_id=tokenizer.eot_id)       # y is -100 outside the completions
    per_token, total = completion_logprobs(model, x, y)     # (B, T) and (B,)

The log-probability of a completion is the sum, over its tokens (its end-of-text included),
of log p(token | every token before it): one forward pass of the whole prompt + completion
gives them all at once, since position t's logits predict token t + 1. The prompt's tokens and
the padding add nothing: their targets are -100, set by data.collate from each row's *length*
and the template's answer marks, never by comparing ids with the pad id (the pad id is the
end-of-text id, and the completion's own end-of-text must count).

Example: a completion of two tokens with p = 0.5 and 0.25 has total log(0.5) + log(0.25) = -2.08.
"""

import torch
import torch.nn.functional as F

from gpt_scratch.data import IGNORE, Encoded
from gpt_scratch.templates import encode_example
from gpt_scratch.tokenizer import Tokenizer


def encode_completions(tokenizer: Tokenizer, prompts: list[str | list[dict]], completions: list[str],
                       template: str = "chat") -> list[Encoded]:
    """Each (prompt, completion) in the template: prompt ids, completion ids, one end-of-text.

    trained marks the completion and its end-of-text, which are the tokens that get scored. A prompt
    is a question (one user turn) or a conversation so far, a list of chat messages; then only the
    completion, the last answer, is marked, not the earlier assistant turns of the conversation.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; give one completion each")
    examples = []
    for prompt, completion in zip(prompts, completions):
        if isinstance(prompt, list):
            record = {"messages": prompt + [{"role": "assistant", "content": completion}]}
        else:
            record = {"prompt": prompt, "completion": completion}
        ids, trained = encode_example(tokenizer, record, template)
        answer_starts = max(i for i, is_answer in enumerate(trained) if not is_answer) + 1  # after the last prompt token
        examples.append(Encoded(ids, [False] * answer_starts + trained[answer_starts:]))
    return examples


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) at every position (B, T), and exactly 0 where the target is IGNORE.

    logits (B, T, vocab) are turned into log-probabilities in float32 (bf16 would round them), under
    softmax(logits / temperature): the distribution that sampled the targets when they were sampled at
    that temperature (PPO's and GRPO's rollouts). Example: logits [2, 1, 0], target 0 -> -0.4076 at
    temperature 1, -0.1429 at 0.5 (a sharper distribution), -0.5749 at 1.5.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    scored = targets != IGNORE
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # any valid index where ignored
    return picked * scored


def completion_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probabilities (B, T), their sum per row (B,)) of the completions in (x, y)."""
    per_token = token_logprobs(model(x), y)
    return per_token, per_token.sum(dim=1)
