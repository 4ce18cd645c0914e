"""Shared fixtures: models of a few thousand parameters so the whole suite stays fast.

torch is imported inside the fixtures, not here: this file is also loaded by pytest-xdist's
controller process, which runs no test and would spend ~3 s of CPU importing torch before it
starts the workers.
"""

import os

import pytest

# Tiny tensors run fastest on one thread (thread start-up costs more than the arithmetic), and
# the suite already keeps every core busy with one pytest-xdist worker each (pyproject.toml):
# two threads per worker would fight over the cores. Every process a test starts (the command
# line, torchrun, a notebook's kernel), and the workers themselves, inherit the one thread
# through OMP_NUM_THREADS; one_thread() also holds where it was set to more.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    import torch

    from gpt_scratch.model import GPT
    from tiny import tiny_config

    torch.manual_seed(0)
    return GPT(tiny_config()).eval()


@pytest.fixture(scope="module")
def tiny_main_job(tmp_path_factory):
    """The main job on the tiny preset (data, pretrained, SFT, LoRA, reward, ... models) for a module's tests."""
    from gpt_scratch.cli import main as cli_main

    folder = tmp_path_factory.mktemp("tiny_main_job") / "run"
    assert cli_main(["run", "--preset", "tiny", "--out", str(folder), "--quiet"]) == 0
    return folder
