"""Command-line tests: `python -m gpt_scratch <stage>`, mostly through cli.main() in this process.

A bad input must exit with code 2 and print exactly one line on stderr saying what is wrong.
One tiny pretrained checkpoint (module-scoped) is shared by the generate tests.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import gpt_scratch.train as train_module
from gpt_scratch.cli import COMMANDS, main
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.world.corpus import build_world, generate_corpus
from tiny import REPO, write_world_corpus

STAGES = ("run", "data", "pretrain", "sft", "reward", "ppo", "dpo", "grpo", "compare", "generate", "chat", "bench", "grade")
# Every model and training flag, each set to a value that differs from the tiny preset's.
MODEL_FLAGS = {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 32, "dropout": 0.1, "attention": "sdpa"}
TRAIN_FLAGS = {"max_steps": 6, "batch_size": 4, "lr": 0.01, "warmup_steps": 2, "weight_decay": 0.05,
               "grad_clip": 0.5, "eval_every": 3, "save_every": 4, "seed": 3, "grad_accum": 2}
LONG_PROMPT = "Once upon a time there was a goat. " * 12  # far more than 32 tokens


def flags(settings: dict) -> list[str]:
    return [arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """cli.main in this process: (exit code, stdout, stderr); argparse's exits are caught."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"


def read_json(path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two cores shared with other jobs: a second PyTorch thread waiting for a busy core makes
    # every tiny op take milliseconds. One thread keeps these runs fast (and bit-reproducible).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_world_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    """A stage folder made by `pretrain` with every model and training flag given."""
    out = tmp_path_factory.mktemp("pretrain")
    assert main(all_flags_args(corpus, out)) == 0
    return out


def all_flags_args(corpus, out) -> list[str]:
    return ["pretrain", "--corpus", str(corpus), "--out", str(out), "--preset", "tiny", "--vocab-size", "290",
            "--val-fraction", "0.1", *flags(MODEL_FLAGS), *flags(TRAIN_FLAGS), "--quiet"]


# --- help ----------------------------------------------------------------------------------------

def test_help_works_for_every_stage(capsys):
    assert set(STAGES) <= set(COMMANDS)
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and all(stage in out for stage in STAGES)
    for stage in COMMANDS:
        code, out, err = run_cli(capsys, stage, "--help")
        assert code == 0, f"{stage} --help exited {code}: {err}"
        assert out.startswith("usage: python -m gpt_scratch " + stage) and "--" in out and not err
    _, out, _ = run_cli(capsys, "pretrain", "--help")
    for name in [*MODEL_FLAGS, *TRAIN_FLAGS, "resume", "quiet", "vocab_size", "val_fraction"]:
        assert f"--{name.replace('_', '-')}" in out


# --- bad inputs: exit 2 and one line ---------------------------------------------------------------

@pytest.mark.parametrize("args, pattern", [
    (["--max-steps", "-1"], r"argument --max-steps: must be >= 1, got -1"),
    (["--max-steps", "0", "--warmup-steps", "0"], r"max.steps.*(at least 1|>= 1)"),
    (["--n-embd", "30", "--n-head", "4"], r"--n-embd 30 must be divisible by --n-head 4"),
    (["--warmup-steps", "10", "--max-steps", "5"], r"--warmup-steps 10 is larger than --max-steps 5"),
    (["--lr", "0"], r"argument --lr: must be in \(0\.0, inf\], got 0"),
    (["--dropout", "1"], r"argument --dropout: must be in \[0\.0, 1\.0\), got 1"),
    (["--attention", "flash"], r"argument --attention: invalid choice: 'flash'"),
])
def test_bad_pretrain_flags(capsys, corpus, tmp_path, args, pattern):
    code, _, err = run_cli(capsys, "pretrain", "--corpus", corpus, "--out", tmp_path, "--preset", "tiny",
                           "--quiet", *args)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("content, vocab_size, pattern", [
    (None, 260, r"corpus file .*corpus\.txt not found"),
    (b"", 260, r"corpus file .*corpus\.txt is empty"),
    (b" \n\t\n", 260, r"corpus file .*corpus\.txt is empty"),
    (b"caf\xe9 au lait, latin-1 not UTF-8\n", 260, r"corpus file .*corpus\.txt is not UTF-8 text"),
    (b"Anna has a goat. " * 30, 260, r"the validation part of .* is only \d+ tokens, but one window needs block_size \+ 1 = 65"),
    (b"ab ab ab", 260, r"the training part of .* is only 5 tokens, but one window needs block_size \+ 1 = 65"),
    (b"ab ab ab", 300, r"the text allows only 2 merges, not 41; use more text or a vocab_size of at most 261"),
], ids=["missing", "empty", "blank", "latin-1", "tiny-validation", "tiny-training", "too-few-merges"])
def test_bad_corpus_files(capsys, tmp_path, content, vocab_size, pattern):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_cli(capsys, "pretrain", "--corpus", path, "--out", tmp_path / "out", "--preset", "tiny",
                           "--vocab-size", vocab_size, "--block-size", "64", "--quiet")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "out" / "metrics.json").exists()
    if content is None:
        assert not (tmp_path / "out").exists(), "a missing corpus should leave no stage folder behind"


def damaged_copy(pretrained, tmp_path, damage) -> str:
    folder = tmp_path / "checkpoint"
    shutil.copytree(pretrained / "checkpoint", folder)
    damage(folder)
    return str(folder)


def edit_config(**model):
    def damage(folder):
        data = read_json(folder / "config.json")
        data["model"].update(model)
        (folder / "config.json").write_text(json.dumps(data))
    return damage


@pytest.mark.parametrize("damage, pattern", [
    (lambda f: (f / "config.json").unlink(), r"no checkpoint in .*checkpoint \(expected .*config\.json"),
    (lambda f: (f / "model.safetensors").write_bytes(b"garbage!" * 64), r"model\.safetensors is corrupt"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:500]),
     r"model\.safetensors is corrupt"),
    (lambda f: (f / "model.safetensors").unlink(), r"model\.safetensors is missing"),
    (edit_config(n_layer=2), r"model\.safetensors does not match.*missing \['transformer\.h\.1\."),
    (edit_config(n_embd=16), r"model\.safetensors does not match.*transformer\.wte\.weight \(290, 8\) vs \(290, 16\)"),
    (edit_config(n_head=3), r"config\.json is not a valid gpt-scratch config.*divisible"),
    (edit_config(colour="blue"), r"config\.json is not a valid gpt-scratch config.*unknown GPTConfig fields"),
    (lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:40]),
     r"config\.json is not a valid gpt-scratch config"),
    (lambda f: (f / "config.json").write_text("[]"), r"config\.json is not a valid gpt-scratch config"),
    (lambda f: (f / "tokenizer.tiktoken").unlink(), r"has no tokenizer files"),
    (lambda f: (f / "tokenizer.json").unlink(), r"tokenizer\.json is missing"),
])
def test_bad_checkpoints(capsys, pretrained, tmp_path, damage, pattern):
    folder = damaged_copy(pretrained, tmp_path, damage)
    code, out, err = run_cli(capsys, "generate", "--checkpoint", folder, "--max-new-tokens", "3")
    assert_one_line_error(code, err, pattern)
    assert out == ""


def test_a_folder_without_a_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--checkpoint", tmp_path / "nowhere")
    assert_one_line_error(code, err, r"no checkpoint in .*nowhere")


@pytest.mark.parametrize("args, pattern", [
    (["--temperature", "-1"], r"argument --temperature: must be in \[0\.0, 100\.0\], got -1"),
    (["--top-p", "0"], r"argument --top-p"),
    (["--num-samples", "0"], r"argument --num-samples: must be from 1 to 64, got 0"),
])
def test_bad_generate_flags(capsys, pretrained, args, pattern):
    code, _, err = run_cli(capsys, "generate", "--checkpoint", pretrained, *args)
    assert_one_line_error(code, err, pattern)


# Flags are checked against each other before any file is read: a conflict is reported, not the
# missing file ("MISSING" stands for a path that does not exist, "OUT" for a fresh output folder).
@pytest.mark.parametrize("args, pattern", [
    (["pretrain", "--corpus", "MISSING", "--out", "OUT", "--n-embd", "30", "--n-head", "4"],
     r"--n-embd 30 must be divisible by --n-head 4"),
    (["pretrain", "--corpus", "MISSING", "--out", "OUT", "--warmup-steps", "10", "--max-steps", "5"],
     r"--warmup-steps 10 is larger than --max-steps 5"),
    (["sft", "--base", "MISSING", "--out", "OUT", "--lora-rank", "4", "--freeze", "head"],
     r"--lora-rank cannot be combined with --freeze"),
    (["sft", "--base", "MISSING", "--out", "OUT", "--preset", "tiny", "--max-steps", "2"],
     r"--warmup-steps 5 is larger than --max-steps 2"),
    (["reward", "--sft", "MISSING", "--out", "OUT", "--best-of", "0", "--best-of-prompts", "5"],
     r"--best-of-prompts needs best-of-n"),
    (["reward", "--sft", "MISSING", "--out", "OUT", "--warmup-steps", "10", "--max-steps", "5"],
     r"--warmup-steps 10 is larger than --max-steps 5"),
    (["compare", "--base", "MISSING", "--out", "OUT", "--methods", "full", "head", "full"],
     r"--methods names full twice"),
    (["compare", "--base", "MISSING", "--out", "OUT", "--preset", "tiny", "--max-steps", "2"],
     r"--max-steps 2 is smaller than the tiny preset's 5 warmup steps"),
    (["generate", "--checkpoint", "MISSING", "--temperature", "0", "--top-k", "5"],
     r"--top-k has no effect with --temperature 0"),
    (["generate", "--checkpoint", "MISSING", "--temperature", "0", "--num-samples", "3"],
     r"--num-samples 3 with --temperature 0 \(greedy\) gives 3 identical samples"),
    (["chat", "--checkpoint", "MISSING", "--top-p", "0.5"], r"--top-p has no effect with --temperature 0"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_flag_conflicts_come_before_missing_files(capsys, tmp_path, args, pattern):
    paths = {"MISSING": str(tmp_path / "missing"), "OUT": str(tmp_path / "out")}
    code, out, err = run_cli(capsys, *[paths.get(arg, arg) for arg in args])
    assert_one_line_error(code, err, pattern)
    assert "missing" not in err and out == ""
    assert not (tmp_path / "out").exists()


def test_missing_inputs_are_one_line_before_any_work(capsys, tmp_path, pretrained):
    code, _, err = run_cli(capsys, "compare", "--base", tmp_path / "missing", "--out", tmp_path / "out")
    assert_one_line_error(code, err, r"no checkpoint in .*missing")
    code, _, err = run_cli(capsys, "compare", "--base", pretrained, "--out", tmp_path / "out",
                           "--methods", "full", "last_blocks:2")  # the base has 1 block
    assert_one_line_error(code, err, r"--methods last_blocks:2: the base model has 1 blocks; use last_blocks:0..1")
    code, _, err = run_cli(capsys, "run", "--corpus", tmp_path / "missing.txt", "--out", tmp_path / "out")
    assert_one_line_error(code, err, r"corpus file .*missing\.txt not found")
    assert not (tmp_path / "out").exists()


def test_a_prompt_longer_than_the_context_needs_crop(capsys, pretrained):
    code, out, err = run_cli(capsys, "generate", "--checkpoint", pretrained, "--prompt", LONG_PROMPT)
    assert_one_line_error(code, err, r"a prompt has \d+ tokens but the model's context is 32.*--crop")
    assert out == ""
    code, out, err = run_cli(capsys, "generate", "--checkpoint", pretrained, "--prompt", LONG_PROMPT, "--crop",
                             "--max-new-tokens", "5")
    assert code == 0 and "Traceback" not in err
    assert out.startswith(LONG_PROMPT) and "-" * 40 not in out  # one sample: no separator line


# --- pretrain end to end ----------------------------------------------------------------------------

def test_pretrain_writes_every_file_and_every_flag_lands(pretrained):
    for name in ("loss.png", "samples.txt", "metrics.json", "tokenizer.tiktoken", "tokenizer.json"):
        assert (pretrained / name).is_file(), name
    checkpoint = pretrained / "checkpoint"
    for name in ("config.json", "model.safetensors", "tokenizer.tiktoken", "tokenizer.json", "train_state.json"):
        assert (checkpoint / name).is_file(), name
    assert (pretrained / "loss.png").read_bytes()[:4] == b"\x89PNG"

    metrics = read_json(pretrained / "metrics.json")
    assert math.isfinite(metrics["final_val_loss"]) and 0 < metrics["final_val_loss"] < 10
    assert metrics["steps"] == TRAIN_FLAGS["max_steps"]

    config = read_json(checkpoint / "config.json")
    assert {name: config["model"][name] for name in MODEL_FLAGS} == MODEL_FLAGS
    assert config["model"]["vocab_size"] == 290
    train_config = config["meta"]["train_config"]
    assert {name: train_config[name] for name in TRAIN_FLAGS} == TRAIN_FLAGS
    assert config["meta"]["step"] == TRAIN_FLAGS["max_steps"]

    tokenizer = Tokenizer.load(checkpoint)
    assert tokenizer.n_vocab == 290 and tokenizer.ranks == Tokenizer.load(pretrained).ranks
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert weights["transformer.wte.weight"].shape == (290, 8)
    assert not any(name.startswith("transformer.h.1.") for name in weights)  # --n-layer 1

    state = read_json(checkpoint / "train_state.json")
    history = state["history"]
    assert state["step"] == 6 and history["step"] == list(range(6))
    assert history["val_step"] == [2, 5]  # --eval-every 3 (and the last step)
    assert history["tokens"] == 6 * 2 * 4 * 32  # steps * grad_accum * batch_size * block_size
    samples = (pretrained / "samples.txt").read_text()
    assert samples.startswith("Once upon a time|") and "The cat|" in samples


def pretrain_args(corpus, out) -> list[str]:
    return ["pretrain", "--corpus", str(corpus), "--out", str(out), "--preset", "tiny", "--max-steps", "6",
            "--save-every", "3", "--eval-every", "2", "--warmup-steps", "2", "--block-size", "32", "--vocab-size", "300",
            "--batch-size", "4", "--dropout", "0.1", "--quiet"]


def test_dtype_flag_lands_and_changes_the_arithmetic(capsys, corpus, tmp_path):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        code, _, err = run_cli(capsys, *pretrain_args(corpus, tmp_path / dtype), "--dtype", dtype)
        assert code == 0, err
        config = read_json(tmp_path / dtype / "checkpoint" / "config.json")
        assert config["meta"]["train_config"]["dtype"] == dtype
        losses[dtype] = read_json(tmp_path / dtype / "checkpoint" / "train_state.json")["history"]["train_loss"]
    assert losses["float32"][0] != losses["bfloat16"][0]  # bf16 products round differently from step 0 on


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    # A tokenizer left in the folder from another corpus must not be reused by a run that is not resuming.
    Tokenizer.train(generate_corpus(build_world(9), 20_000, 9), 300).save(fresh)
    assert main(pretrain_args(corpus, fresh)) == 0
    assert Tokenizer.load(fresh).ranks == Tokenizer.train(corpus.read_text(), 300).ranks

    real_step = train_module.train_step

    def crash_at_step_4(model, optimizer, get_batch, step, *args):
        if step == 4:
            raise Interrupted("killed")
        return real_step(model, optimizer, get_batch, step, *args)

    monkeypatch.setattr(train_module, "train_step", crash_at_step_4)
    with pytest.raises(Interrupted):
        main(pretrain_args(corpus, resumed))
    monkeypatch.undo()
    assert read_json(resumed / "checkpoint" / "train_state.json")["step"] == 3  # --save-every 3; step 3 was lost
    assert not (resumed / "metrics.json").exists()

    assert main(pretrain_args(corpus, resumed) + ["--resume"]) == 0

    def outcome(folder):
        state = read_json(folder / "checkpoint" / "train_state.json")
        history = {k: v for k, v in state["history"].items() if k != "seconds"}
        metrics = {k: v for k, v in read_json(folder / "metrics.json").items()
                   if k not in ("train_seconds", "tokens_per_second")}
        return state["step"], history, metrics, load_file(str(folder / "checkpoint" / "model.safetensors"))

    step, history, metrics, weights = outcome(fresh)
    assert step == 6 and history["step"] == list(range(6)) and history["val_step"] == [1, 3, 5]
    assert outcome(resumed)[:3] == (step, history, metrics)
    assert all(torch.equal(weights[name], tensor) for name, tensor in outcome(resumed)[3].items())

    # A finished stage resumed again trains nothing more: the same history, weights and metrics.
    (resumed / "metrics.json").unlink()
    assert main(pretrain_args(corpus, resumed) + ["--resume"]) == 0
    again = outcome(resumed)
    assert again[:3] == (step, history, metrics)
    assert all(torch.equal(weights[name], tensor) for name, tensor in again[3].items())


@pytest.mark.parametrize("name, content", [("train_state.json", b'{"step": 6, "hist'),
                                           ("optimizer.pt", b"garbage!" * 8)])
def test_a_damaged_resume_state_is_named(capsys, corpus, pretrained, tmp_path, name, content):
    out = tmp_path / "stage"
    shutil.copytree(pretrained, out)
    (out / "metrics.json").unlink()
    (out / "checkpoint" / name).write_bytes(content)
    code, _, err = run_cli(capsys, *all_flags_args(corpus, out), "--resume")
    assert_one_line_error(code, err, r"the resume state in .*checkpoint is damaged.*delete")


# --- generate ------------------------------------------------------------------------------------

def generate_output(capsys, pretrained, *args) -> str:
    code, out, err = run_cli(capsys, "generate", "--checkpoint", pretrained, "--prompt", "The cat",
                             "--max-new-tokens", "12", *args)
    assert code == 0, err
    return out


def samples_of(out: str) -> list[str]:
    assert out.endswith("\n")
    return out[:-1].split("\n" + "-" * 40 + "\n")  # a line between samples


def test_generate_prints_seeded_samples(capsys, pretrained):
    one = samples_of(generate_output(capsys, pretrained, "--seed", "1"))
    assert len(one) == 1 and one[0].startswith("The cat") and len(one[0]) > len("The cat")
    two = samples_of(generate_output(capsys, pretrained, "--seed", "1", "--num-samples", "2"))
    assert len(two) == 2 and all(s.startswith("The cat") for s in two)
    assert two[0] != two[1], "two samples drawn in one batch should differ"
    assert generate_output(capsys, pretrained, "--seed", "1") == generate_output(capsys, pretrained, "--seed", "1")
    assert generate_output(capsys, pretrained, "--seed", "1") != generate_output(capsys, pretrained, "--seed", "2")
    greedy = generate_output(capsys, pretrained, "--temperature", "0", "--seed", "1")
    assert greedy == generate_output(capsys, pretrained, "--temperature", "0", "--seed", "2")
    # The stage folder and its checkpoint/ folder are the same model.
    assert generate_output(capsys, pretrained / "checkpoint", "--seed", "1") == \
        generate_output(capsys, pretrained, "--seed", "1")


# --- real processes: exit codes -------------------------------------------------------------------

def run_process(*argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gpt_scratch", *map(str, argv)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_real_process_exit_codes(capsys, pretrained):
    good = run_process("generate", "--checkpoint", pretrained, "--prompt", "The cat", "--max-new-tokens", "12",
                       "--seed", "1")
    assert good.returncode == 0, good.stderr
    assert good.stdout == generate_output(capsys, pretrained, "--seed", "1")
    bad_flag = run_process("pretrain", "--lr", "0")
    assert_one_line_error(bad_flag.returncode, bad_flag.stderr, r"argument --lr: must be in")


# --- the whole pipeline --------------------------------------------------------------------------

def test_run_tiny_writes_a_report_and_skips_done_stages(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "--preset", "tiny", "--out", tmp_path, "--quiet")
    assert code == 0, err
    assert out == "", "--quiet should print nothing"
    report = (tmp_path / "report.md").read_text()
    assert "## pretrain" in report and "| metric | value |" in report
    for stage in ("pretrain", "sft", "lora", "reward", "ppo", "dpo", "grpo"):  # every stage ran and is in the report
        assert (tmp_path / stage / "metrics.json").is_file() and f"## {stage}" in report, stage
    assert "- GRPO (" in report and "- PPO (" in report and "- DPO (" in report
    metrics = read_json(tmp_path / "pretrain" / "metrics.json")
    assert math.isfinite(metrics["final_val_loss"])
    assert f"| final_val_loss | {metrics['final_val_loss']} |" in report
    metrics_bytes = (tmp_path / "pretrain" / "metrics.json").read_bytes()
    weights_written = (tmp_path / "pretrain" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    summary = read_json(tmp_path / "summary.json")  # the file a README's figures are checked against
    assert summary["command"] == f"python -m gpt_scratch run --out {tmp_path} --preset tiny --quiet"
    assert summary["preset"] == "tiny" and {"device", "dtype", "torch", "date"} <= set(summary["measured_on"])
    assert list(summary["stages"]) == ["pretrain", "sft", "lora", "reward", "ppo", "dpo", "grpo"]
    for stage, figures in summary["stages"].items():  # each stage's metrics.json, less its markdown tables
        assert figures == {k: v for k, v in read_json(tmp_path / stage / "metrics.json").items()
                           if k not in ("table", "best_of_n_table")}, stage
    assert "table" in read_json(tmp_path / "sft" / "metrics.json") and "table" not in summary["stages"]["sft"]
    assert summary["wall_seconds"] == pytest.approx(sum(m["stage_seconds"] for m in summary["stages"].values()),
                                                    abs=0.1)

    code, out, err = run_cli(capsys, "run", "--preset", "tiny", "--out", tmp_path)
    assert code == 0, err
    assert re.search(r"\[pretrain\] .*skipping", out)
    assert (tmp_path / "pretrain" / "metrics.json").read_bytes() == metrics_bytes
    assert (tmp_path / "pretrain" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == weights_written
    assert f"| final_val_loss | {metrics['final_val_loss']} |" in (tmp_path / "report.md").read_text()
    assert read_json(tmp_path / "run.json") == {"preset": "tiny", "arch": "gpt2"}
    rewritten = read_json(tmp_path / "summary.json")  # every stage skipped: the same figures, this command
    assert rewritten["command"] == f"python -m gpt_scratch run --out {tmp_path} --preset tiny"
    assert rewritten["stages"] == summary["stages"] and rewritten["wall_seconds"] == summary["wall_seconds"]

    code, out, err = run_cli(capsys, "run", "--preset", "default", "--out", tmp_path)  # not on top of tiny's stages
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "was started with --preset tiny" in err

    # The same run in the modern layout (chapter 12), its report beside the GPT-2 layout's run.
    llama = tmp_path / "llama"
    code, out, err = run_cli(capsys, "run", "--preset", "tiny", "--arch", "llama", "--out", llama,
                             "--compare-with", tmp_path, "--quiet")
    assert code == 0, err
    config = read_json(llama / "pretrain" / "checkpoint" / "config.json")["model"]
    assert {k: config[k] for k in ("norm", "position", "mlp", "bias", "tie_weights", "n_kv_head")} == {
        "norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "bias": False, "tie_weights": False, "n_kv_head": 1}
    assert read_json(llama / "run.json") == {"preset": "tiny", "arch": "llama"}
    summary_llama = read_json(llama / "summary.json")
    assert summary_llama["arch"] == "llama" and summary["arch"] == "gpt2"
    assert summary_llama["command"].endswith(f"--arch llama --compare-with {tmp_path} --quiet")
    assert list(summary_llama["stages"]) == list(summary["stages"])  # every stage ran in the llama layout
    report = (llama / "report.md").read_text()
    sft_row = (f"| SFT: held-out accuracy | {summary_llama['stages']['sft']['accuracy_after']:.1%} | "
               f"{summary['stages']['sft']['accuracy_after']:.1%} |")
    assert f"## Compared with `{tmp_path}`" in report and sft_row in report, report[:1500]
    code, out, err = run_cli(capsys, "run", "--preset", "tiny", "--out", llama)  # not the GPT-2 layout on top
    assert code == 2 and "was started with --arch llama" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "run", "--preset", "tiny", "--out", tmp_path / "x", "--compare-with", llama / "sft")
    assert code == 2 and "has no summary.json" in err and not (tmp_path / "x").exists()


def test_the_run_command_is_written_as_typed_without_the_machines_paths(monkeypatch, tmp_path):
    from gpt_scratch.pipeline import run_command
    monkeypatch.chdir(tmp_path)
    assert run_command(tmp_path / "runs" / "default", "auto", 0, None, "auto", False, None) == \
        "python -m gpt_scratch run --out runs/default"
    assert run_command("runs/x", "fast", 3, str(tmp_path / "my.txt"), "cpu", True, None) == \
        "python -m gpt_scratch run --out runs/x --preset fast --seed 3 --device cpu --corpus my.txt --quiet"


@pytest.mark.parametrize("bf16, expected", [(True, "default"), (False, "fast")])
def test_preset_auto_is_fast_on_a_cpu_that_trains_in_float32(monkeypatch, tmp_path, bf16, expected):
    import gpt_scratch.pipeline as pipeline
    monkeypatch.setattr(pipeline, "native_bf16", lambda device: bf16)
    assert pipeline.choose_preset("auto", "cpu", tmp_path) == expected
    for name in ("default", "fast", "tiny"):  # a preset asked for by name is kept
        assert pipeline.choose_preset(name, "cpu", tmp_path) == name
    note = pipeline.preset_note("auto", expected, "cpu")
    if bf16:
        assert note is None and pipeline.preset_note("default", "default", "cpu") is None
    else:
        assert note.startswith("preset auto -> fast: this CPU has no bf16 hardware, so training runs in float32")
        assert "--preset default" in note
        assert pipeline.preset_note("default", "default", "cpu").startswith("note: this CPU has no bf16 hardware")
        assert pipeline.preset_note("fast", "fast", "cpu") is None and pipeline.preset_note("tiny", "tiny", "cpu") is None


def test_a_run_folder_keeps_its_preset(monkeypatch, tmp_path):
    import gpt_scratch.pipeline as pipeline
    (tmp_path / "run.json").write_text('{"preset": "default"}')
    monkeypatch.setattr(pipeline, "native_bf16", lambda device: False)  # auto alone would pick fast here
    assert pipeline.choose_preset("auto", "cpu", tmp_path) == "default"
    assert pipeline.choose_preset("default", "cpu", tmp_path) == "default"
    with pytest.raises(ValueError, match=r"was started with --preset default; resume it with --preset default"):
        pipeline.choose_preset("fast", "cpu", tmp_path)
    (tmp_path / "run.json").write_text('{"preset": "huge"}')
    with pytest.raises(ValueError, match=r"names an unknown preset 'huge'"):
        pipeline.choose_preset("auto", "cpu", tmp_path)
    (tmp_path / "run.json").write_text('{"preset": "def')
    with pytest.raises(ValueError, match=r"run.json is damaged"):
        pipeline.choose_preset("auto", "cpu", tmp_path)


def test_the_fast_preset_is_the_default_with_a_narrower_model_and_fewer_steps():
    from gpt_scratch.presets import PRESETS
    fast, default = PRESETS["fast"], PRESETS["default"]
    assert fast["model"] == {**default["model"], "n_embd": 96, "attention": "sdpa"}
    assert [stage for stage in default if fast[stage] != default[stage]] == ["model", "pretrain", "sft", "lora"]
    for stage in ("pretrain", "sft", "lora"):
        assert fast[stage]["max_steps"] < default[stage]["max_steps"]
        changed = {"max_steps"} if stage == "pretrain" else {"max_steps", "lr"}  # fine-tuning at a higher rate
        assert {k: v for k, v in fast[stage].items() if k not in changed} == \
            {k: v for k, v in default[stage].items() if k not in changed}
    assert fast["sft"]["lr"] == 2 * default["sft"]["lr"] and fast["lora"]["lr"] == 2 * default["lora"]["lr"]


@pytest.mark.parametrize("argv, expected", [
    ([], {"norm": "layernorm", "position": "learned", "mlp": "gelu", "bias": True, "tie_weights": True,
          "n_kv_head": None}),
    (["--arch", "llama"], {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "bias": False,
                           "tie_weights": False, "n_kv_head": 2}),
    (["--arch", "llama", "--n-kv-head", "1", "--position", "learned"], {"norm": "rmsnorm", "position": "learned",
                                                                        "n_kv_head": 1, "bias": False}),
    (["--norm", "rmsnorm", "--no-bias", "--rope-theta", "500"], {"norm": "rmsnorm", "position": "learned",
                                                                 "bias": False, "rope_theta": 500.0}),
])
def test_pretrain_builds_the_layout_asked_for_each_switch_winning_over_arch(monkeypatch, capsys, argv, expected):
    """--arch llama turns every chapter-12 switch on; a switch given as its own flag wins over it."""
    import gpt_scratch.pretrain as pretrain_module
    asked = {}
    monkeypatch.setattr(pretrain_module, "pretrain", lambda corpus, out, model_settings, *a, **k: asked.update(
        model_settings))
    code, _, err = run_cli(capsys, "pretrain", "--corpus", "c.txt", *argv)
    assert code == 0, err
    from gpt_scratch.model import GPTConfig
    config = GPTConfig(**asked)
    assert {key: getattr(config, key) for key in expected} == expected


def test_a_layout_that_cannot_be_built_is_one_line(capsys):
    code, out, err = run_cli(capsys, "pretrain", "--arch", "llama", "--n-kv-head", "3")  # 3 does not divide 4 heads
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--n-kv-head 3 must divide --n-head 4" in err


@pytest.mark.parametrize("preset", ["default", "fast", "tiny"])
def test_compare_trains_lora_with_the_preset_s_lora_stage(preset):
    """compare's lora:R is the sft command with the rank R and the rest of the preset's LoRA stage, as the main job
    trains it (targets, LoRA+ ratio, learning rate, weight decay, steps)."""
    from gpt_scratch.cli import command_parser
    from gpt_scratch.compare import method_flags
    from gpt_scratch.pipeline import stage_train_config
    from gpt_scratch.settings import from_flags
    from gpt_scratch.sft import Tuning, preset_lora
    from gpt_scratch.train import training_settings
    args = command_parser("sft").parse_args(["--preset", preset, *method_flags("lora:4", preset)])
    expected = preset_lora(preset)
    expected.lora_rank = 4
    assert from_flags(Tuning, args) == expected
    assert training_settings(args, "sft") == stage_train_config(preset, "lora", 0, "auto")
