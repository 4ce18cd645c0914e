"""A GPT with a scalar head: one number per sequence (a reward) or per token (a value).

    model = GPTWithHead(gpt)                       # gpt: a GPT, e.g. loaded from the SFT checkpoint
    hidden = model.gpt.body(ids, attention_mask)   # (B, T, n_embd)
    per_token = model(ids, attention_mask)         # (B, T): the head read at every position
    model.read_head(hidden)                        # the same, from hidden states already computed

The head is one Linear layer from the hidden state to a single number, initialised to zero:
a new reward model scores every answer 0, so the Bradley-Terry loss starts at exactly ln 2
(chapter 8), and a new value head predicts 0 everywhere (chapter 9). The head is kept
beside the GPT, not inside it, so the body's weights keep GPT-2's names and a checkpoint's
model.safetensors still loads as a plain GPT; checkpoint.py saves the head next to it.
"""

import torch
import torch.nn as nn

from gpt_scratch.model import GPT

HEAD_KINDS = ("reward", "value")


class ScalarHead(nn.Linear):
    """Linear(n_embd -> 1), zero-initialised: it says 0 until training teaches it otherwise.

    with_logprob=True adds one more number, logprob_weight (also starting at 0): a reward model
    then adds logprob_weight * log p(answer | prompt) to its score (see reward.py for why).
    """

    def __init__(self, n_embd: int, with_logprob: bool = False) -> None:
        super().__init__(n_embd, 1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.register_parameter("logprob_weight", nn.Parameter(torch.zeros(1)) if with_logprob else None)


class GPTWithHead(nn.Module):
    """A GPT body and a scalar head; kind names what the head predicts (reward or value)."""

    def __init__(self, gpt: GPT, kind: str = "reward", with_logprob: bool = False) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {kind!r}; use one of {', '.join(HEAD_KINDS)}")
        self.gpt, self.kind = gpt, kind
        self.head = ScalarHead(gpt.config.n_embd, with_logprob)

    @property
    def config(self):
        return self.gpt.config

    def read_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, n_embd) -> the head's number at every position (B, T), in float32."""
        # The head runs in float32 even under bf16 autocast: the small differences between two
        # scores are what the loss learns from, and bf16 keeps only ~3 significant digits.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.head(hidden.float()).squeeze(-1)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> the head's number at every position (B, T), in float32."""
        return self.read_head(self.gpt.body(idx, attention_mask))
