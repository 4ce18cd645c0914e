"""LoRA: fine-tune a frozen model through small low-rank updates to its Linear layers (and its token embedding).

    names = add_lora(model, rank=8, alpha=16, targets=("attn", "mlp"))  # base frozen, A and B added
    train(model, ...)                                   # only lora_A and lora_B move
    save_adapter(model, "runs/lora/adapter", base="runs/default/sft")   # a few KB, not the model
    load_adapter(plain_base_model, "runs/lora/adapter") # the same fine-tuned model again
    remove_lora(model)                                  # merge and go back to a plain GPT
    with adapters_off(model):                           # the frozen base model, for free:
        reference_logits = model(ids)                   # the reference of RLHF and DPO

The idea: a frozen layer computes y = W x + b. LoRA adds a trainable update of rank r,
    y = W x + b + (alpha / r) * B (A x),    A: (r, in), B: (out, r)
so it trains r * (in + out) numbers instead of in * out. A starts random and B starts at
zero: B A = 0, so the model starts exactly as the base model, while B's gradient (which
goes through A x) is not zero, so training can begin. With alpha fixed, alpha / r keeps the size
of the update similar when you change r (chapter 7's study: the same best learning rate at ranks 4
and 64); this course's default, alpha = 2r, keeps the scale at 2 instead, so a higher rank wants a
lower learning rate. After training, B A can be merged into W: the same outputs with no extra
cost per token.

Two variants of the field, each one switch:
- rsLoRA (Kalajdzievski 2023; peft's use_rslora): scale by alpha / sqrt(r) instead of alpha / r.
  The rsLoRA paper argues that with alpha / r the update of a larger rank learns ever more slowly
  and that alpha / sqrt(r) keeps how fast it learns about the same at any rank; with Adam, chapter 7's
  study finds the best learning rate at ranks 4 and 64 the same with a fixed alpha, and about the
  same with rsLoRA. Example: r = 4, alpha = 8: scale 2 -> 4.
- LoRA+ (Hayou et al. 2024; peft's loraplus_lr_ratio): B learns at plus_ratio times A's learning
  rate (the paper suggests 16). add_lora marks every LoRA layer with the ratio, and
  parameter_groups puts each lora_B in a param group whose "lr_ratio" is that ratio: the training
  loop's schedule multiplies the group's learning rate by it. A ratio of 1 is plain LoRA. (The
  embedding's B too, here; peft gives an embedding's A and B a learning rate of their own.)

The token embedding (target "emb", transformer.wte) is a lookup table, not a Linear: row i of W
is token i's vector. LoRAEmbedding adds row i of scale * (B A)^T, with A: (r, vocab) and
B: (n_embd, r), as peft does: A starts at zero and B random, the other way round from a
Linear (either way B A = 0 at the start). It has no dropout (nor has peft's).

LoRA on the tied output head (targets including "head", with config.tie_weights) first unties
the head: it gets its own frozen copy of the shared matrix and config.tie_weights becomes
False. Otherwise merging B A into the head would also change the token embedding, i.e. the
input side of the model. LoRA on the tied token embedding (targets including "emb") unties the
head the same way, for the mirror reason: merging the embedding's update must leave the output
head as it was.
"""

import contextlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt_scratch.args import float_range, positive_float, positive_int
from gpt_scratch.files import atomic_path
from gpt_scratch.formats import write_json
from gpt_scratch.freeze import head_is_tied
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.settings import setting

# Which Linear layers each target name means; names are matched at the end of module names,
# so "attn.c_proj" is transformer.h.<i>.attn.c_proj and never transformer.h.<i>.mlp.c_proj.
# A SwiGLU MLP (config.mlp="swiglu") has a third matrix, mlp.c_gate; GPT-2's MLP has none, and a
# suffix that names no layer of the model selects nothing.
TARGETS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_gate", "mlp.c_fc", "mlp.c_proj"),
           "head": ("lm_head",)}
# One more target that is not a Linear: the token embedding (an nn.Embedding, wrapped in a LoRAEmbedding).
EMBEDDING_TARGET, EMBEDDING_NAME = "emb", "transformer.wte"
ALL_TARGETS = (*TARGETS, EMBEDDING_TARGET)  # every name the targets may hold

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"


def lora_scale(rank: int, alpha: float, rslora: bool = False) -> float:
    """The factor of the update: alpha / rank, or with rsLoRA alpha / sqrt(rank). rank 4, alpha 8: 2, or 4."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class Mergeable(nn.Module):
    """What LoRALinear and LoRAEmbedding share: a frozen weight, its update delta() of the weight's shape, and
    merging that update into the weight (forward then skips the LoRA path) or taking it out again."""

    weight: nn.Parameter
    merged: bool

    def delta(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the weight; forward then skips the LoRA path."""
        if not self.merged:
            self.weight.add_(self.delta())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (the base weight comes back up to float rounding)."""
        if self.merged:
            self.weight.sub_(self.delta())
            self.merged = False


class LoRALinear(Mergeable):
    """A frozen nn.Linear plus a trainable low-rank update: W x + b + scale * B (A x).

    plus_ratio does not change what the layer computes: it is lora_B's learning rate as a multiple of
    lora_A's (LoRA+), read by parameter_groups when the optimizer is made.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 plus_ratio: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.rslora, self.plus_ratio = rank, alpha, rslora, plus_ratio
        self.scale = lora_scale(rank, alpha, rslora)
        # The base layer's own Parameter objects under the same names: the model's state dict
        # keeps saying ...c_attn.weight and ...c_attn.bias, so base checkpoints still load.
        self.weight = base.weight
        self.register_parameter("bias", base.bias)  # base.bias is None when config.bias=False
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad_(False)
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))  # zero: starts as the base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the init nn.Linear uses for its weights
        self.dropout = nn.Dropout(dropout)  # on the LoRA path only: the base path stays exact
        self.merged = False
        self.enabled = True  # False inside adapters_off(): the layer is its frozen base layer

    def delta(self) -> torch.Tensor:
        """The update to the weight, scale * B @ A, shaped like the weight (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged or not self.enabled:
            return out  # merged: the update is already inside self.weight; disabled: the base alone
        # (..., in) @ A^T -> (..., rank) @ B^T -> (..., out): never builds the (out, in) matrix
        return out + self.scale * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)

    def plain_layer(self) -> nn.Linear:
        """An nn.Linear holding this layer's weight and bias (the merged weight, once merged)."""
        # skip_init: build the layer without initialising a weight we replace on the next line
        plain = nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                   device=self.weight.device, dtype=self.weight.dtype)
        plain.weight = self.weight
        if self.bias is not None:
            plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha}, rslora={self.rslora}, merged={self.merged}")


class LoRAEmbedding(Mergeable):
    """A frozen nn.Embedding plus a trainable low-rank update: token i's vector is W[i] + scale * (B A)^T[i].

    A is (rank, num_embeddings): column i is token i's rank-r code; B is (embedding_dim, rank) and turns a
    code into a vector. The update is built for the tokens looked up only, never as a whole table.
    """

    def __init__(self, base: nn.Embedding, rank: int, alpha: float, rslora: bool = False,
                 plus_ratio: float = 1.0) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.rank, self.alpha, self.rslora, self.plus_ratio = rank, alpha, rslora, plus_ratio
        self.scale = lora_scale(rank, alpha, rslora)
        # The base layer's own Parameter under the same name: the state dict keeps transformer.wte.weight.
        self.weight = base.weight
        self.weight.requires_grad_(False)
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        # One of A and B must start at zero (the model starts as the base) and the other must not: the zero
        # one's gradient goes through the other (A's is scale * B^T times the gradient of the looked-up
        # vectors), so with both zero nothing would ever train. peft zeroes the lookup table A and draws B.
        self.lora_A = nn.Parameter(torch.zeros(rank, self.num_embeddings, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.embedding_dim, rank, **factory))
        nn.init.normal_(self.lora_B)  # peft's init of an embedding's B: standard normal
        self.merged = False
        self.enabled = True  # False inside adapters_off(): the layer is its frozen base layer

    def delta(self) -> torch.Tensor:
        """The update to the table, scale * (B @ A)^T, shaped like the weight (num_embeddings, embedding_dim)."""
        return self.scale * (self.lora_B @ self.lora_A).T

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.weight)
        if self.merged or not self.enabled:
            return out
        # the ids' columns of A, (..., rank), then @ B^T -> (..., embedding_dim)
        return out + self.scale * (F.embedding(ids, self.lora_A.T) @ self.lora_B.T)

    def plain_layer(self) -> nn.Embedding:
        """An nn.Embedding holding this layer's table (the merged one, once merged)."""
        plain = nn.utils.skip_init(nn.Embedding, self.num_embeddings, self.embedding_dim,
                                   device=self.weight.device, dtype=self.weight.dtype)
        plain.weight = self.weight
        return plain

    def extra_repr(self) -> str:
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"rank={self.rank}, alpha={self.alpha}, rslora={self.rslora}, merged={self.merged}")


LoRALayer = LoRALinear | LoRAEmbedding


def check_lora_settings(rank: int, alpha: float, targets: tuple[str, ...] | list[str] | str, dropout: float,
                        train_head: bool, rslora: bool = False, plus_ratio: float = 1.0) -> tuple[str, ...]:
    """Raise a one-line ValueError for a bad setting; return targets as a tuple."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or not alpha > 0:  # `not >` also rejects NaN
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(rslora, bool):
        raise ValueError(f"LoRA rslora must be True or False, got {rslora!r}")
    if isinstance(plus_ratio, bool) or not isinstance(plus_ratio, (int, float)) or not 0 < plus_ratio < math.inf:
        raise ValueError(f"LoRA+ ratio must be a positive number, got {plus_ratio!r}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if not targets or unknown:
        raise ValueError(f"LoRA targets must be a non-empty subset of {', '.join(ALL_TARGETS)}; got {list(targets)}")
    if train_head and "head" in targets:
        raise ValueError("train_head=True trains the whole head already; drop 'head' from the LoRA targets")
    return targets


def matches(name: str, suffixes: tuple[str, ...]) -> bool:
    """Is a module name one of the suffixes, e.g. 'transformer.h.0.attn.c_attn' for 'attn.c_attn'?"""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def target_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the plain layers that the targets select, in model order: the nn.Linear layers, and with
    "emb" first of all the token embedding."""
    suffixes = tuple(s for group in targets if group in TARGETS for s in TARGETS[group])
    linears = [name for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and matches(name, suffixes)]
    return ([EMBEDDING_NAME] if EMBEDDING_TARGET in targets else []) + linears


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """(name, layer) for every LoRALinear and LoRAEmbedding in the model, in model order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (LoRALinear, LoRAEmbedding))]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` is ('transformer.h.0.attn.c_attn')."""
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)  # "" is the model itself


def untie_head(model: GPT) -> None:
    """Give the head its own frozen copy of the shared matrix, so changing it spares the embedding."""
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    # A new config object (not an edit of the shared one): checkpoints now save lm_head.weight.
    model.config = replace(model.config, tie_weights=False)


def refuse_if_has_lora(model: nn.Module) -> None:
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; call remove_lora(model) first")


def wrap(layer: nn.Linear | nn.Embedding, rank: int, alpha: float, dropout: float, rslora: bool,
         plus_ratio: float) -> LoRALayer:
    """The layer with a LoRA update: a LoRAEmbedding for the token embedding, else a LoRALinear."""
    if isinstance(layer, nn.Embedding):
        return LoRAEmbedding(layer, rank, alpha, rslora, plus_ratio)
    return LoRALinear(layer, rank, alpha, dropout, rslora, plus_ratio)


@dataclass
class LoRASettings:
    """LoRA's settings, one group for every stage that can train adapters (SFT, DPO, PPO, GRPO): without a
    rank there is no LoRA. The alpha that is not given is 2 * rank, so that alpha / rank is 2 at any rank."""
    lora_rank: int | None = setting(None, "train LoRA adapters of this rank instead of every weight (the base "
                                          "frozen; the alignment stages' reference is the policy with its adapters "
                                          "off)", type=positive_int, preset=False)
    lora_alpha: float | None = setting(None, "LoRA scale numerator; the update is scaled by alpha / rank (default: "
                                             "2 * rank)", type=positive_float, preset=False)
    lora_targets: list[str] = setting(["attn", "mlp"], "layers that get adapters (emb: the token embedding)",
                                      choices=sorted(ALL_TARGETS), nargs="+", preset=False)
    lora_dropout: float = setting(0.0, "dropout on the LoRA path", type=float_range(0.0, 1.0, include_high=False),
                                  preset=False)
    lora_rslora: bool = setting(False, "scale the update by alpha / sqrt(rank) instead of alpha / rank (rsLoRA)",
                                preset=False)
    lora_plus_ratio: float = setting(1.0, "B's learning rate is this multiple of A's (LoRA+; 1 = plain LoRA)",
                                     type=float_range(0.0, 1e6, include_low=False), preset=False)

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    def add_to(self, model: GPT) -> list[str]:
        """add_lora with these settings (a rank is needed)."""
        return add_lora(model, self.lora_rank, self.alpha, tuple(self.lora_targets), self.lora_dropout,
                        rslora=self.lora_rslora, plus_ratio=self.lora_plus_ratio)

    def validate(self, given: set[str]) -> None:
        lora_only = [f"--{name.replace('_', '-')}" for name in ("lora_alpha", "lora_targets", "lora_dropout",
                                                                "lora_rslora", "lora_plus_ratio") if name in given]
        if self.lora_rank is None and lora_only:
            raise ValueError(f"{lora_only[0]} needs --lora-rank (LoRA is off without a rank)")


def add_lora(model: GPT, rank: int, alpha: float, targets: tuple[str, ...] = ("attn", "mlp"), dropout: float = 0.0,
             train_head: bool = False, rslora: bool = False, plus_ratio: float = 1.0) -> list[str]:
    """Freeze the model, wrap each targeted Linear in a LoRALinear (the token embedding, for "emb", in a
    LoRAEmbedding); return the wrapped names.

    train_head=True leaves the output head's weight trainable (a new or retrained head must
    learn; tied, that matrix is also the token embedding, as in freeze.py). rslora: scale by
    alpha / sqrt(rank). plus_ratio: lora_B's learning rate as a multiple of lora_A's (LoRA+).
    """
    targets = check_lora_settings(rank, alpha, targets, dropout, train_head, rslora, plus_ratio)
    refuse_if_has_lora(model)
    for p in model.parameters():  # freeze first: only what is unfrozen below will train
        p.requires_grad_(False)
    if ("head" in targets or EMBEDDING_TARGET in targets) and head_is_tied(model):
        untie_head(model)  # either update, merged into the shared matrix, would change the other side too
    names = target_names(model, targets)
    for name in names:
        replace_module(model, name, wrap(model.get_submodule(name), rank, alpha, dropout, rslora, plus_ratio))
    if train_head:
        model.lm_head.weight.requires_grad_(True)
    return names


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer: same outputs, no extra cost per token (e.g. to serve or export)."""
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo merge_lora, e.g. to train the adapter further."""
    for _, layer in lora_layers(model):
        layer.unmerge()


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Inside this block the model is its frozen base: every LoRA layer computes W x + b alone.

    A policy trained with LoRA gets its reference model (the base it started from) this way,
    with no second copy of the weights in memory. Merged adapters cannot be switched off (their
    update is inside W): unmerge first.
        with adapters_off(policy):
            reference_logprobs = completion_logprobs(policy, x, y)
    """
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("adapters_off needs unmerged LoRA layers (a merged update is inside the weights); "
                         "call unmerge_lora(model) first")
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:  # switched back on even if the block raised
        for layer in layers:
            layer.enabled = True


def remove_lora(model: GPT) -> list[str]:
    """Merge every LoRA layer and put a plain nn.Linear (nn.Embedding) back: an ordinary GPT again.

    The plain layers hold the merged weights, and every parameter is trainable again, as
    GPT() makes it. Returns the names of the layers replaced.
    """
    names = []
    for name, layer in lora_layers(model):
        layer.merge()
        replace_module(model, name, layer.plain_layer())
        names.append(name)
    for p in model.parameters():
        p.requires_grad_(True)
    return names


def lora_parameter_count(config: GPTConfig, rank: int, targets: tuple[str, ...] = ("attn", "mlp")) -> int:
    """The number of LoRA parameters add_lora creates, from the config alone."""
    targets = check_lora_settings(rank, 1.0, targets, 0.0, False)
    E, V, H = config.n_embd, config.vocab_size, config.mlp_width
    kv = config.kv_heads * config.head_dim  # the width of k and of v: E, unless heads are shared

    def pair(n_in: int, n_out: int) -> int:
        return rank * n_in + n_out * rank  # A is (rank, in), B is (out, rank)

    per_block = 0
    if "attn" in targets:
        per_block += pair(E, E + 2 * kv) + pair(E, E)  # c_attn (q, k, v), c_proj
    if "mlp" in targets:
        per_block += pair(E, H) + pair(H, E)  # c_fc, c_proj
        if config.mlp == "swiglu":
            per_block += pair(E, H)  # c_gate
    count = config.n_layer * per_block
    if "head" in targets:
        count += pair(E, V)
    if EMBEDDING_TARGET in targets:
        count += rank * V + E * rank  # A is (rank, vocab), B is (n_embd, rank)
    return count


# ---- LoRA+: the learning rate of each parameter as a multiple of the optimizer's ----

def learning_rate_ratios(model: nn.Module) -> dict[int, float]:
    """id(parameter) -> its learning rate as a multiple of the optimizer's, for every parameter whose
    multiple is not 1: the lora_B matrices of layers that add_lora gave a plus_ratio (LoRA+)."""
    return {id(layer.lora_B): layer.plus_ratio for _, layer in lora_layers(model) if layer.plus_ratio != 1.0}


def parameter_groups(model: nn.Module, groups: list[dict], lr: float) -> list[dict]:
    """The optimizer's param groups, each split by learning-rate ratio; every group gets "lr_ratio" and
    "lr" = lr * lr_ratio. The training schedule sets each group's lr to the scheduled lr * its lr_ratio.

    Without LoRA+ every group stays as it is (the same parameters, in the same order), with lr_ratio 1.
    With LoRA+ at ratio 16:
        [{"params": [A, B], "weight_decay": 0.1}] -> [{"params": [A], "weight_decay": 0.1, "lr_ratio": 1.0, ...},
                                                      {"params": [B], "weight_decay": 0.1, "lr_ratio": 16.0, ...}]
    """
    ratios = learning_rate_ratios(model)
    split = []
    for group in groups:
        by_ratio: dict[float, list] = {1.0: []}  # ratio 1 first, and kept even if it ends up empty
        for p in group["params"]:
            by_ratio.setdefault(ratios.get(id(p), 1.0), []).append(p)
        split += [{**group, "params": params, "lr": lr * ratio, "lr_ratio": ratio}
                  for ratio, params in by_ratio.items()]
    return split


# ---- adapter files: only what LoRA learned, next to (not inside) the base checkpoint ----

def head_is_trained(model: GPT) -> bool:
    """Did add_lora(train_head=True) leave the head trainable? Then it belongs in the adapter."""
    return not isinstance(model.lm_head, LoRALinear) and model.lm_head.weight.requires_grad


def lora_settings(model: GPT) -> dict:
    """rank, alpha, dropout, targets, train_head and rslora of a model that has LoRA layers."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call add_lora first")
    first = layers[0][1]  # add_lora gives every layer the same settings
    names = [name for name, _ in layers]
    targets = [group for group, suffixes in TARGETS.items() if any(matches(n, suffixes) for n in names)]
    if EMBEDDING_NAME in names:
        targets.append(EMBEDDING_TARGET)
    # The dropout of the Linear layers' LoRA path (the embedding's update has none)
    dropout = next((layer.dropout.p for _, layer in layers if isinstance(layer, LoRALinear)), 0.0)
    return {"rank": first.rank, "alpha": first.alpha, "dropout": dropout,
            "targets": targets, "train_head": head_is_trained(model), "rslora": first.rslora}


def adapter_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The LoRA tensors under their state-dict names, plus the head when it was trained."""
    tensors = {}
    for name, layer in lora_layers(model):
        tensors[f"{name}.lora_A"] = layer.lora_A
        tensors[f"{name}.lora_B"] = layer.lora_B
    if head_is_trained(model):  # a retrained head is part of what was learned
        tensors["lm_head.weight"] = model.lm_head.weight
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


def relative_base(base: str | Path, folder: Path) -> str:
    """The base checkpoint's path as seen from the adapter folder: no machine path in adapter.json,
    and the two folders can be moved or copied together. (Another drive on Windows: kept absolute.)"""
    try:
        return Path(os.path.relpath(base, folder)).as_posix()
    except ValueError:
        return str(base)


def resolve_base(base: str | None, folder: Path) -> str | None:
    """adapter.json's "base" back to a path from here: it is stored relative to the adapter folder.
    An absolute path (older files) stays as it is."""
    if base is None:
        return None
    resolved = Path(os.path.normpath(folder / base))
    if not resolved.exists() and Path(base).exists():
        return base  # an older adapter.json, written relative to the working folder
    return str(resolved)


def save_adapter(model: GPT, folder: str | Path, base: str | Path | None = None) -> Path:
    """Write folder/adapter.safetensors and folder/adapter.json; each file is written atomically.

    base (the checkpoint the adapter was trained on) is stored relative to folder.
    """
    folder = Path(folder)
    settings = {**lora_settings(model), "base": None if base is None else relative_base(base, folder)}
    # Atomic writes (files.py): a run killed mid-save leaves the old file, never half a new one.
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(adapter_tensors(model), str(tmp))
    write_json(folder / ADAPTER_CONFIG, settings)  # last: the json says the adapter is complete
    return folder


def read_adapter_settings(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; write the adapter with save_adapter(model, folder) first")
    try:
        data = json.loads(path.read_text())
        settings = {key: data[key] for key in ("rank", "alpha", "dropout", "targets", "train_head")}
        settings["rslora"] = data.get("rslora", False)  # adapters written before rsLoRA existed scale by alpha / rank
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid adapter config ({err!r}); save the adapter again") from None
    check_lora_settings(settings["rank"], settings["alpha"], settings["targets"], settings["dropout"],
                        settings["train_head"], settings["rslora"])
    return {**settings, "base": resolve_base(data.get("base"), folder)}


def read_adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; write the adapter with save_adapter(model, folder) first")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is corrupt or unreadable ({err}); save the adapter again") from None


def expected_adapter_shapes(model: GPT, settings: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor an adapter with these settings must hold for this model."""
    rank, shapes = settings["rank"], {}
    for name in target_names(model, tuple(settings["targets"])):
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Embedding):  # A: (rank, vocab), B: (n_embd, rank)
            shapes[f"{name}.lora_A"] = (rank, layer.num_embeddings)
            shapes[f"{name}.lora_B"] = (layer.embedding_dim, rank)
        else:
            shapes[f"{name}.lora_A"] = (rank, layer.in_features)
            shapes[f"{name}.lora_B"] = (layer.out_features, rank)
    if settings["train_head"]:
        shapes["lm_head.weight"] = tuple(model.lm_head.weight.shape)
    return shapes


def load_adapter(model: GPT, folder: str | Path) -> dict:
    """Add LoRA to a plain base model with the saved settings and load the saved tensors.

    Everything is checked before the model is touched. Returns the settings (with "base").
    """
    folder = Path(folder)
    refuse_if_has_lora(model)
    settings = read_adapter_settings(folder)
    tensors = read_adapter_tensors(folder)
    expected = expected_adapter_shapes(model, settings)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [f"{n} {tuple(tensors[n].shape)} vs {expected[n]}"
                   for n in expected if n in tensors and tuple(tensors[n].shape) != expected[n]]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{folder}/{ADAPTER_WEIGHTS} does not fit this model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, shapes {wrong_shape[:3]}")
    add_lora(model, settings["rank"], settings["alpha"], tuple(settings["targets"]),
             settings["dropout"], settings["train_head"], settings["rslora"])
    model.load_state_dict(tensors, strict=False)  # strict=False: the file holds no base weights
    return settings
