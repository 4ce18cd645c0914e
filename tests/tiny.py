"""Tiny configs shared by the tests: models of a few thousand parameters keep the suite fast."""

from pathlib import Path

from gpt_scratch.model import GPTConfig

REPO = Path(__file__).resolve().parents[1]
GPT2_TIKTOKEN = REPO.parent / "shared" / "data" / "gpt2.tiktoken"  # reference data beside the clone


def tiny_config(**overrides) -> GPTConfig:
    settings = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    settings.update(overrides)
    return GPTConfig(**settings)
