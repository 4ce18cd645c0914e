"""Chapter 11: GRPO (grpo.py, and the loss aggregations of ppo_math.py) on hand-made inputs and tiny models.

The arithmetic (group advantages, the clipped loss under each aggregation, pass@k) is checked against
numbers worked out by hand in the comments. The stage runs on a tiny random model whose answers the
judge would almost never accept, so the stage tests swap in a reward that depends on the sampled text
(a 0/1 reward that varies within a group): what they check is the machinery, not learning.
"""

import copy
import json
import math

import pytest
import torch

import gpt_scratch.grpo as grpo_module
from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.data import Encoded
from gpt_scratch.grpo import (GRPOConfig, collect_groups, draw_records, group_advantages, grpo_stage, grpo_step,
                              judge_rewards, pass_at_k, pass_rates, sft_error_rates)
from gpt_scratch.logprobs import token_logprobs
from gpt_scratch.lora import LoRAEmbedding, adapters_off, load_adapter, lora_layers
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.ppo_math import aggregate_loss, clipped_policy_loss
from gpt_scratch.rl import adamw, make_reference
from gpt_scratch.rollout import collated
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainingDiverged
from tiny import LAYOUTS, FixedLogits, fingerprint_script, layout_config, two_ranks

GARBAGE = 1e4
TOL = 1e-12


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Group advantages ---------------------------------------------------------------------------------------------

def test_group_advantages_with_the_std_by_hand():
    # The sample std (Bessel: divided by G - 1), as DeepSeekMath and TRL. Group [1, 0, 0, 0]: mean 0.25,
    # squared deviations 0.5625 + 3 * 0.0625 = 0.75, std sqrt(0.75 / 3) = 0.5 -> [1.5, -0.5, -0.5, -0.5].
    # Group [1, 1, 0, 0]: mean 0.5, std sqrt(1 / 3) = 0.5773503 -> [0.8660254, 0.866, -0.866, -0.866] (sqrt(3) / 2).
    # (eps = 0 to compare exactly.)
    got = group_advantages(t([1, 0, 0, 0, 1, 1, 0, 0]), 4, std=True, eps=0.0)
    h = math.sqrt(3) / 2
    torch.testing.assert_close(got, torch.tensor([1.5, -0.5, -0.5, -0.5, h, h, -h, -h]), rtol=0, atol=1e-6)
    # with the default eps the values shrink by std / (std + eps) only
    torch.testing.assert_close(group_advantages(t([1, 0, 0, 0]), 4),
                               torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4))


def test_group_advantages_with_the_population_std_by_hand():
    # population_std divides by G: group [1, 0, 0, 0]: std sqrt(0.75 / 4) = 0.4330127;
    # (1 - 0.25) / 0.4330127 = 1.7320508 = sqrt(3), (0 - 0.25) / 0.4330127 = -0.5773503 = -1/sqrt(3).
    # Group [1, 1, 0, 0]: mean 0.5, std 0.5 -> [1, 1, -1, -1].
    got = group_advantages(t([1, 0, 0, 0, 1, 1, 0, 0]), 4, std=True, eps=0.0, population_std=True)
    s = math.sqrt(3)
    torch.testing.assert_close(got, torch.tensor([s, -1 / s, -1 / s, -1 / s, 1, 1, -1, -1]), rtol=0, atol=1e-6)
    # The two differ by sqrt(G / (G - 1)) exactly: 1.1547 at G = 4, 1.0690 at G = 8, closer to 1 as G grows.
    rewards = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for g in (2, 4, 8, 16):
        ratio = group_advantages(rewards, g, eps=0.0, population_std=True) / group_advantages(rewards, g, eps=0.0)
        torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(g / (g - 1))))
    with pytest.raises(ValueError, match="--population-std"):
        GRPOConfig(std=False, population_std=True)


def test_group_advantages_without_the_std_are_reward_minus_group_mean():
    # Dr. GRPO: [1, 0, 0, 0] -> [0.75, -0.25, -0.25, -0.25]; [2, 0] with G = 2 -> [1, -1]
    got = group_advantages(t([1, 0, 0, 0]), 4, std=False)
    torch.testing.assert_close(got, torch.tensor([0.75, -0.25, -0.25, -0.25]), rtol=0, atol=1e-7)
    torch.testing.assert_close(group_advantages(t([2, 0, 0.5, 0.5]), 2, std=False), torch.tensor([1.0, -1.0, 0, 0]))
    for std in (True, False):  # each group's advantages add up to 0
        sums = group_advantages(torch.rand(24, generator=torch.Generator().manual_seed(0)), 6, std).view(4, 6).sum(1)
        assert torch.allclose(sums, torch.zeros(4), atol=1e-5)


def test_groups_whose_rewards_are_all_equal_get_exactly_0_never_nan():
    # 1.1 * 8 / 8 is not exactly 1.1 in float32: without the all-equal rule the residue / eps would not be 0
    rewards = torch.tensor([1.1] * 8 + [0.0] * 8 + [1.0] * 8 + [1.0] * 7 + [0.0])
    for std in (True, False):
        got = group_advantages(rewards, 8, std)
        assert not torch.isnan(got).any()
        assert torch.equal(got[:24], torch.zeros(24)), "every all-equal group gets exactly 0"
        assert (got[24:31] > 0).all() and got[31] < 0


# The clipped loss and its aggregations ------------------------------------------------------------------------

LOSSES = t([[1.0, 2.0, 3.0], [4.0, GARBAGE, GARBAGE]])
LOSS_MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_each_aggregation_by_hand():
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5; seq-mean-token-mean: (mean(1, 2, 3) + 4) / 2 = (2 + 4) / 2 = 3;
    # seq-mean-token-sum-norm with norm 4: (6 / 4 + 4 / 4) / 2 = 1.25. The padding's garbage never counts.
    assert aggregate_loss(LOSSES, LOSS_MASK, "token-mean").item() == pytest.approx(2.5, abs=TOL)
    assert aggregate_loss(LOSSES, LOSS_MASK, "seq-mean-token-mean").item() == pytest.approx(3.0, abs=TOL)
    assert aggregate_loss(LOSSES, LOSS_MASK, "seq-mean-token-sum-norm", 4).item() == pytest.approx(1.25, abs=TOL)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate_loss(LOSSES, LOSS_MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate_loss(LOSSES, LOSS_MASK, "sum")


def test_the_clipped_loss_under_each_aggregation_by_hand():
    # Row 0, advantage +1 on each token, ratios [1.5, 1.0, 0.5] (eps 0.2):
    #   1.5: max(-1.5, -1.2) = -1.2 (clipped);  1.0: -1;  0.5: max(-0.5, -0.8) = -0.5 (not clipped)
    # Row 1, advantage -1, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped); then padding.
    # token-mean (-1.2 - 1 - 0.5 + 0.8) / 4 = -0.475; seq-mean-token-mean ((-2.7 / 3) + 0.8) / 2 = -0.05;
    # seq-mean-token-sum-norm (norm 3) (-2.7 / 3 + 0.8 / 3) / 2 = -0.31667.
    logp = t([[math.log(1.5), 0.0, math.log(0.5)], [math.log(0.5), GARBAGE, -GARBAGE]])
    old_logp = t([[0.0, 0.0, 0.0], [0.0, -GARBAGE, GARBAGE]])
    advantages = t([[1.0, 1.0, 1.0], [-1.0, GARBAGE, GARBAGE]])
    expected = {"token-mean": -0.475, "seq-mean-token-mean": -0.05, "seq-mean-token-sum-norm": -1.9 / 6}
    for aggregation, value in expected.items():
        loss, stats = clipped_policy_loss(logp, old_logp, advantages, LOSS_MASK, 0.2, aggregation, norm_length=3)
        assert loss.item() == pytest.approx(value, abs=1e-9), aggregation
        assert stats["clip_fraction"].item() == pytest.approx(0.5, abs=TOL)  # 2 of the 4 real tokens


def test_padding_and_anything_after_the_end_of_text_never_change_the_loss():
    """A rollout's mask stops at each answer's end-of-text: whatever sits after it (padding, or tokens a
    model would have produced next) changes no aggregation's loss and gets no gradient."""
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])  # the end-of-text is each row's last real token
    generator = torch.Generator().manual_seed(0)
    logp = -torch.rand(2, 5, generator=generator, dtype=torch.float64)
    old_logp = logp + 0.3 * torch.randn(2, 5, generator=generator, dtype=torch.float64)
    advantages = t([[0.7] * 5, [-1.2] * 5])
    after = ~mask.bool()
    for aggregation in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        clean = logp.clone().requires_grad_()
        loss, _ = clipped_policy_loss(clean, old_logp, advantages, mask, 0.2, aggregation, 5)
        loss.backward()
        dirty = torch.where(after, GARBAGE, logp).requires_grad_()
        dirty_loss, _ = clipped_policy_loss(dirty, torch.where(after, -GARBAGE, old_logp),
                                            torch.where(after, GARBAGE, advantages), mask, 0.2, aggregation, 5)
        dirty_loss.backward()
        assert dirty_loss.item() == loss.item(), aggregation
        assert torch.equal(dirty.grad, clean.grad) and torch.all(clean.grad[after] == 0), aggregation


# pass@k -------------------------------------------------------------------------------------------------------

def test_pass_at_k_by_hand():
    # n = 4 samples, c = 1 correct: pass@1 = 1 - C(3,1)/C(4,1) = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2;
    # pass@4 = 1 (every 4-subset holds the correct one). n = 5, c = 2, k = 3: 1 - C(3,3)/C(5,3) = 1 - 1/10 = 0.9.
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 8, 1) == 1.0
    assert all(pass_at_k(10, c, 1) == pytest.approx(c / 10) for c in range(11))  # pass@1 is the share correct
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


# The reward and the prompts -----------------------------------------------------------------------------------

def hand_rollout(responses: list[str], ended: list[bool]):
    examples = [Encoded([1, 2, 3], [False, True, True]) for _ in responses]
    return collated(["q"] * len(responses), examples, responses, ended, pad_id=0)


def test_the_reward_is_the_judge_plus_an_optional_format_bonus_and_an_unended_answer_gets_0():
    record = {"family": "add", "answer": "7"}
    batch = hand_rollout(["7", "The answer is 7.", "The answer is 8.", "7", "The answer is 7."],
                         [True, True, True, False, False])
    rewards, correct = judge_rewards([record] * 5, batch, format_reward=0.0)
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] and correct.tolist() == [True, True, False, False, False]
    rewards, _ = judge_rewards([record] * 5, batch, format_reward=0.25)
    assert rewards.tolist() == [1.0, 1.25, 0.25, 0.0, 0.0]


def test_family_weights_follow_the_sft_error_rates(monkeypatch):
    records = ([{"family": "easy", "answer": "a", "instruction": f"e{i}", "input": ""} for i in range(10)]
               + [{"family": "hard", "answer": "a", "instruction": f"h{i}", "input": ""} for i in range(10)])
    # The "model" answers every easy record right and 4 of 10 hard ones wrong.
    wrong = {f"h{i}" for i in range(4)}
    monkeypatch.setattr(grpo_module, "answer", lambda model, tok, recs, *a, **k:
                        ["b" if r["instruction"] in wrong else "a" for r in recs])
    rates = sft_error_rates(None, None, records, GRPOConfig(weight_sample=20))
    # (errors + 1) / (n + 2): easy 1/12, hard 5/12 -> normalised 1/6 and 5/6
    assert rates["easy"]["error_rate"] == 0.0 and rates["hard"]["error_rate"] == pytest.approx(0.4)
    assert rates["easy"]["weight"] == pytest.approx(1 / 6) and rates["hard"]["weight"] == pytest.approx(5 / 6)
    by_family = {"easy": records[:10], "hard": records[10:]}
    drawn = draw_records(by_family, 200, "s", {"easy": 0.0, "hard": 1.0})
    assert {r["family"] for r in drawn} == {"hard"}
    drawn = draw_records(by_family, 2000, "s", {"easy": 1 / 6, "hard": 5 / 6})
    assert 0.12 < sum(r["family"] == "easy" for r in drawn) / 2000 < 0.21
    assert draw_records(by_family, 20, "s", None) == draw_records(by_family, 20, "s", None)  # seeded
    assert sorted(r["instruction"] for r in draw_records(by_family, 20, "s", None)) == \
        sorted(r["instruction"] for r in records)  # uniform: without repeats


# The stage on a tiny model ------------------------------------------------------------------------------------

def write_data(folder):
    """Training prompts "Is i a number?" (i < 32); test prompts use other numbers, so they can be told apart."""
    folder.mkdir(parents=True, exist_ok=True)

    def records(numbers, split):
        return [{"id": f"{split}-{i}", "family": "facts" if i % 2 else "larger", "level": 1,
                 "instruction": f"Is {i} a number?", "input": "", "output": "yes", "answer": "yes", "unseen": False}
                for i in numbers]
    for split, numbers in (("train", range(32)), ("val", range(100, 104)), ("test", range(200, 208))):
        (folder / f"sft_{split}.json").write_text(json.dumps(records(numbers, split)))
    return folder


@pytest.fixture(scope="module")
def folders(request, tmp_path_factory):
    """A tiny SFT checkpoint (GPT-2's layout unless a test asks for another) and data of two families."""
    root = tmp_path_factory.mktemp("grpo")
    tokenizer = Tokenizer.train("Is 3 a number? yes. Is a cat a number? no. The answer is yes. " * 20, 280)
    torch.manual_seed(0)
    gpt = GPT(layout_config(getattr(request, "param", "gpt2"), vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1,
                            n_head=2, n_embd=16))
    sft = save_checkpoint(root / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"})
    return {"sft": sft.parent, "data": write_data(root / "data"), "tokenizer": tokenizer}


def text_reward(records, batch, format_reward):
    """1 for an answer of an even number of characters: a reward that differs within a group."""
    correct = torch.tensor([len(response) % 2 == 0 for response in batch.responses])
    return correct.float(), correct


@pytest.fixture
def reward_by_length(monkeypatch):
    monkeypatch.setattr(grpo_module, "judge_rewards", text_reward)


def small(**overrides) -> GRPOConfig:
    settings = dict(steps=4, batch_size=8, group_size=4, minibatch_size=4, epochs=2, lr=1e-3, max_new_tokens=4,
                    eval_every=2, save_every=2, eval_samples=4, dtype="float32")
    settings.update(overrides)
    return GRPOConfig(**settings)


def by_family(folders) -> dict:
    families = {}
    for record in json.loads((folders["data"] / "sft_train.json").read_text()):
        families.setdefault(record["family"], []).append(record)
    return families


def test_one_step_keeps_the_reference_frozen_and_starts_at_ratio_1(folders, reward_by_length):
    policy, tokenizer, _ = load_checkpoint(folders["sft"])
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    before = {n: p.clone() for n, p in reference.named_parameters()}
    cfg = small(kl_coef=0.5)  # the KL term's gradient must reach the policy only
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    metrics = grpo_step(policy, reference, tokenizer, by_family(folders), None, cfg, optimizer, 0, torch.device("cpu"))
    assert metrics["ratio_first_minibatch"] == 1.0  # the first minibatch is scored by the policy that sampled it
    assert metrics["kl"] == 0.0  # before any update the policy is the reference
    for name, p in reference.named_parameters():
        assert torch.equal(p, before[name]), f"the reference's {name} changed"
    assert any(not torch.equal(p, before[n]) for n, p in policy.named_parameters()), "the policy did not move"
    for key in ("reward", "reward_std", "zero_std_share", "response_length", "clipfrac", "kl", "entropy",
                "policy_loss", "approxkl", "answers_sampled"):
        assert key in metrics, key
    # Once the policy has moved (the later minibatches), the KL term adds to the loss; without it, it does not.
    assert metrics["loss"] > metrics["policy_loss"]
    policy = load_checkpoint(folders["sft"])[0]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    metrics = grpo_step(policy, reference, tokenizer, by_family(folders), None, small(kl_coef=0.0), optimizer, 0,
                        torch.device("cpu"))
    assert metrics["loss"] == metrics["policy_loss"]


@pytest.mark.parametrize("aggregation, std, population_std", [
    ("token-mean", True, False), ("seq-mean-token-mean", True, False), ("seq-mean-token-sum-norm", True, False),
    ("token-mean", False, False), ("seq-mean-token-mean", True, True)])
def test_the_first_loss_is_minus_the_aggregated_group_advantages(folders, monkeypatch, aggregation, std,
                                                                 population_std):
    """One minibatch, one epoch: the ratio is 1, so the loss is -aggregate(A) over the batch that was trained on."""
    monkeypatch.setattr(grpo_module, "judge_rewards", text_reward)
    seen = {}

    def keep(*args):
        seen["groups"] = collect_groups(*args)
        return seen["groups"]
    monkeypatch.setattr(grpo_module, "collect_groups", keep)
    policy, tokenizer, _ = load_checkpoint(folders["sft"])
    cfg = small(minibatch_size=8, epochs=1, aggregation=aggregation, std=std, population_std=population_std)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    metrics = grpo_step(policy, copy.deepcopy(policy), tokenizer, by_family(folders), None, cfg, optimizer, 0,
                        torch.device("cpu"))
    batch, _, rewards, _ = seen["groups"]
    advantages = group_advantages(rewards, 4, std, population_std=population_std)
    assert advantages.abs().sum() > 0, "the test needs a group whose rewards differ"
    mask = batch.response_mask
    expected = aggregate_loss(-advantages[:, None].expand(mask.shape).double(), mask, aggregation, 4)
    assert metrics["policy_loss"] == pytest.approx(expected.item(), abs=1e-6)


def test_dynamic_sampling_replaces_groups_that_teach_nothing_a_bounded_number_of_times(folders, monkeypatch):
    def reward(records, batch, format_reward):  # even prompts: the text reward; odd prompts: always 1
        odd = torch.tensor([int(r["instruction"].split()[1]) % 2 == 1 for r in records])
        correct = odd | torch.tensor([len(response) % 2 == 0 for response in batch.responses])
        return correct.float(), correct
    monkeypatch.setattr(grpo_module, "judge_rewards", reward)
    policy, tokenizer, _ = load_checkpoint(folders["sft"])
    families = by_family(folders)
    results = {}
    for name, cfg in (("off", small(batch_size=16)), ("on", small(batch_size=16, dynamic_sampling=True, max_resample=3)),
                      ("on, 0 extra", small(batch_size=16, dynamic_sampling=True, max_resample=0))):
        batch, records, rewards, stats = collect_groups(policy, tokenizer, families, None, cfg, 0)
        assert len(batch.prompts) == len(records) == len(rewards) == 16
        assert [r["instruction"] for r in records[::4]] == [r["instruction"] for r in records[3::4]]  # whole groups
        results[name] = stats
    assert results["off"]["answers_sampled"] == 16 == results["on, 0 extra"]["answers_sampled"]
    assert results["off"]["zero_std_share"] == results["on"]["zero_std_share"] > 0  # the first rollout is the same
    assert results["off"]["trained_zero_std_share"] == results["off"]["zero_std_share"]
    assert results["on"]["trained_zero_std_share"] < results["off"]["trained_zero_std_share"]
    assert 16 < results["on"]["answers_sampled"] <= 16 * 4


@pytest.mark.parametrize("folders", LAYOUTS, indirect=True)
def test_the_stage_writes_its_folder_repeats_for_a_seed_and_trains_on_training_prompts_only(
        tmp_path, folders, monkeypatch, reward_by_length):
    seen_prompts = []
    real_rollout = grpo_module.rollout
    monkeypatch.setattr(grpo_module, "rollout", lambda model, tok, prompts, *a, **k:
                        seen_prompts.extend(prompts) or real_rollout(model, tok, prompts, *a, **k))
    first = grpo_stage(folders["sft"], folders["data"], tmp_path / "a", small(), quiet=True)
    grpo_stage(folders["sft"], folders["data"], tmp_path / "b", small(), quiet=True)
    for name in ("metrics.json", "history.json", "grpo.png", "checkpoint"):
        assert (tmp_path / "a" / name).exists(), name
    histories = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("a", "b")]
    assert histories[0]["reward"] == histories[1]["reward"] and histories[0]["policy_loss"] == histories[1]["policy_loss"]
    assert histories[0]["eval_step"] == [0, 2, 4]
    assert set(seen_prompts) <= {f"Is {i} a number?" for i in range(32)}, "a test prompt was trained on"
    assert first["steps"] == 4 and first["test_examples"] == 8 and set(first["families"]) == {"facts", "larger"}
    for key in ("accuracy_before", "accuracy_after", "pass_at_1_before", "pass_at_1_after", "pass_at_g_before",
                "pass_at_g_after", "seconds"):
        assert key in first, key
    assert first["pass_at_1_before"] <= first["pass_at_g_before"]


def test_resume_continues_with_exactly_the_uninterrupted_steps(tmp_path, folders, monkeypatch, reward_by_length):
    grpo_stage(folders["sft"], folders["data"], tmp_path / "full", small(), quiet=True)
    real_step = grpo_module.grpo_step

    def crash_at_step_3(*args, **kwargs):
        if args[-2] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(grpo_module, "grpo_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        grpo_stage(folders["sft"], folders["data"], tmp_path / "cut", small(), quiet=True)
    monkeypatch.setattr(grpo_module, "grpo_step", real_step)
    grpo_stage(folders["sft"], folders["data"], tmp_path / "cut", small(), resume=True, quiet=True)
    full, cut = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("full", "cut"))
    assert full["reward"] == cut["reward"] and full["policy_loss"] == cut["policy_loss"]
    assert full["eval_accuracy"] == cut["eval_accuracy"]
    a, b = load_checkpoint(tmp_path / "full")[0], load_checkpoint(tmp_path / "cut")[0]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_non_finite_loss_stops_the_run_with_one_line(tmp_path, folders, monkeypatch):
    def nan_reward(records, batch, format_reward):
        return torch.full((len(records),), float("nan")), torch.zeros(len(records), dtype=torch.bool)
    monkeypatch.setattr(grpo_module, "judge_rewards", nan_reward)
    with pytest.raises(TrainingDiverged, match="training diverged at step 0"):
        grpo_stage(folders["sft"], folders["data"], tmp_path / "nan", small(), quiet=True)
    assert not (tmp_path / "nan" / "checkpoint").exists()


def test_bad_configs_are_refused():
    for overrides, message in ((dict(group_size=1), "--group-size must be at least 2"),
                               (dict(batch_size=8, group_size=3), "--group-size 3 must divide"),
                               (dict(batch_size=8, minibatch_size=3), "--minibatch-size 3 must divide"),
                               (dict(aggregation="sum"), "--loss-agg must be one of"),
                               (dict(max_resample=16), "--max-resample must be from 0 to 15"),
                               (dict(family_weights="errors"), "--family-weights must be one of"),
                               (dict(group_size=8, eval_samples=4), "--eval-samples 4 must be at least")):
        with pytest.raises(ValueError, match=message):
            small(**overrides)


# The command line ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "8", "--group-size", "3"], "--group-size"), (["--group-size", "1"], "--group-size"),
    (["--batch-size", "8", "--group-size", "4", "--minibatch-size", "3"], "--minibatch-size"),
    (["--epochs", "0"], "--epochs"), (["--steps", "0"], "--steps"), (["--lr", "0"], "--lr"),
    (["--clip-range", "0"], "--clip-range"), (["--kl-coef", "-1"], "--kl-coef"),
    (["--loss-agg", "sum"], "--loss-agg"), (["--format-reward", "-0.1"], "--format-reward"),
    (["--preset", "tiny", "--max-resample", "2"], "--max-resample"), (["--max-resample", "16"], "--max-resample"),
    (["--no-dynamic-sampling", "--max-resample", "1"], "--max-resample"),
    (["--family-weights", "errors"], "--family-weights"),
    (["--family-weights", "uniform", "--weight-sample", "100"], "--weight-sample"),
    (["--weight-sample", "0", "--family-weights", "sft-error"], "--weight-sample"),
    (["--group-size", "8", "--eval-samples", "4"], "--eval-samples"), (["--temperature", "0"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--eval-every", "0"], "--eval-every"),
    (["--n-eval", "0"], "--n-eval"), (["--grad-clip", "-1"], "--grad-clip"), (["--seed", "-1"], "--seed"),
    (["--device", "tpu"], "--device"), (["--dtype", "fp8"], "--dtype"),
    (["--no-std", "--population-std"], "--population-std")])
def test_bad_grpo_flags_exit_2_with_one_line_before_reading_anything(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["grpo", "--sft", "/nonexistent", "--data", "/nonexistent", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err


def run_cli(folders, out, *flags) -> dict:
    assert main(["grpo", "--sft", str(folders["sft"]), "--data", str(folders["data"]), "--out", str(out),
                 "--preset", "tiny", "--steps", "1", "--batch-size", "8", "--group-size", "4", "--minibatch-size", "4",
                 "--eval-samples", "4", "--n-eval", "4", "--quiet", *flags]) == 0
    return json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["grpo_config"]


def test_flags_reach_the_stage(tmp_path, folders, reward_by_length):
    cfg = run_cli(folders, tmp_path / "defaults")
    assert (cfg["steps"], cfg["batch_size"], cfg["group_size"], cfg["minibatch_size"], cfg["eval_samples"]) == \
        (1, 8, 4, 4, 4)
    assert json.loads((tmp_path / "defaults" / "metrics.json").read_text())["test_examples"] == 4
    flags = {"--epochs": ("epochs", "3", 3), "--lr": ("lr", "0.002", 0.002),
             "--clip-range": ("clip_range", "0.3", 0.3), "--kl-coef": ("kl_coef", "0.1", 0.1),
             "--loss-agg": ("aggregation", "token-mean", "token-mean"),
             "--format-reward": ("format_reward", "0.2", 0.2), "--max-new-tokens": ("max_new_tokens", "3", 3),
             "--temperature": ("temperature", "0.7", 0.7), "--grad-clip": ("grad_clip", "0.5", 0.5),
             "--eval-every": ("eval_every", "5", 5), "--seed": ("seed", "3", 3), "--dtype": ("dtype", "float32", "float32")}
    for i, (flag, (name, text, value)) in enumerate(flags.items()):
        assert cfg[name] != value, f"{flag}: pick a value other than the default"
        assert run_cli(folders, tmp_path / f"flag{i}", flag, text)[name] == value, flag
    assert run_cli(folders, tmp_path / "nostd", "--no-std")["std"] is False
    assert cfg["population_std"] is False  # Bessel's n - 1 by default, as DeepSeekMath and TRL
    assert run_cli(folders, tmp_path / "population", "--population-std")["population_std"] is True
    sampled = run_cli(folders, tmp_path / "dyn", "--dynamic-sampling", "--max-resample", "1")
    assert sampled["dynamic_sampling"] is True and sampled["max_resample"] == 1
    weighted = run_cli(folders, tmp_path / "weights", "--family-weights", "sft-error", "--weight-sample", "10")
    assert weighted["family_weights"] == "sft-error" and weighted["weight_sample"] == 10
    metrics = json.loads((tmp_path / "weights" / "metrics.json").read_text())
    assert set(metrics["family_weights"]) == {"facts", "larger"}
    assert sum(metrics["family_weights"].values()) == pytest.approx(1.0, abs=1e-3)


REWARD_BY_LENGTH = """
def text_reward(records, batch, format_reward):
    correct = torch.tensor([len(response) % 2 == 0 for response in batch.responses])
    return correct.float(), correct

stage.judge_rewards = text_reward
"""


def test_two_processes_train_one_policy_and_resume_exactly(tmp_path, folders, monkeypatch):
    """In two processes (ranks 0 and 1, as torchrun starts them) each rank rolls out 1 of a step's 2
    groups of 4 answers (2 answers of each minibatch of 4): DDP keeps the ranks' policies equal after
    every step; a run cut after step 2 and resumed takes the uninterrupted run's steps exactly, on both
    ranks (the rollouts are a function of seed, step and rank)."""
    args = ["grpo", "--sft", folders["sft"], "--data", folders["data"], "--preset", "tiny", "--steps", "4",
            "--batch-size", "8", "--group-size", "4", "--minibatch-size", "4", "--epochs", "2", "--lr", "1e-3",
            "--max-new-tokens", "4", "--eval-every", "2", "--eval-samples", "4", "--n-eval", "4",  # tiny: save every 2
            "--device", "cpu", "--dtype", "float32", "--quiet"]
    script = tmp_path / "fingerprint.py"
    script.write_text(fingerprint_script("grpo", REWARD_BY_LENGTH))  # a reward that differs within a group
    fingerprints = {}
    for run, crash in (("full", "0"), ("cut", "3")):
        monkeypatch.setenv("FINGERPRINTS", str(tmp_path / run))
        monkeypatch.setenv("CRASH_AT_CALL", crash)
        (tmp_path / run).mkdir()
        result = two_ranks(script, *args, "--out", tmp_path / run / "out")
        assert (result.returncode == 0) == (crash == "0"), result.stderr
        if crash != "0":  # cut at step 3: resume from the checkpoint of step 2
            monkeypatch.setenv("CRASH_AT_CALL", "0")
            result = two_ranks(script, *args, "--out", tmp_path / run / "out", "--resume")
            assert result.returncode == 0, result.stderr
        fingerprints[run] = [(tmp_path / run / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    full, cut = fingerprints["full"], fingerprints["cut"]
    assert len(full[0]) == 4 and full[0] == full[1] and len(set(full[0])) == 4  # equal on both ranks; they moved
    assert cut == full  # steps 1-2, then the resumed steps 3-4
    histories = [json.loads((tmp_path / run / "out" / "history.json").read_text()) for run in ("full", "cut")]
    assert histories[0]["eval_step"] == [0, 2, 4] and histories[0]["ratio_first_minibatch"] == [1.0] * 4
    assert histories[0]["answers_sampled"] == [8] * 4  # summed over the ranks
    for name in ("reward", "loss", "kl", "eval_accuracy", "eval_pass_at_1"):
        assert histories[1][name] == histories[0][name], name


# What grpo_step computes at any setting -----------------------------------------------------------------------

@pytest.mark.parametrize("temperature, logp", [(0.5, -0.142932), (1.0, -0.407606), (1.5, -0.574935)])
def test_every_log_probability_is_taken_at_the_rollout_temperature(monkeypatch, temperature, logp):
    """Logits [2, 1, 0], token 0 sampled: log softmax([2, 1, 0] / T)[0] is -0.142932 at T = 0.5, -0.407606 at
    T = 1, -0.574935 at T = 1.5. The old, new and reference log-probs and the entropy use that distribution."""
    examples = [Encoded([1, 2, 0], [False, False, True]) for _ in range(4)]  # one-token answers: end-of-text (0)
    batch = collated(["q"] * 4, examples, ["a"] * 4, [True] * 4, pad_id=0)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    monkeypatch.setattr(grpo_module, "collect_groups",
                        lambda *args: (batch, [{}] * 4, rewards, {"reward": 0.5, "answers_sampled": 4}))
    seen = {}
    for name in ("kl_per_token", "clipped_policy_loss"):
        def keep(*args, real=getattr(grpo_module, name), name=name):
            seen.setdefault(name, []).append(args)
            return real(*args)
        monkeypatch.setattr(grpo_module, name, keep)
    policy = FixedLogits([2.0, 1.0, 0.0])
    cfg = small(batch_size=4, group_size=2, minibatch_size=4, epochs=1, eval_samples=2, kl_coef=0.1,
                temperature=temperature)
    metrics = grpo_step(policy, FixedLogits([2.0, 1.0, 0.0]), None, {}, None, cfg,
                        torch.optim.AdamW(policy.parameters(), lr=cfg.lr), 0, torch.device("cpu"))
    mask = batch.response_mask
    new_logp, old_logp, *_ = seen["clipped_policy_loss"][0]
    old_again, ref_logp, *_ = seen["kl_per_token"][-1]  # the logged KL: the old policy against the reference
    for name, values in (("new", new_logp), ("old", old_logp), ("old (kl)", old_again), ("reference", ref_logp)):
        assert values[mask].tolist() == pytest.approx([logp] * 4, abs=1e-6), name
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / temperature, dim=0)
    assert metrics["entropy"] == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)
    assert metrics["ratio_first_minibatch"] == 1.0 and metrics["kl"] == 0.0


def test_a_model_trained_with_dropout_starts_at_ratio_1_and_kl_0(tmp_path, folders, reward_by_length):
    """Dropout is off in every log-probability GRPO computes (model.disable_dropout): the first minibatch of
    each step has ratio exactly 1, and at step 0 the KL to the reference is exactly 0."""
    torch.manual_seed(0)
    tokenizer = folders["tokenizer"]
    gpt = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    x = torch.tensor([[1, 2, 3, 4]])
    assert not torch.equal(gpt.train()(x), gpt(x)), "the test needs a model whose dropout is on in train mode"
    sft = save_checkpoint(tmp_path / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"}).parent
    grpo_stage(sft, folders["data"], tmp_path / "grpo", small(steps=2, eval_every=2, kl_coef=0.1), quiet=True)
    history = json.loads((tmp_path / "grpo" / "history.json").read_text())
    assert history["ratio_first_minibatch"] == [1.0, 1.0] and history["kl"][0] == 0.0


def test_pass_at_k_counts_what_the_reward_counts(monkeypatch):
    """One rule (grpo.verified) for the reward and pass@k: correct *and* ended. A correct answer cut off at
    max_new_tokens earns no reward, so it is no pass either."""
    record = {"family": "add", "answer": "7", "instruction": "What is 3 plus 4?", "input": ""}
    responses, ended = ["7", "7", "8", "7"], [True, False, True, False]  # 1 verified of 4
    monkeypatch.setattr(grpo_module, "answer_with_ends", lambda *args, **kwargs: (responses, ended))
    rewards, _ = judge_rewards([record] * 4, collated(["q"] * 4, [Encoded([1, 2], [False, True])] * 4, responses,
                                                      ended, pad_id=0), format_reward=0.0)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
    passes = pass_rates(None, None, [record], small(group_size=2, eval_samples=4))
    assert passes["pass_at_1"] == pytest.approx(pass_at_k(4, 1, 1)) == 0.25  # not 0.75: two never ended
    assert passes["pass_at_g"] == pytest.approx(pass_at_k(4, 1, 2)) == 0.5


# A LoRA policy -------------------------------------------------------------------------------------------------

LORA_SETTINGS = [dict(lora_rank=2),
                 dict(lora_rank=2, lora_rslora=True, lora_targets=["attn", "mlp", "emb"], lora_plus_ratio=4.0,
                      temperature=0.7)]


@pytest.mark.parametrize("lora", LORA_SETTINGS, ids=["lora", "rslora-emb-plus4-T0.7"])
def test_a_lora_policy_starts_at_kl_0_and_ratio_1_and_its_checkpoint_is_the_base_plus_its_adapter(
        tmp_path, folders, monkeypatch, reward_by_length, lora):
    """B = 0 (A = 0 for the embedding): at the first step the policy is its reference, the base with its
    adapters off, bit for bit. At the end adapter/ holds the adapter and checkpoint/ the merged policy:
    the SFT model + the adapter (load_adapter) gives its logits."""
    optimizers = []
    monkeypatch.setattr(grpo_module, "adamw", lambda model, lr: optimizers.append(adamw(model, lr)) or optimizers[-1])
    out = tmp_path / "lora"
    cfg = small(**lora)
    grpo_stage(folders["sft"], folders["data"], out, cfg, quiet=True)
    history = json.loads((out / "history.json").read_text())
    assert history["kl"][0] == 0.0 and history["ratio_first_minibatch"] == [1.0] * cfg.steps
    assert history["kl"][-1] > 0.0, "the adapters did not move the policy"
    ratios = {group["lr_ratio"]: group["lr"] for group in optimizers[0].param_groups}
    assert ratios == ({1.0: cfg.lr, 4.0: 4.0 * cfg.lr} if cfg.lora_plus_ratio == 4.0 else {1.0: cfg.lr})

    merged, _, meta = load_checkpoint(out)
    assert meta["merged_lora"] is True and not any(".lora_" in name for name in merged.state_dict())
    adapter = json.loads((out / "adapter" / "adapter.json").read_text())
    assert adapter["rslora"] is cfg.lora_rslora and adapter["targets"] == cfg.lora_targets
    sft = load_checkpoint(folders["sft"])[0]
    load_adapter(sft, out / "adapter")
    x = torch.randint(0, folders["tokenizer"].n_vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sft(x), merged(x), atol=1e-5, rtol=1e-5)
    plain_sft = load_checkpoint(folders["sft"])[0]
    with adapters_off(sft):
        assert torch.equal(sft(x), plain_sft(x))
    assert torch.equal(merged.lm_head.weight, plain_sft.lm_head.weight)  # the head is no target: untouched


def test_the_reference_of_a_lora_policy_is_its_base_with_the_adapters_off(folders, monkeypatch, reward_by_length):
    """Adapters that already moved the policy: the reference log-probs (at the rollout temperature) are
    exactly those of a plain copy of the base, the first minibatch's ratio is still 1, and only the
    adapters train; LoRA+ trains every lora_B at 4 times the learning rate."""
    seen = {}

    def keep_groups(*args):
        seen["groups"] = collect_groups(*args)
        return seen["groups"]

    def keep_kl(*args, real=grpo_module.kl_per_token):
        seen["kl"] = args
        return real(*args)
    monkeypatch.setattr(grpo_module, "collect_groups", keep_groups)
    monkeypatch.setattr(grpo_module, "kl_per_token", keep_kl)
    policy, tokenizer, _ = load_checkpoint(folders["sft"])
    base = copy.deepcopy(policy).eval()
    cfg = small(lora_rank=2, lora_targets=["attn", "mlp", "emb"], lora_plus_ratio=4.0, temperature=0.7, kl_coef=0.1)
    assert make_reference(policy, cfg) is None  # the policy got its adapters
    torch.manual_seed(1)
    for _, layer in lora_layers(policy):  # a trained adapter, so that the policy is not its base
        torch.nn.init.normal_(layer.lora_A if isinstance(layer, LoRAEmbedding) else layer.lora_B, std=0.5)
    frozen = {name: t.clone() for name, t in policy.state_dict().items() if ".lora_" not in name}
    adapters = {name: t.clone() for name, t in policy.state_dict().items() if ".lora_" in name}
    optimizer = adamw(policy, cfg.lr)
    for name, layer in lora_layers(policy):
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        assert group_of[id(layer.lora_B)]["lr"] == 4.0 * cfg.lr and group_of[id(layer.lora_A)]["lr"] == cfg.lr, name
    metrics = grpo_step(policy, None, tokenizer, by_family(folders), None, cfg, optimizer, 0, torch.device("cpu"))

    batch = seen["groups"][0]
    old_logp, ref_logp, mask, _ = seen["kl"]  # the logged KL: the policy that sampled against the reference
    with torch.no_grad():
        assert torch.equal(ref_logp, token_logprobs(base(batch.x), batch.y, 0.7))
        assert not torch.equal(old_logp[mask], ref_logp[mask])
    assert metrics["ratio_first_minibatch"] == 1.0 and metrics["kl"] > 0.0
    after = policy.state_dict()
    for name, tensor in frozen.items():
        assert torch.equal(after[name], tensor), f"the frozen {name} moved"
    assert all(not torch.equal(after[name], tensor) for name, tensor in adapters.items() if name.endswith("lora_B"))
