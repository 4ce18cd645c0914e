"""Named sizes for the whole pipeline: one knob (--preset) sets model, data and training sizes.

    tiny     a few thousand parameters: tests and the notebooks' fast mode (seconds)
    default  ~1M parameters: the course's main run on a 2-core laptop CPU (minutes)
    fast     the default with a narrower model (0.56M) and fewer steps: for a CPU that trains in
             float32 (no bf16 hardware), where the default takes about twice as long; the main
             job's --preset auto picks it there (pipeline.choose_preset)
    gpt2     GPT-2 small's shape (124M): for a GPU owner scaling the same code up

"corpus_mb" and "tasks" size the generated data: the corpus in megabytes, and the instruction
tasks of each split (the preference pairs are made from them).

"tokenizer" says where pretraining gets its tokenizer: "train" learns a BPE tokenizer of
vocab_size tokens on the corpus (chapter 1); "gpt2" takes GPT-2's own 50,257 tokens (plus the
chat template's two), as no generated corpus holds enough different words for 50,000 merges.
It needs GPT-2's vocabulary: downloaded once by tiktoken, or a local gpt2.tiktoken file
(--gpt2-vocab FILE or $GPT_SCRATCH_GPT2_TIKTOKEN).

Any single value can still be overridden on the command line (--n-layer, --lr, ...).
"""

from dataclasses import dataclass

from gpt_scratch.settings import setting

PRESETS: dict[str, dict] = {
    "tiny": {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 128},
        "tokenizer": "train",
        "vocab_size": 400,
        "corpus_mb": 0.1,
        "tasks": {"n_train": 2000, "n_val": 100, "n_test": 200},  # instruction tasks (and so preference pairs)
        "pretrain": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                     "save_every": 10},
        "sft": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                "save_every": 10, "replay": 1},
        "lora": {"max_steps": 30, "batch_size": 8, "lr": 1e-2, "warmup_steps": 5, "eval_every": 10,
                 "save_every": 10, "rank": 4, "targets": ["attn", "mlp"]},
        "reward": {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                   "save_every": 10, "best_of": 4, "best_of_prompts": 8},
        "ppo": {"steps": 3, "batch_size": 8, "minibatch_size": 4, "epochs": 2, "lr": 1e-3, "value_lr": 1e-3,
                "max_new_tokens": 8, "eval_every": 2, "save_every": 2, "n_eval": 16},
        "grpo": {"steps": 3, "batch_size": 8, "group_size": 4, "minibatch_size": 4, "epochs": 2, "lr": 1e-3,
                 "max_new_tokens": 8, "eval_every": 2, "save_every": 2, "eval_samples": 4, "weight_sample": 32,
                 "n_eval": 16},
        "dpo": {"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.0, "eval_every": 3,
                "save_every": 3, "beta": 0.1, "label_smoothing": 0.1, "n_train": 64, "n_eval": 16},
    },
    "default": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128},
        "tokenizer": "train",
        "vocab_size": 1024,
        "corpus_mb": 3.0,
        "tasks": {"n_train": 20_000, "n_val": 500, "n_test": 1_000},
        # A small model takes a high learning rate: at 1e-2 the base model knew the people's
        # facts where at 2e-3 it knew half of them (same steps). Fine-tuning replays 2 windows
        # of the corpus per step, so that the model keeps what pretraining taught it.
        "pretrain": {"max_steps": 2400, "batch_size": 16, "lr": 1e-2, "warmup_steps": 50, "eval_every": 200,
                     "save_every": 400},
        "sft": {"max_steps": 3200, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50, "eval_every": 400,
                "save_every": 800, "replay": 2},
        # LoRA: rank 16 on attention and MLP with LoRA+ (B's learning rate 16 x A's 7.5e-4), no weight decay: the
        # best of chapter 7's study (chapters/ch07_lora/README.md: ranks, learning rates, targets, LoRA+ measured).
        "lora": {"max_steps": 3200, "batch_size": 16, "lr": 7.5e-4, "warmup_steps": 50, "weight_decay": 0.0,
                 "eval_every": 400, "save_every": 800, "rank": 16, "targets": ["attn", "mlp"], "plus_ratio": 16.0},
        # The reward model: batch_size counts pairs (each step scores 2 x batch_size answers); one epoch.
        # lr 5e-3 suits the default frozen body (only the head learns); a trained body needs ~5e-4.
        "reward": {"max_steps": 600, "batch_size": 32, "lr": 5e-3, "warmup_steps": 30, "eval_every": 100,
                   "save_every": 200, "best_of": 64, "best_of_prompts": 200},
        # PPO: 40 steps of 64 rollouts (4 epochs of 2 minibatches each): enough to reach the preferred
        # style on nearly every held-out answer without losing accuracy (chapter 9's README).
        "ppo": {"steps": 40, "batch_size": 64, "minibatch_size": 32, "epochs": 4, "lr": 3e-5, "value_lr": 9e-5,
                "max_new_tokens": 24, "eval_every": 10, "save_every": 10, "n_eval": None},
        # GRPO: 100 steps of 16 training prompts x 8 answers, lr 5e-5, no KL term, judged before and after:
        # 4 minutes on a 2-core float32 CPU (AMD EPYC: 243 s, held-out accuracy 93.2% -> 94.0%, pass@1 85.8% ->
        # 89.0%), 82 s with bf16 (Xeon with AMX: 94.1% -> 94.3%). 300 steps at lr 3e-5 ended within 0.4 points
        # of that for three times the time; lr 1e-4 and above, 2 epochs, a KL term or Dr. GRPO's scaling all
        # ended lower (chapter 11's README).
        "grpo": {"steps": 100, "batch_size": 128, "group_size": 8, "minibatch_size": 64, "epochs": 1, "lr": 5e-5,
                 "max_new_tokens": 24, "eval_every": 100, "save_every": 50, "eval_samples": 8, "n_eval": None},
        # DPO: batch_size counts pairs (each step scores 2 x batch_size answers). n_train = 80 steps x 32 pairs,
        # one epoch, + 2% held back. Measured on the default run (CPU, 2 cores): beta 1 and lr 5e-5 take the
        # preferred style from 74% to 97% with accuracy within a point of SFT's and a KL of 0.1-0.3 nats per
        # answer, in about 17 s; beta 0.1 or lr 1e-4 cost SFT's accuracy (down to 80%) and a KL of up to 3.6.
        # Judged before training (free: the SFT model's own answers) and once at the end (~3 s per judging).
        "dpo": {"max_steps": 80, "batch_size": 32, "lr": 5e-5, "warmup_steps": 10, "weight_decay": 0.0,
                "eval_every": 80, "save_every": 40, "beta": 1.0, "label_smoothing": 0.1, "n_train": 2612,
                "n_eval": None},
    },
    "gpt2": {
        "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "attention": "sdpa"},
        "tokenizer": "gpt2",
        "vocab_size": 50257,  # GPT-2's (bench.py sizes the model with it); not trained: see "tokenizer"
        "corpus_mb": 100.0,
        "tasks": {"n_train": 20_000, "n_val": 500, "n_test": 1_000},
        "pretrain": {"max_steps": 5000, "batch_size": 16, "grad_accum": 8, "lr": 6e-4, "warmup_steps": 300,
                     "eval_every": 250, "save_every": 500},
        "sft": {"max_steps": 2000, "batch_size": 16, "lr": 3e-5, "warmup_steps": 100, "eval_every": 250,
                "save_every": 500, "replay": 2},
        "lora": {"max_steps": 2000, "batch_size": 16, "lr": 3e-4, "warmup_steps": 100, "eval_every": 250,
                 "save_every": 500, "rank": 8, "targets": ["attn", "mlp"]},
        "reward": {"max_steps": 1000, "batch_size": 32, "lr": 1e-5, "warmup_steps": 50, "eval_every": 250,
                   "save_every": 500, "best_of": 16, "best_of_prompts": 200},
        "ppo": {"steps": 200, "batch_size": 64, "minibatch_size": 16, "epochs": 4, "lr": 1e-6, "value_lr": 1e-5,
                "max_new_tokens": 128, "eval_every": 20, "save_every": 20, "n_eval": 500},
        "grpo": {"steps": 200, "batch_size": 256, "group_size": 8, "minibatch_size": 64, "epochs": 1, "lr": 1e-6,
                 "max_new_tokens": 128, "eval_every": 50, "save_every": 50, "eval_samples": 8, "n_eval": 500},
        "dpo": {"max_steps": 1000, "batch_size": 32, "lr": 5e-7, "warmup_steps": 100, "weight_decay": 0.0,
                "eval_every": 250, "save_every": 250, "beta": 0.1, "label_smoothing": 0.1, "n_train": None,
                "n_eval": 500},
    },
}

# fast: the default's data and stages, a narrower model (n_embd 96 instead of 128: 0.56M parameters)
# with PyTorch's fused attention, 2200 pretraining steps (the default 2400), 2000 SFT steps at twice
# the default's lr, and the default's LoRA stage for 1800 steps at twice its lr (the best of chapter 7's
# study on the fast model: chapters/ch07_lora/README.md, "The fast preset"). SDPA's shorter steps pay
# for the extra pretraining steps; the model computes the same attention either way (test_model). How
# each setting was measured, in float32 over several pretraining seeds: docs/performance-notes.md ("The
# fast preset's settings"); whole-run times: docs/benchmarks.md.
PRESETS["fast"] = {
    **PRESETS["default"],
    "model": {**PRESETS["default"]["model"], "n_embd": 96, "attention": "sdpa"},
    "pretrain": {**PRESETS["default"]["pretrain"], "max_steps": 2200},
    "sft": {**PRESETS["default"]["sft"], "max_steps": 2000, "lr": 2e-3},
    "lora": {**PRESETS["default"]["lora"], "max_steps": 1800, "lr": 1.5e-3},
}


@dataclass
class StageOptions:
    """How a stage's command runs: at which preset's sizes, resuming a stopped run or not, quietly or not."""
    preset: str = setting("default", "the sizes of the model, the data and the training", choices=sorted(PRESETS),
                          preset=False)
    resume: bool = setting(False, "continue from the stage folder's checkpoint", preset=False)
    quiet: bool = setting(False, "no progress bar", preset=False)
