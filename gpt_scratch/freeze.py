"""Layer freezing: fine-tune only part of a model, and count exactly which part.

    model = GPT(config)
    apply_freezing(model, "last_blocks", trainable_blocks=2)
    print(trainable_table(model))                 # trainable vs total, per block
    trainable, total = count_parameters(model)
    assert trainable == expected_trainable(model.config, "last_blocks", 2)

Strategies (what stays trainable):
    full               everything
    last_blocks        the last N transformer blocks, the final norm (ln_f) and the output head
    head               the output head only
    norms_biases       norm weights (LayerNorm or RMSNorm) and biases, and every bias of every Linear layer
    embeddings_frozen  everything except the token and position embeddings (a RoPE model has no position table)

apply_freezing first freezes every parameter and only then unfreezes what the strategy names.
The order is the point: a well-known course shipped a freezing flag that left every layer
trainable, because it only ever set requires_grad=False on some layers of a model that had
been unfrozen elsewhere. Freeze-first gives exactly the strategy's set whatever came before.

The tied head. By default (config.tie_weights) the output head IS the token embedding: one
matrix, one requires_grad flag, so no strategy can train one and freeze the other. The rule:
    a strategy that trains the head trains the shared matrix, so the token embedding moves
    too (full, last_blocks, head); embeddings_frozen is the one strategy that freezes the token
    embedding by name, and its promise wins: the tied head is frozen with it.
With an untied head (tie_weights=False) the two are separate and each strategy means exactly
what the table above says.
"""

import torch.nn as nn

from gpt_scratch.model import GPT, GPTConfig, RMSNorm

STRATEGIES = ("full", "last_blocks", "head", "norms_biases", "embeddings_frozen")


def head_is_tied(model: GPT) -> bool:
    """True when the output head and the token embedding are the very same tensor."""
    # Checks the tensors, not config.tie_weights: the tensors are what training updates.
    return model.lm_head.weight is model.transformer.wte.weight


def check_strategy(strategy: str, trainable_blocks: int | None, n_layer: int) -> None:
    """Raise a one-line ValueError for an unknown strategy or a bad trainable_blocks."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown freezing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "last_blocks":
        if trainable_blocks is None:
            raise ValueError("strategy 'last_blocks' needs trainable_blocks (how many of the last blocks train)")
        if not 0 <= trainable_blocks <= n_layer:
            raise ValueError(f"trainable_blocks must be between 0 and n_layer={n_layer}, got {trainable_blocks}")
    elif trainable_blocks is not None:
        raise ValueError(f"trainable_blocks only applies to strategy 'last_blocks', not {strategy!r}")


def norm_and_bias_parameters(model: GPT) -> list[nn.Parameter]:
    """Every norm's weight (and LayerNorm's bias), and the bias of every Linear layer."""
    params = []
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, RMSNorm)):
            params += list(module.parameters())  # the gain (weight) and, with config.bias, the bias
        elif isinstance(module, nn.Linear) and module.bias is not None:
            params.append(module.bias)
    return params


def parameters_to_train(model: GPT, strategy: str, trainable_blocks: int | None) -> list[nn.Parameter]:
    """The parameters a strategy unfreezes (see the module docstring for the tied head)."""
    t = model.transformer
    if strategy == "full":
        return list(model.parameters())
    if strategy == "head":
        return [model.lm_head.weight]  # tied: this is also transformer.wte.weight
    if strategy == "last_blocks":
        last = t.h[len(t.h) - trainable_blocks:]  # trainable_blocks=0 -> an empty slice
        return [*last.parameters(), *t.ln_f.parameters(), *model.lm_head.parameters()]
    if strategy == "norms_biases":
        return norm_and_bias_parameters(model)
    if strategy == "embeddings_frozen":
        params = [*t.h.parameters(), *t.ln_f.parameters()]
        if not head_is_tied(model):  # a tied head is the token embedding: it stays frozen
            params += list(model.lm_head.parameters())
        return params
    raise AssertionError(f"strategy {strategy!r} passed check_strategy but has no rule")


def apply_freezing(model: GPT, strategy: str, trainable_blocks: int | None = None) -> None:
    """Freeze every parameter, then unfreeze exactly what the strategy names."""
    check_strategy(strategy, trainable_blocks, model.config.n_layer)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in parameters_to_train(model, strategy, trainable_blocks):
        p.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a shared (tied) tensor counts once."""
    # model.parameters() yields each tensor once, even when two modules hold it.
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)


def parameter_groups(model: GPT) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, parameters) for each row of the trainable table, in the order data flows."""
    t = model.transformer
    groups = [("token embedding", list(t.wte.parameters()))]
    if "wpe" in t:  # a RoPE model has no position table
        groups.append(("position embedding", list(t.wpe.parameters())))
    groups += [(f"block {i}", list(block.parameters())) for i, block in enumerate(t.h)]
    groups.append(("final norm", list(t.ln_f.parameters())))
    head_name = "head (tied to token embedding)" if head_is_tied(model) else "head"
    groups.append((head_name, list(model.lm_head.parameters())))
    return groups


def trainable_table(model: GPT) -> str:
    """A markdown table of trainable vs total parameters per group, with a total row.

    A tensor is counted in the first row that holds it, so a tied head's matrix appears in
    the token embedding row and the rows add up to the total.
    """
    rows, seen = [], set()
    for name, params in parameter_groups(model):
        new = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in new)
        rows.append((name, sum(p.numel() for p in new if p.requires_grad), sum(p.numel() for p in new)))
    rows.append(("total", *count_parameters(model)))

    width = max(len(name) for name, _, _ in rows)
    lines = [f"| {'group':<{width}} | trainable |     total | trainable % |",
             f"|{'-' * (width + 2)}|----------:|----------:|------------:|"]
    for name, trainable, total in rows:
        percent = f"{100 * trainable / total:.1f}%" if total else "-"
        lines.append(f"| {name:<{width}} | {trainable:>9,} | {total:>9,} | {percent:>11} |")
    if head_is_tied(model):
        lines.append("\nThe tied head shares the token embedding's matrix: it is counted once, in that row.")
    return "\n".join(lines)


def norm_parameter_count(config: GPTConfig) -> int:
    """One norm: a gain per number, and LayerNorm's bias when config.bias (RMSNorm has none)."""
    return config.n_embd * (2 if config.norm == "layernorm" and config.bias else 1)


def block_bias_count(config: GPTConfig) -> int:
    """The biases of one block's Linear layers (0 with bias=False)."""
    E, H, kv = config.n_embd, config.mlp_width, config.kv_heads * config.head_dim
    matrices_out = (E + 2 * kv) + E + H + E + (H if config.mlp == "swiglu" else 0)  # c_attn, c_proj, c_fc, c_proj, c_gate
    return matrices_out if config.bias else 0


def block_parameter_count(config: GPTConfig) -> int:
    """Parameters of one transformer block: two norms, attention, MLP."""
    E, H, kv = config.n_embd, config.mlp_width, config.kv_heads * config.head_dim
    attention = E * (E + 2 * kv) + E * E  # c_attn (q, k, v at once), c_proj
    mlp = (3 if config.mlp == "swiglu" else 2) * E * H  # c_fc, c_proj (and SwiGLU's c_gate)
    return 2 * norm_parameter_count(config) + attention + mlp + block_bias_count(config)


def expected_trainable(config: GPTConfig, strategy: str, trainable_blocks: int | None = None) -> int:
    """The number of trainable parameters a strategy leaves, from the config alone."""
    check_strategy(strategy, trainable_blocks, config.n_layer)
    E = config.n_embd
    token_embedding = config.vocab_size * E
    position_embedding = config.block_size * E if config.position == "learned" else 0
    blocks = config.n_layer * block_parameter_count(config)
    final_norm = norm_parameter_count(config)
    head = config.vocab_size * E  # no bias; when tied, this matrix is the token embedding
    separate_head = 0 if config.tie_weights else head  # a tied head adds no parameters of its own

    if strategy == "full":
        return token_embedding + position_embedding + blocks + final_norm + separate_head
    if strategy == "head":
        return head
    if strategy == "last_blocks":
        return trainable_blocks * block_parameter_count(config) + final_norm + head
    if strategy == "norms_biases":
        per_block = 2 * norm_parameter_count(config) + block_bias_count(config)
        return config.n_layer * per_block + final_norm
    if strategy == "embeddings_frozen":
        return blocks + final_norm + separate_head
    raise AssertionError(f"strategy {strategy!r} passed check_strategy but has no formula")
