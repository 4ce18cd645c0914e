"""Shared fixtures: models of a few thousand parameters so the whole suite stays fast."""

import os

import pytest
import torch

from gpt_scratch.model import GPT
from tiny import tiny_config

# Tiny tensors run fastest on one thread (thread start-up costs more than the arithmetic), and
# the suite already keeps every core busy with one pytest-xdist worker each (pyproject.toml):
# two threads per worker would fight over the cores. Every process a test starts (the command
# line, torchrun, a notebook's kernel) inherits the one thread through OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()
