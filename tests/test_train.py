import subprocess
import sys

import pytest
import torch

from tiny import tiny_config
from gpt_scratch.checkpoint import load_checkpoint
from gpt_scratch.data import TokenWindows
from gpt_scratch.model import GPT
import gpt_scratch.train as train_module
from gpt_scratch.train import (TrainConfig, TrainingDiverged, learning_rate, make_optimizer, next_token_loss, train,
                               train_step)


def windows(batch_size=4):
    torch.manual_seed(123)
    stream = torch.randint(0, 64, (50,)).repeat(40)  # a repeated random phrase: learnable
    return TokenWindows(stream, block_size=16, batch_size=batch_size, seed=0)


def quick_config(**overrides) -> TrainConfig:
    settings = dict(max_steps=10, batch_size=4, lr=1e-2, warmup_steps=2, eval_every=5, save_every=5)
    settings.update(overrides)
    return TrainConfig(**settings)


def fresh_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(**overrides))


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(55, cfg) == pytest.approx(0.55)  # half way through the cosine
    assert learning_rate(100, cfg) == pytest.approx(0.1)
    assert all(learning_rate(s, cfg) >= learning_rate(s + 1, cfg) for s in range(10, 100))


def test_weight_decay_only_on_matrices_and_only_trainable_parameters():
    model = fresh_model()
    model.transformer.wpe.weight.requires_grad_(False)
    decay, no_decay = make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    trainable = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert trainable == model.num_parameters() - 32 * 16
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(model, TrainConfig())


def test_training_lowers_the_loss_and_writes_a_checkpoint(tmp_path):
    data = windows()
    model = fresh_model()
    history = train(model, None, data.batch, data.evenly_spaced_batches(2), quick_config(max_steps=40), tmp_path,
                    quiet=True)
    assert len(history["train_loss"]) == 40
    assert sum(history["train_loss"][-5:]) / 5 < history["train_loss"][0] - 0.1
    assert history["val_step"] == [4, 9, 14, 19, 24, 29, 34, 39]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    loaded, tokenizer, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 40 and tokenizer is None
    x = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_resume_continues_with_exactly_the_uninterrupted_losses(tmp_path):
    data = windows()
    full = train(fresh_model(dropout=0.1), None, data.batch, [], quick_config(), tmp_path / "full", quiet=True)
    # "Interrupted" run: the same settings, killed at step 7 (the last checkpoint is from step 5).
    def crash_at_step_7(step, micro):
        if step == 7:
            raise KeyboardInterrupt
        return data.batch(step, micro)

    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(dropout=0.1), None, crash_at_step_7, [], quick_config(), tmp_path / "cut", quiet=True)
    resumed = train(fresh_model(dropout=0.1), None, data.batch, [], quick_config(), tmp_path / "cut", resume=True,
                    quiet=True)
    assert resumed["train_loss"] == full["train_loss"]
    a, _, _ = load_checkpoint(tmp_path / "full")
    b, _, _ = load_checkpoint(tmp_path / "cut")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_training_is_deterministic_on_cpu(tmp_path):
    data = windows()
    runs = [train(fresh_model(dropout=0.1), None, data.batch, [], quick_config(), tmp_path / str(i), quiet=True)
            for i in range(2)]
    assert runs[0]["train_loss"] == runs[1]["train_loss"]


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    data = windows(batch_size=8)
    x, y = data.batch(0)

    def whole(step, micro):
        return x, y

    def halves(step, micro):
        return x[4 * micro: 4 * micro + 4], y[4 * micro: 4 * micro + 4]

    exact = dict(max_steps=1, warmup_steps=0, grad_clip=0, dtype="float32")  # bf16 would round the two sums apart
    big = fresh_model()
    train(big, None, whole, [], quick_config(**exact), tmp_path / "a", quiet=True)
    small = fresh_model()
    train(small, None, halves, [], quick_config(**exact, grad_accum=2), tmp_path / "b", quiet=True)
    for p, q in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_replay_adds_its_loss_to_the_gradient_but_not_to_the_reported_loss():
    data, other = windows(), TokenWindows(torch.arange(64).repeat(10), block_size=16, batch_size=2, seed=1)
    cfg = quick_config(grad_clip=0)

    def one_sgd_step(replay):  # plain SGD: the weights move by exactly -lr * gradient
        model = fresh_model()
        before = model.transformer.wte.weight.detach().clone()
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        loss, _, _ = train_step(model, optimizer, data.batch, 0, cfg, torch.device("cpu"), replay)
        return loss, model.transformer.wte.weight.detach() - before

    (plain_loss, plain), (other_loss, with_other), (same_loss, with_same) = map(one_sgd_step, (None, other.batch, data.batch))
    assert plain_loss == other_loss == same_loss  # the replayed text's loss is not reported
    assert not torch.allclose(plain, with_other)
    torch.testing.assert_close(with_same, 2 * plain)  # replaying the step's own batch doubles its gradient


def gradient_norm(parameters) -> float:
    """The norm of all the gradients together: what clip_grad_norm_ measures and limits."""
    return torch.cat([p.grad.flatten() for p in parameters if p.grad is not None]).norm().item()


def recording_steps(optimizer: torch.optim.Optimizer, norms: list) -> torch.optim.Optimizer:
    """The optimizer, with each step() first appending the gradient norm it is about to apply."""
    real_step = optimizer.step
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step(*args, **kwargs):
        norms.append(gradient_norm(params))
        return real_step(*args, **kwargs)

    optimizer.step = step
    return optimizer


def test_the_step_applies_a_gradient_clipped_to_the_limit():
    def norm_at_the_step(grad_clip: float) -> float:
        model, norms = fresh_model(), []
        optimizer = recording_steps(torch.optim.SGD(model.parameters(), lr=0.0), norms)
        train_step(model, optimizer, windows().batch, 0, quick_config(grad_clip=grad_clip, dtype="float32"),
                   torch.device("cpu"))
        return norms[0]

    unclipped = norm_at_the_step(0)  # 0 = no clipping
    assert unclipped > 0.1
    assert norm_at_the_step(0.05) == pytest.approx(0.05, rel=1e-4)  # above the limit: scaled down to it
    assert norm_at_the_step(2 * unclipped) == pytest.approx(unclipped, rel=1e-6)  # below it: untouched


def test_the_grad_clip_flag_reaches_the_training_step(tmp_path, monkeypatch):
    from gpt_scratch.cli import main
    from tiny import write_world_corpus

    norms: list[float] = []
    real_make_optimizer = train_module.make_optimizer
    monkeypatch.setattr(train_module, "make_optimizer",
                        lambda model, cfg: recording_steps(real_make_optimizer(model, cfg), norms))
    corpus = write_world_corpus(tmp_path, characters=20_000)
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--vocab-size", "270", "--max-steps", "2", "--warmup-steps", "0", "--grad-clip", "0.001",
                 "--dtype", "float32", "--quiet"]) == 0
    assert norms == pytest.approx([0.001, 0.001], rel=1e-3)  # a fresh model's gradients are far larger


def test_replay_changes_the_trained_weights(tmp_path):
    data, other = windows(), TokenWindows(torch.arange(64).repeat(10), block_size=16, batch_size=2, seed=1)
    plain, replayed = fresh_model(), fresh_model()
    train(plain, None, data.batch, [], quick_config(max_steps=3), tmp_path / "a", quiet=True)
    history = train(replayed, None, data.batch, [], quick_config(max_steps=3), tmp_path / "b", quiet=True,
                    replay=other.batch)
    assert not torch.equal(plain.transformer.wte.weight, replayed.transformer.wte.weight)
    assert history["tokens"] == 3 * (4 + 2) * 16  # the replayed windows are counted as seen tokens




def test_a_diverging_run_stops_at_the_first_nan_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    data = windows()

    def nan_from_step_6(model, batch):
        loss = next_token_loss(model, batch[:2])
        return loss * float("nan") if step_of(batch) >= 6 else loss

    step_of = lambda batch: int(batch[2])  # noqa: E731 -- the step rides along with the batch
    get_batch = lambda step, micro: (*data.batch(step, micro), torch.tensor(step))  # noqa: E731
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 6: the loss is nan; lower the "
                                               r"learning rate \(--lr, now 0.01\) or clip harder"):
        train(fresh_model(), None, get_batch, [], quick_config(save_every=5), tmp_path, quiet=True,
              loss_fn=nan_from_step_6)
    saved, _, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 5 and all(torch.isfinite(p).all() for p in saved.parameters())
    assert not (tmp_path / "loss.png").exists()  # the run stopped before its end


def test_weights_that_stop_being_finite_are_never_saved(tmp_path):
    data = windows()
    model = fresh_model()

    def poison_at_step_3(m, batch):  # the loss stays finite, but the weights get an inf
        if int(batch[2]) == 3:
            with torch.no_grad():
                m.transformer.wpe.weight[-1, 0] = float("inf")  # a position the windows never reach
        return next_token_loss(m, batch[:2])

    get_batch = lambda step, micro: (*data.batch(step, micro), torch.tensor(step))  # noqa: E731
    train(fresh_model(), None, get_batch, [], quick_config(max_steps=3, save_every=2), tmp_path / "ok", quiet=True,
          loss_fn=poison_at_step_3)
    with pytest.raises(TrainingDiverged, match="the weights are no longer finite numbers"):
        train(model, None, get_batch, [], quick_config(save_every=2), tmp_path / "bad", quiet=True,
              loss_fn=poison_at_step_3)
    _, _, meta = load_checkpoint(tmp_path / "bad")
    assert meta["step"] == 2


def test_pretrain_from_the_command_line_stops_cleanly_when_it_diverges(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog ran to the cat. " * 200)
    result = subprocess.run([sys.executable, "-m", "gpt_scratch", "pretrain", "--corpus", str(corpus), "--out",
                             str(tmp_path / "run"), "--preset", "tiny", "--lr", "1e4", "--grad-clip", "0",
                             "--vocab-size", "270", "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m gpt_scratch pretrain: error: training diverged at step "), result.stderr
    assert "--lr, now 10000" in lines[0] and "--grad-clip 1.0" in lines[0]
    assert "probability tensor" not in result.stderr and not (tmp_path / "run" / "metrics.json").exists()
    if (tmp_path / "run" / "checkpoint").exists():  # one saved before the loss broke: it must be finite
        model, _, _ = load_checkpoint(tmp_path / "run")
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_loss_function_trains_any_model_with_the_same_loop(tmp_path):
    """The loop with another loss: a model whose output is a single number per row learns a target."""
    from gpt_scratch.heads import GPTWithHead

    data = windows()
    mean_of_head = lambda m, batch: ((m(batch[0])[:, -1] - 1.0) ** 2).mean()  # noqa: E731 -- push the last score to 1
    model = GPTWithHead(fresh_model(), "value")
    history = train(model, None, data.batch, [data.batch(0)], quick_config(max_steps=30, lr=3e-2), tmp_path,
                    quiet=True, loss_fn=mean_of_head)
    assert history["train_loss"][0] == pytest.approx(1.0)  # the zero head says 0: (0 - 1)^2
    assert history["train_loss"][-1] < 0.05 and history["val_loss"][-1] < 0.05


def test_a_loss_function_can_log_numbers_and_on_eval_records_held_out_measures(tmp_path, monkeypatch):
    """(loss, {name: number}) is logged every step (the mean over micro-batches); on_eval runs in eval mode
    before the first step and at every validation point, and both survive a resume."""
    data = windows()

    def loss_with_stats(model, batch):
        loss = next_token_loss(model, batch)
        return loss, {"double": 2 * loss.item(), "first_id": float(batch[0][0, 0])}

    calls = []

    def on_eval(steps_done):
        calls.append((steps_done, model.training))
        return {"steps_squared": steps_done ** 2}

    model = fresh_model()
    history = train(model, None, data.batch, [], quick_config(max_steps=6, eval_every=4, save_every=3, grad_accum=2),
                    tmp_path / "full", quiet=True, loss_fn=loss_with_stats, on_eval=on_eval)
    assert history["double"] == pytest.approx([2 * loss for loss in history["train_loss"]])
    assert history["first_id"] == [(data.batch(step, 0)[0][0, 0].item() + data.batch(step, 1)[0][0, 0].item()) / 2
                                   for step in range(6)]  # the mean over the step's 2 micro-batches
    assert calls == [(0, False), (4, False), (6, False)] and model.training  # eval mode inside, training mode after
    assert history["eval_step"] == [0, 4, 6] and history["eval_steps_squared"] == [0, 16, 36]

    real_step = train_module.train_step

    def crash_at_step_4(model, optimizer, get_batch, step, *args):
        if step == 4:
            raise KeyboardInterrupt
        return real_step(model, optimizer, get_batch, step, *args)

    model = fresh_model()
    monkeypatch.setattr(train_module, "train_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(model, None, data.batch, [], quick_config(max_steps=6, eval_every=4, save_every=3, grad_accum=2),
              tmp_path / "cut", quiet=True, loss_fn=loss_with_stats, on_eval=on_eval)
    monkeypatch.undo()
    model = fresh_model()
    resumed = train(model, None, data.batch, [], quick_config(max_steps=6, eval_every=4, save_every=3, grad_accum=2),
                    tmp_path / "cut", resume=True, quiet=True, loss_fn=loss_with_stats, on_eval=on_eval)
    for key in ("train_loss", "double", "eval_step", "eval_steps_squared"):
        assert resumed[key] == history[key], key
