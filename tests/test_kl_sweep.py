"""Chapter 9's KL sweep script (chapters/ch09_ppo/kl_sweep.py): its helpers, its flags, a tiny sweep."""

import copy
import json

import pytest
import torch

from gpt_scratch.checkpoint import save_checkpoint
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.tokenizer import Tokenizer
from tiny import load_script, write_yes_data

kl_sweep = load_script("chapters/ch09_ppo/kl_sweep.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with a tiny sft/ and data/, and a reward folder beside it."""
    root = tmp_path_factory.mktemp("sweep")
    tokenizer = Tokenizer.train("Is 3 a number? yes. Is a cat a number? no. The answer is yes. " * 20, 280)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(root / "run" / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"})
    reward = GPTWithHead(copy.deepcopy(gpt), "reward")
    with torch.no_grad():
        reward.head.weight.normal_()
    save_checkpoint(root / "reward" / "checkpoint", reward, tokenizer, {"stage": "reward"})
    write_yes_data(root / "run" / "data", n_train=16, n_test=6)
    return root


def test_kl_at_evaluations_averages_the_steps_since_the_last_one():
    history = {"step": [1, 2, 3, 4], "kl": [1.0, 3.0, -0.5, 0.1], "eval_step": [0, 2, 4]}
    # step 0: the reference itself; steps 1-2: mean 2.0; steps 3-4: mean -0.2, a k1 estimate below 0 -> 0
    assert kl_sweep.kl_at_evaluations(history) == [0.0, 2.0, 0.0]


def test_worse_than_sft_uses_the_hidden_rule():
    records = [{"family": "add", "answer": "7"}] * 3
    answers = [{"sft": "7", "ppo": "8"},  # right -> wrong: worse
               {"sft": "7", "ppo": "The answer is 7."},  # bare -> sentence, both right: better
               {"sft": "9", "ppo": "The answer is 6."}]  # wrong -> wrong: a tie, not worse
    assert kl_sweep.worse_than_sft(answers, records, n=5) == [answers[0]]


@pytest.mark.parametrize("argv, flag", [
    (["--kl-coefs", "0", "0"], "--kl-coefs"), (["--kl-coefs", "-1"], "--kl-coefs"), (["--steps", "0"], "--steps"),
    (["--steps", "5", "--eval-every", "10"], "--eval-every"), (["--lr", "0"], "--lr"), (["--preset", "huge"], "--preset"),
    (["--run", "/nonexistent"], "/nonexistent")])
def test_bad_flags_exit_2_with_one_line(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        kl_sweep.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err


def test_a_tiny_sweep_runs_each_coefficient_and_draws_the_figures(run, capsys):
    out = run / "out"
    argv = ["--run", str(run / "run"), "--reward", str(run / "reward"), "--out", str(out), "--kl-coefs", "0", "0.3",
            "--steps", "2", "--lr", "2e-3", "--eval-every", "1", "--n-eval", "4", "--preset", "tiny", "--quiet"]
    assert kl_sweep.main(argv) == 0
    for name in ("kl_0/metrics.json", "kl_0.3/metrics.json", "hacking.png", "gold_vs_kl.png", "samples.md"):
        assert (out / name).is_file(), name
    for coef in (0.0, 0.3):  # every flag reached the PPO runs
        config = json.loads((out / f"kl_{coef:g}" / "checkpoint" / "config.json").read_text())["meta"]["ppo_config"]
        assert (config["kl_coef"], config["steps"], config["lr"], config["eval_every"]) == (coef, 2, 2e-3, 1)
        assert config["batch_size"] == 8  # the tiny preset's, not the default's 64
        history = json.loads((out / f"kl_{coef:g}" / "history.json").read_text())
        assert history["eval_step"] == [0, 1, 2]
    assert json.loads((out / "kl_0" / "metrics.json").read_text())["test_examples"] == 4
    sweep = json.loads((out / "sweep.json").read_text())  # the rows a chapter's table is made from
    assert [row["kl_coef"] for row in sweep["rows"]] == [0.0, 0.3] and sweep["command"].startswith("python ")
    assert sweep["rows"][1]["eval_step"] == [0, 1, 2] and "table" not in sweep["rows"][1]
    printed = capsys.readouterr().out
    assert "0.3 |" in printed and "wrote" in printed
    mtime = (out / "kl_0" / "metrics.json").stat().st_mtime_ns
    assert kl_sweep.main(argv) == 0  # a finished run is not run again
    assert (out / "kl_0" / "metrics.json").stat().st_mtime_ns == mtime
