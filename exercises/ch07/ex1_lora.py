"""Chapter 7 exercises: LoRA from scratch, a frozen weight plus a trainable low-rank update.

    Exercise 7.1  lora_forward      W x + b + scale * B (A x), without building B @ A
    Exercise 7.2  init_lora         A random, B zero: the model starts exactly as the base model
    Exercise 7.3  merge_weight      fold scale * B @ A into W: the same outputs, no extra cost
    Exercise 7.4  lora_param_count  how many numbers LoRA trains, from the config alone

Run it: it builds a tiny random GPT, wraps the --targets layers with your LoRA (your init and
forward), shows that the zero-initialised model gives the base model's logits exactly, trains
only A and B for a few steps, merges them into the weights with your merge_weight (same logits
again), compares with gpt_scratch.lora.LoRALinear, and checks your parameter count.
    python exercises/ch07/ex1_lora.py --rank 4 --targets attn mlp head
    python exercises/ch07/ex1_lora.py --help
Grade it:  python -m gpt_scratch grade --chapter 7
"""

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import (OneLineParser, exercise_not_done, float_range, int_range,  # noqa: E402
                              non_negative_int, positive_int)
from gpt_scratch.freeze import count_parameters, head_is_tied  # noqa: E402
from gpt_scratch.lora import (TARGETS, add_lora, lora_layers, lora_parameter_count, replace_module,  # noqa: E402
                              target_names, untie_head)
from gpt_scratch.model import GPT, GPTConfig, lm_loss  # noqa: E402

VOCAB_SIZE, BLOCK_SIZE, N_HEAD, LR = 64, 16, 2, 1e-2


def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor,
                 B: torch.Tensor, scale: float) -> torch.Tensor:
    """A LoRA layer's output: x W^T + b + scale * (x A^T) B^T, for x of shape (..., in).

    weight (out, in) and bias (out,) or None are the frozen base layer (F.linear(x, weight, bias));
    A is (rank, in), B is (out, rank). Go through the rank: x A^T is (..., rank), then B^T makes
    it (..., out). Never build the (out, in) matrix B @ A: for a 4096 x 4096 layer that is 16M
    numbers per step, the path through the rank costs rank * (in + out) per token.
    Example: x [[1., 2.]], weight [[1., 0.], [0., 1.]], bias None, A [[1., 1.]], B [[1.], [0.]],
    scale 0.5 -> [[1 + 0.5 * 3, 2]] = [[2.5, 2.]].
    """
    raise NotImplementedError("Exercise 7.1: add scale * B (A x) to the frozen layer's output, through the rank")


def init_lora(in_features: int, out_features: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """New LoRA matrices (A, B): A (rank, in_features) random, B (out_features, rank) all zeros.

    A: uniform in [-1/sqrt(in_features), 1/sqrt(in_features)], drawn from torch's global
    generator (so torch.manual_seed makes it repeatable); that is the range nn.Linear gives its
    own weights. B: zeros. Then B @ A = 0, so the model starts exactly as the base model; yet B's
    gradient, which goes through A x, is not zero, so training can start. (Both zero: no
    gradient ever reaches either. Both random: the model starts off changed.)
    Return plain tensors (not nn.Parameter); the caller decides what trains.
    """
    raise NotImplementedError("Exercise 7.2: make A uniform in +-1/sqrt(in_features) and B zeros")


def merge_weight(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """The merged weight W + scale * B @ A, as a new tensor (weight itself stays unchanged).

    A plain layer with the merged weight computes what lora_forward computes, up to float
    rounding, with no extra work per token: merge once after training to serve the model.
    Subtracting the same product gives the base weight back (unmerge).
    Example: weight [[1., 0.], [0., 1.]], A [[1., 1.]], B [[1.], [0.]], scale 0.5 -> [[1.5, 0.5], [0., 1.]].
    """
    raise NotImplementedError("Exercise 7.3: return the merged weight W + scale * B @ A")


def lora_param_count(config: GPTConfig, rank: int, targets: tuple[str, ...]) -> int:
    """How many numbers LoRA of this rank trains on a GPT(config), from the config alone.

    Each targeted Linear layer (in -> out) gets A (rank x in) and B (out x rank): rank * (in + out).
    With C = config.n_embd, per block: "attn" targets c_attn (C -> 3C) and c_proj (C -> C), "mlp"
    targets c_fc (C -> 4C) and c_proj (4C -> C); "head" targets the output head once (C -> vocab_size).
    Biases and the base weights stay frozen and do not count.
    Example: C=16, 2 layers, rank 4, targets ("attn",) -> 2 * (4*(16+48) + 4*(16+16)) = 768.
    """
    raise NotImplementedError("Exercise 7.4: count rank * (in + out) for every targeted layer")


class ScriptLoRA(nn.Module):
    """A frozen Linear plus your LoRA: init_lora makes A and B, lora_forward computes the output."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.weight, self.bias = base.weight, base.bias  # frozen: the model is frozen before wrapping
        self.scale = alpha / rank
        A, B = init_lora(base.in_features, base.out_features, rank)
        self.lora_A, self.lora_B = nn.Parameter(A), nn.Parameter(B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lora_forward(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Put your LoRA on a tiny random GPT: zero-init leaves its logits "
                                                  "unchanged, training moves only A and B, merging keeps the "
                                                  "logits, and the parameter count matches your formula.")
    parser.add_argument("--rank", type=positive_int, default=2,
                        help="rank r of every update B A, 1 to --n-embd (default 2)")
    parser.add_argument("--alpha", type=float_range(0.0, 1000.0, include_low=False), default=4.0,
                        help="scale numerator: the update is multiplied by alpha / rank, >0 to 1000 (default 4)")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=("attn", "mlp"),
                        help="layers that get LoRA, one or more of: attn (c_attn, c_proj), mlp (c_fc, c_proj), "
                             "head (the output head, untied first) (default attn mlp)")
    parser.add_argument("--n-layer", type=int_range(1, 8), default=2, help="transformer blocks, 1 to 8 (default 2)")
    parser.add_argument("--n-embd", type=int_range(2, 64), default=16,
                        help=f"embedding width, even (the model has {N_HEAD} heads), 2 to 64 (default 16)")
    parser.add_argument("--steps", type=int_range(1, 100), default=3,
                        help=f"AdamW steps (lr {LR}) on A and B only, on random tokens, 1 to 100 (default 3)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the base weights, A and the tokens (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_embd % N_HEAD != 0:
        parser.error(f"--n-embd {args.n_embd} must be even: the model has {N_HEAD} attention heads")
    if args.rank > args.n_embd:
        parser.error(f"--rank {args.rank} is larger than --n-embd {args.n_embd}: every targeted layer has n_embd "
                     f"inputs or outputs, so rank {args.n_embd} already allows any update; use 1 to {args.n_embd}")
    args.targets = tuple(dict.fromkeys(args.targets))  # "attn attn" means attn once
    return args


def logits_of(model: GPT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def show_lora(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=args.n_layer, n_head=N_HEAD,
                       n_embd=args.n_embd)
    base = GPT(config).eval()
    data = torch.randint(0, VOCAB_SIZE, (4, BLOCK_SIZE + 1), generator=torch.Generator().manual_seed(args.seed + 1))
    x, y = data[:, :-1], data[:, 1:]
    base_logits = logits_of(base, x)

    model = copy.deepcopy(base)
    model.requires_grad_(False)  # freeze first: only A and B will train
    if "head" in args.targets and head_is_tied(model):
        untie_head(model)  # the head gets its own copy: merging into it must not change the token embedding
    names = target_names(model, args.targets)
    for name in names:
        replace_module(model, name, ScriptLoRA(model.get_submodule(name), args.rank, args.alpha))
    layers = [(name, model.get_submodule(name)) for name in names]
    scale = args.alpha / args.rank
    print(f"a {config.n_layer}-block GPT (n_embd {config.n_embd}, {base.num_parameters():,} parameters); "
          f"LoRA rank {args.rank}, alpha {args.alpha:g}, scale alpha / rank = {scale:g}, on {len(names)} "
          f"layer{'s' if len(names) > 1 else ''}:")
    for name, layer in layers:
        out_features, in_features = layer.weight.shape
        print(f"  {name:28} W {out_features:3} x {in_features:<3}  A {tuple(layer.lora_A.shape)}  "
              f"B {tuple(layer.lora_B.shape)}  {layer.lora_A.numel() + layer.lora_B.numel():5,} LoRA numbers")

    started = logits_of(model, x)
    print(f"1. zero init (B = 0): max |logits - base logits| = {max_diff(started, base_logits):.1e} -> "
          + ("unchanged" if torch.equal(started, base_logits) else "CHANGED (B must start at zero)"))

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for _ in range(args.steps):
        loss = lm_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    moved = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, frozen_before[n])]
    trained = logits_of(model, x)
    print(f"2. {args.steps} AdamW steps on A and B only, loss: " + " ".join(f"{v:.4f}" for v in losses)
          + f"; logits moved by up to {max_diff(trained, base_logits):.2e}; "
          + (f"frozen tensors changed: {moved[:3]} (BUG)" if moved else "frozen base weights bitwise unchanged"))

    merged = copy.deepcopy(base)
    if "head" in args.targets and head_is_tied(merged):
        untie_head(merged)
    for name, layer in layers:
        plain = merged.get_submodule(name)
        with torch.no_grad():
            plain.weight.copy_(merge_weight(layer.weight, layer.lora_A, layer.lora_B, layer.scale))
    diff = max_diff(logits_of(merged, x), trained)
    print(f"3. merged into plain weights with merge_weight: max |merged - LoRA logits| = {diff:.1e} -> "
          + ("the same up to float rounding" if diff < 1e-4 else "DIFFERENT"))

    reference = copy.deepcopy(base)
    add_lora(reference, args.rank, args.alpha, args.targets)
    for (_, theirs), (_, ours) in zip(lora_layers(reference), layers):
        with torch.no_grad():
            theirs.lora_A.copy_(ours.lora_A)
            theirs.lora_B.copy_(ours.lora_B)
    diff = max_diff(logits_of(reference, x), trained)
    print(f"4. gpt_scratch.lora.LoRALinear with your A and B: max |difference| = {diff:.1e} -> "
          + ("match" if diff < 1e-4 else "DIFFERENT"))

    formula = lora_param_count(config, args.rank, args.targets)
    counted = sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in layers)
    trainable, total = count_parameters(model)
    print(f"5. lora_param_count {formula:,}; counted in the model {counted:,}; gpt_scratch.lora.lora_parameter_count "
          f"{lora_parameter_count(config, args.rank, args.targets):,} -> "
          f"{'match' if formula == counted == lora_parameter_count(config, args.rank, args.targets) else 'DIFFERENT'}; "
          f"trainable {trainable:,} of {total:,} ({trainable / total:.1%})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_lora(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
