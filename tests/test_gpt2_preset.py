"""--preset gpt2 and GPT-2's weights from the command line.

Without GPT-2's vocabulary (offline, no file) `run --preset gpt2` and `pretrain --preset gpt2`
stop before writing anything, with one line naming what to give. With the vocabulary (the
reference file beside the clone; these tests skip where it is absent), pretraining uses GPT-2's
tokenizer, and a tiny random Hugging Face GPT-2 is imported and fine-tuned on an Alpaca file.
"""

import json
import math
import re

import pytest
import tiktoken
import torch

import gpt_scratch.pretrain as pretrain_module
import gpt_scratch.world.command as data_module
from gpt_scratch.checkpoint import load_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.gpt2 import load_hf_gpt2
from gpt_scratch.data import split_train_val
from gpt_scratch.tokenizer import ASSISTANT, EOT, GPT2_FILE_ENV, USER, Tokenizer
from tiny import GPT2_TIKTOKEN

needs_gpt2 = pytest.mark.skipif(not GPT2_TIKTOKEN.is_file(),
                                reason=f"GPT-2's vocabulary file {GPT2_TIKTOKEN} is absent (reference data)")
HELLO_WORLD = [15496, 995]  # "Hello world" in GPT-2's tokens


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """cli.main in this process: (exit code, stdout, stderr); argparse's exits are caught."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def offline(monkeypatch):
    """No network, no cached download, no $GPT_SCRATCH_GPT2_TIKTOKEN: GPT-2's vocabulary is nowhere."""
    def no_network(name):
        raise ConnectionError(f"no network to download {name}")
    monkeypatch.delenv(GPT2_FILE_ENV, raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Hello world. Anna has a pet goat and the goat likes hay. " * 40)
    return path


# --- without the vocabulary: one line, nothing written ----------------------------------------------

@pytest.mark.parametrize("stage", ["run", "pretrain"])
def test_gpt2_preset_without_the_vocabulary_stops_before_writing_anything(capsys, offline, tmp_path, corpus,
                                                                          stage):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, stage, "--preset", "gpt2", "--corpus", corpus, "--out", out, "--quiet")
    assert code == 1  # not a bad flag: the machine lacks a file (as a diverging run, exit 1)
    line = one_error_line(err)
    assert line.startswith(f"python -m gpt_scratch {stage}: error: GPT-2's vocabulary could not be loaded "
                           f"(ConnectionError")
    for what in ("--gpt2-vocab FILE", f"${GPT2_FILE_ENV}", "whisper/assets/gpt2.tiktoken", "connect to the internet"):
        assert what in line, what
    assert stdout == ""
    assert not out.exists()  # no run folder, no data folder: it stopped before generating anything


@pytest.mark.parametrize("stage", ["run", "pretrain"])
def test_a_missing_vocabulary_file_is_named(capsys, offline, tmp_path, corpus, stage):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, stage, "--preset", "gpt2", "--corpus", corpus, "--out", out, "--quiet",
                           "--gpt2-vocab", tmp_path / "nowhere.tiktoken")
    assert code == 2
    assert re.search(r"GPT-2 vocabulary file .*nowhere\.tiktoken not found; give the path of a gpt2\.tiktoken",
                     one_error_line(err))
    assert not out.exists()


@pytest.mark.parametrize("args, pattern", [
    (["pretrain", "--preset", "gpt2", "--vocab-size", "300"], r"--vocab-size sizes a tokenizer trained on the corpus"),
    (["pretrain", "--preset", "tiny", "--tokenizer", "gpt2", "--vocab-size", "300"], r"--vocab-size sizes a tokenizer"),
    (["pretrain", "--preset", "tiny", "--gpt2-vocab", "x.tiktoken"], r"--gpt2-vocab needs --tokenizer gpt2"),
    (["pretrain", "--preset", "gpt2", "--tokenizer", "train", "--gpt2-vocab", "x.tiktoken"],
     r"--gpt2-vocab needs --tokenizer gpt2"),
    (["pretrain", "--tokenizer", "bpe"], r"argument --tokenizer: invalid choice: 'bpe'"),
    (["run", "--preset", "tiny", "--gpt2-vocab", "x.tiktoken"], r"--gpt2-vocab is for --preset gpt2; the tiny preset"),
])
def test_contradictory_flags_exit_2_before_any_work(capsys, offline, tmp_path, args, pattern):
    data_file = tmp_path / "alpaca.json"
    data_file.write_text("[]")
    paths = {"DATA_FILE": data_file}
    code, _, err = run_cli(capsys, *[paths.get(a, a) for a in args], "--out", tmp_path / "out")
    assert code == 2
    assert re.search(pattern, one_error_line(err))
    assert not (tmp_path / "out").exists()


# --- with the vocabulary: GPT-2's tokenizer in pretraining --------------------------------------------

@needs_gpt2
def test_pretrain_with_gpt2s_tokenizer_saves_it_with_the_checkpoint(capsys, offline, tmp_path, corpus):
    out = tmp_path / "pretrain"
    code, _, err = run_cli(capsys, "pretrain", "--preset", "tiny", "--tokenizer", "gpt2", "--gpt2-vocab",
                           GPT2_TIKTOKEN, "--corpus", corpus, "--out", out, "--block-size", "16", "--n-layer", "1",
                           "--max-steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--eval-every", "2",
                           "--quiet")
    assert code == 0, err
    model, tokenizer, meta = load_checkpoint(out)  # as every later stage loads it
    assert tokenizer.name == "gpt2" and tokenizer.encode("Hello world") == HELLO_WORLD
    # GPT-2's 50,257 tokens, then the chat template's two, so that the later stages' chat template works
    assert tokenizer.special_tokens == {EOT: 50256, USER: 50257, ASSISTANT: 50258}
    assert model.config.vocab_size == 50259 and meta["stage"] == "pretrain"
    assert Tokenizer.load(out).ranks == tokenizer.ranks  # the stage folder's copy, as with a trained one
    train_ids, _ = split_train_val(tokenizer.encode(corpus.read_text()), 0.05)
    assert json.loads((out / "metrics.json").read_text())["train_tokens"] == len(train_ids)


class Stop(Exception):
    """Raised by a stand-in stage: the test has seen what it needs, the real stage must not run."""


@needs_gpt2
def test_run_gpt2_pretrains_with_gpt2s_tokenizer(offline, tmp_path, monkeypatch):
    seen = {}

    def fake_data(folder, **kwargs):
        folder.mkdir(parents=True)
        return folder

    def fake_pretrain(*args, tokenizer=None, **kwargs):
        seen["tokenizer"] = tokenizer
        raise Stop

    monkeypatch.setattr(data_module, "ensure_default_data", fake_data)  # not 100 MB of generated text
    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    with pytest.raises(Stop):
        main(["run", "--preset", "gpt2", "--out", str(tmp_path / "run"), "--gpt2-vocab", str(GPT2_TIKTOKEN),
              "--quiet"])
    assert seen["tokenizer"].encode("Hello world") == HELLO_WORLD and seen["tokenizer"].n_vocab == 50259
