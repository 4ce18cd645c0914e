"""Shared fixtures: models of a few thousand parameters so the whole suite stays fast."""

import pytest
import torch

from gpt_scratch.model import GPT
from tiny import tiny_config


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()
