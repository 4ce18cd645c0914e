"""Tiny configs shared by the tests: models of a few thousand parameters keep the suite fast."""

import json
import os
import subprocess
import sys
from pathlib import Path

from gpt_scratch.model import GPTConfig
from gpt_scratch.world.corpus import build_world, generate_corpus

REPO = Path(__file__).resolve().parents[1]
GPT2_TIKTOKEN = REPO.parent / "shared" / "data" / "gpt2.tiktoken"  # reference data beside the clone


def tiny_config(**overrides) -> GPTConfig:
    settings = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    settings.update(overrides)
    return GPTConfig(**settings)


def write_world_corpus(folder, characters=30_000):
    """A small corpus of the embedded world (seed 0) in folder/corpus.txt: enough text for a tiny pretraining."""
    path = folder / "corpus.txt"
    path.write_text(generate_corpus(build_world(0), characters, 0), encoding="utf-8")
    return path


def write_yes_data(folder, n_train=64, n_test=16):
    """A task a tiny model learns in seconds: the answer is always 'yes'."""
    folder.mkdir(parents=True, exist_ok=True)
    def records(n, split):
        return [{"id": f"{split}-{i}", "family": "facts", "level": 1, "instruction": f"Is {i} a number?",
                 "input": "", "output": "yes", "answer": "yes", "unseen": False} for i in range(n)]
    for split, n in (("train", n_train), ("val", 8), ("test", n_test)):
        (folder / f"sft_{split}.json").write_text(json.dumps(records(n, split)))
    return folder


def torchrun(*argv) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m gpt_scratch argv...` (or a script: argv[0] ending in .py),
    with this checkout's gpt_scratch; CPU processes, gloo."""
    target = [str(argv[0])] if str(argv[0]).endswith(".py") else ["-m", "gpt_scratch", str(argv[0])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*launcher, *target, *map(str, argv[1:])], capture_output=True, text=True, env=env,
                          timeout=180)


def fingerprint_script(module: str, before_main: str = "") -> str:
    """A script for torchrun: `python -m gpt_scratch` whose RL stage (module ppo or grpo) writes, after
    every step, a hash of the weights of each rank's models (the policy, and the value model or the
    reference) to $FINGERPRINTS/rank<N>.txt; with $CRASH_AT_CALL = n it exits at its n-th step instead.
    before_main: more lines to run first (e.g. a monkeypatch)."""
    return f"""
import hashlib, os, sys
from pathlib import Path
import torch
import gpt_scratch.{module} as stage
from gpt_scratch import distributed
from gpt_scratch.cli import main

real_step, calls = stage.{module}_step, []

def step_and_fingerprint(policy, other, *args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ.get("CRASH_AT_CALL", "0")):
        sys.exit(3)
    metrics = real_step(policy, other, *args, **kwargs)
    weights = b"".join(p.detach().numpy().tobytes() for model in (policy, other) for p in model.parameters())
    with open(Path(os.environ["FINGERPRINTS"]) / f"rank{{distributed.rank()}}.txt", "a") as file:
        file.write(hashlib.sha256(weights).hexdigest() + "\\n")
    return metrics

stage.{module}_step = step_and_fingerprint
{before_main}
sys.exit(main(sys.argv[1:]))
"""
