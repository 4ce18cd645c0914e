"""Shared fixtures: models of a few thousand parameters so the whole suite stays fast."""

import pytest
import torch

from gpt_scratch.model import GPT
from tiny import tiny_config

# Tiny tensors run fastest on one thread (thread start-up costs more than the arithmetic),
# and CI's two cores may be shared.
torch.set_num_threads(1)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()
