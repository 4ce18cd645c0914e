"""The command line: `python -m gpt_scratch <stage> [flags]`; `--help` on any stage explains it.

    python -m gpt_scratch run                 the whole course pipeline on the embedded default
    python -m gpt_scratch data                generate the embedded world's data files
    python -m gpt_scratch pretrain            train a tokenizer and a GPT on a text file
    python -m gpt_scratch import-gpt2         a Hugging Face GPT-2 as a checkpoint the stages read
    python -m gpt_scratch import-llama        a Hugging Face Llama-family model as a checkpoint (export-llama: back)
    python -m gpt_scratch sft                 instruction fine-tuning, scored by the judge
    python -m gpt_scratch reward              a reward model on the preference pairs (chapter 8)
    python -m gpt_scratch ppo                 RLHF with PPO against the reward model (chapter 9)
    python -m gpt_scratch grpo                RL with the judge as the reward, GRPO (chapter 11)
    python -m gpt_scratch dpo                 direct preference optimisation on the same pairs (chapter 10)
    python -m gpt_scratch compare             freezing strategies vs LoRA ranks, in one table
    python -m gpt_scratch compare-alignment   SFT, PPO, DPO, IPO, cDPO, robust DPO at label noise 0 and 0.2
    python -m gpt_scratch generate            sample text from a checkpoint (or answer one question)
    python -m gpt_scratch chat                talk to a fine-tuned model, turn by turn
    python -m gpt_scratch serve               chat with every model of a run in the browser, side by side
    python -m gpt_scratch bench               training / generation speed and MFU
    python -m gpt_scratch grade               grade the exercises (or --solutions)

Every flag is checked by argparse (choices=, typed ranges) and against the other flags, before
any file is read; a bad value exits with code 2 and one line saying what is allowed.

pretrain, sft, reward, dpo, ppo and grpo also train in several processes, one model (distributed.py):
    torchrun --standalone --nproc_per_node=2 -m gpt_scratch pretrain --corpus data/corpus.txt
--batch-size (and sft's --replay, the RL stages' --minibatch-size) is then the global batch,
shared out over the processes.
"""

import argparse
import sys
from dataclasses import asdict, fields
from pathlib import Path

from gpt_scratch import distributed
from gpt_scratch.args import (OneLineParser, float_range, int_range, non_negative_int, positive_float, positive_int,
                              print_error, yield_to_rank_0)
from gpt_scratch.presets import PRESETS
from gpt_scratch.tokenizer import Tokenizer, gpt2_tokenizer
from gpt_scratch.train import TrainConfig

MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "attention")
MULTI_PROCESS_STAGES = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")  # the stages that train under torchrun
TRAIN_FLAGS = ("max_steps", "batch_size", "grad_accum", "lr", "warmup_steps", "weight_decay", "grad_clip",
               "eval_every", "save_every", "seed", "device", "dtype")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (default: from --preset)")
    group.add_argument("--n-layer", type=int_range(1, 96), help="transformer blocks")
    group.add_argument("--n-head", type=int_range(1, 128), help="attention heads (must divide --n-embd)")
    group.add_argument("--n-embd", type=int_range(1, 16384), help="embedding width")
    group.add_argument("--block-size", type=int_range(2, 8192), help="context length in tokens")
    group.add_argument("--dropout", type=float_range(0.0, 1.0, include_high=False), help="dropout rate")
    group.add_argument("--attention", choices=["manual", "sdpa"], help="written-out attention or PyTorch's SDPA")


def add_train_flags(parser: argparse.ArgumentParser, stage: str) -> None:
    group = parser.add_argument_group(f"training (default: from --preset's {stage} settings)")
    group.add_argument("--max-steps", type=positive_int, help="optimizer steps")
    group.add_argument("--batch-size", type=positive_int,
                       help="sequences per micro-batch (under torchrun: of all the processes together)")
    group.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimizer step")
    group.add_argument("--lr", type=positive_float, help="peak learning rate")
    group.add_argument("--warmup-steps", type=non_negative_int, help="linear warmup steps (<= --max-steps)")
    group.add_argument("--weight-decay", type=float_range(0.0, 10.0), help="AdamW weight decay on matrices")
    group.add_argument("--grad-clip", type=float_range(0.0, 1e6), help="max gradient norm (0 = off)")
    group.add_argument("--eval-every", type=positive_int, help="validate every N steps")
    group.add_argument("--save-every", type=positive_int, help="checkpoint every N steps")
    group.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    group.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                       help="where to train (default: auto = cuda, else mps, else cpu)")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                       help="auto = bf16 autocast where the device has bf16 in hardware (a recent GPU, "
                            "or a CPU with AVX-512 BF16 / AMX), else float32")
    group.add_argument("--resume", action="store_true", help="continue from the stage folder's checkpoint")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def add_tuning_flags(parser: argparse.ArgumentParser) -> None:
    """Chapters 6 and 7: which parameters fine-tuning changes."""
    from gpt_scratch.freeze import STRATEGIES
    from gpt_scratch.lora import TARGETS

    group = parser.add_argument_group("what to train (default: every parameter)")
    group.add_argument("--freeze", choices=STRATEGIES, default="full",
                       help="freezing strategy (last_blocks needs --trainable-blocks; default full = nothing frozen)")
    group.add_argument("--trainable-blocks", type=non_negative_int,
                       help="with --freeze last_blocks: how many of the last blocks train (0..n_layer of the base)")
    group.add_argument("--lora-rank", type=positive_int, help="train LoRA adapters of this rank instead (base frozen)")
    group.add_argument("--lora-alpha", type=positive_float, help="LoRA scale numerator (default 2 * rank)")
    group.add_argument("--lora-targets", nargs="+", choices=sorted(TARGETS), default=None,
                       help="layers that get adapters (default attn mlp)")
    group.add_argument("--lora-dropout", type=float_range(0.0, 1.0, include_high=False), default=None,
                       help="dropout on the LoRA path (default 0)")


def check_tuning(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The tuning flags against each other (no file needed); a contradiction exits 2 with one line."""
    lora_only = [flag for flag, value in (("--lora-alpha", args.lora_alpha), ("--lora-targets", args.lora_targets),
                                          ("--lora-dropout", args.lora_dropout)) if value is not None]
    if args.lora_rank is None and lora_only:
        parser.error(f"{lora_only[0]} needs --lora-rank (LoRA is off without a rank)")
    if args.lora_rank is not None and (args.freeze != "full" or args.trainable_blocks is not None):
        parser.error("--lora-rank cannot be combined with --freeze/--trainable-blocks: LoRA freezes the whole base "
                     "model itself")
    if args.freeze == "last_blocks" and args.trainable_blocks is None:
        parser.error("--freeze last_blocks needs --trainable-blocks N")
    if args.trainable_blocks is not None and args.freeze != "last_blocks":
        parser.error(f"--trainable-blocks only works with --freeze last_blocks, not --freeze {args.freeze}")


def tuning_from(parser: argparse.ArgumentParser, args: argparse.Namespace, n_layer: int):
    """The Tuning the (already checked) flags ask for, against a base model of n_layer blocks."""
    from gpt_scratch.sft import Tuning

    if args.trainable_blocks is not None and args.trainable_blocks > n_layer:
        parser.error(f"--trainable-blocks {args.trainable_blocks} is more than the base model's {n_layer} blocks; "
                     f"use 0..{n_layer}")
    return Tuning(args.freeze, args.trainable_blocks, args.lora_rank, args.lora_alpha,
                  tuple(args.lora_targets or ("attn", "mlp")), args.lora_dropout or 0.0)


def model_settings(args: argparse.Namespace) -> dict:
    """The preset's model shape with any flags given on the command line on top."""
    settings = dict(PRESETS[args.preset]["model"])
    for name in MODEL_FLAGS:
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return settings


def train_config(args: argparse.Namespace, stage: str) -> TrainConfig:
    settings = dict(PRESETS[args.preset][stage])
    for name in TRAIN_FLAGS:
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in settings.items() if k in known})


def add_gpt2_vocab_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpt2-vocab", metavar="FILE",
                        help="GPT-2's vocabulary as a local gpt2.tiktoken file, for a machine without internet "
                             "(default: $GPT_SCRATCH_GPT2_TIKTOKEN, else tiktoken downloads it once)")


def pretrain_tokenizer(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Tokenizer | None:
    """The tokenizer the pretrain stage uses: None = train one on the corpus, else GPT-2's, loaded now.

    GPT-2's is loaded before anything else, so that without its vocabulary (offline, no file)
    the command stops at once with one line, not after the corpus was read or data written.
    """
    choice = args.tokenizer or PRESETS[args.preset]["tokenizer"]
    if choice == "gpt2" and args.vocab_size is not None:
        parser.error("--vocab-size sizes a tokenizer trained on the corpus; GPT-2's has its own 50,257 tokens "
                     "(leave out --vocab-size, or give --tokenizer train)")
    if choice == "train" and args.gpt2_vocab is not None:
        parser.error("--gpt2-vocab needs --tokenizer gpt2 (here the tokenizer is trained on the corpus)")
    if choice == "train":
        return None
    return gpt2_tokenizer(args.gpt2_vocab, chat_tokens=True)  # the chat tokens: for SFT's chat template


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """--device cuda or mps where there is no such GPU: exit 2 with one line."""
    if device not in ("cuda", "mps"):
        return
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        parser.error("--device mps: no Apple GPU is visible here; use --device auto or cpu")


def check_train(parser: argparse.ArgumentParser, args: argparse.Namespace, stage: str) -> TrainConfig:
    """Cross-flag checks of the training flags (exit 2 with one line); returns the training config."""
    cfg = train_config(args, stage)
    if cfg.warmup_steps > cfg.max_steps:
        parser.error(f"--warmup-steps {cfg.warmup_steps} is larger than --max-steps {cfg.max_steps}")
    check_splits(parser, "--batch-size", cfg.batch_size)
    check_device(parser, args.device)
    return cfg


def check_splits(parser: argparse.ArgumentParser, flag: str, value: int) -> None:
    """Under torchrun a batch is shared out over the processes: its size must be a multiple of their number."""
    processes = distributed.world_size()
    if value % processes != 0:
        parser.error(f"{flag} {value} cannot be split over {processes} processes: use a multiple of {processes}")


def join_processes(args: argparse.Namespace, device: str | None = None) -> None:
    """Under torchrun, once every flag is checked: join the other processes (main() leaves at the end).
    device: the device setting when it is not args.device (e.g. one a preset gives)."""
    from gpt_scratch.train import pick_device
    distributed.start(pick_device(device or args.device))


def check_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace, why: str = "") -> None:
    """Sampling flags that would be silently ignored: exit 2 with one line.
    why: where a temperature of 0 comes from when the user did not give it (", the default for a question")."""
    if args.temperature == 0:
        ignored = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p)) if value is not None]
        if ignored:
            parser.error(f"{ignored[0]} has no effect with --temperature 0{why} (greedy: always the most likely "
                         f"token); give --temperature > 0 to sample")
        if getattr(args, "num_samples", 1) > 1:
            parser.error(f"--num-samples {args.num_samples} with --temperature 0{why} (greedy) gives "
                         f"{args.num_samples} identical samples; give --temperature > 0 to sample")


def check_model_and_train(parser: argparse.ArgumentParser, args: argparse.Namespace, stage: str) -> None:
    """Cross-flag checks: exit 2 with one line if the combination cannot work."""
    model = model_settings(args)
    if model["n_embd"] % model["n_head"] != 0:
        parser.error(f"--n-embd {model['n_embd']} must be divisible by --n-head {model['n_head']}")
    check_train(parser, args, stage)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The main parser and each stage's own parser (used for its cross-flag errors)."""
    from gpt_scratch import grade as grade_command
    from gpt_scratch import llama
    from gpt_scratch import serve as serve_command
    from gpt_scratch.compare import DEFAULT_METHODS, method_type
    from gpt_scratch.compare_alignment import DEFAULT_METHODS as ALIGNMENT_DEFAULTS
    from gpt_scratch.compare_alignment import METHODS as ALIGNMENT_METHODS
    from gpt_scratch.grpo import FAMILY_WEIGHTS
    from gpt_scratch.ppo_math import AGGREGATIONS
    from gpt_scratch.world import command as data_command

    parser = OneLineParser(prog="python -m gpt_scratch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")

    run = stages.add_parser("run", help="the whole pipeline on the embedded default, with a report")
    run.add_argument("--out", default="runs/default", help="run folder (default runs/default)")
    run.add_argument("--preset", choices=["auto", *sorted(PRESETS)], default="auto",
                     help="size of everything; auto: default, or fast on a CPU without bf16 hardware (float32)")
    run.add_argument("--seed", type=non_negative_int, default=0, help="seed for data and training")
    run.add_argument("--corpus", help="train on this text file instead of the generated corpus")
    run.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_gpt2_vocab_flag(run)

    data = stages.add_parser("data", help="write the embedded world's corpus, tasks and preferences")
    data_command.add_arguments(data)

    pre = stages.add_parser("pretrain", help="train a tokenizer and a GPT on a text file")
    pre.add_argument("--corpus", default="data/corpus.txt", help="UTF-8 text file (default data/corpus.txt)")
    pre.add_argument("--out", default="runs/default/pretrain", help="stage folder")
    pre.add_argument("--preset", choices=sorted(PRESETS), default="default", help="model and training size")
    pre.add_argument("--tokenizer", choices=["train", "gpt2"],
                     help="train: a BPE tokenizer learnt on the corpus; gpt2: GPT-2's own (default: the preset's)")
    pre.add_argument("--vocab-size", type=int_range(260, 200_000), help="BPE vocabulary incl. special tokens")
    add_gpt2_vocab_flag(pre)
    pre.add_argument("--val-fraction", type=float_range(0.0, 0.5, include_low=False), default=0.05,
                     help="share of the corpus kept for validation (default 0.05)")
    add_model_flags(pre)
    add_train_flags(pre, "pretrain")

    imp = stages.add_parser("import-gpt2", help="a Hugging Face GPT-2 (folder or size name) as a checkpoint with "
                                                "GPT-2's tokenizer, for sft --base and every other stage")
    imp.add_argument("--hf", required=True,
                     help="a folder with config.json + model.safetensors, or gpt2, gpt2-medium, gpt2-large, gpt2-xl "
                          "(downloaded once)")
    imp.add_argument("--out", default="runs/gpt2/base", help="stage folder; the checkpoint goes into its checkpoint/")
    add_gpt2_vocab_flag(imp)

    llama.add_commands(stages)  # import-llama, export-llama

    sft = stages.add_parser("sft", help="instruction fine-tuning of a pretrained model, scored by the judge")
    sft.add_argument("--base", default="runs/default/pretrain",
                     help="checkpoint to start from: a stage or checkpoint folder (default runs/default/pretrain)")
    sft.add_argument("--data", default="runs/default/data",
                     help="folder with sft_train.json, sft_val.json, sft_test.json (from `data`), or one instruction "
                          "file (Alpaca, prompt/completion or chat; .json or .jsonl): validated on a held-out slice, "
                          "no judge")
    sft.add_argument("--out", default="runs/default/sft", help="stage folder")
    sft.add_argument("--preset", choices=sorted(PRESETS), default="default", help="training size")
    sft.add_argument("--template", choices=["alpaca", "chat"], default="chat",
                     help="prompt template (default chat: shorter, and it carries pretraining knowledge over better)")
    sft.add_argument("--loss-on", choices=["answer", "all"], default="answer",
                     help="train on answer tokens only (prompt masked with -100) or on all tokens")
    sft.add_argument("--n-train", type=positive_int, help="use only the first N training examples")
    sft.add_argument("--n-eval", type=positive_int, help="score only the first N test examples")
    sft.add_argument("--max-length", type=int_range(8, 8192),
                     help="longest example in tokens (longer ones are cut, with a count); at most the context")
    sft.add_argument("--skip-before", action="store_true", help="do not score the base model before training")
    sft.add_argument("--replay", type=non_negative_int,
                     help="windows of pretraining text also trained on at every step, so that fine-tuning does "
                          "not make the model forget it (0 = off; default: the preset's)")
    sft.add_argument("--replay-corpus", help="the text to replay (default: the corpus the base was pretrained on)")
    add_tuning_flags(sft)
    add_train_flags(sft, "sft")

    reward = stages.add_parser("reward", help="train a reward model on preference pairs, measured against the "
                                              "hidden rule")
    reward.add_argument("--sft", default="runs/default/sft",
                        help="the SFT stage (or checkpoint) folder whose model the reward model starts from")
    reward.add_argument("--data", default="runs/default/data",
                        help="folder with preferences_train.jsonl, preferences_test.jsonl, sft_test.json (from `data`)")
    reward.add_argument("--out", default="runs/default/reward", help="stage folder")
    reward.add_argument("--preset", choices=sorted(PRESETS), default="default", help="training size")
    reward.add_argument("--score", choices=["head+logprob", "head"], default="head+logprob",
                        help="head: the scalar head at the last real token (the classic reward model); head+logprob "
                             "(default): plus a learned multiple of log p(answer | prompt) under the body")
    reward.add_argument("--body", choices=["frozen", "trained"], default="frozen",
                        help="frozen (default): only the head learns, the SFT body stays as it is; trained: the whole "
                             "model learns (give a smaller --lr, e.g. 5e-4)")
    reward.add_argument("--margin", type=float_range(0.0, 100.0), default=0.0,
                        help="ask for r_chosen - r_rejected > margin in the loss (default 0)")
    reward.add_argument("--center-coef", type=float_range(0.0, 100.0), default=0.0,
                        help="weight of the centering term mean((r_chosen + r_rejected)^2) (default 0 = off)")
    reward.add_argument("--n-train", type=int_range(2), help="use only the first N training pairs")
    reward.add_argument("--n-eval", type=positive_int, help="score only the first N held-out pairs")
    reward.add_argument("--best-of", type=int_range(0, 1024),
                        help="best-of-n up to this n on held-out prompts, 0 = off (default: the preset's)")
    reward.add_argument("--best-of-prompts", type=positive_int,
                        help="held-out prompts for best-of-n (default: the preset's)")
    add_train_flags(reward, "reward")

    from gpt_scratch.dpo import LOSSES

    dpo = stages.add_parser("dpo", help="direct preference optimisation: the SFT model trained on the preference "
                                        "pairs, with no reward model")
    dpo.add_argument("--sft", default="runs/default/sft",
                     help="the SFT stage (or checkpoint) folder: the policy to train, and the reference")
    dpo.add_argument("--data", default="runs/default/data",
                     help="a folder with preferences_train.jsonl and sft_test.json (from `data`; the held-out measures "
                          "need the judge), or one preference file (JSONL or JSON list: prompt/chosen/rejected, "
                          "instruction/input/chosen/rejected, chosen/rejected, or chat messages)")
    dpo.add_argument("--out", default="runs/default/dpo", help="stage folder")
    dpo.add_argument("--preset", choices=sorted(PRESETS), default="default", help="sizes (default: the preset's dpo)")
    dpo.add_argument("--loss", choices=LOSSES, default="sigmoid",
                     help="sigmoid (default): DPO; ipo: (h - 1/(2 beta))^2; hinge: max(0, 1 - beta h); cdpo: "
                          "conservative DPO, DPO with label smoothing; robust: Chowdhury et al.'s robust DPO, "
                          "unbiased under a share --label-smoothing of flipped labels (robust is not the "
                          "label-smoothed loss: that one is cdpo)")
    dpo.add_argument("--beta", type=positive_float,
                     help="strength of the pull towards the SFT reference: the implicit reward is beta log(pi/pi_ref) "
                          "(default: the preset's)")
    dpo.add_argument("--label-smoothing", type=float_range(0.0, 0.5, include_high=False),
                     help="with --loss cdpo or robust: the probability eps that a label is wrong, in [0, 0.5) "
                          "(default: the preset's)")
    dpo.add_argument("--lora-rank", type=positive_int,
                     help="train LoRA adapters of this rank instead of every weight (the reference is then the "
                          "policy with its adapters off)")
    dpo.add_argument("--n-train", type=int_range(2), help="use only the first N preference pairs")
    dpo.add_argument("--n-eval", type=positive_int, help="measure on only the first N test questions")
    add_train_flags(dpo, "dpo")

    ppo = stages.add_parser("ppo", help="RLHF with PPO: the SFT model optimised against the reward model")
    ppo.add_argument("--sft", default="runs/default/sft", help="the SFT stage folder: policy, reference, value model")
    ppo.add_argument("--reward", default="runs/default/reward", help="the reward stage folder (a head checkpoint)")
    ppo.add_argument("--data", default="runs/default/data", help="folder with sft_train.json and sft_test.json")
    ppo.add_argument("--out", default="runs/default/ppo", help="stage folder")
    ppo.add_argument("--preset", choices=sorted(PRESETS), default="default", help="sizes (default: the preset's ppo)")
    ppo.add_argument("--steps", type=positive_int, help="PPO steps (rollout + update)")
    ppo.add_argument("--batch-size", type=positive_int, help="rollouts (prompts) per step")
    ppo.add_argument("--minibatch-size", type=positive_int, help="rollouts per gradient step (must divide --batch-size)")
    ppo.add_argument("--epochs", type=int_range(1, 100), help="passes over each rollout batch")
    ppo.add_argument("--lr", type=positive_float, help="policy learning rate")
    ppo.add_argument("--value-lr", type=positive_float, help="value model learning rate")
    ppo.add_argument("--kl-coef", type=float_range(0.0, 100.0), default=0.05,
                     help="weight of the per-token KL penalty to the SFT reference (0 = none; default 0.05)")
    ppo.add_argument("--kl-estimator", choices=["k1", "k3"], default="k1", help="KL estimator per token (default k1)")
    ppo.add_argument("--kl-target", type=positive_float,
                     help="adaptive KL: steer the KL per answer (nats) to this target (needs --kl-coef > 0)")
    ppo.add_argument("--clip-range", type=float_range(0.0, 10.0, include_low=False), default=0.2,
                     help="PPO ratio clip epsilon (default 0.2)")
    ppo.add_argument("--value-clip", type=float_range(0.0, 100.0, include_low=False), default=0.2,
                     help="value clip epsilon (default 0.2)")
    ppo.add_argument("--value-baseline", action=argparse.BooleanOptionalAction, default=True,
                     help="the value model's values as the baseline of GAE (default); --no-value-baseline: no value "
                          "model, a token's advantage is the reward still to come, whitened (an ablation)")
    ppo.add_argument("--gamma", type=float_range(0.0, 1.0), default=1.0, help="discount (default 1)")
    ppo.add_argument("--lam", type=float_range(0.0, 1.0), default=0.95, help="GAE lambda (default 0.95)")
    ppo.add_argument("--max-new-tokens", type=int_range(1, 8192), help="longest answer sampled")
    ppo.add_argument("--temperature", type=float_range(0.0, 100.0, include_low=False), default=1.0,
                     help="sampling temperature of the rollouts (default 1)")
    ppo.add_argument("--no-end-penalty", type=float_range(-1000.0, 0.0), default=-2.0,
                     help="score of an answer that never ends (default -2)")
    ppo.add_argument("--grad-clip", type=float_range(0.0, 1e6), default=1.0, help="max gradient norm (0 = off)")
    ppo.add_argument("--lora-rank", type=positive_int,
                     help="train LoRA adapters of this rank (the reference is the policy with adapters off)")
    ppo.add_argument("--lora-alpha", type=positive_float, help="LoRA scale numerator (default 2 * rank)")
    ppo.add_argument("--eval-every", type=positive_int, help="held-out accuracy and win-rate every N steps")
    ppo.add_argument("--n-eval", type=positive_int, help="score only the first N test questions")
    ppo.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    ppo.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    ppo.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    ppo.add_argument("--resume", action="store_true", help="continue from the stage folder's checkpoint")
    ppo.add_argument("--quiet", action="store_true")

    grpo = stages.add_parser("grpo", help="RL with a verifiable reward (GRPO): the judge's verdict is the reward")
    grpo.add_argument("--sft", default="runs/default/sft", help="the SFT stage folder: the policy and the reference")
    grpo.add_argument("--data", default="runs/default/data",
                      help="folder with sft_train.json (the prompts trained on) and sft_test.json (held out)")
    grpo.add_argument("--out", default="runs/default/grpo", help="stage folder")
    grpo.add_argument("--preset", choices=sorted(PRESETS), default="default", help="sizes (default: the preset's grpo)")
    grpo.add_argument("--steps", type=positive_int, help="GRPO steps (rollout + update)")
    grpo.add_argument("--batch-size", type=positive_int,
                      help="answers per step: batch-size / group-size prompts, group-size answers each")
    grpo.add_argument("--group-size", type=int_range(2, 1024),
                      help="answers per prompt, G (at least 2; must divide --batch-size)")
    grpo.add_argument("--minibatch-size", type=positive_int, help="answers per gradient step (must divide --batch-size)")
    grpo.add_argument("--epochs", type=int_range(1, 100), help="passes over each rollout batch")
    grpo.add_argument("--lr", type=positive_float, help="learning rate")
    grpo.add_argument("--clip-range", type=float_range(0.0, 10.0, include_low=False), help="ratio clip epsilon")
    grpo.add_argument("--kl-coef", type=float_range(0.0, 100.0),
                      help="weight of the k3 KL to the SFT reference in the loss (0 = none)")
    grpo.add_argument("--std", action=argparse.BooleanOptionalAction, default=None,
                      help="divide each group's advantages by the group's std (GRPO); --no-std: do not (Dr. GRPO)")
    grpo.add_argument("--population-std", action="store_true", default=None,
                      help="the group's std divided by G (the population std) instead of G - 1 (Bessel's "
                           "correction, as DeepSeekMath and TRL compute it: the default)")
    grpo.add_argument("--loss-agg", dest="aggregation", choices=list(AGGREGATIONS),
                      help="how token losses become one: seq-mean-token-mean (GRPO), token-mean (DAPO), "
                           "seq-mean-token-sum-norm (Dr. GRPO: each answer's sum / --max-new-tokens)")
    grpo.add_argument("--format-reward", type=float_range(0.0, 100.0),
                      help="reward on top for an answer in the preferred style 'The answer is X.' (0 = off)")
    grpo.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=None,
                      help="replace groups whose rewards are all equal (they teach nothing) by fresh prompts")
    grpo.add_argument("--max-resample", type=int_range(0, 15),
                      help="with --dynamic-sampling: extra rollouts per step at most, 0 to 15")
    grpo.add_argument("--family-weights", choices=list(FAMILY_WEIGHTS),
                      help="uniform: every training prompt alike; sft-error: families in proportion to the SFT "
                           "model's error rate on training prompts (measured once, greedy)")
    grpo.add_argument("--weight-sample", type=positive_int,
                      help="with --family-weights sft-error: training prompts the error rates are measured on")
    grpo.add_argument("--max-new-tokens", type=int_range(1, 8192), help="longest answer sampled")
    grpo.add_argument("--temperature", type=float_range(0.0, 100.0, include_low=False),
                      help="sampling temperature of the rollouts and of pass@k")
    grpo.add_argument("--grad-clip", type=float_range(0.0, 1e6), help="max gradient norm (0 = off)")
    grpo.add_argument("--eval-every", type=positive_int, help="held-out accuracy and pass@k every N steps")
    grpo.add_argument("--eval-samples", type=positive_int,
                      help="sampled answers per held-out prompt for pass@k (at least --group-size)")
    grpo.add_argument("--n-eval", type=positive_int, help="score only the first N test questions")
    grpo.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    grpo.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    grpo.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    grpo.add_argument("--resume", action="store_true", help="continue from the stage folder's checkpoint")
    grpo.add_argument("--quiet", action="store_true")

    aligned = stages.add_parser(
        "compare-alignment", help="SFT, PPO, DPO and its variants from one SFT model and the same pairs, in one table")
    aligned.add_argument("--sft", default="runs/default/sft", help="the SFT stage folder every method starts from")
    aligned.add_argument("--data", default="runs/default/data", help="the data folder (preference pairs and questions)")
    aligned.add_argument("--out", default="runs/alignment", help="one sub-folder per noise level and method")
    aligned.add_argument("--preset", choices=sorted(PRESETS), default="default", help="every stage's settings")
    aligned.add_argument("--methods", nargs="+", choices=ALIGNMENT_METHODS, default=list(ALIGNMENT_DEFAULTS),
                         help=f"methods to run (default: {' '.join(ALIGNMENT_DEFAULTS)})")
    aligned.add_argument("--noise", nargs="+", type=float_range(0.0, 0.5, include_high=False), default=[0.0, 0.2],
                         help="label-noise levels of the training pairs (default 0 0.2)")
    aligned.add_argument("--quiet", action="store_true")

    compare = stages.add_parser("compare", help="fine-tune with several freezing/LoRA methods and compare them")
    compare.add_argument("--base", default="runs/default/pretrain", help="the checkpoint every method starts from")
    compare.add_argument("--data", default="runs/default/data", help="folder with the sft_*.json files")
    compare.add_argument("--out", default="runs/compare", help="one sub-folder per method, plus the table and plot")
    compare.add_argument("--preset", choices=sorted(PRESETS), default="default", help="training size")
    compare.add_argument("--methods", nargs="+", type=method_type, default=list(DEFAULT_METHODS),
                         help="full, last_blocks:N, head, norms_biases, embeddings_frozen, lora:R "
                              "(default: all strategies and LoRA ranks 1-16)")
    compare.add_argument("--max-steps", type=positive_int, help="training steps of every method (default: the preset's)")
    compare.add_argument("--n-eval", type=positive_int, help="score only the first N test examples")
    compare.add_argument("--quiet", action="store_true")

    gen = stages.add_parser("generate", help="continue a prompt with a trained model (or answer one question)")
    gen.add_argument("--checkpoint", default="runs/default/pretrain", help="checkpoint or stage folder")
    gen.add_argument("--prompt", default="Once upon a time", help="text to continue (with --template: the question)")
    gen.add_argument("--template", choices=["none", "chat", "alpaca"],
                     help="chat or alpaca: put the prompt into this template as a question (a typed \\n is a line "
                          "break) and print only the answer, which ends at end-of-text; none: continue the prompt "
                          "as plain text. Default: the template the checkpoint was trained with (SFT records it), "
                          "none for a base model")
    gen.add_argument("--max-new-tokens", type=int_range(1, 100_000), default=100)
    gen.add_argument("--temperature", type=float_range(0.0, 100.0),
                     help="0 = greedy. Default: 0 for a question (as chat and the evaluation answer), 0.8 for plain "
                          "text to continue")
    gen.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens")
    gen.add_argument("--top-p", type=float_range(0.0, 1.0, include_low=False), help="nucleus sampling mass")
    gen.add_argument("--num-samples", type=int_range(1, 64), default=1)
    gen.add_argument("--seed", type=non_negative_int, default=0)
    gen.add_argument("--crop", action="store_true", help="keep the end of a prompt longer than the context")

    chat = stages.add_parser(
        "chat", help="talk to a fine-tuned model in the terminal, turn by turn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A multi-turn chat: the conversation, in the template the model was trained with, is the\n"
                    "prompt (its oldest turns are dropped when it outgrows the context; the alpaca template holds\n"
                    "one question, so with it each question is asked on its own). A question is one line; a typed\n"
                    "\\n is a line break (\"Reverse the letters.\\n\\nc a t\"). Empty lines are skipped, /reset\n"
                    "forgets the conversation, /quit or Ctrl-D leaves.")
    chat.add_argument("--checkpoint", default="runs/default/sft",
                      help="checkpoint or stage folder of any stage (default runs/default/sft)")
    chat.add_argument("--template", choices=["chat", "alpaca"],
                      help="the prompt template (default: the one the checkpoint was trained with, which SFT records; "
                           "chat for a base model whose tokenizer has the chat tokens, else alpaca)")
    chat.add_argument("--max-new-tokens", type=int_range(1, 8192), default=32,
                      help="longest answer in tokens; the conversation keeps the rest of the context (default 32)")
    chat.add_argument("--temperature", type=float_range(0.0, 100.0), default=0.0,
                      help="0 = greedy, as the course's evaluation (default 0)")
    chat.add_argument("--top-k", type=positive_int,
                      help="sample among the k most likely tokens (needs --temperature > 0)")
    chat.add_argument("--top-p", type=float_range(0.0, 1.0, include_low=False),
                      help="nucleus sampling mass (needs --temperature > 0)")
    chat.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed of the conversation (default 0)")

    bench = stages.add_parser("bench", help="training tokens/s, MFU and generation speed with/without KV cache")
    bench.add_argument("--preset", choices=sorted(PRESETS), default="default")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    bench.add_argument("--steps", type=int_range(1, 1000), default=10, help="timed training steps")
    bench.add_argument("--new-tokens", type=int_range(1, 8192), default=256, help="tokens to generate")
    bench.add_argument("--batch-size", type=positive_int, help="training batch (default: the preset's)")

    grade = stages.add_parser("grade", help="run the exercise tests and print a score table")
    grade_command.add_arguments(grade)
    serve_command.add_arguments(stages.add_parser("serve", help="chat with every model of a run in the browser, "
                                                  "side by side (a local web page and a JSON API)"))
    return parser, stages.choices


def main(argv: list[str] | None = None) -> int:
    parser, stage_parsers = build_parser()
    args = parser.parse_args(argv)
    stage_parser = stage_parsers[args.stage]
    if distributed.world_size() > 1:
        if args.stage not in MULTI_PROCESS_STAGES:
            stage_parser.error(f"{args.stage} does not run in several processes: run it without torchrun "
                               f"(only {', '.join(MULTI_PROCESS_STAGES)} train under torchrun)")
        args.quiet = args.quiet or not distributed.is_main()  # one progress bar and one report: rank 0's
    try:
        return run_stage(stage_parser, args)
    except (FileNotFoundError, ValueError) as err:  # bad input named by the user: one line, exit 2
        yield_to_rank_0()  # under torchrun: one line, rank 0's
        print_error(stage_parser.prog, str(err))
        return 2
    except RuntimeError as err:  # e.g. a diverging run: one line, exit 1
        print_error(stage_parser.prog, str(err))
        return 1
    finally:
        distributed.stop()


def run_stage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.stage == "data":
        from gpt_scratch.world import command as data_command
        return data_command.run(args)
    if args.stage == "pretrain":
        check_model_and_train(parser, args, "pretrain")
        tokenizer = pretrain_tokenizer(parser, args)
        join_processes(args)
        from gpt_scratch.pretrain import pretrain
        vocab = args.vocab_size or PRESETS[args.preset]["vocab_size"]
        pretrain(args.corpus, args.out, model_settings(args), train_config(args, "pretrain"), vocab,
                 args.val_fraction, resume=args.resume, quiet=args.quiet, tokenizer=tokenizer)
        return 0
    if args.stage == "import-gpt2":
        from gpt_scratch.gpt2 import import_gpt2
        folder = import_gpt2(args.hf, args.out, gpt2_tokenizer(args.gpt2_vocab))
        print(f"imported {args.hf} into {folder}; fine-tune it with: python -m gpt_scratch sft --base {args.out} "
              f"--data FILE --template alpaca")
        return 0
    if args.stage in ("import-llama", "export-llama"):
        from gpt_scratch import llama
        return llama.run(args)
    if args.stage == "sft":
        return sft_command(parser, args)
    if args.stage == "reward":
        return reward_command(parser, args)
    if args.stage == "dpo":
        return dpo_command(parser, args)
    if args.stage == "ppo":
        return ppo_command(parser, args)
    if args.stage == "grpo":
        return grpo_command(parser, args)
    if args.stage == "compare":
        return compare_command(parser, args)
    if args.stage == "compare-alignment":
        return compare_alignment_command(parser, args)
    if args.stage == "grade":
        from gpt_scratch import grade as grade_command
        return grade_command.run(args)
    if args.stage == "serve":
        from gpt_scratch import serve as serve_command
        return serve_command.run(args)
    if args.stage == "generate":
        return generate_command(parser, args)
    if args.stage == "chat":
        check_sampling(parser, args)
        from gpt_scratch.chat import chat_with_checkpoint
        return chat_with_checkpoint(args.checkpoint, template=args.template, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.stage == "bench":
        check_device(parser, args.device)
        from gpt_scratch.bench import run_benchmarks
        run_benchmarks(args.preset, args.device, args.steps, args.new_tokens, args.batch_size)
        return 0
    if args.stage == "run":
        check_device(parser, args.device)
        if args.gpt2_vocab is not None and (args.preset == "auto" or PRESETS[args.preset]["tokenizer"] != "gpt2"):
            parser.error(f"--gpt2-vocab is for --preset gpt2; the {args.preset} preset trains its tokenizer")
        if args.corpus is not None and not Path(args.corpus).is_file():  # found now, not after the data stage
            raise FileNotFoundError(f"corpus file {args.corpus} not found; give a UTF-8 text file or leave out "
                                    f"--corpus to use the generated one")
        from gpt_scratch.pipeline import run_pipeline
        run_pipeline(args.out, args.preset, args.seed, args.corpus, args.device, args.quiet, args.gpt2_vocab)
        return 0
    raise AssertionError(f"unhandled stage {args.stage}")


def sft_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # First the flags against each other, then (reading the base's config) against the base model.
    check_model_and_train(parser, args, "sft")
    check_tuning(parser, args)
    replay = args.replay if args.replay is not None else PRESETS[args.preset]["sft"].get("replay", 0)
    if args.replay_corpus is not None and replay == 0:
        parser.error("--replay-corpus needs replay: give --replay N with N > 0 (the preset's replay is 0)")
    if args.n_eval is not None and Path(args.data).is_file():
        parser.error(f"--n-eval limits the judge's test questions, and a plain data file ({args.data}) has none; "
                     "leave it out (the file's held-out slice is always scored by its loss)")
    from gpt_scratch.checkpoint import find_checkpoint, read_config
    from gpt_scratch.sft import sft

    config, base_meta = read_config(find_checkpoint(args.base))
    if replay and args.replay is None and args.replay_corpus is None and not base_meta.get("corpus"):
        replay = 0  # e.g. an imported GPT-2: it names no pretraining text to rehearse
        if not args.quiet:
            print("replay off: the base names no pretraining corpus (give --replay-corpus FILE to rehearse one)")
    check_splits(parser, "--replay", replay)  # the replayed windows are shared out like the batch
    if args.max_length is not None and args.max_length > config.block_size:
        parser.error(f"--max-length {args.max_length} is longer than the base model's context "
                     f"(block_size {config.block_size}); use at most {config.block_size}")
    tuning = tuning_from(parser, args, config.n_layer)
    join_processes(args)
    sft(args.base, args.data, args.out, train_config(args, "sft"), args.template, args.loss_on == "answer",
        args.n_train, args.max_length, args.n_eval, resume=args.resume, quiet=args.quiet, tuning=tuning,
        score_before=not args.skip_before, replay=replay, replay_corpus=args.replay_corpus)
    return 0


def reward_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    cfg = check_train(parser, args, "reward")
    settings = PRESETS[args.preset]["reward"]
    best_of = args.best_of if args.best_of is not None else settings["best_of"]
    if args.best_of_prompts is not None and best_of == 0:
        parser.error("--best-of-prompts needs best-of-n: give --best-of N with N > 0")
    from gpt_scratch.reward import reward_stage

    join_processes(args)
    reward_stage(args.sft, args.data, args.out, cfg, args.margin, args.center_coef, args.n_train, args.n_eval,
                 best_of, args.best_of_prompts or settings["best_of_prompts"], args.score, args.body,
                 resume=args.resume, quiet=args.quiet)
    return 0


def dpo_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gpt_scratch.dpo import SMOOTHED, dpo_stage

    if args.label_smoothing is not None and args.loss not in SMOOTHED:
        parser.error(f"--label-smoothing only acts with --loss cdpo or robust, not --loss {args.loss}")
    cfg = check_train(parser, args, "dpo")
    settings = PRESETS[args.preset]["dpo"]

    label_smoothing = args.label_smoothing if args.label_smoothing is not None else settings["label_smoothing"]
    join_processes(args)
    dpo_stage(args.sft, args.data, args.out, cfg, args.beta or settings["beta"], args.loss,
              label_smoothing if args.loss in SMOOTHED else 0.0, args.lora_rank,
              args.n_train or settings.get("n_train"), args.n_eval or settings.get("n_eval"),
              resume=args.resume, quiet=args.quiet)
    return 0


def compare_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = PRESETS[args.preset]["sft"]  # every method is an sft run with the preset's settings
    repeated = sorted({m for m in args.methods if args.methods.count(m) > 1})
    if repeated:
        parser.error(f"--methods names {repeated[0]} twice; give each method once")
    if args.max_steps is not None and args.max_steps < settings["warmup_steps"]:
        parser.error(f"--max-steps {args.max_steps} is smaller than the {args.preset} preset's "
                     f"{settings['warmup_steps']} warmup steps, so every method would fail; use at least "
                     f"{settings['warmup_steps']}")
    from gpt_scratch.checkpoint import find_checkpoint, read_config
    from gpt_scratch.compare import compare

    n_layer = read_config(find_checkpoint(args.base))[0].n_layer
    too_many = [m for m in args.methods if m.startswith("last_blocks:") and int(m.partition(":")[2]) > n_layer]
    if too_many:
        parser.error(f"--methods {too_many[0]}: the base model has {n_layer} blocks; use last_blocks:0..{n_layer}")
    extra = [flag for name, value in (("--max-steps", args.max_steps), ("--n-eval", args.n_eval)) if value
             for flag in (name, str(value))]
    compare(args.base, args.data, args.out, args.methods, args.preset, extra, args.quiet)
    return 0


PPO_FLAGS = ("steps", "batch_size", "minibatch_size", "epochs", "lr", "value_lr", "kl_coef", "kl_estimator", "kl_target",
             "clip_range", "value_clip", "value_baseline", "gamma", "lam", "max_new_tokens", "temperature",
             "no_end_penalty", "grad_clip", "lora_rank", "lora_alpha", "eval_every", "seed", "device", "dtype")


def compare_alignment_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    for name, values in (("--methods", args.methods), ("--noise", args.noise)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            parser.error(f"{name} names {repeated[0]} twice; give each once")
    for folder, what in ((Path(args.sft) / "metrics.json", "--sft: an SFT stage folder (run `python -m gpt_scratch "
                          "sft` or the main job first)"),
                         (Path(args.data) / "manifest.json", "--data: a data folder (`python -m gpt_scratch data`)")):
        if not folder.is_file():
            parser.error(f"{folder} not found; {what}")
    from gpt_scratch.compare_alignment import compare_alignment

    compare_alignment(args.sft, args.data, args.out, args.methods, args.noise, args.preset, args.quiet)
    return 0


def ppo_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gpt_scratch.ppo import PPOConfig, ppo_stage

    settings = dict(PRESETS[args.preset]["ppo"])
    n_eval = args.n_eval if args.n_eval is not None else settings.pop("n_eval", None)
    settings.pop("n_eval", None)
    settings.update({name: getattr(args, name) for name in PPO_FLAGS if getattr(args, name) is not None})
    if settings["batch_size"] % settings["minibatch_size"] != 0:
        parser.error(f"--minibatch-size {settings['minibatch_size']} must divide --batch-size {settings['batch_size']}")
    if args.lora_alpha is not None and args.lora_rank is None:
        parser.error("--lora-alpha needs --lora-rank (LoRA is off without a rank)")
    if args.kl_target is not None and args.kl_coef == 0:
        parser.error("--kl-target needs --kl-coef > 0 (the adaptive controller scales the coefficient)")
    check_splits(parser, "--batch-size", settings["batch_size"])
    check_splits(parser, "--minibatch-size", settings["minibatch_size"])
    check_device(parser, args.device)
    join_processes(args)
    ppo_stage(args.sft, args.reward, args.data, args.out, PPOConfig(**settings), n_eval, resume=args.resume,
              quiet=args.quiet)
    return 0


GRPO_FLAGS = ("steps", "batch_size", "group_size", "minibatch_size", "epochs", "lr", "clip_range", "kl_coef", "std",
              "population_std", "aggregation", "format_reward", "dynamic_sampling", "max_resample", "family_weights",
              "weight_sample", "max_new_tokens", "temperature", "grad_clip", "eval_every", "eval_samples", "seed",
              "device", "dtype")


def grpo_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gpt_scratch.grpo import GRPOConfig, grpo_stage

    settings = {**asdict(GRPOConfig()), **PRESETS[args.preset]["grpo"]}  # the preset's values over the defaults
    n_eval = args.n_eval if args.n_eval is not None else settings.get("n_eval")
    settings.pop("n_eval", None)
    settings.update({name: getattr(args, name) for name in GRPO_FLAGS if getattr(args, name) is not None})
    # Each check names the flag to change; a value from the preset is named as the flag that sets it.
    if settings["batch_size"] % settings["group_size"] != 0:
        parser.error(f"--group-size {settings['group_size']} must divide --batch-size {settings['batch_size']} "
                     f"(a step holds whole groups)")
    if settings["batch_size"] % settings["minibatch_size"] != 0:
        parser.error(f"--minibatch-size {settings['minibatch_size']} must divide --batch-size {settings['batch_size']}")
    if settings["eval_samples"] < settings["group_size"]:
        parser.error(f"--eval-samples {settings['eval_samples']} must be at least --group-size "
                     f"{settings['group_size']} (pass@G needs G samples per prompt)")
    if args.max_resample is not None and not settings["dynamic_sampling"]:
        parser.error("--max-resample needs --dynamic-sampling (without it nothing is resampled)")
    if args.weight_sample is not None and settings["family_weights"] != "sft-error":
        parser.error("--weight-sample needs --family-weights sft-error (uniform weights measure nothing)")
    groups, processes = settings["batch_size"] // settings["group_size"], distributed.world_size()
    if groups % processes != 0:  # each process rolls out whole groups
        parser.error(f"--batch-size {settings['batch_size']} / --group-size {settings['group_size']} = {groups} groups "
                     f"per step cannot be split over {processes} processes: use a multiple of {processes} groups")
    check_splits(parser, "--minibatch-size", settings["minibatch_size"])
    check_device(parser, settings["device"])
    try:  # the config's own checks between settings, before anything is read
        cfg = GRPOConfig(**settings)
    except ValueError as err:
        parser.error(str(err))
    join_processes(args, settings["device"])
    grpo_stage(args.sft, args.data, args.out, cfg, n_eval, resume=args.resume, quiet=args.quiet)
    return 0


def generate_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.temperature is not None:
        check_sampling(parser, args)  # before any file is read
    from gpt_scratch.chat import choose_template, encode_question, read_question
    from gpt_scratch.checkpoint import find_checkpoint, load_checkpoint, read_config
    from gpt_scratch.generate import generate, generate_text
    from gpt_scratch.train import pick_device

    _, meta = read_config(find_checkpoint(args.checkpoint))
    template, note = choose_template(args.checkpoint, meta, args.template, "none")
    if args.temperature is None:  # a question is answered greedily, as chat and the evaluation do
        args.temperature = 0.8 if template == "none" else 0.0
        check_sampling(parser, args, why=", the default for a question")
    model, tokenizer, _ = load_checkpoint(args.checkpoint, device=pick_device("auto"))
    if tokenizer is None:
        raise FileNotFoundError(f"{args.checkpoint} has no tokenizer files; use a checkpoint saved by a stage")
    settings = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                "crop": args.crop}
    if template == "none":  # plain continuation: the prompt and what follows it
        texts = [args.prompt + text for text in
                 generate_text(model, tokenizer, [args.prompt] * args.num_samples, args.max_new_tokens, **settings)]
    else:  # a question: the answer only, without its end-of-text token
        prompt = encode_question(tokenizer, read_question(args.prompt), template)
        answers = generate(model, [prompt] * args.num_samples, args.max_new_tokens, eos_id=tokenizer.eot_id,
                           **settings)
        texts = [tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eot_id else ids) for ids in answers]
    if note:  # once the text is there (a refused prompt is the one line of its error)
        print(note, file=sys.stderr)  # stderr: stdout holds only the text, for scripts
    print(("\n" + "-" * 40 + "\n").join(texts))  # a line between samples, when there are several
    return 0
