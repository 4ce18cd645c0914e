"""The GPT model, written out by hand.

    config = GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    logits = model(idx)              # idx: (B, T) token ids -> logits: (B, T, vocab_size)
    hidden = model.body(idx)         # (B, T, n_embd), after the final LayerNorm

Parameter names follow Hugging Face's GPT-2 (transformer.wte, transformer.h.0.attn.c_attn, ...)
so that GPT-2 weights load by name (see gpt2.py).

Two ideas make generation and batching work:
- A KVCache keeps every layer's keys and values, so generating one more token only runs the
  new token through the network instead of the whole sequence again.
- An optional attention_mask (1 = real token, 0 = padding) lets a batch hold prompts of
  different lengths, padded on the left: padding is never attended to and positions count
  real tokens only.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 2048
    block_size: int = 128  # the context length: the most tokens the model sees at once
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    tie_weights: bool = True  # lm_head shares its weight with the token embedding
    attention: str = "manual"  # "manual" (written out below) or "sdpa" (PyTorch's fused kernel)
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.attention not in ("manual", "sdpa"):
            raise ValueError(f"attention must be 'manual' or 'sdpa', not {self.attention!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    keys[layer] has shape (B, n_head, T_seen, head_dim). With max_length, each layer's storage
    for max_length tokens is allocated once and filled in place, instead of concatenating a
    new, one-token-longer copy at every step (what generation does: on the default model,
    64 prompts x 124 tokens ran at 22,241 tokens/s with it against 13,926 without, best of 8
    interleaved runs on a 2-core Xeon; for one prompt the two are within the noise).
    """

    def __init__(self, n_layer: int, max_length: int | None = None) -> None:
        self.max_length = max_length
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.seen = [0] * n_layer  # tokens stored per layer

    @property
    def length(self) -> int:
        return self.seen[0]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys/values for one layer; return all keys/values so far."""
        start, end = self.seen[layer], self.seen[layer] + k.shape[2]
        self.seen[layer] = end
        if self.max_length is None:  # grow by concatenation
            if self.keys[layer] is not None:
                k = torch.cat([self.keys[layer], k], dim=2)
                v = torch.cat([self.values[layer], v], dim=2)
            self.keys[layer], self.values[layer] = k, v
            return k, v
        if end > self.max_length:
            raise ValueError(f"the KV cache holds {self.max_length} tokens; {end} do not fit")
        if self.keys[layer] is None:  # first call: storage for max_length tokens
            B, H, _, D = k.shape
            self.keys[layer] = k.new_empty(B, H, self.max_length, D)
            self.values[layer] = v.new_empty(B, H, self.max_length, D)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def attention_bias(q_len: int, k_len: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean (B or 1, 1, q_len, k_len) matrix: True where a query may look at a key.

    The queries are the last q_len positions of the k_len keys, so query i sits at
    position (k_len - q_len + i) and may see keys up to and including that position.
    Example for q_len=2, k_len=3: [[1, 1, 0], [1, 1, 1]].
    A padding token may still see itself: a query row with nothing allowed would make the
    softmax divide 0 by 0 (NaN), and NaN spreads to every token in later layers.
    """
    offset = k_len - q_len
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)
    allowed = causal[None, None]
    if key_mask is not None:
        itself = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(offset).triu(offset)
        allowed = (allowed & key_mask.bool()[:, None, None, :]) | itself
    return allowed


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.config = config  # read config.attention at call time, so it can be switched later
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, n_head, T, head_dim)"""
        B, T, C = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        # One new token with no padding may look at every key: no mask to build (the usual step of
        # generation with a cache, once per layer and token).
        allowed = None if T == 1 and key_mask is None else attention_bias(T, k.shape[2], key_mask, x.device)

        if self.config.attention == "sdpa":
            p = self.dropout if self.training else 0.0
            if key_mask is None and T == k.shape[2]:  # plain causal: lets PyTorch pick its fastest kernel
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T_k)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = F.softmax(scores, dim=-1)
            y = self.attn_dropout(weights) @ v  # (B, H, T, head_dim)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # put the heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (a tied lm_head is not counted again)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wpe.weight.numel()
            n -= self.transformer.wte.weight.numel()
        return n

    def positions(self, T: int, attention_mask: torch.Tensor | None, past: int, device) -> torch.Tensor:
        """Position id of each new token: 0, 1, 2, ... counting real tokens only."""
        if attention_mask is None:
            return torch.arange(past, past + T, device=device)[None]
        pos = attention_mask.long().cumsum(dim=1) - 1  # left padding -> first real token gets 0
        return pos.clamp(min=0)[:, -T:]

    def body(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
             kv_cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> final hidden states (B, T, n_embd).

        attention_mask: (B, T_past + T) of 1/0 over all tokens so far (past and new), or None.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than the model's context "
                             f"(block_size={self.config.block_size}); crop the input")
        pos = self.positions(T, attention_mask, past, idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, attention_mask, kv_cache, layer)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""
        return self.lm_head(self.body(idx, attention_mask, kv_cache))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not -100 (the ignore index)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Switch off every dropout in the model, in train mode too; returns the model.

    The alignment stages (reward model, PPO, DPO, GRPO) compare log-probabilities of the same tokens
    under the policy, the policy that sampled them and the reference, and the chapters rest on exact
    equalities between them: the PPO ratio is 1 on the first minibatch, the KL is 0 and the DPO loss
    ln 2 before any update. A random dropout mask would make each forward pass another model, so those
    stages switch it off, as TRL's trainers do. The config keeps its dropout: a checkpoint still says
    what the model was pretrained with.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, CausalSelfAttention):
            module.dropout = 0.0  # SDPA's dropout_p
    return model
