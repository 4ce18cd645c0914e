"""Several processes, one training run (distributed.py): torchrun with 2 CPU processes (gloo) trains
the same model as one process, writes the files once, resumes, and refuses what it cannot split.

The one-process runs go through cli.main in this process; the two-process runs as two ranks forked
with torch already imported (tiny.two_ranks: what torchrun tells our code, without its new Pythons),
and once through a real `python -m torch.distributed.run --standalone --nproc_per_node=2 -m gpt_scratch ...`
(the DDP appendix's test trains through real torchrun too).
"""

import json

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from gpt_scratch import distributed
from gpt_scratch.cli import main
from gpt_scratch.data import ExampleBatches, TokenWindows
from gpt_scratch.grpo import GRPOConfig, draw_seed
from gpt_scratch.model import GPT
from gpt_scratch.ppo import PPOConfig, step_prompts
from gpt_scratch.train import StepLoss, TrainConfig, make_optimizer, train_step
from tiny import tiny_config, torchrun, two_ranks, write_world_corpus, write_yes_data

# float32: bf16 autocast (the default on a CPU that has it) would round 1 and 2 processes further apart
PRETRAIN = ["--preset", "tiny", "--vocab-size", "300", "--block-size", "32", "--max-steps", "12", "--eval-every", "4",
            "--save-every", "4", "--warmup-steps", "2", "--batch-size", "8", "--grad-accum", "2", "--device", "cpu",
            "--dtype", "float32", "--quiet"]
SFT = ["--preset", "tiny", "--max-steps", "6", "--eval-every", "3", "--save-every", "3", "--warmup-steps", "2",
       "--replay", "0", "--skip-before", "--n-eval", "8", "--device", "cpu", "--dtype", "float32", "--quiet"]
# A "killed" run: train_step stops the program at step 6, after the checkpoint of step 4
CRASH_AT_STEP_6 = """
import sys
import gpt_scratch.train as train_module
from gpt_scratch.cli import main

real_step = train_module.train_step

def crash_at_step_6(model, optimizer, get_batch, step, *args):
    if step == 6:
        sys.exit(3)
    return real_step(model, optimizer, get_batch, step, *args)

train_module.train_step = crash_at_step_6
sys.exit(main(sys.argv[1:]))
"""


def history(folder) -> dict:
    return json.loads((folder / "checkpoint" / "train_state.json").read_text())["history"]


def files_in(folder) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def assert_close_numbers(actual: list[float], expected: list[float]) -> None:
    """Equal up to float32 rounding: the two runs add the same numbers in another order."""
    torch.testing.assert_close(torch.tensor(actual, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32))


@pytest.fixture
def two_processes(monkeypatch):
    """This process as rank `rank` of 2, as torchrun would start it (no process group is joined)."""
    def become(rank: int) -> None:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
    return become


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_world_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    """The same pretraining in 1 process and in 2: {"one": folder, "two": folder}."""
    root = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(root / "one"), *PRETRAIN]) == 0
    result = two_ranks("pretrain", "--corpus", corpus, "--out", root / "two", *PRETRAIN)
    assert result.returncode == 0, result.stderr
    return {"one": root / "one", "two": root / "two"}


# --- the pieces, in one process ---------------------------------------------------------------------

def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    items = [1, 2, 3]
    assert distributed.share(items) == items and distributed.share(range(5)) == range(5)
    assert distributed.mean_over_ranks(2.5) == 2.5 and distributed.sum_over_ranks(7) == 7
    assert distributed.mean_of_each({"loss": 0.5, "reward": 1.0}) == {"loss": 0.5, "reward": 1.0}
    assert distributed.seed_of_rank(123) == 123  # one process samples as it always did
    model = GPT(tiny_config())
    assert distributed.wrap(model) is model
    distributed.start(torch.device("cpu"))
    distributed.barrier()
    assert not dist.is_initialized()  # nothing above touched torch.distributed
    distributed.stop()


def test_share_gives_each_rank_its_contiguous_part(two_processes, monkeypatch):
    two_processes(0)
    assert distributed.share(["a", "b", "c", "d"]) == ["a", "b"]
    two_processes(1)
    assert distributed.share(["a", "b", "c", "d"]) == ["c", "d"]
    assert list(distributed.share(range(10, 16))) == [13, 14, 15]
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.share(torch.arange(6)).tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"^a batch of 4 cannot be split evenly over 3 processes; use a multiple of 3$"):
        distributed.share([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"^a replay batch of 1 cannot"):
        distributed.share([1], what="replay batch")


def test_rl_stages_give_each_rank_its_own_prompts_and_random_numbers(two_processes, monkeypatch):
    """PPO: each rank rolls out its half of the step's sample; GRPO: each rank draws its own groups.
    Both sample with a seed of the rank's own, so two ranks never draw the same random numbers."""
    records = [{"instruction": f"Is {i} a number?", "input": "", "family": "facts"} for i in range(20)]
    cfg = PPOConfig(batch_size=8, minibatch_size=4)
    whole = step_prompts(records, cfg, step=3)  # one process
    assert distributed.seed_of_rank(123) == 123 and draw_seed(GRPOConfig(), 3, 0) == "0:3:0"
    two_processes(0)
    first = step_prompts(records, cfg, step=3)
    assert first == whole[:4] and distributed.seed_of_rank(123) == 123 and draw_seed(GRPOConfig(), 3, 0) == "0:3:0"
    two_processes(1)
    assert step_prompts(records, cfg, step=3) == whole[4:]
    assert distributed.seed_of_rank(123) == 123 + 1_000_000_007 and draw_seed(GRPOConfig(), 3, 0) == "0:3:0:rank 1"


def test_batch_sources_split_the_global_batch_between_the_ranks(two_processes, monkeypatch):
    windows = TokenWindows(torch.arange(200), block_size=8, batch_size=6, seed=0)
    pairs = ExampleBatches([(f"chosen {i}", f"rejected {i}") for i in range(10)], 4, 2, make_batch=list, seed=0)
    whole_windows, whole_pairs = windows.batch(3, 1), pairs.batch(3, 1)  # one process: the whole batch
    shares = []
    for rank in (0, 1):
        two_processes(rank)
        shares.append((windows.batch(3, 1), pairs.batch(3, 1)))
    (x0, y0), first = shares[0]
    (x1, y1), second = shares[1]
    assert x0.shape == (3, 8) and torch.equal(torch.cat([x0, x1]), whole_windows[0])
    assert torch.equal(torch.cat([y0, y1]), whole_windows[1])
    # Examples are shared out before make_batch: each rank gets whole pairs, never a chosen row without its rejected
    assert first + second == whole_pairs and all(isinstance(pair, tuple) for pair in first + second)


def test_no_sync_exchanges_the_gradients_once_per_step(tmp_path, monkeypatch):
    """Under DDP the micro-batches before the last add up their gradients locally (no_sync): the
    all-reduce runs once, in the step's last backward, and the step equals one without DDP."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(123)
    data = TokenWindows(torch.randint(0, 64, (50,)).repeat(20), block_size=16, batch_size=4, seed=0)
    cfg = TrainConfig(max_steps=1, batch_size=4, grad_accum=3, lr=1e-2, warmup_steps=0, dtype="float32")
    plain, wrapped = (GPT(tiny_config()) for _ in range(2))
    wrapped.load_state_dict(plain.state_dict())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(StepLoss(wrapped))
        exchanges, seen = [], []

        def counting_allreduce(state, bucket):
            exchanges.append(bucket.index())
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_allreduce)

        def get_batch(step, micro_step):
            seen.append(len(exchanges))  # how many all-reduces ran before this micro-batch
            return data.batch(step, micro_step)

        train_step(wrapped, make_optimizer(wrapped, cfg), get_batch, 0, cfg, torch.device("cpu"), ddp=ddp)
    finally:
        dist.destroy_process_group()
    train_step(plain, make_optimizer(plain, cfg), data.batch, 0, cfg, torch.device("cpu"))
    assert seen == [0, 0, 0] and len(exchanges) > 0  # none during micro-batches 0 and 1; then the last one's
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(p, q, msg=name)


# --- two processes (ranks 0 and 1) ------------------------------------------------------------------

def test_two_processes_train_the_model_one_process_trains(pretrained):
    """The same global batch (8 windows, 2 micro-batches): each rank reads 4 windows of each micro-batch."""
    one, two = history(pretrained["one"]), history(pretrained["two"])
    assert two["step"] == one["step"] == list(range(12)) and two["val_step"] == one["val_step"] == [3, 7, 11]
    assert_close_numbers(two["train_loss"], one["train_loss"])  # rank 0's history: the mean over both ranks
    assert_close_numbers(two["val_loss"], one["val_loss"])
    assert two["tokens"] == one["tokens"] == 12 * 2 * 8 * 32  # summed over the ranks
    weights = [load_file(str(pretrained[n] / "checkpoint" / "model.safetensors")) for n in ("one", "two")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # Rank 0 alone wrote, and it wrote what one process writes: no file twice, none half-written
    assert files_in(pretrained["two"]) == files_in(pretrained["one"]) == {
        "loss.png", "samples.txt", "metrics.json", "tokenizer.tiktoken", "tokenizer.json", "checkpoint/config.json",
        "checkpoint/model.safetensors", "checkpoint/tokenizer.tiktoken", "checkpoint/tokenizer.json",
        "checkpoint/train_state.json", "checkpoint/optimizer.pt"}


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(corpus, pretrained, tmp_path):
    script = tmp_path / "crash_at_step_6.py"
    script.write_text(CRASH_AT_STEP_6)
    args = ["pretrain", "--corpus", corpus, "--out", tmp_path / "cut", *PRETRAIN]
    assert two_ranks(script, *args).returncode != 0
    assert json.loads((tmp_path / "cut" / "checkpoint" / "train_state.json").read_text())["step"] == 4
    assert not (tmp_path / "cut" / "metrics.json").exists()
    result = two_ranks(*args, "--resume")  # every rank loads the checkpoint of step 4
    assert result.returncode == 0, result.stderr
    resumed, full = history(tmp_path / "cut"), history(pretrained["two"])
    assert resumed["step"] == full["step"] and resumed["val_step"] == full["val_step"]
    assert resumed["train_loss"] == full["train_loss"] and resumed["val_loss"] == full["val_loss"]
    weights = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    for name, tensor in load_file(str(pretrained["two"] / "checkpoint" / "model.safetensors")).items():
        assert torch.equal(weights[name], tensor), name


def test_sft_in_two_processes_equals_gradient_accumulation_in_one(pretrained, tmp_path):
    """2 processes at batch 8 = 1 process at batch 4 x 2 micro-batches: the same 8 examples per step,
    split the same way, and each rank's (each micro-batch's) mean loss averaged. One process at batch 8
    would differ a little: its loss is the mean over all answer tokens of the 8 examples, and 4 examples
    with longer answers weigh more there than in the mean of two means."""
    data = write_yes_data(tmp_path / "data", n_train=48, n_test=8)
    common = ["sft", "--base", pretrained["one"], "--data", data, *SFT]
    assert main([*map(str, common), "--out", str(tmp_path / "one"), "--batch-size", "4", "--grad-accum", "2"]) == 0
    result = two_ranks(*common, "--out", tmp_path / "two", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    assert_close_numbers(two["train_loss"], one["train_loss"])
    assert two["tokens"] == one["tokens"]
    weights = [load_file(str(tmp_path / n / "checkpoint" / "model.safetensors")) for n in ("one", "two")]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # The judge ran once, on rank 0, and the report is complete
    assert files_in(tmp_path / "two") == files_in(tmp_path / "one")
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["test_examples"] == 8 and metrics["steps"] == 6


# --- what cannot be split: exit 2, one line ----------------------------------------------------------

def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--batch-size", "3"], "pretrain: error: --batch-size 3 cannot be split over 2 processes: use a "
                                        "multiple of 2; see --help"),
    (["reward", "--batch-size", "5"], "reward: error: --batch-size 5 cannot be split over 2 processes"),
    (["ppo", "--preset", "tiny", "--batch-size", "6", "--minibatch-size", "3"],
     "ppo: error: --minibatch-size 3 cannot be split over 2 processes: use a multiple of 2"),
    (["grpo", "--preset", "tiny", "--batch-size", "12", "--group-size", "4", "--minibatch-size", "4"],
     "grpo: error: --batch-size 12 / --group-size 4 = 3 groups per step cannot be split over 2 processes: use a "
     "multiple of 2 groups"),
    (["grpo", "--preset", "tiny", "--batch-size", "12", "--group-size", "3", "--minibatch-size", "3"],
     "grpo: error: --minibatch-size 3 cannot be split over 2 processes"),
    (["generate"], "generate: error: generate does not run in several processes"),
])
def test_what_two_processes_cannot_do_is_one_line_and_exit_2(capsys, two_processes, tmp_path, argv, message):
    two_processes(0)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path)] if argv[0] != "generate" else argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(error_lines(err)) == 1 and message in err, err
    assert not dist.is_initialized() and not any(tmp_path.iterdir())


def test_sft_replay_must_split_too(capsys, two_processes, pretrained, tmp_path):
    two_processes(0)
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--base", str(pretrained["one"]), "--data", str(tmp_path), "--out", str(tmp_path / "out"),
              "--preset", "tiny", "--replay", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(error_lines(err)) == 1, err
    assert "--replay 1 cannot be split over 2 processes: use a multiple of 2" in err


def test_torchrun_with_a_batch_it_cannot_split_prints_one_line(corpus, tmp_path):
    result = torchrun("pretrain", "--corpus", corpus, "--out", tmp_path, "--preset", "tiny", "--batch-size", "3")
    ours = [line for line in result.stderr.splitlines() if "gpt_scratch pretrain: error:" in line]
    assert result.returncode != 0 and ours == ["python -m gpt_scratch pretrain: error: --batch-size 3 cannot be split "
                                               "over 2 processes: use a multiple of 2; see --help"], result.stderr
    assert "exitcode  : 2" in result.stderr  # torchrun's own report names the processes' exit status
    assert not any(tmp_path.iterdir())
