"""Chapter 9: the PPO stage (ppo.py) on tiny models: the invariants, determinism, resume, flags, divergence."""

import copy
import json

import pytest
import torch

import gpt_scratch.ppo as ppo_module
from gpt_scratch.checkpoint import load_checkpoint, load_with_head, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.lora import adapters_off, load_adapter
from gpt_scratch.model import GPT
from gpt_scratch.ppo import PPOConfig, ppo_stage, ppo_step, step_prompts
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainingDiverged
from tiny import LAYOUTS, fingerprint_script, layout_config, two_ranks, write_yes_data


@pytest.fixture(scope="module")
def folders(request, tmp_path_factory):
    """A tiny SFT checkpoint, a reward checkpoint (random head + log p term) and data the judge can score;
    the models in GPT-2's layout unless a test asks for another (indirect parametrisation)."""
    root = tmp_path_factory.mktemp("ppo")
    tokenizer = Tokenizer.train("Is 3 a number? yes. Is a cat a number? no. The answer is yes. " * 20, 280)
    torch.manual_seed(0)
    gpt = GPT(layout_config(getattr(request, "param", "gpt2"), vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1,
                            n_head=2, n_embd=16))
    sft = save_checkpoint(root / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"})
    reward = GPTWithHead(copy.deepcopy(gpt), "reward", with_logprob=True)
    with torch.no_grad():
        reward.head.weight.normal_()
        reward.head.logprob_weight.fill_(0.5)
    save_checkpoint(root / "reward" / "checkpoint", reward, tokenizer, {"stage": "reward"})
    return {"sft": sft.parent, "reward": root / "reward", "data": write_yes_data(root / "data", n_train=32, n_test=8),
            "tokenizer": tokenizer}


def small(**overrides) -> PPOConfig:
    settings = dict(steps=4, batch_size=8, minibatch_size=4, epochs=2, lr=1e-3, value_lr=1e-3, max_new_tokens=4,
                    eval_every=2, save_every=2, dtype="float32")
    settings.update(overrides)
    return PPOConfig(**settings)


def test_one_step_keeps_the_reference_frozen_and_starts_at_ratio_1(folders):
    policy, tokenizer, _ = load_checkpoint(folders["sft"])
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    before = {n: p.clone() for n, p in reference.named_parameters()}
    value_model = GPTWithHead(copy.deepcopy(policy), "value")
    reward_model = load_with_head(folders["reward"])[0].eval()
    cfg = small()
    optimizers = (torch.optim.AdamW(policy.parameters(), lr=cfg.lr), torch.optim.AdamW(value_model.parameters(), lr=cfg.lr))
    records = json.loads((folders["data"] / "sft_train.json").read_text())
    metrics = ppo_step(policy, value_model, reference, reward_model, tokenizer, step_prompts(records, cfg, 0), cfg,
                       cfg.kl_coef, optimizers, 0, torch.device("cpu"))
    assert metrics["ratio_first_minibatch"] == 1.0  # the first minibatch is scored by the policy that sampled it
    assert metrics["kl"] == 0.0  # before any update the policy is the reference
    for name, p in reference.named_parameters():
        assert torch.equal(p, before[name]), f"the reference's {name} changed"
    assert any(not torch.equal(p, before[n]) for n, p in policy.named_parameters()), "the policy did not move"
    for key in ("score", "kl", "non_score_reward", "rlhf_reward", "entropy", "clipfrac", "approxkl", "value_loss",
                "policy_loss", "ratio", "response_length", "ended"):
        assert key in metrics, key


@pytest.mark.parametrize("folders", LAYOUTS, indirect=True)
def test_the_stage_writes_its_folder_and_repeats_for_a_seed(tmp_path, folders):
    first = ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "a", small(), quiet=True)
    ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "b", small(), quiet=True)
    for name in ("metrics.json", "history.json", "answers.json", "ppo.png", "checkpoint", "value"):
        assert (tmp_path / "a" / name).exists(), name
    histories = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("a", "b")]
    assert histories[0]["score"] == histories[1]["score"] and histories[0]["kl"] == histories[1]["kl"]
    assert histories[0]["eval_step"] == [0, 2, 4]
    assert first["steps"] == 4 and 0.0 <= first["win_rate_vs_sft"] <= 1.0
    assert first["kl_vs_sft"] != 0.0  # the policy moved away from the SFT model on the held-out prompts too


def test_resume_continues_with_exactly_the_uninterrupted_steps(tmp_path, folders, monkeypatch):
    ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "full", small(), quiet=True)
    real_step = ppo_module.ppo_step

    def crash_at_step_3(*args, **kwargs):
        if args[-2] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "ppo_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "cut", small(), quiet=True)
    monkeypatch.undo()
    ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "cut", small(), resume=True, quiet=True)
    full, cut = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("full", "cut"))
    assert full["score"] == cut["score"] and full["policy_loss"] == cut["policy_loss"]
    a, b = load_checkpoint(tmp_path / "full")[0], load_checkpoint(tmp_path / "cut")[0]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_non_finite_loss_stops_the_run_with_one_line(tmp_path, folders, monkeypatch):
    monkeypatch.setattr(ppo_module, "score_texts", lambda *args, **kwargs: torch.full((8,), float("nan")))
    with pytest.raises(TrainingDiverged, match="training diverged at step 0"):
        ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "nan", small(no_end_penalty=float("nan")),
                  quiet=True)
    assert not (tmp_path / "nan" / "checkpoint").exists()  # nothing was saved from the broken step


@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "8", "--minibatch-size", "3"], "--minibatch-size"), (["--kl-coef", "0", "--kl-target", "1"], "--kl-target"),
    (["--kl-estimator", "k2"], "--kl-estimator"), (["--gamma", "2"], "--gamma"), (["--epochs", "0"], "--epochs"),
    (["--clip-range", "0"], "--clip-range"), (["--no-end-penalty", "1"], "--no-end-penalty"),
    (["--lora-alpha", "4"], "--lora-alpha"), (["--lora-rank", "0"], "--lora-rank")])
def test_bad_ppo_flags_exit_2_with_one_line_before_reading_anything(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["ppo", "--sft", "/nonexistent", "--reward", "/nonexistent", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err


def test_flags_reach_the_stage(tmp_path, folders):
    out = tmp_path / "cli"
    given = {"steps": 2, "batch_size": 4, "minibatch_size": 2, "epochs": 3, "lr": 2e-3, "value_lr": 4e-3,
             "kl_coef": 0.3, "kl_estimator": "k3", "kl_target": 2.5, "clip_range": 0.3, "value_clip": 0.4,
             "gamma": 0.9, "lam": 0.8, "max_new_tokens": 3, "temperature": 0.7, "no_end_penalty": -1.5,
             "grad_clip": 0.5, "lora_rank": 2, "lora_alpha": 3.0, "eval_every": 1, "seed": 5, "dtype": "float32"}
    argv = [item for name, value in given.items() for item in ("--" + name.replace("_", "-"), str(value))]
    assert main(["ppo", "--sft", str(folders["sft"]), "--reward", str(folders["reward"]), "--data", str(folders["data"]),
                 "--out", str(out), "--preset", "tiny", *argv, "--n-eval", "4", "--quiet"]) == 0
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["ppo_config"]
    assert {name: meta[name] for name in given} == given
    assert json.loads((out / "metrics.json").read_text())["test_examples"] == 4
    history = json.loads((out / "history.json").read_text())
    assert history["eval_step"] == [0, 1, 2] and len(history["score"]) == 2  # --eval-every 1, --steps 2
    assert history["response_length"][0] <= 3  # --max-new-tokens 3


def test_a_lora_policy_uses_its_own_base_as_the_reference(tmp_path, folders):
    """LoRA: the reference is the policy with adapters off; at the end adapter/ + a merged plain checkpoint."""
    out = tmp_path / "lora"
    first = ppo_stage(folders["sft"], folders["reward"], folders["data"], out, small(lora_rank=2), quiet=True)
    history = json.loads((out / "history.json").read_text())
    assert history["kl"][0] == 0.0 and history["ratio_first_minibatch"][0] == 1.0  # B = 0: the policy is its base
    assert history["kl"][-1] != 0.0, "the adapters did not move the policy"
    merged, _, meta = load_checkpoint(out)  # an ordinary GPT, like every stage's checkpoint
    assert meta["merged_lora"] is True
    sft, _, _ = load_checkpoint(folders["sft"])
    load_adapter(sft, out / "adapter")  # the SFT base + the saved adapter = the merged policy
    x = torch.randint(0, folders["tokenizer"].n_vocab, (2, 10))
    torch.testing.assert_close(sft(x), merged(x), atol=1e-5, rtol=1e-5)
    with adapters_off(sft):  # and with its adapters off it is the SFT model again, bitwise
        assert torch.equal(sft(x), load_checkpoint(folders["sft"])[0](x))
    again = ppo_stage(folders["sft"], folders["reward"], folders["data"], out, small(lora_rank=2), resume=True,
                      quiet=True)  # resuming a finished LoRA run loads the merged policy and judges it the same
    assert again["accuracy_after"] == first["accuracy_after"] and again["win_rate_vs_sft"] == first["win_rate_vs_sft"]
    assert first["kl_vs_sft"] != 0 and again["kl_vs_sft"] == first["kl_vs_sft"]  # against SFT, not itself (k1: any sign)


def test_two_processes_train_one_policy_and_rank_0_writes(tmp_path, folders, monkeypatch):
    """In two processes (ranks 0 and 1, as torchrun starts them) each rank rolls out, scores and trains
    on 4 of a step's 8 prompts (2 of each minibatch of 4): DDP keeps both ranks' policy and value model
    equal after every step, and rank 0 alone writes what one process writes."""
    args = ["ppo", "--sft", folders["sft"], "--reward", folders["reward"], "--data", folders["data"], "--preset", "tiny",
            "--steps", "2", "--batch-size", "8", "--minibatch-size", "4", "--epochs", "2", "--lr", "1e-3",
            "--max-new-tokens", "4", "--eval-every", "2", "--n-eval", "4", "--device", "cpu", "--dtype", "float32",
            "--quiet"]
    assert main([*map(str, args), "--out", str(tmp_path / "one")]) == 0
    script = tmp_path / "fingerprint.py"
    script.write_text(fingerprint_script("ppo"))
    monkeypatch.setenv("FINGERPRINTS", str(tmp_path))
    result = two_ranks(script, *args, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(ranks[0]) == 2 and ranks[0] == ranks[1] and ranks[0][0] != ranks[0][1]  # equal, and they moved
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert history["step"] == [1, 2] and history["eval_step"] == [0, 2]
    assert history["ratio_first_minibatch"] == [1.0, 1.0] and history["kl"][0] == 0.0  # on both ranks
    written = [sorted(str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*")) for run in ("one", "two")]
    assert written[0] == written[1]
