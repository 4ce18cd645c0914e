"""Chapter 9: the PPO stage (ppo.py) on tiny models: the invariants, determinism, resume, flags, divergence."""

import copy
import json

import pytest
import torch

import gpt_scratch.ppo as ppo_module
from gpt_scratch.checkpoint import load_checkpoint, load_with_head, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.data import Encoded
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.lora import adapters_off, load_adapter
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.ppo import PPOConfig, ppo_stage, ppo_step, step_prompts
from gpt_scratch.rollout import collated
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainingDiverged
from tiny import (LAYOUTS, FixedLogits, PositionValues, TokenTable, fingerprint_script, layout_config, two_ranks,
                  write_yes_data)


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
    assert meta["value_baseline"] is True
    assert main(["ppo", "--sft", str(folders["sft"]), "--reward", str(folders["reward"]), "--data", str(folders["data"]),
                 "--out", str(tmp_path / "no_value"), "--preset", "tiny", "--steps", "1", "--no-value-baseline",
                 "--n-eval", "4", "--quiet"]) == 0
    assert json.loads((tmp_path / "no_value" / "checkpoint" / "config.json").read_text())["meta"]["ppo_config"][
        "value_baseline"] is False


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


# --- what ppo_step computes, with stand-in models whose outputs are known by hand ---------------------------------

def hand_rollout(prompt: list[int], answers: list[list[int]]):
    """A Rollout of one prompt's answers (each ends with end-of-text, id 0), right-padded with 0 as rollout() pads."""
    examples = [Encoded(prompt + answer, [False] * len(prompt) + [True] * len(answer)) for answer in answers]
    return collated(["q"] * len(answers), examples, ["a"] * len(answers), [True] * len(answers), pad_id=0)


def stand_in_step(monkeypatch, policy, reference, value_model, batch, scores, cfg, kl_coef=0.0):
    """ppo_step with the rollout and the reward model's scores swapped for fixed ones; returns (metrics, seen):
    seen holds the arguments of the first call of each piece of ppo_math that the step calls."""
    seen = {}

    def keep(name, real):
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            seen.setdefault(name, (args, result))
            return result
        monkeypatch.setattr(ppo_module, name, wrapper)
    for name in ("kl_per_token", "rlhf_rewards", "gae", "masked_whiten", "clipped_policy_loss"):
        keep(name, getattr(ppo_module, name))
    monkeypatch.setattr(ppo_module, "rollout", lambda *args, **kwargs: batch)
    monkeypatch.setattr(ppo_module, "score_texts", lambda *args, **kwargs: torch.tensor(scores))
    optimizers = (torch.optim.AdamW(policy.parameters(), lr=cfg.lr), torch.optim.AdamW(value_model.parameters()))
    metrics = ppo_step(policy, value_model, reference, None, None, ["q"] * len(scores), cfg, kl_coef, optimizers, 0,
                       torch.device("cpu"))
    return metrics, seen


@pytest.mark.parametrize("temperature, logp", [(0.5, -0.142932), (1.0, -0.407606), (1.5, -0.574935)])
def test_every_log_probability_is_taken_at_the_rollout_temperature(monkeypatch, temperature, logp):
    """Logits [2, 1, 0], token 0 sampled: log softmax([2, 1, 0] / T)[0] is -0.142932 at T = 0.5, -0.407606 at
    T = 1, -0.574935 at T = 1.5. The old, new and reference log-probs and the entropy use that distribution."""
    batch = hand_rollout([1, 2], [[0], [0]])  # two answers of one token: the end-of-text, id 0
    cfg = small(batch_size=2, minibatch_size=2, epochs=1, temperature=temperature)
    metrics, seen = stand_in_step(monkeypatch, FixedLogits([2.0, 1.0, 0.0]), FixedLogits([2.0, 1.0, 0.0]),
                                  PositionValues(), batch, [1.0, 0.0], cfg)
    mask = batch.response_mask
    (old_logp, ref_logp, *_), _ = seen["kl_per_token"]
    (new_logp, old_again, *_), _ = seen["clipped_policy_loss"]
    for name, values in (("old", old_logp), ("reference", ref_logp), ("new", new_logp), ("old (loss)", old_again)):
        assert values[mask].tolist() == pytest.approx([logp, logp], abs=1e-6), name
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / temperature, dim=0)
    assert metrics["entropy"] == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)
    assert metrics["ratio_first_minibatch"] == 1.0 and metrics["kl"] == 0.0


def test_the_score_lands_on_each_rows_own_end_of_text_and_values_are_read_where_each_token_is_predicted(monkeypatch):
    """Two answers of different lengths: [3, 1, eot] and [2, eot], after the prompt [1, 2].
        x = [[1, 2, 3, 1], [1, 2, 2, pad]]     y = [[-, 3, 1, eot], [-, 2, eot, -]]
    Position t predicts y[t]: the rewards are -kl_coef * (logp - ref_logp) at every answer token (k1, per token),
    plus the score at each row's own end-of-text (t = 3 and t = 2); the value of position t is the stand-in's
    0.5 t + 0.1 x[t]; the advantages are whitened over the 5 answer tokens only, never the padding."""
    torch.manual_seed(0)
    policy, reference = TokenTable(torch.randn(4, 4)), TokenTable(torch.randn(4, 4))
    batch = hand_rollout([1, 2], [[3, 1, 0], [2, 0]])
    assert batch.x.tolist() == [[1, 2, 3, 1], [1, 2, 2, 0]] and batch.y.tolist() == [[-100, 3, 1, 0], [-100, 2, 0, -100]]
    logp = torch.log_softmax(policy.table.detach(), -1)  # before the step moves the policy
    ref = torch.log_softmax(reference.table.detach(), -1)
    cfg = small(batch_size=2, minibatch_size=2, epochs=1, kl_estimator="k1", gamma=1.0, lam=0.95)
    _, seen = stand_in_step(monkeypatch, policy, reference, PositionValues(), batch, [1.5, -0.7], cfg, kl_coef=0.5)

    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    kl = torch.zeros(2, 4)
    for b, t in mask.nonzero().tolist():
        kl[b, t] = logp[batch.x[b, t], batch.y[b, t]] - ref[batch.x[b, t], batch.y[b, t]]
    rewards = -0.5 * kl
    rewards[0, 3] += 1.5  # row 0's end-of-text
    rewards[1, 2] += -0.7  # row 1's end-of-text
    (got_rewards, got_values, got_mask, gamma, lam), _ = seen["gae"]
    torch.testing.assert_close(got_rewards, rewards)
    torch.testing.assert_close(got_mask, mask)
    values = 0.5 * torch.arange(4.0) + 0.1 * batch.x.float()
    torch.testing.assert_close(got_values[mask], values[mask])
    (advantages, whiten_mask), whitened = seen["masked_whiten"]
    torch.testing.assert_close(whiten_mask, mask)
    real = advantages[mask]
    expected = (real - real.mean()) / torch.sqrt(real.var(unbiased=False) + 1e-8)
    torch.testing.assert_close(whitened[mask], expected)
    assert torch.all(whitened[~mask] == 0)
    (_, _, loss_advantages, *_), _ = seen["clipped_policy_loss"]  # the whitened advantages reach the loss
    assert sorted(map(tuple, loss_advantages.tolist())) == sorted(map(tuple, whitened.tolist()))


def test_a_model_trained_with_dropout_starts_at_ratio_1_and_kl_0(tmp_path, folders):
    """Dropout is off in every log-probability PPO computes (model.disable_dropout): on each step's first
    minibatch the ratio is exactly 1, and at step 0 the KL to the reference is exactly 0."""
    torch.manual_seed(0)
    tokenizer = folders["tokenizer"]
    gpt = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    x = torch.tensor([[1, 2, 3, 4]])
    assert not torch.equal(gpt.train()(x), gpt(x)), "the test needs a model whose dropout is on in train mode"
    sft = save_checkpoint(tmp_path / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"}).parent
    ppo_stage(sft, folders["reward"], folders["data"], tmp_path / "ppo", small(steps=2, eval_every=2), quiet=True)
    history = json.loads((tmp_path / "ppo" / "history.json").read_text())
    assert history["ratio_first_minibatch"] == [1.0, 1.0] and history["kl"][0] == 0.0


def test_the_adaptive_kl_controller_steers_the_coefficient_inside_a_run(tmp_path, folders):
    """kl_coef of step i + 1 = kl_coef of step i * (1 + clip(kl_i / target - 1, -0.2, 0.2) * batch_size / horizon):
    up while the KL is above the target, down while below (ppo_math.AdaptiveKLController)."""
    cfg = small(kl_coef=0.2, kl_target=0.05, kl_horizon=40, lr=3e-3)
    ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "adaptive", cfg, quiet=True)
    history = json.loads((tmp_path / "adaptive" / "history.json").read_text())
    coefs, kls = history["kl_coef"], history["kl"]
    assert coefs[0] == 0.2 and len(coefs) == cfg.steps
    for i in range(cfg.steps - 1):
        error = min(max(kls[i] / 0.05 - 1, -0.2), 0.2)
        assert coefs[i + 1] == pytest.approx(coefs[i] * (1 + error * 8 / 40), rel=1e-12), i
    assert kls[0] < 0.05 < max(kls), "the test needs a KL below the target and one above it"
    assert coefs[1] < coefs[0] and max(coefs) > min(coefs[1:])  # down first, up again once the KL is over


def test_resume_with_the_adaptive_kl_repeats_the_uninterrupted_run(tmp_path, folders, monkeypatch):
    cfg = small(kl_target=0.05, kl_horizon=40, lr=3e-3)
    ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "full", cfg, quiet=True)
    real_step = ppo_module.ppo_step

    def crash_at_step_3(*args, **kwargs):
        if args[-2] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "ppo_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "cut", cfg, quiet=True)
    monkeypatch.undo()
    ppo_stage(folders["sft"], folders["reward"], folders["data"], tmp_path / "cut", cfg, resume=True, quiet=True)
    full, cut = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("full", "cut"))
    assert full["kl_coef"] == cut["kl_coef"] and full["kl"] == cut["kl"] and full["score"] == cut["score"]
    assert len(set(full["kl_coef"])) == cfg.steps  # the coefficient moved at every step


def test_without_the_value_baseline_the_advantage_is_the_return_still_to_come(monkeypatch):
    """--no-value-baseline (an ablation): values 0 and lam 1 in GAE, so a token's advantage is the sum of the
    rewards from it to the end; the value model is neither read nor trained."""
    torch.manual_seed(0)
    policy, reference = TokenTable(torch.randn(4, 4)), TokenTable(torch.randn(4, 4))
    value_model = PositionValues()
    batch = hand_rollout([1, 2], [[3, 1, 0], [2, 0]])
    cfg = small(batch_size=2, minibatch_size=2, epochs=1, value_baseline=False, lam=0.5)
    metrics, seen = stand_in_step(monkeypatch, policy, reference, value_model, batch, [1.5, -0.7], cfg, kl_coef=0.5)
    (rewards, values, mask, gamma, lam), (advantages, returns) = seen["gae"]
    assert torch.all(values == 0) and lam == 1.0
    reward_to_go = torch.where(mask, rewards, 0).flip(1).cumsum(1).flip(1)  # rewards from t to the end of its row
    torch.testing.assert_close(advantages[mask], reward_to_go[mask])
    assert metrics["value_loss"] == 0.0 and value_model.shift.item() == 0.0  # nothing trained the value model
