"""Chapter 12 exercises: the four parts that take GPT-2 to a modern LLM, each checked against gpt_scratch.

    Exercise 12.1  rms_norm                  Llama's norm: no mean subtracted, no bias
    Exercise 12.2  rope                      rotary position embeddings: turn q and k by their position
    Exercise 12.3  swiglu                    the gated MLP, from the three matrices of gpt_scratch's MLP
    Exercise 12.4  repeat_kv                 each key/value head once per query head it serves
    Exercise 12.5  grouped_query_attention   the whole attention layer of a Llama: q, k, v, RoPE, shared heads

Run it: on a small random layer it checks each of your functions against gpt_scratch, shows that
RoPE's attention scores are the same when every position moves by --shift (only distances count),
counts the parameters of GPT-2's MLP against SwiGLU's, and the bytes a KV cache keeps per token
with --n-kv-head key/value heads instead of --n-head.
    python exercises/ch12/ex1_modern.py --n-head 4 --n-kv-head 1 --shift 1000
    python exercises/ch12/ex1_modern.py --help
Grade it:  python -m gpt_scratch grade --chapter 12
"""

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.model import (MLP, CausalSelfAttention, RMSNorm, apply_rope, llama_config,  # noqa: E402
                               rope_angles)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., C) with the gain weight (C,): a tensor shaped like x.

    Each vector x[..., :] is divided by its root mean square, sqrt(mean of its squares + eps), and
    then multiplied by weight, number by number. Unlike LayerNorm nothing is subtracted and there is
    no bias. The result equals gpt_scratch.model.RMSNorm's (in float32).
    Example: x = [3., -1., 1., -1.] (mean square 3), weight = [1., 1., 1., 2.], eps = 0
             -> [1.7321, -0.5774, 0.5774, -1.1547].
    """
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps))


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of x (B, H, T, D), D even, for the positions (T,): a tensor shaped like x.

    The D numbers of each vector x[b, h, t] form D/2 pairs, pair i being (x[..., i], x[..., i + D/2]),
    the two halves of the vector (as transformers' Llama does). Pair i of the vector at position
    p = positions[t] is turned counter-clockwise, as a point (a, b) of the plane, by the angle
    p * theta ** (-2 i / D) radians: pair 0 the fastest, the last pair slowest. Turning keeps every
    pair's length, and position 0 is no turn at all.
    Example: D = 2, x = [1., 0.] at position 1 (the angle is 1 radian for any theta)
             -> [cos 1, sin 1] = [0.5403, 0.8415].
    """
    D = x.shape[-1]
    angles = positions.float()[:, None] * theta ** (-2 * torch.arange(D // 2).float() / D)  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).type_as(x)


def swiglu(x: torch.Tensor, mlp: MLP) -> torch.Tensor:
    """A SwiGLU MLP on x (B, T, C), from the layers of gpt_scratch's MLP built with mlp="swiglu".

    mlp.c_gate and mlp.c_fc each map C numbers to the hidden width; the gate goes through SiLU
    (F.silu: z * sigmoid(z)) and multiplies c_fc's output number by number; mlp.c_proj maps the
    product back to C. Returns (B, T, C), equal to mlp(x) (dropout 0).
    """
    return mlp.c_proj(F.silu(mlp.c_gate(x)) * mlp.c_fc(x))


def repeat_kv(kv: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_head, T, D) -> (B, n_kv_head * n_rep, T, D): each key/value head for every query head it serves.

    Query head h uses key/value head h // n_rep, so head j of kv appears n_rep times in a row.
    Example: two heads holding 0. and 1., n_rep = 3 -> six heads holding 0., 0., 0., 1., 1., 1.
    """
    return kv.repeat_interleave(n_rep, dim=1)


def grouped_query_attention(x: torch.Tensor, layer: CausalSelfAttention, positions: torch.Tensor) -> torch.Tensor:
    """Causal grouped-query attention with RoPE on x (B, T, C), with the weights of gpt_scratch's layer.

    layer.c_attn(x) holds, side by side on the last dimension, the queries (C = n_head * head_dim
    numbers), the keys and the values (n_kv_head * head_dim each): layer.n_head, layer.n_kv_head,
    layer.head_dim. Split them into heads, turn the queries and the keys with rope() at these
    positions (T,) and base layer.config.rope_theta, give every query head its key/value head with
    repeat_kv(), attend causally (scores scaled by 1 / sqrt(head_dim); a token sees itself and the
    past), put the heads side by side again and project with layer.c_proj.
    Returns (B, T, C), equal to layer(x, rope=rope_angles(positions[None], head_dim, theta)).
    """
    B, T, C = x.shape
    kv_width = layer.n_kv_head * layer.head_dim
    q, k, v = layer.c_attn(x).split([C, kv_width, kv_width], dim=-1)
    q = q.view(B, T, layer.n_head, layer.head_dim).transpose(1, 2)
    k = k.view(B, T, layer.n_kv_head, layer.head_dim).transpose(1, 2)
    v = v.view(B, T, layer.n_kv_head, layer.head_dim).transpose(1, 2)
    theta = layer.config.rope_theta
    q, k = rope(q, positions, theta), rope(k, positions, theta)
    n_rep = layer.n_head // layer.n_kv_head
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = q @ k.transpose(-2, -1) / math.sqrt(layer.head_dim)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    y = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1) @ v
    return layer.c_proj(y.transpose(1, 2).reshape(B, T, C))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Check your RMSNorm, RoPE, SwiGLU and grouped-query attention "
                                                  "against gpt_scratch on a small random layer, and show what each "
                                                  "changes.")
    parser.add_argument("--n-embd", type=int_range(2, 256), default=16,
                        help="embedding width; --n-embd / --n-head must be even, RoPE turns pairs (default 16)")
    parser.add_argument("--n-head", type=int_range(1, 16), default=4, help="query heads (default 4)")
    parser.add_argument("--n-kv-head", type=int_range(1, 16), default=2,
                        help="key/value heads; must divide --n-head (default 2)")
    parser.add_argument("--theta", type=float_range(1.0, 1e7, include_low=False), default=10000.0,
                        help="RoPE's base (default 10000)")
    parser.add_argument("--seq-len", type=int_range(2, 32), default=6, help="tokens of the random input (default 6)")
    parser.add_argument("--shift", type=int_range(1, 100_000), default=100,
                        help="how far to move every position to show that RoPE sees distances only (default 100)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the weights and inputs (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_embd % args.n_head != 0 or (args.n_embd // args.n_head) % 2 != 0:
        parser.error(f"--n-embd {args.n_embd} / --n-head {args.n_head} must be a whole, even head size "
                     f"(RoPE turns pairs of numbers)")
    if args.n_head % args.n_kv_head != 0:
        parser.error(f"--n-kv-head {args.n_kv_head} must divide --n-head {args.n_head}")
    return args


def same(a: torch.Tensor, b: torch.Tensor) -> str:
    return "same as gpt_scratch" if torch.allclose(a, b, atol=1e-5) else "DIFFERENT from gpt_scratch"


def show_modern_parts(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = llama_config(vocab_size=16, block_size=args.seq_len, n_layer=1, n_embd=args.n_embd,
                          n_head=args.n_head, n_kv_head=args.n_kv_head, rope_theta=args.theta)
    head_dim = config.head_dim
    x = torch.randn(1, args.seq_len, args.n_embd)

    norm = RMSNorm(args.n_embd, eps=1e-6)
    torch.nn.init.normal_(norm.weight, mean=1.0, std=0.2)
    with torch.no_grad():
        normed = rms_norm(x, norm.weight, 1e-6)
        print(f"12.1 RMSNorm: root mean square {x.pow(2).mean().sqrt():.3f} -> "
              f"{(normed / norm.weight).pow(2).mean().sqrt():.3f} before the gain; {same(normed, norm(x))}")

        q, k = torch.randn(2, 1, 1, args.seq_len, head_dim).unbind(0)
        positions = torch.arange(args.seq_len)
        angles = rope_angles(positions[None], head_dim, args.theta)
        scores = rope(q, positions, args.theta) @ rope(k, positions, args.theta).transpose(-2, -1)
        moved = positions + args.shift
        shifted = rope(q, moved, args.theta) @ rope(k, moved, args.theta).transpose(-2, -1)
        print(f"12.2 RoPE: query 1's scores at positions 0..{args.seq_len - 1}: "
              + " ".join(f"{s:.3f}" for s in scores[0, 0, 1].tolist()))
        print(f"     every position moved by {args.shift}: largest change of a score "
              f"{(scores - shifted).abs().max():.1e}"
              f" (a turn by the distance only); {same(rope(q, positions, args.theta), apply_rope(q, *angles))}")

        mlp = MLP(config)
        gelu = 2 * args.n_embd * 4 * args.n_embd
        print(f"12.3 SwiGLU: hidden width {config.mlp_width}, 3 x {args.n_embd} x {config.mlp_width} = "
              f"{3 * args.n_embd * config.mlp_width:,} weights against GPT-2's 2 x {args.n_embd} x {4 * args.n_embd} = "
              f"{gelu:,}; {same(swiglu(x, mlp), mlp(x))}")

        layer = CausalSelfAttention(config)
        expected = layer(x, rope=angles)
        kv = torch.randn(1, args.n_kv_head, args.seq_len, head_dim)
        n_rep = args.n_head // args.n_kv_head
        repeated = repeat_kv(kv, n_rep)
        print(f"12.4 repeat_kv: key/value heads {args.n_kv_head} -> {repeated.shape[1]}, query head h reads head "
              f"h // {n_rep}; {same(repeated, kv.repeat_interleave(n_rep, dim=1))}")
        per_token = 2 * args.n_kv_head * head_dim * 4  # keys and values, float32
        print(f"12.5 grouped-query attention: the KV cache keeps {per_token:,} bytes per token and layer "
              f"({args.n_kv_head} of {args.n_head} heads, {args.n_head // args.n_kv_head}x less); "
              f"{same(grouped_query_attention(x, layer, positions), expected)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_modern_parts(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
