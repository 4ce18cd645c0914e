"""The GPT model, written out by hand.

    config = GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    logits = model(idx)              # idx: (B, T) token ids -> logits: (B, T, vocab_size)
    hidden = model.body(idx)         # (B, T, n_embd), after the final norm

Parameter names follow Hugging Face's GPT-2 (transformer.wte, transformer.h.0.attn.c_attn, ...)
so that GPT-2 weights load by name (see gpt2.py).

Two ideas make generation and batching work:
- A KVCache keeps every layer's keys and values, so generating one more token only runs the
  new token through the network instead of the whole sequence again.
- An optional attention_mask (1 = real token, 0 = padding) lets a batch hold prompts of
  different lengths, padded on the left: padding is never attended to and positions count
  real tokens only.

The modern layout (chapter 12). Every model after GPT-2 that a reader meets next (Llama, Qwen,
Mistral, SmolLM) changed five parts; each is one switch of GPTConfig, and GPT-2's layout stays
the default:
    norm="rmsnorm"      RMSNorm: scale by the root mean square, no mean subtracted, no bias
    position="rope"     rotary position embeddings: q and k are rotated by an angle that grows
                        with the position (base rope_theta); no learned position table
    mlp="swiglu"        a gated MLP with three matrices (c_gate, c_fc, c_proj; in transformers'
                        Llama gate_proj, up_proj, down_proj) 2/3 as wide, so the parameters stay
    n_kv_head=k         grouped-query attention: k key/value heads, each shared by n_head / k query
                        heads; the KV cache holds k heads only (k = 1: multi-query attention)
    bias=False          no biases;  tie_weights=False: an output head of its own
llama_config() turns them all on. The module names stay GPT-2's (c_attn holds q, k and v, ln_1
is the block's first norm, whichever kind it is), so every stage and LoRA target works on both.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_scratch.args import float_range, int_range
from gpt_scratch.settings import setting

MLP_MULTIPLE = 8  # SwiGLU's hidden width is rounded up to a multiple of this (see swiglu_width)


def swiglu_width(n_embd: int) -> int:
    """SwiGLU's hidden width: 2/3 of GPT-2's 4 * n_embd, rounded up to a multiple of 8.

    Three (n_embd x width) matrices then hold about as many numbers as GPT-2's two
    (n_embd x 4 n_embd) ones. Llama rounds up to a multiple of 256, which would make a small
    model's MLP several times too wide; 8 keeps it within 1% at n_embd = 128:
    swiglu_width(128) = 344 (3 * 128 * 344 = 132,096 against 2 * 128 * 512 = 131,072).
    """
    width = int(2 * 4 * n_embd / 3)
    return MLP_MULTIPLE * math.ceil(width / MLP_MULTIPLE)


@dataclass
class GPTConfig:
    vocab_size: int = 2048  # set by the tokenizer
    block_size: int = setting(128, "context length in tokens: the most the model sees at once",
                              type=int_range(2, 8192))
    n_layer: int = setting(4, "transformer blocks", type=int_range(1, 96))
    n_head: int = setting(4, "attention heads (must divide --n-embd)", type=int_range(1, 128))
    n_embd: int = setting(128, "embedding width", type=int_range(1, 16384))
    dropout: float = setting(0.0, "dropout rate", type=float_range(0.0, 1.0, include_high=False))
    bias: bool = setting(True, "biases in the Linear layers and norms, as GPT-2; --no-bias: none, as Llama",
                         negatable=True)
    tie_weights: bool = setting(True, "the output head shares the token embedding's weight, as GPT-2; "
                                      "--no-tie-weights: a head of its own, as Llama", negatable=True)
    attention: str = setting("manual", "written-out attention or PyTorch's SDPA (the same numbers)",
                             choices=("manual", "sdpa"))
    layer_norm_eps: float = 1e-5  # the eps of every norm, LayerNorm or RMSNorm
    # The modern layout's switches (chapter 12); the defaults are GPT-2's. A config.json saved
    # before they existed lacks them and loads as GPT-2, which it is.
    norm: str = setting("layernorm", "layernorm (GPT-2) or rmsnorm (Llama)", choices=("layernorm", "rmsnorm"))
    position: str = setting("learned", "learned: a position table (GPT-2); rope: rotary embeddings (Llama)",
                            choices=("learned", "rope"))
    rope_theta: float = setting(10000.0, "RoPE's base: the slowest pair turns once in about 2 pi theta tokens",
                                type=float_range(1.0, 1e9))
    mlp: str = setting("gelu", "gelu (GPT-2) or swiglu (Llama: gated, 2/3 as wide)", choices=("gelu", "swiglu"))
    mlp_hidden: int | None = None  # the MLP's hidden width; None: 4 * n_embd (gelu), swiglu_width (swiglu)
    n_kv_head: int | None = setting(None, "key/value heads, dividing --n-head: grouped-query attention (1: "
                                          "multi-query; none: one per query head, GPT-2)", type=int_range(1, 128))

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"--n-embd {self.n_embd} must be divisible by --n-head {self.n_head}")
        for name, allowed in (("attention", ("manual", "sdpa")), ("norm", ("layernorm", "rmsnorm")),
                              ("position", ("learned", "rope")), ("mlp", ("gelu", "swiglu"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, not {getattr(self, name)!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        kv = self.n_kv_head
        if kv is not None and not (1 <= kv <= self.n_head and self.n_head % kv == 0):
            raise ValueError(f"--n-kv-head {self.n_kv_head} must divide --n-head {self.n_head}: each key/value "
                             f"head serves the same number of query heads")
        if self.position == "rope" and (self.head_dim % 2 or not self.rope_theta > 0):
            raise ValueError(f"RoPE rotates pairs of numbers: head_dim (n_embd / n_head = {self.head_dim}) must be "
                             f"even and rope_theta ({self.rope_theta}) positive")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be at least 1 (or None for the default), got {self.mlp_hidden}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: n_kv_head, or n_head when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: mlp_hidden, or the default of the MLP kind."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return swiglu_width(self.n_embd) if self.mlp == "swiglu" else 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


ARCHS = ("gpt2", "llama")  # the layouts --arch names


def layout(arch: str, n_head: int) -> dict:
    """The GPTConfig switches of a layout: none for GPT-2's (its defaults), all of chapter 12's for llama:
    RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases, an untied head.

    n_kv_head is n_head // 2, two query heads per key/value head (Llama 3 8B has four: 32 query heads,
    8 key/value heads), or 1 (multi-query) when n_head is odd:
        layout("llama", 4)["n_kv_head"] == 2;  layout("gpt2", 4) == {}
    """
    if arch == "gpt2":
        return {}
    if arch == "llama":
        return dict(norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_weights=False,
                    n_kv_head=n_head // 2 if n_head % 2 == 0 else 1)
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")


@dataclass
class Architecture:
    """Which layout a model is built in; each switch's own flag (--norm, --position, ...) wins over it."""
    arch: str = setting("gpt2", "gpt2: GPT-2's layout; llama: every chapter-12 switch on (RMSNorm, RoPE, SwiGLU, "
                                "grouped-query attention, no biases, an untied head)", choices=ARCHS, preset=False)


def llama_config(**settings) -> GPTConfig:
    """A GPTConfig in the llama layout (layout above); settings are GPTConfig fields and win over it:
        llama_config(n_head=4, n_embd=128).n_kv_head == 2
    """
    return GPTConfig(**{**layout("llama", settings.get("n_head", GPTConfig.n_head)), **settings})


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    keys[layer] has shape (B, n_kv_head, T_seen, head_dim): with grouped-query attention only the
    key/value heads are stored, n_head / n_kv_head times fewer bytes per token. With max_length, each layer's storage
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


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama's): x / sqrt(mean(x^2) + eps) * weight.

    LayerNorm without subtracting the mean and without a bias: one statistic instead of two,
    and in practice as good. Computed in float32, as transformers' Llama does: the squares of
    bfloat16 numbers keep too few digits.
    """

    def __init__(self, n_embd: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)


# ---- rotary position embeddings (RoPE) ----
# Each head's vector is cut into pairs of numbers, and each pair is turned, like the hand of a
# clock, by an angle proportional to the token's position: pair i by position * theta^(-2i/D).
# A query at position m and a key at position n are both turned, so their dot product depends on
# the angle between them, (m - n) times the pair's speed: attention sees relative positions.
# Which numbers make a pair: the course pairs number i with number i + D/2 (the two halves of the
# head, "rotate_half", as transformers' Llama, GPT-NeoX and nanochat do). The RoFormer paper and
# Meta's original Llama code pair neighbours (2i, 2i + 1) instead; the Hugging Face conversion of
# Meta's weights permutes the rows of q_proj and k_proj so that halves give the same result. A
# transformers checkpoint is therefore already in the course's convention (llama.py copies it).

def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B or 1, T) -> (cos, sin) of every pair's angle, each (B or 1, 1, T, head_dim), float32.

    The angle of pair i is position * theta^(-2i / head_dim); the two halves of a head share the
    angles, pair i being numbers i and i + head_dim / 2.
    """
    speeds = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * speeds  # (B, T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, head_dim): one per head, broadcast
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) for the two halves of the last dimension: a quarter turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn every pair of x (B, H, T, head_dim) by its angle: (a, b) -> (a cos - b sin, b cos + a sin)."""
    return (x * cos + rotate_half(x) * sin).type_as(x)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_head, T, D) -> (B, n_kv_head * n_rep, T, D): each key/value head once per query head it serves.

    Query head h uses key/value head h // n_rep (transformers' Llama groups heads the same way).
    """
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.config = config  # read config.attention at call time, so it can be switched later
        self.dropout = config.dropout
        kv_width = self.n_kv_head * self.head_dim  # n_embd, unless grouped-query attention shares heads
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: torch.Tensor, n_heads: int | None = None) -> torch.Tensor:
        """(B, T, n_heads * head_dim) -> (B, n_heads, T, head_dim); n_heads: n_head (the queries') if None"""
        B, T, _ = x.shape
        return x.view(B, T, n_heads or self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv_width, kv_width], dim=2)
        q = self.split_heads(q, self.n_head)
        k, v = self.split_heads(k, self.n_kv_head), self.split_heads(v, self.n_kv_head)
        if rope is not None:  # the cache stores keys already turned: a key's position never changes
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        k, v = repeat_kv(k, self.n_head // self.n_kv_head), repeat_kv(v, self.n_head // self.n_kv_head)
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
    """GPT-2's MLP, c_proj(gelu(c_fc(x))), or with config.mlp="swiglu" Llama's gated one:
    c_proj(silu(c_gate(x)) * c_fc(x)), where the gate decides, number by number, how much of
    c_fc's output goes through (transformers' Llama calls the three gate_proj, up_proj, down_proj)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_width
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            h = self.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask, cache, layer, rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))  # token embeddings
        if config.position == "learned":  # RoPE needs no table: it turns q and k inside attention
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
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
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
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
        x, rope = self.transformer.wte(idx), None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        else:  # the angles of the new tokens' positions, computed once for every layer
            rope = rope_angles(pos, self.config.head_dim, self.config.rope_theta)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, attention_mask, kv_cache, layer, rope)
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
