"""Chapter 8: the reward model -- last-token scores, Bradley-Terry, checkpoints with a head, the stage."""

import json
import math

import pytest
import torch

from gpt_scratch.best_of_n import best_of_n_kl
from gpt_scratch.checkpoint import load_checkpoint, load_with_head, save_checkpoint
import gpt_scratch.reward as reward_module
import gpt_scratch.train as train_module
from gpt_scratch.cli import main
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.data import collate
from gpt_scratch.logprobs import completion_logprobs
from gpt_scratch.reward import (accuracy_against_rule, bradley_terry_loss, encode_pairs, gather_last,
                                last_token_index, pad_examples, pair_batch, pair_loss, pairwise_accuracy,
                                reward_scores, reward_stage, score_texts)
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainConfig
from tiny import LAYOUTS, layout_config

TEXT = "Is 3 a number? yes. Is a cat a number? no. The answer is yes. The answer is no. " * 20


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXT, 280)


def tiny_gpt(tokenizer, seed=0, layout="gpt2") -> GPT:
    torch.manual_seed(seed)
    return GPT(layout_config(layout, vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16))


def trained_head(model: GPTWithHead) -> GPTWithHead:
    """A head that is no longer zero, so that scores differ from row to row."""
    torch.manual_seed(1)
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.fill_(0.5)
        if model.head.logprob_weight is not None:
            model.head.logprob_weight.fill_(0.7)
    return model


def some_pairs(n=6):
    return [{"prompt": f"Is {i} a number?", "chosen": "yes" if i % 2 else "The answer is yes.",
             "rejected": "no" if i % 3 else "The answer is no.", "id": f"t-{i}", "family": "facts",
             "kind": "correctness"} for i in range(n)]


def test_last_token_index_for_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert last_token_index(mask).tolist() == [2, 3, 0, 3]
    values = torch.arange(16.0).view(4, 4)
    assert gather_last(values, mask).tolist() == [2.0, 7.0, 8.0, 15.0]


def test_bradley_terry_on_hand_computed_values():
    zero = torch.zeros(3)
    assert bradley_terry_loss(zero, zero).item() == pytest.approx(math.log(2))
    # r_c - r_r = 2: -log sigmoid(2) = log(1 + e^-2) = 0.126928
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(0.126928, abs=1e-6)
    # a margin of 1 asks for more: -log sigmoid(2 - 1) = 0.313262
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), margin=1.0).item() == pytest.approx(0.313262, abs=1e-6)
    # centering adds coef * mean (r_c + r_r)^2 = 0.5 * 4 = 2 to the same 0.126928
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), center_coef=0.5).item() == pytest.approx(2.126928, abs=1e-6)
    # gradient: d/d r_c of -log sigmoid(d) = -(1 - sigmoid(d)) = -0.5 at d = 0 (for one pair)
    r_c, r_r = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(r_c, r_r).backward()
    assert r_c.grad.item() == pytest.approx(-0.5) and r_r.grad.item() == pytest.approx(0.5)
    # far apart it stays finite (log(sigmoid) would give -inf)
    assert math.isfinite(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0])).item())


def test_pairwise_accuracy_is_strict():
    assert pairwise_accuracy(torch.zeros(4), torch.zeros(4)) == 0.0  # ties count as wrong: 0, not 0.5
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 1.0, 1.0])) == 0.5


@pytest.mark.parametrize("with_logprob", [False, True])
def test_loss_is_exactly_ln2_at_step_0_with_the_zero_head(tokenizer, with_logprob):
    model = GPTWithHead(tiny_gpt(tokenizer), with_logprob=with_logprob)
    batch = pair_batch(encode_pairs(tokenizer, some_pairs(), 48), tokenizer.eot_id)
    assert pair_loss(model, batch).item() == pytest.approx(math.log(2), abs=1e-7)
    r_chosen, r_rejected = reward_scores(model, *batch).chunk(2)
    assert torch.all(r_chosen == 0) and pairwise_accuracy(r_chosen, r_rejected) == 0.0


@pytest.mark.parametrize("with_logprob", [False, True])
def test_left_and_right_padding_give_the_same_scores_as_no_padding(tokenizer, with_logprob):
    model = trained_head(GPTWithHead(tiny_gpt(tokenizer), with_logprob=with_logprob)).eval()
    encoded = [e for pair in encode_pairs(tokenizer, some_pairs(), 48) for e in pair]
    with torch.no_grad():
        alone = torch.cat([reward_scores(model, *pad_examples([e], tokenizer.eot_id)) for e in encoded])
        right = reward_scores(model, *pad_examples(encoded, tokenizer.eot_id, side="right"))
        left = reward_scores(model, *pad_examples(encoded, tokenizer.eot_id, side="left"))
        # The draft that reads the last column scores the padding of every right-padded row that is not the longest.
        ids, mask, _ = pad_examples(encoded, tokenizer.eot_id, side="right")
        head_alone = torch.cat([gather_last(model(*pad_examples([e], tokenizer.eot_id)[:2]), torch.ones(1, len(e.ids)))
                                for e in encoded])
        last_column = model(ids, mask)[:, -1]
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    shorter = mask.sum(dim=1) < mask.shape[1]
    assert shorter.any() and not torch.allclose(last_column[shorter], head_alone[shorter], atol=1e-3)


def test_the_logprob_term_is_the_completion_logprob_of_the_groundwork(tokenizer):
    """score = head + logprob_weight * log p(answer | prompt), with log p exactly logprobs.completion_logprobs'."""
    gpt = tiny_gpt(tokenizer).eval()
    with_term = trained_head(GPTWithHead(gpt, with_logprob=True)).eval()
    head_only = GPTWithHead(gpt)
    head_only.head.load_state_dict({k: v for k, v in with_term.head.state_dict().items() if k != "logprob_weight"})
    encoded = [e for pair in encode_pairs(tokenizer, some_pairs(), 48) for e in pair]
    with torch.no_grad():
        both = reward_scores(with_term, *pad_examples(encoded, tokenizer.eot_id))
        head = reward_scores(head_only, *pad_examples(encoded, tokenizer.eot_id)[:2])
        _, logp = completion_logprobs(gpt, *collate(encoded, tokenizer.eot_id))
    torch.testing.assert_close(both, head + 0.7 * logp, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="give the answer mask"):
        reward_scores(with_term, *pad_examples(encoded, tokenizer.eot_id)[:2])


def test_checkpoint_carries_the_head_and_refuses_a_mismatch(tmp_path, tokenizer):
    model = trained_head(GPTWithHead(tiny_gpt(tokenizer)))
    save_checkpoint(tmp_path / "rm", model, tokenizer, {"stage": "reward"})
    loaded, _, _ = load_with_head(tmp_path / "rm")
    assert torch.equal(loaded.head.weight, model.head.weight) and torch.equal(loaded.head.bias, model.head.bias)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(loaded(ids), model(ids))
    # The body alone still loads as a plain GPT.
    plain, _, _ = load_checkpoint(tmp_path / "rm")
    assert torch.equal(plain(ids), model.gpt(ids))
    # A plain GPT checkpoint has no head; a value head is not a reward head; a head of another width.
    save_checkpoint(tmp_path / "gpt", tiny_gpt(tokenizer), tokenizer)
    with pytest.raises(ValueError, match="holds no scalar head"):
        load_with_head(tmp_path / "gpt")
    with pytest.raises(ValueError, match="holds a reward head, but a value head is needed"):
        load_with_head(tmp_path / "rm", kind="value")
    wide = GPTWithHead(GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=32)))
    wide.gpt = tiny_gpt(tokenizer)  # a 16-wide body with a 32-wide head
    save_checkpoint(tmp_path / "wide", wide, tokenizer)
    with pytest.raises(ValueError, match=r"head.safetensors does not match the model.*shapes \['weight \(1, 32\) vs \(1, 16\)'"):
        load_with_head(tmp_path / "wide")


def test_the_exact_kl_of_best_of_n_by_hand():
    """KL(best-of-n || p) for the empirical distribution of the samples' scores (best_of_n.best_of_n_kl): level i
    of mass m_i is picked with q_i = F_i^n - F_(i-1)^n, and KL = sum_i q_i log(q_i / m_i)."""
    # [0, 1], n = 2: q = (1/4, 3/4) -> 1/4 log(1/2) + 3/4 log(3/2) = 0.1308120
    assert best_of_n_kl([0, 1], 2) == pytest.approx(0.1308120, abs=1e-7)
    # [0, 1, 2, 3], n = 4: F = 1/4 .. 1, q = (1/256, 15/256, 65/256, 175/256) -> 0.5903102
    assert best_of_n_kl([0, 1, 2, 3], 4) == pytest.approx(0.5903102, abs=1e-7)
    # [0, 0, 0, 1], n = 2: two levels of mass 3/4 and 1/4, q = (9/16, 7/16) -> 0.0830107 (repeats count once)
    assert best_of_n_kl([0, 0, 0, 1], 2) == pytest.approx(0.0830107, abs=1e-7)
    assert best_of_n_kl([0, 1, 2, 3], 1) == 0.0 and best_of_n_kl([5, 5, 5], 8) == 0.0  # no choice: no KL
    # below the bound log n - (n - 1) / n, which only infinitely many distinct answers reach
    assert best_of_n_kl([0, 1, 2, 3], 4) < math.log(4) - 3 / 4


def test_accuracy_is_judged_by_the_hidden_rule_not_by_the_labels():
    records = {"a": {"family": "add", "answer": "7"}, "b": {"family": "add", "answer": "7"}}
    # Pair b's label is flipped: the rule prefers its "rejected" answer.
    pairs = [{"id": "a", "chosen": "7", "rejected": "8", "kind": "correctness", "family": "add"},
             {"id": "b", "chosen": "8", "rejected": "The answer is 7.", "kind": "correctness", "family": "add"}]
    result = accuracy_against_rule(pairs, records, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert result["accuracy"] == 1.0 and result["margin"] == pytest.approx(1.5)  # both prefer what the rule prefers
    assert pairwise_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 0.5  # against the labels


def write_pair_data(folder, n_train=64, n_test=16):
    """Held-out records and pairs in the data stage's format, with a rule a tiny model learns: right beats wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    tests = [{"id": f"test-{i}", "family": "facts", "level": 1, "instruction": f"Is {i} a number?", "input": "",
              "output": "yes", "answer": "yes", "unseen": False} for i in range(n_test)]
    (folder / "sft_test.json").write_text(json.dumps(tests))

    def pairs(n, split):
        return [{"prompt": f"Is {i} a number?", "chosen": "yes", "rejected": "no", "family": "facts",
                 "kind": "correctness", "flipped": False, "id": f"{split}-{i}"} for i in range(n)]
    (folder / "preferences_train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs(n_train, "train")))
    (folder / "preferences_test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs(n_test, "test")))
    return folder


@pytest.fixture(scope="module")
def sft_folder(request, tmp_path_factory, tokenizer):
    """A tiny SFT checkpoint, in GPT-2's layout unless a test asks for another (indirect parametrisation)."""
    layout = getattr(request, "param", "gpt2")
    return save_checkpoint(tmp_path_factory.mktemp("sft") / "checkpoint", tiny_gpt(tokenizer, layout=layout), tokenizer,
                           {"stage": "sft"})


@pytest.mark.parametrize("sft_folder", LAYOUTS, indirect=True)
def test_reward_stage_learns_the_rule_and_writes_its_folder(tmp_path, sft_folder):
    data = write_pair_data(tmp_path / "data")
    cfg = TrainConfig(max_steps=30, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=10, save_every=10)
    sft_model = load_checkpoint(sft_folder)[0]
    metrics = reward_stage(sft_folder, data, tmp_path / "rm", cfg, best_of=4, best_of_prompts=4, quiet=True)
    assert metrics["accuracy"] == 1.0 and metrics["accuracy_correctness"] == 1.0 and metrics["margin"] > 0
    assert metrics["train_pairs"] == 63 and metrics["test_pairs"] == 16  # 1 of 64 held back for validation
    for name in ("metrics.json", "scores.png", "loss.png", "best_of_n.png", "best_of_n.json", "rule_accuracy.json"):
        assert (tmp_path / "rm" / name).is_file(), name
    curves = json.loads((tmp_path / "rm" / "best_of_n.json").read_text())
    assert curves["n"] == [1, 2, 4] and curves["reward_model"]["kl"][0] == 0.0
    model, _, meta = load_with_head(tmp_path / "rm")
    assert meta["stage"] == "reward" and meta["score"] == "head+logprob" and meta["body"] == "frozen"
    assert model.head.weight.abs().sum() > 0 and model.head.logprob_weight.item() != 0
    for (name, p), q in zip(model.gpt.named_parameters(), sft_model.parameters()):
        assert torch.equal(p, q), f"the frozen body's {name} changed"


def test_scores_of_texts_are_numbers_without_a_graph_and_leave_the_mode_as_it_was(tokenizer):
    """score_texts scores in eval mode and without gradients (PPO and best-of-n read the scores, never
    differentiate them), then gives the model back in the mode it had."""
    model = trained_head(GPTWithHead(tiny_gpt(tokenizer), "reward", with_logprob=True)).train()
    prompts, responses = ["Is 3 a number?", "Is 4 a number?"], ["yes", "The answer is no."]
    scores = score_texts(model, tokenizer, prompts, responses, dtype="float32")
    assert scores.shape == (2,) and not scores.requires_grad and scores.grad_fn is None
    assert model.training
    with torch.no_grad():
        alone = [score_texts(model, tokenizer, [p], [r], dtype="float32") for p, r in zip(prompts, responses)]
    assert torch.allclose(scores, torch.cat(alone), atol=1e-5)


def test_a_model_trained_with_dropout_scores_with_dropout_off(tmp_path, tokenizer, monkeypatch):
    """The reward model of a dropout-0.1 SFT model computes its score (the head and log p under the body) with
    dropout off, in training too (model.disable_dropout): a score is a function of the text."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    x = torch.tensor([[1, 2, 3, 4]])
    assert not torch.equal(gpt.train()(x), gpt(x)), "the test needs a model whose dropout is on in train mode"
    sft = save_checkpoint(tmp_path / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"})
    trained = []
    real_train = reward_module.train
    monkeypatch.setattr(reward_module, "train", lambda model, *args, **kwargs: trained.append(model) or
                        real_train(model, *args, **kwargs))
    cfg = TrainConfig(max_steps=2, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=2, save_every=2)
    metrics = reward_stage(sft, write_pair_data(tmp_path / "data"), tmp_path / "rm", cfg, quiet=True)
    model = trained[0].train()
    assert torch.equal(model.gpt(x), model.gpt(x))
    assert json.loads((tmp_path / "rm" / "checkpoint" / "train_state.json").read_text())["history"]["train_loss"][0] \
        == pytest.approx(math.log(2), abs=1e-7) and metrics["steps"] == 2


def test_the_classic_reward_model_trains_its_body(tmp_path, sft_folder):
    data = write_pair_data(tmp_path / "data")
    cfg = TrainConfig(max_steps=30, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=10, save_every=10)
    metrics = reward_stage(sft_folder, data, tmp_path / "rm", cfg, score="head", body="trained", quiet=True)
    assert metrics["accuracy"] == 1.0 and metrics["logprob_weight"] is None
    model, _, _ = load_with_head(tmp_path / "rm")
    sft_model = load_checkpoint(sft_folder)[0]
    assert model.head.logprob_weight is None
    assert not torch.equal(model.gpt.transformer.h[0].attn.c_attn.weight, sft_model.transformer.h[0].attn.c_attn.weight)


def test_reward_training_resumes_with_exactly_the_uninterrupted_losses(tmp_path, sft_folder, monkeypatch):
    data = write_pair_data(tmp_path / "data")
    cfg = TrainConfig(max_steps=12, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=6, save_every=4)
    reward_stage(sft_folder, data, tmp_path / "full", cfg, quiet=True)
    real_step = train_module.train_step

    def crash_at_step_7(model, optimizer, get_batch, step, *args):
        if step == 7:  # killed mid-run: the last checkpoint is from step 4
            raise KeyboardInterrupt
        return real_step(model, optimizer, get_batch, step, *args)

    monkeypatch.setattr(train_module, "train_step", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        reward_stage(sft_folder, data, tmp_path / "cut", cfg, quiet=True)
    monkeypatch.undo()
    reward_stage(sft_folder, data, tmp_path / "cut", cfg, resume=True, quiet=True)
    histories = [json.loads((tmp_path / run / "checkpoint" / "train_state.json").read_text())["history"]
                 for run in ("full", "cut")]
    assert histories[0]["train_loss"] == histories[1]["train_loss"] and len(histories[0]["train_loss"]) == 12
    full, cut = load_with_head(tmp_path / "full")[0], load_with_head(tmp_path / "cut")[0]
    assert torch.equal(full.head.weight, cut.head.weight)


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, flag", [
    (["--margin", "-1"], "--margin"), (["--center-coef", "x"], "--center-coef"), (["--n-train", "1"], "--n-train"),
    (["--best-of", "2000"], "--best-of"), (["--best-of", "0", "--best-of-prompts", "5"], "--best-of-prompts"),
    (["--max-steps", "5", "--warmup-steps", "9"], "--warmup-steps"), (["--preset", "huge"], "--preset"),
    (["--lr", "0"], "--lr"), (["--dtype", "fp8"], "--dtype"), (["--score", "mean"], "--score"),
    (["--body", "lora"], "--body")])
def test_bad_reward_flags_exit_2_with_one_line_before_reading_anything(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["reward", "--sft", "/nonexistent", "--data", "/nonexistent", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err


def test_a_missing_sft_folder_is_one_line(capsys, tmp_path):
    code, err = run_cli(capsys, "reward", "--sft", str(tmp_path / "nope"), "--data", str(tmp_path), "--quiet")
    assert code == 2 and len(err.splitlines()) == 1 and "no checkpoint in" in err


def test_every_reward_flag_takes_effect(capsys, tmp_path, sft_folder):
    data = write_pair_data(tmp_path / "data", n_train=40, n_test=12)
    base = ["reward", "--sft", str(sft_folder), "--data", str(data), "--preset", "tiny", "--quiet"]

    def run(name, *flags):
        out = tmp_path / name
        assert main([*base, "--out", str(out), *flags]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        _, _, meta = load_checkpoint(out)
        return metrics, meta

    plain, plain_meta = run("plain")
    assert plain["steps"] == 20 and plain["train_pairs"] == 39 and "best_of_n_table" in plain  # the tiny preset
    # Flags that do not interact share a run (fewer runs, the same checks).
    steps, steps_meta = run("steps", "--max-steps", "6", "--n-train", "20", "--n-eval", "5", "--lr", "0.05",
                            "--batch-size", "4")
    assert (steps["steps"], steps["train_pairs"], steps["test_pairs"]) == (6, 19, 5)
    assert steps_meta["train_config"]["lr"] == 0.05 and steps_meta["train_config"]["batch_size"] == 4
    margin, margin_meta = run("margin", "--margin", "0.5", "--center-coef", "0.1", "--best-of", "0")
    assert margin_meta["margin"] == 0.5 and margin_meta["center_coef"] == 0.1 and "best_of_n_table" not in margin
    assert plain_meta["score"] == "head+logprob" and plain_meta["body"] == "frozen"
    bon_meta = run("bon", "--best-of", "2", "--best-of-prompts", "3", "--score", "head")[1]
    curves = json.loads((tmp_path / "bon" / "best_of_n.json").read_text())
    assert curves["n"] == [1, 2] and curves["prompts"] == 3 and bon_meta["score"] == "head"
    assert run("body", "--body", "trained")[1]["body"] == "trained"
