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

import gpt_scratch.gpt2 as gpt2_module
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
    (["sft", "--data", "DATA_FILE", "--n-eval", "3"], r"--n-eval limits the judge's test questions, and a plain data"),
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


# --- GPT-2's weights: import a Hugging Face folder, fine-tune it on an Alpaca file ---------------------

ALPACA = [{"instruction": f"Say hello to person {i}.", "input": "" if i % 2 else f"Person {i} is here.",
           "output": f"Hello, person {i}!"} for i in range(20)]
TRAIN_FLAGS = ["--preset", "tiny", "--max-steps", "3", "--warmup-steps", "1", "--batch-size", "4", "--lr", "1e-2",
               "--eval-every", "3", "--save-every", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A tiny random GPT2LMHeadModel with GPT-2's vocabulary, saved as the hub stores GPT-2."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    folder = tmp_path_factory.mktemp("hf_gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def imported(hf_gpt2, tmp_path_factory):
    if not GPT2_TIKTOKEN.is_file():
        pytest.skip(f"GPT-2's vocabulary file {GPT2_TIKTOKEN} is absent (reference data)")
    out = tmp_path_factory.mktemp("imported")
    assert main(["import-gpt2", "--hf", str(hf_gpt2), "--out", str(out), "--gpt2-vocab", str(GPT2_TIKTOKEN)]) == 0
    return out


@pytest.fixture
def alpaca_file(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA, indent=1))
    return path


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([HELLO_WORLD + [50256, 7, 1000, 50000]]))


def test_import_gpt2_writes_a_checkpoint_with_gpt2s_weights_and_tokenizer(hf_gpt2, imported):
    model, tokenizer, meta = load_checkpoint(imported)  # the stage folder: its checkpoint/ inside
    torch.testing.assert_close(logits_of(model), logits_of(load_hf_gpt2(hf_gpt2)), atol=0, rtol=0)
    assert tokenizer.encode("Hello world") == HELLO_WORLD and tokenizer.special_tokens == {EOT: 50256}
    assert meta == {"stage": "import-gpt2", "source": str(hf_gpt2)}


def test_sft_from_imported_gpt2_on_an_alpaca_file(capsys, imported, alpaca_file, tmp_path):
    out = tmp_path / "sft"
    code, stdout, err = run_cli(capsys, "sft", "--base", imported, "--data", alpaca_file, "--template", "alpaca",
                                "--out", out, *TRAIN_FLAGS)
    assert code == 0, err
    # No judge for a plain file, and no pretraining text to replay: each said in one line, not an error
    assert "replay off: the base names no pretraining corpus" in stdout
    assert re.search(r"alpaca\.json is not the world's data folder, so there is no judge .*: skipped", stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["train_examples"], metrics["val_examples"], metrics["replay"]) == (19, 1, 0)
    assert math.isfinite(metrics["final_val_loss"]) and "accuracy_after" not in metrics

    tuned, tokenizer, meta = load_checkpoint(out)  # it loads back, GPT-2's tokenizer with it
    assert tokenizer.encode("Hello world") == HELLO_WORLD and meta["template"] == "alpaca"
    start = load_checkpoint(imported)[0]
    assert not torch.allclose(logits_of(tuned), logits_of(start))  # it trained
    held_out = [r for r in ALPACA if r["instruction"] in (out / "samples.txt").read_text()]
    assert len(held_out) == 1  # the one held-out record, answered by the model


def test_imported_gpt2_with_the_chat_template_is_one_line(capsys, imported, alpaca_file, tmp_path):
    code, _, err = run_cli(capsys, "sft", "--base", imported, "--data", alpaca_file, "--out", tmp_path / "sft",
                           *TRAIN_FLAGS)  # --template chat is the default
    assert code == 2
    assert re.search(r"the chat template needs <\|user\|> and <\|assistant\|>, which the base's tokenizer \('gpt2'\) "
                     r"lacks; use --template alpaca", one_error_line(err))
    assert not (tmp_path / "sft" / "metrics.json").exists()


def test_import_gpt2_by_size_name_downloads_it(capsys, hf_gpt2, monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(gpt2_module, "download_gpt2", lambda size: asked.append(size) or hf_gpt2)
    monkeypatch.chdir(tmp_path)  # no folder called gpt2 here: the name means the hub's GPT-2
    if not GPT2_TIKTOKEN.is_file():
        pytest.skip(f"GPT-2's vocabulary file {GPT2_TIKTOKEN} is absent (reference data)")
    code, stdout, err = run_cli(capsys, "import-gpt2", "--hf", "gpt2-medium", "--out", "base", "--gpt2-vocab",
                                GPT2_TIKTOKEN)
    assert code == 0, err
    assert asked == ["gpt2-medium"] and (tmp_path / "base" / "checkpoint" / "model.safetensors").is_file()
    assert "sft --base base --data FILE --template alpaca" in stdout


def test_import_gpt2_of_another_vocabulary_is_one_line(capsys, monkeypatch, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=100,
                                     bos_token_id=99, eos_token_id=99)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "small")
    capsys.readouterr()  # transformers' progress bar
    small = Tokenizer({bytes([b]): b for b in range(256)}, {EOT: 256})  # 257 tokens: more than 100 embeddings
    monkeypatch.setattr(gpt2_module, "gpt2_tokenizer", lambda path: small)
    code, _, err = run_cli(capsys, "import-gpt2", "--hf", tmp_path / "small", "--out", tmp_path / "base")
    assert code == 2
    assert re.search(r"small has 100 token embeddings, but the tokenizer has 257 tokens", one_error_line(err))
    assert not (tmp_path / "base").exists()
