"""Chapter 3 exercises: the GPT model around attention, and the first generation loop.

    Exercise 3.1  block_forward      one pre-LayerNorm transformer block, from its parts
    Exercise 3.2  count_parameters   a GPT's parameter count from its config alone
    Exercise 3.3  top_k_filter       keep the k most likely tokens, rule out the rest
    Exercise 3.4  greedy_generate    the generation loop: predict, append, repeat

Run it: it builds a small random GPT, checks your parameter formula and block against
gpt_scratch, continues a random prompt greedily and shows the top-k next-token probabilities.
    python exercises/ch03/ex1_gpt.py --n-layer 3 --top-k 5
    python exercises/ch03/ex1_gpt.py --help
Grade it:  python -m gpt_scratch grade --chapter 3
"""

import argparse
import sys
from pathlib import Path

import torch

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import OneLineParser, exercise_not_done, int_range, non_negative_int, positive_int  # noqa: E402
from gpt_scratch.model import GPT, Block, GPTConfig  # noqa: E402


def block_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """One transformer block on x (B, T, C), wired from block's parts: ln_1, attn, ln_2, mlp.

    Pre-LayerNorm with residual connections: each sublayer reads a normalised copy of the
    stream and *adds* its result to it, so the input always has a direct path to the output:
        x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    The result equals block(x), gpt_scratch.model.Block's own forward.
    """
    x = x + block.attn(block.ln_1(x))
    x = x + block.mlp(block.ln_2(x))
    return x


def count_parameters(config: GPTConfig) -> int:
    """The number of parameters of GPT(config), computed from the config alone.

    Embeddings: token (vocab_size x C) and position (block_size x C). Each of n_layer blocks:
    two LayerNorms (weight C, bias C), c_attn (C x 3C weight, 3C bias), attention c_proj (C x C,
    C), mlp c_fc (C x 4C, 4C) and mlp c_proj (4C x C, C). Then ln_f, and lm_head (C x vocab_size,
    no bias) only if its weight is not tied to the token embedding. With config.bias False there
    are no biases at all (in Linear layers and LayerNorms).
    Example: vocab 10, block 4, 1 layer, C=2 -> 20 + 8 + 74 (the block) + 4 (ln_f) = 106 parameters.
    """
    C, bias = config.n_embd, int(config.bias)
    layer_norm = C + bias * C
    attention = (C * 3 * C + bias * 3 * C) + (C * C + bias * C)
    mlp = (C * 4 * C + bias * 4 * C) + (4 * C * C + bias * C)
    block = 2 * layer_norm + attention + mlp
    embeddings = config.vocab_size * C + config.block_size * C
    lm_head = 0 if config.tie_weights else C * config.vocab_size
    return embeddings + config.n_layer * block + layer_norm + lm_head


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row of (B, vocab_size); set all others to -inf.

    After a softmax, the -inf entries get probability 0, so sampling picks among k tokens only.
    Example: top_k_filter(tensor([[1., 3., 2.]]), 2) -> [[-inf, 3., 2.]].
    """
    kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


@torch.no_grad()
def greedy_generate(model: GPT, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Continue prompt by always taking the most likely next token; return the new ids only.

    Each step: run the model on the sequence so far (its last block_size tokens at most),
    take the logits of the last position, argmax, append. No KV cache: simple and slow.
    """
    ids = list(prompt)
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-model.config.block_size:]])
        logits = model(context)[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Build a small random GPT and run your block, parameter "
                                                  "formula, greedy generation and top-k filter on it.")
    parser.add_argument("--n-layer", type=int_range(1, 8), default=2, help="transformer blocks (default 2)")
    parser.add_argument("--n-head", type=int_range(1, 8), default=2,
                        help="attention heads; must divide --n-embd (default 2)")
    parser.add_argument("--n-embd", type=int_range(1, 128), default=32, help="embedding width (default 32)")
    parser.add_argument("--block-size", type=int_range(2, 64), default=16, help="context length (default 16)")
    parser.add_argument("--vocab-size", type=int_range(2, 1000), default=50, help="vocabulary size (default 50)")
    parser.add_argument("--prompt-len", type=positive_int, default=4,
                        help="random prompt tokens; at most --block-size (default 4)")
    parser.add_argument("--new-tokens", type=int_range(1, 64), default=8, help="tokens to generate (default 8)")
    parser.add_argument("--top-k", type=positive_int, default=5,
                        help="next tokens to show after top-k filtering; at most --vocab-size (default 5)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the weights and prompt (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_embd % args.n_head != 0:
        parser.error(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    if args.prompt_len > args.block_size:
        parser.error(f"--prompt-len {args.prompt_len} must be at most --block-size {args.block_size}")
    if args.top_k > args.vocab_size:
        parser.error(f"--top-k {args.top_k} must be at most --vocab-size {args.vocab_size}")
    return args


def show_gpt(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).eval()
    formula = count_parameters(config)
    print(f"parameters: your formula {formula:,}, model.num_parameters() {model.num_parameters():,}"
          f" -> {'match' if formula == model.num_parameters() else 'DIFFERENT'}")

    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,)).tolist()
    x = model.transformer.wte(torch.tensor([prompt])) + model.transformer.wpe(torch.arange(len(prompt)))
    with torch.no_grad():
        block = model.transformer.h[0]
        print(f"block_forward equals Block.forward: {torch.allclose(block_forward(block, x), block(x), atol=1e-6)}")

    new_ids = greedy_generate(model, prompt, args.new_tokens)
    print(f"prompt {prompt} -> greedy continuation {new_ids}")

    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[:, -1]  # (1, vocab_size): the next token's scores
    probs = torch.softmax(top_k_filter(logits, args.top_k), dim=-1)[0]
    top = probs.argsort(descending=True)[: args.top_k].tolist()
    print(f"next-token probabilities after top-{args.top_k} filtering (the rest are 0):")
    print("  " + ", ".join(f"{i}: {probs[i]:.6f}" for i in top))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_gpt(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
