"""Chapter 10: DPO (dpo.py) on tiny models -- each loss and its gradient by hand, ln 2 and accuracy 0 at
step 0, a reference that never moves (LoRA: the adapters switched off), seeded runs, resume, flags."""

import json
import math

import pytest
import torch

import gpt_scratch.dpo as dpo_module
import gpt_scratch.train as train_module
from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.data import collate
from gpt_scratch.dpo import LOSSES, batch_loss, dpo_loss, dpo_stage, pair_metrics, preference_loss, reference_logprobs
from gpt_scratch.logprobs import completion_logprobs, encode_completions
from gpt_scratch.lora import LoRASettings, add_lora
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainConfig
from tiny import LAYOUTS, layout_config, two_ranks

TEXT = "Is 3 a number? yes. Is a cat a number? no. The answer is yes. The answer is no. " * 20
LN2 = math.log(2)
SIGMOID_1 = 1 / (1 + math.exp(-1))  # sigmoid(1) = 0.7310586


# --- the losses, by hand ------------------------------------------------------------------------------------------

def one_pair(beta: float, loss: str, label_smoothing: float = 0.0, pc: float = -1.0, pr: float = -3.0):
    """dpo_loss on one pair with the reference at -2 for both answers; returns (loss, rewards, gradients)."""
    policy_chosen, policy_rejected = torch.tensor([pc], requires_grad=True), torch.tensor([pr], requires_grad=True)
    ref = torch.tensor([-2.0])
    value, r_chosen, r_rejected = dpo_loss(policy_chosen, policy_rejected, ref, ref, beta, loss, label_smoothing)
    value.backward()
    return value.item(), (r_chosen.item(), r_rejected.item()), (policy_chosen.grad.item(), policy_rejected.grad.item())


def test_each_loss_and_its_gradient_on_a_hand_computed_pair():
    # log pi(y_c) = -1, log pi(y_r) = -3, the reference -2 for both: h = (-1 + 2) - (-3 + 2) = 2.
    # sigmoid, beta 0.5 (beta h = 1): -log sigmoid(1) = log(1 + e^-1) = 0.3132617;
    # d/d log pi(y_c) = -beta (1 - sigmoid(1)) = -0.5 * 0.2689414 = -0.1344707, and +0.1344707 for y_r.
    value, rewards, grads = one_pair(0.5, "sigmoid")
    assert value == pytest.approx(0.3132617, abs=1e-6)
    assert rewards == pytest.approx((0.5, -0.5))  # beta * (log pi - log pi_ref) = 0.5 * 1 and 0.5 * -1
    assert grads == pytest.approx((-0.1344707, 0.1344707), abs=1e-6)
    # ipo, beta 0.5: (h - 1/(2 beta))^2 = (2 - 1)^2 = 1; d/d log pi(y_c) = 2 (h - 1) = 2, and -2 for y_r.
    value, _, grads = one_pair(0.5, "ipo")
    assert value == pytest.approx(1.0) and grads == pytest.approx((2.0, -2.0))
    # ...and the target margin reached (h = 1 with beta 0.5): loss 0, no gradient.
    value, _, grads = one_pair(0.5, "ipo", pc=-1.0, pr=-2.0)
    assert value == 0.0 and grads == (0.0, 0.0)
    # hinge, beta 0.25 (beta h = 0.5): max(0, 1 - 0.5) = 0.5; d/d log pi(y_c) = -beta = -0.25.
    value, _, grads = one_pair(0.25, "hinge")
    assert value == pytest.approx(0.5) and grads == pytest.approx((-0.25, 0.25))
    # ...past the margin (beta 0.5, h = 3: beta h = 1.5 > 1): loss 0 and no gradient at all.
    value, _, grads = one_pair(0.5, "hinge", pr=-4.0)
    assert value == 0.0 and grads == (0.0, 0.0)
    # cdpo (conservative DPO, label smoothing), eps 0.1, beta 0.5:
    # 0.9 * 0.3132617 + 0.1 * log(1 + e) = 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617;
    # d/d log pi(y_c) = beta (-(1 - eps)(1 - sigmoid(1)) + eps sigmoid(1)) = 0.5 (-0.2420473 + 0.0731059) = -0.0844707.
    value, _, grads = one_pair(0.5, "cdpo", label_smoothing=0.1)
    assert value == pytest.approx(0.4132617, abs=1e-6)
    assert grads == pytest.approx((-0.0844707, 0.0844707), abs=1e-6)
    assert grads[0] == pytest.approx(0.5 * (-0.9 * (1 - SIGMOID_1) + 0.1 * SIGMOID_1))
    # robust (Chowdhury et al.), eps 0.1, beta 0.5: [(1 - eps) L(h) - eps L(-h)] / (1 - 2 eps)
    # = (0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8 = 0.1882617;
    # d/d log pi(y_c) = beta (-(1 - eps) sigmoid(-1) - eps sigmoid(1)) / (1 - 2 eps)
    # = 0.5 (-0.9 * 0.2689414 - 0.1 * 0.7310586) / 0.8 = -0.1969707, and +0.1969707 for y_r.
    value, _, grads = one_pair(0.5, "robust", label_smoothing=0.1)
    assert value == pytest.approx(0.1882617, abs=1e-6)
    assert grads == pytest.approx((-0.1969707, 0.1969707), abs=1e-6)
    # cdpo and robust with eps 0 are DPO itself.
    assert one_pair(0.5, "cdpo", label_smoothing=0.0) == one_pair(0.5, "sigmoid")
    assert one_pair(0.5, "robust", label_smoothing=0.0) == one_pair(0.5, "sigmoid")
    # The module docstring's example: beta 0.1, h = 2: -log sigmoid(0.2) = 0.5981389, gradient -0.1 sigmoid(-0.2).
    value, rewards, grads = one_pair(0.1, "sigmoid", pc=-1.0, pr=-3.0)
    assert value == pytest.approx(0.5981389, abs=1e-6) and rewards == pytest.approx((0.1, -0.1))
    assert grads[0] == pytest.approx(-0.0450166, abs=1e-6)


def test_at_h_0_every_loss_has_its_starting_value():
    h = torch.zeros(3)
    assert preference_loss(h, 0.1, "sigmoid").tolist() == pytest.approx([LN2] * 3)
    assert preference_loss(h, 0.1, "cdpo", 0.2).tolist() == pytest.approx([LN2] * 3)  # both terms are ln 2
    assert preference_loss(h, 0.1, "robust", 0.2).tolist() == pytest.approx([LN2] * 3)  # (0.8 - 0.2) ln 2 / 0.6
    assert preference_loss(h, 0.1, "ipo").tolist() == pytest.approx([25.0] * 3)  # (0 - 1/0.2)^2
    assert preference_loss(h, 0.1, "hinge").tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="loss must be one of sigmoid, ipo, hinge, cdpo, robust"):
        preference_loss(h, 0.1, "kto")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\) for the robust loss"):
        preference_loss(h, 0.1, "robust", 0.5)  # 1 - 2 eps = 0


def test_the_loss_is_the_mean_over_pairs_and_stays_finite_far_apart():
    pc, pr, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0]), torch.full((2,), -2.0)
    value, _, _ = dpo_loss(pc, pr, ref, ref, 0.5)
    assert value.item() == pytest.approx((0.3132617 + LN2) / 2, abs=1e-6)
    far, _, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([-500.0]), 1.0)
    assert math.isfinite(far.item()) and far.item() == pytest.approx(500.0)


def test_metrics_carry_the_field_names_and_accuracy_is_strict():
    stats = pair_metrics(torch.tensor([0.5, 0.0, 0.2, -1.0]), torch.tensor([-0.5, 0.0, 0.3, -2.0]),
                         torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([-5.0, -6.0, -7.0, -8.0]))
    assert stats == pytest.approx({"rewards/chosen": -0.075, "rewards/rejected": -0.55, "rewards/margins": 0.475,
                                   "rewards/accuracies": 0.5,  # 2 of 4: the tie (0 vs 0) counts as wrong
                                   "logps/chosen": -2.5, "logps/rejected": -6.5})


# --- a tiny model: step 0, the reference, LoRA --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXT, 280)


def tiny_gpt(tokenizer, seed=0, layout="gpt2") -> GPT:
    torch.manual_seed(seed)
    return GPT(layout_config(layout, vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16))


def some_batch(tokenizer, n=4):
    prompts = [f"Is {i} a number?" for i in range(n)]
    chosen = encode_completions(tokenizer, prompts, ["The answer is yes."] * n)
    rejected = encode_completions(tokenizer, prompts, ["no" if i % 2 else "The answer is no." for i in range(n)])
    return collate(chosen + rejected, tokenizer.eot_id)


def test_the_policy_equals_its_reference_at_the_start(tokenizer):
    model = tiny_gpt(tokenizer)
    x, y = some_batch(tokenizer)
    reference, = reference_logprobs(model, [(x, y)], torch.device("cpu"), "float32")
    assert not reference.requires_grad and model.training  # numbers, not a graph; the model's mode is kept
    model.train()
    value, stats = batch_loss(model, (x, y, reference), beta=0.1)
    assert value.item() == pytest.approx(LN2, abs=1e-7)
    assert stats["rewards/chosen"] == stats["rewards/rejected"] == stats["rewards/margins"] == 0.0
    assert stats["rewards/accuracies"] == 0.0  # every pair a tie: 0, not 0.5
    assert stats["logps/chosen"] == pytest.approx(reference[:4].mean().item())


def test_with_lora_the_reference_is_the_base_model(tokenizer):
    base = tiny_gpt(tokenizer)
    policy = tiny_gpt(tokenizer)
    add_lora(policy, rank=2, alpha=4.0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()  # a trained adapter: the policy is no longer its base
    x, y = some_batch(tokenizer)
    reference, = reference_logprobs(policy, [(x, y)], torch.device("cpu"), "float32")
    with torch.no_grad():
        base_logps = completion_logprobs(base.eval(), x, y)[1]
        policy_logps = completion_logprobs(policy, x, y)[1]
    assert torch.equal(reference, base_logps)
    assert not torch.allclose(policy_logps, base_logps)  # the adapters are on again afterwards


# --- the stage ----------------------------------------------------------------------------------------------------

def write_data(folder, n_train=48, n_test=8):
    """sft_test.json for the judge and preference pairs: the sentence style beats the bare answer, yes beats no."""
    folder.mkdir(parents=True, exist_ok=True)
    tests = [{"id": f"test-{i}", "family": "facts", "level": 1, "instruction": f"Is {i} a number?", "input": "",
              "output": "yes", "answer": "yes", "unseen": False} for i in range(n_test)]
    (folder / "sft_test.json").write_text(json.dumps(tests))
    pairs = [{"prompt": f"Is {i} a number?", "chosen": "The answer is yes.", "rejected": "yes" if i % 2 else "no",
              "family": "facts", "kind": "style" if i % 2 else "correctness", "flipped": False, "id": f"train-{i}"}
             for i in range(n_train)]
    (folder / "preferences_train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return folder


@pytest.fixture(scope="module")
def folders(request, tmp_path_factory, tokenizer):
    """A tiny SFT checkpoint (GPT-2's layout unless a test asks for another) and preference data."""
    root = tmp_path_factory.mktemp("dpo")
    layout = getattr(request, "param", "gpt2")
    sft = save_checkpoint(root / "sft" / "checkpoint", tiny_gpt(tokenizer, layout=layout), tokenizer,
                          {"stage": "sft"}).parent
    return {"sft": sft, "data": write_data(root / "data")}


def small(**overrides) -> TrainConfig:
    settings = dict(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=1, weight_decay=0.0, eval_every=3, save_every=2,
                    dtype="float32")
    settings.update(overrides)
    return TrainConfig(**settings)


def history_of(folder):
    return json.loads((folder / "history.json").read_text())


@pytest.mark.parametrize("folders", LAYOUTS, indirect=True)
def test_the_stage_starts_at_ln2_learns_the_pairs_and_writes_its_folder(tmp_path, folders):
    metrics = dpo_stage(folders["sft"], folders["data"], tmp_path / "dpo", small(), beta=0.5, quiet=True)
    history = history_of(tmp_path / "dpo")
    assert history["train_loss"][0] == pytest.approx(LN2, abs=1e-6)  # the policy is its reference at step 0
    assert history["rewards/accuracies"][0] == 0.0 and history["rewards/margins"][0] == 0.0
    assert history["eval_step"] == [0, 3, 6] and history["eval_kl"][0] == 0.0 and history["eval_win_rate"][0] == 0.5
    assert history["rewards/margins"][-1] > 0.5 and history["train_loss"][-1] < 0.5  # it learned the pairs
    # The policy moved away from the SFT model. (kl_vs_sft estimates KL from one sampled answer per prompt, 8 prompts
    # here: it is above 0 on average over seeds, but a single estimate may come out below 0, e.g. on the llama layout.)
    assert metrics["held_back_accuracy"] == 1.0 and metrics["kl_vs_sft"] != 0
    assert metrics["train_pairs"] == 47 and metrics["test_examples"] == 8 and metrics["epochs"] == pytest.approx(0.51)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "train_loss", "eval_accuracy", "eval_sentence_rate", "eval_win_rate", "eval_kl"):
        assert len(history[key]) == (6 if not key.startswith("eval_") else 3), key
    for name in ("metrics.json", "history.json", "dpo.png", "loss.png", "checkpoint"):
        assert (tmp_path / "dpo" / name).exists(), name
    _, _, meta = load_checkpoint(tmp_path / "dpo")
    assert (meta["stage"], meta["loss"], meta["beta"]) == ("dpo", "sigmoid", 0.5)


def test_a_model_trained_with_dropout_still_starts_at_exactly_ln2(tmp_path, tokenizer):
    """Dropout is off in every log-probability DPO computes (model.disable_dropout): at step 0 the policy is
    its reference, so the loss is ln 2 and every implicit reward 0, whatever dropout the SFT model has."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=48, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    x, y = some_batch(tokenizer)
    gpt.train()
    assert not torch.equal(gpt(x), gpt(x)), "the test needs a model whose dropout is on in train mode"
    sft = save_checkpoint(tmp_path / "sft" / "checkpoint", gpt, tokenizer, {"stage": "sft"}).parent
    dpo_stage(sft, write_data(tmp_path / "data"), tmp_path / "dpo", small(max_steps=2, eval_every=2), beta=0.5,
              quiet=True)
    history = history_of(tmp_path / "dpo")
    assert history["train_loss"][0] == pytest.approx(LN2, abs=1e-7)
    assert history["rewards/chosen"][0] == history["rewards/rejected"][0] == history["rewards/margins"][0] == 0.0
    assert load_checkpoint(tmp_path / "dpo")[0].config.dropout == 0.1  # the checkpoint says what it was trained with


def test_the_reference_log_probabilities_are_never_updated(tmp_path, folders, monkeypatch):
    seen = {}
    real_train = dpo_module.train

    def keep_arguments(model, tokenizer, get_batch, val_batches, cfg, *args, **kwargs):
        seen.update(get_batch=get_batch, val_batches=val_batches, policy=model)
        return real_train(model, tokenizer, get_batch, val_batches, cfg, *args, **kwargs)

    monkeypatch.setattr(dpo_module, "train", keep_arguments)
    dpo_stage(folders["sft"], folders["data"], tmp_path / "dpo", small(), quiet=True)
    sft_model = load_checkpoint(folders["sft"])[0].eval()
    moved = False
    for step in range(6):
        x, y, reference = seen["get_batch"](step, 0)
        with torch.no_grad():
            assert torch.equal(reference, completion_logprobs(sft_model, x, y)[1]), f"step {step}"
            moved |= not torch.allclose(completion_logprobs(seen["policy"], x, y)[1], reference)
    assert moved, "the policy did not move, so the test shows nothing"
    for x, y, reference in seen["val_batches"]:
        with torch.no_grad():
            assert torch.equal(reference, completion_logprobs(sft_model, x, y)[1])


def test_a_lora_policy_trains_its_adapters_against_its_base(tmp_path, folders):
    metrics = dpo_stage(folders["sft"], folders["data"], tmp_path / "lora", small(lr=3e-2),
                        lora=LoRASettings(lora_rank=2), quiet=True)
    history = history_of(tmp_path / "lora")
    assert history["train_loss"][0] == pytest.approx(LN2, abs=1e-6) and history["rewards/accuracies"][0] == 0.0
    assert history["rewards/margins"][-1] > 0 and metrics["lora_rank"] == 2 and metrics["kl_vs_sft"] > 0
    assert (tmp_path / "lora" / "adapter" / "adapter.safetensors").is_file()
    merged, _, meta = load_checkpoint(tmp_path / "lora")  # a plain GPT with the adapters merged in
    sft_model = load_checkpoint(folders["sft"])[0]
    assert meta["merged_lora"] and meta["lora_rank"] == 2
    assert not torch.equal(merged.transformer.h[0].attn.c_attn.weight, sft_model.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(merged.transformer.wte.weight, sft_model.transformer.wte.weight)  # no adapter there


@pytest.mark.parametrize("loss", LOSSES)
def test_every_variant_trains_and_a_seeded_run_repeats(tmp_path, folders, loss):
    runs = [dpo_stage(folders["sft"], folders["data"], tmp_path / name, small(max_steps=4), beta=0.5, loss=loss,
                      label_smoothing=0.1, quiet=True) for name in ("a", "b")]
    first, second = history_of(tmp_path / "a"), history_of(tmp_path / "b")
    for key in ("train_loss", "rewards/margins", "eval_accuracy", "eval_kl", "val_loss"):
        assert first[key] == second[key], key
    assert runs[0]["loss"] == loss and first["rewards/margins"][-1] > 0
    start = {"sigmoid": LN2, "cdpo": LN2, "robust": LN2, "ipo": 1.0, "hinge": 1.0}[loss]  # ipo: (0 - 1/(2 * 0.5))^2
    assert first["train_loss"][0] == pytest.approx(start, abs=1e-6)


def test_resume_continues_with_exactly_the_uninterrupted_steps(tmp_path, folders, monkeypatch):
    dpo_stage(folders["sft"], folders["data"], tmp_path / "full", small(), quiet=True)
    real_step = train_module.train_step

    def crash_at_step_5(model, optimizer, get_batch, step, *args):
        if step == 5:  # killed mid-run: the last checkpoint is from step 4
            raise KeyboardInterrupt
        return real_step(model, optimizer, get_batch, step, *args)

    monkeypatch.setattr(train_module, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        dpo_stage(folders["sft"], folders["data"], tmp_path / "cut", small(), quiet=True)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    dpo_stage(folders["sft"], folders["data"], tmp_path / "cut", small(), resume=True, quiet=True)
    full, cut = history_of(tmp_path / "full"), history_of(tmp_path / "cut")
    for key in ("train_loss", "rewards/chosen", "rewards/accuracies", "eval_step", "eval_accuracy", "eval_kl"):
        assert full[key] == cut[key], key
    for p, q in zip(load_checkpoint(tmp_path / "full")[0].parameters(), load_checkpoint(tmp_path / "cut")[0].parameters()):
        assert torch.equal(p, q)


def test_a_preference_file_of_another_shape_trains_without_the_judge(tmp_path, folders):
    chat = [{"chosen": [{"role": "user", "content": f"Is {i} a number?"},
                        {"role": "assistant", "content": "The answer is yes."}],
             "rejected": [{"role": "user", "content": f"Is {i} a number?"}, {"role": "assistant", "content": "no"}]}
            for i in range(20)]
    path = tmp_path / "chat_pairs.json"
    path.write_text(json.dumps(chat))
    metrics = dpo_stage(folders["sft"], path, tmp_path / "file", small(max_steps=3), quiet=True)
    assert metrics["train_pairs"] == 19 and metrics["test_examples"] == 0 and "accuracy_after" not in metrics
    assert history_of(tmp_path / "file")["eval_step"] == [0, 3] and 0 <= metrics["held_back_accuracy"] <= 1


# --- the command line ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["--loss", "kto"], "--loss"), (["--beta", "0"], "--beta"), (["--beta", "x"], "--beta"),
    (["--label-smoothing", "0.5"], "--label-smoothing"), (["--loss", "robust", "--label-smoothing", "-0.1"],
                                                         "--label-smoothing"),
    (["--label-smoothing", "0.1"], "--label-smoothing"),  # only with --loss cdpo or robust
    (["--loss", "ipo", "--label-smoothing", "0.1"], "--label-smoothing"),
    (["--lora-rank", "0"], "--lora-rank"), (["--n-train", "1"], "--n-train"), (["--n-eval", "0"], "--n-eval"),
    (["--max-steps", "5", "--warmup-steps", "9"], "--warmup-steps"), (["--preset", "huge"], "--preset"),
    (["--lr", "0"], "--lr"), (["--dtype", "fp8"], "--dtype"), (["--batch-size", "0"], "--batch-size")])
def test_bad_dpo_flags_exit_2_with_one_line_before_reading_anything(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["dpo", "--sft", "/nonexistent", "--data", "/nonexistent", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert err.startswith("python -m gpt_scratch dpo: error: "), err


def test_missing_folders_are_one_line(capsys, tmp_path, folders):
    assert main(["dpo", "--sft", str(tmp_path / "nope"), "--data", str(folders["data"]), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint in" in err
    assert main(["dpo", "--sft", str(folders["sft"]), "--data", str(tmp_path / "nothing.jsonl"), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing.jsonl: no such file" in err


def test_every_dpo_flag_takes_effect(tmp_path, folders, capsys, monkeypatch):
    base = ["dpo", "--sft", str(folders["sft"]), "--data", str(folders["data"]), "--preset", "tiny", "--dtype",
            "float32", "--quiet"]
    losses_computed = []  # (loss, label_smoothing) of every call of the loss: what each run really computed

    def recording_loss(h, beta, loss="sigmoid", label_smoothing=0.0):
        losses_computed.append((loss, label_smoothing))
        return preference_loss(h, beta, loss, label_smoothing)
    monkeypatch.setattr(dpo_module, "preference_loss", recording_loss)

    def run(name, *flags):
        out = tmp_path / name
        losses_computed.clear()
        assert main([*base, "--out", str(out), *flags]) == 0
        return json.loads((out / "metrics.json").read_text()), load_checkpoint(out)[2], history_of(out)

    plain, meta, history = run("plain")
    # The tiny preset: 6 steps of 4 pairs, eval every 3, beta 0.1, 16 test questions (the data has 8), 64 pairs (48).
    assert (plain["steps"], plain["loss"], plain["beta"], plain["label_smoothing"], plain["lora_rank"]) == \
        (6, "sigmoid", 0.1, None, None)
    assert plain["train_pairs"] == 47 and plain["test_examples"] == 8 and history["eval_step"] == [0, 3, 6]
    assert meta["train_config"]["batch_size"] == 4 and meta["train_config"]["lr"] == 1e-3
    # Flags that do not interact share a run (fewer runs, the same checks).
    ipo = run("ipo", "--loss", "ipo", "--beta", "0.3", "--n-train", "20", "--n-eval", "5")[0]
    assert (ipo["loss"], ipo["beta"], ipo["train_pairs"], ipo["test_examples"]) == ("ipo", 0.3, 19, 5)
    hinge = run("hinge", "--loss", "hinge", "--lr", "0.05", "--dtype", "bfloat16", "--device", "cpu")
    assert hinge[0]["loss"] == "hinge" and hinge[1]["train_config"]["lr"] == 0.05
    assert hinge[1]["train_config"]["dtype"] == "bfloat16"  # the last --dtype wins
    assert hinge[1]["train_config"]["device"] == "cpu"
    robust = run("robust", "--loss", "robust")[0]
    assert robust["loss"] == "robust" and robust["label_smoothing"] == 0.1  # the preset's
    assert set(losses_computed) == {("robust", 0.1)}  # Chowdhury et al.'s loss (test_each_loss_...), not cdpo
    smoothing = run("smoothing", "--loss", "cdpo", "--label-smoothing", "0.2", "--batch-size", "2", "--grad-accum", "2")
    assert smoothing[0]["loss"] == "cdpo" and smoothing[0]["label_smoothing"] == 0.2
    assert set(losses_computed) == {("cdpo", 0.2)}
    assert smoothing[1]["train_config"]["batch_size"] == 2 and smoothing[1]["train_config"]["grad_accum"] == 2
    lora = run("lora", "--lora-rank", "2")
    assert lora[0]["lora_rank"] == 2 and (tmp_path / "lora" / "adapter").is_dir()
    steps = run("steps", "--max-steps", "4", "--eval-every", "2", "--warmup-steps", "0", "--weight-decay", "0.5",
                "--grad-clip", "0", "--save-every", "5")
    assert steps[0]["steps"] == 4 and steps[2]["eval_step"] == [0, 2, 4]
    assert (steps[1]["train_config"]["warmup_steps"], steps[1]["train_config"]["weight_decay"],
            steps[1]["train_config"]["grad_clip"], steps[1]["train_config"]["save_every"]) == (0, 0.5, 0.0, 5)
    assert run("seed", "--seed", "3")[2]["train_loss"] != history["train_loss"]
    before = (tmp_path / "plain" / "checkpoint" / "model.safetensors").read_bytes()
    resumed = run("plain", "--resume")  # the run is complete: nothing is trained again
    assert resumed[2] == history and (tmp_path / "plain" / "checkpoint" / "model.safetensors").read_bytes() == before
    capsys.readouterr()
    assert main([arg for arg in base if arg != "--quiet"] + ["--out", str(tmp_path / "loud")]) == 0
    out = capsys.readouterr().out
    assert "dpo step 0/6: held-out accuracy" in out and "DPO: held-out accuracy" in out and "KL from SFT" in out


def test_two_processes_train_the_policy_one_process_trains(tmp_path, folders):
    """In two processes (ranks 0 and 1, as torchrun starts them) each rank takes 2 of a step's 4 pairs
    and computes their reference log-probabilities itself; the logged numbers are the means over the
    ranks, and rank 0 alone measures and writes."""
    args = ["dpo", "--sft", folders["sft"], "--data", folders["data"], "--preset", "tiny", "--max-steps", "4",
            "--batch-size", "4", "--warmup-steps", "1", "--eval-every", "2", "--n-eval", "4", "--device", "cpu",
            "--dtype", "float32", "--quiet"]
    assert main([*map(str, args), "--out", str(tmp_path / "one")]) == 0
    result = two_ranks(*args, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr
    one, two = history_of(tmp_path / "one"), history_of(tmp_path / "two")
    assert one.keys() == two.keys() and one["eval_step"] == two["eval_step"] == [0, 2, 4]
    for name, values in one.items():
        if isinstance(values, list) and name not in ("step", "val_step", "eval_step"):
            torch.testing.assert_close(torch.tensor(two[name]), torch.tensor(values), msg=name)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
