"""Several processes, one training run: data parallel training with PyTorch's DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 -m gpt_scratch pretrain --corpus data/corpus.txt --device cpu
    torchrun --standalone --nproc_per_node=4 -m gpt_scratch sft --preset gpt2 ...   # 4 GPUs of one machine

    start(device)                 # join the other processes (nothing to do for one process)
    x, y = share(global_batch)    # this process's part of the step's batch
    model = wrap(step_loss)       # DDP: gradients averaged over the processes during backward
    mean_over_ranks(loss.item())  # the loss of the whole batch, for the log
    stop()

How data parallel training works. torchrun starts N copies of the same program, the *ranks*
0..N-1, and tells each its number (the environment variables RANK, LOCAL_RANK and WORLD_SIZE).
Every rank holds the whole model, with the same initial weights. At each step every rank reads
its own 1/N of the batch, computes the loss and the gradients of that share, and during
backward DistributedDataParallel (DDP) averages the gradients over the ranks (an all-reduce:
every rank sends its gradients and receives the mean). So every rank holds the same gradient,
the one of the whole batch, takes the same optimizer step and keeps the same weights: N
processes train one model, N times as many examples per second where there are N devices.

What follows from that:
- --batch-size is the *global* batch: each rank reads batch_size / N of it, so the same flags
  train the same model with 1 process or N (the batch size must be a multiple of N).
- With gradient accumulation the gradients only need averaging once per step: all micro-batches
  but the last run under ddp.no_sync(), which adds them up locally and exchanges nothing.
- Every rank would write the same files: only rank 0 writes checkpoints, plots, samples and
  metrics, and only rank 0 validates; the others wait at a barrier where they read what it wrote.
- Communication goes through a backend: gloo between CPU processes, NCCL between CUDA GPUs
  (each rank takes the GPU of its LOCAL_RANK). With one process nothing here calls
  torch.distributed at all: a plain `python -m gpt_scratch` run is exactly what it was.
"""

import gc
import os

import torch
import torch.distributed as dist

from gpt_scratch.args import UsageError


def rank() -> int:
    """This process's number, 0..world_size() - 1 (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's number on its own machine: which GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def check_split(flag: str, value: int) -> None:
    """Under torchrun a batch is shared out over the processes: its size must be a multiple of their number."""
    processes = world_size()
    if value % processes != 0:
        raise UsageError(f"{flag} {value} cannot be split over {processes} processes: use a multiple of {processes}")


def start(device: torch.device) -> None:
    """Join the process group: gloo on CPU, NCCL on CUDA (each rank on GPU LOCAL_RANK). One process: nothing."""
    if world_size() == 1 or dist.is_initialized():
        return
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"several processes train on cpu or cuda, not {device.type}; give --device cpu or cuda")
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise ValueError(f"process {local_rank()} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                             f"visible); start at most that many processes per machine (--nproc_per_node)")
        torch.cuda.set_device(local_rank())  # before the group starts: NCCL binds each rank to its GPU
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop() -> None:
    """Leave the process group (if one was started).

    The garbage collector runs first: a DistributedDataParallel wrapper sits in reference cycles,
    so it can outlive the stage that made it, holding on to the process group. Left for the
    interpreter's shutdown, the group's last reference went with it there, and a gloo process
    aborted now and then ("terminate called without an active exception", 4 of 19 two-process
    GRPO test runs on a 2-core Xeon; 0 of 10 with the collection first).
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if world_size() > 1:
        dist.barrier()


def share(items, what: str = "batch"):
    """This rank's contiguous part of a list, range or tensor whose length the world size divides.

    Example with 2 ranks: share([a, b, c, d]) is [a, b] on rank 0 and [c, d] on rank 1.
    """
    n, size = len(items), world_size()
    if n % size != 0:
        raise ValueError(f"a {what} of {n} cannot be split evenly over {size} processes; use a multiple of {size}")
    part = n // size
    return items[rank() * part: (rank() + 1) * part]


def sum_over_ranks(x: float) -> float:
    """The sum of x over all ranks (x itself for one process)."""
    if world_size() == 1:
        return x
    total = torch.tensor(float(x), dtype=torch.float64, device=device_of_group())
    dist.all_reduce(total)  # the default operation: sum
    return total.item()


def mean_over_ranks(x: float) -> float:
    """The mean of x over all ranks, e.g. each rank's loss on its share -> the loss of the whole batch."""
    return x if world_size() == 1 else sum_over_ranks(x) / world_size()


def mean_of_each(values: dict[str, float]) -> dict[str, float]:
    """Each number's mean over the ranks, in one exchange (the dict itself for one process).

    Every rank must pass the same names in the same order, e.g. a step's metrics:
    {"loss": 0.5, "reward": 1.0} on rank 0 and {"loss": 0.7, "reward": 0.0} on rank 1 -> {"loss": 0.6, "reward": 0.5}.
    """
    if world_size() == 1:
        return values
    numbers = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device_of_group())
    dist.all_reduce(numbers)
    return {name: total / world_size() for name, total in zip(values, numbers.tolist())}


def seed_of_rank(seed: int) -> int:
    """A seed of this rank's own, so that the ranks do not draw the same random numbers: the seed
    itself on rank 0 (and so for one process), a large distinct offset on each other rank."""
    return seed + 1_000_000_007 * rank()


def device_of_group() -> torch.device:
    """Where the group's tensors must be: NCCL only moves GPU tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module in DistributedDataParallel for several processes; the module itself for one.

    DDP copies rank 0's weights to every rank when it is built, and from then on averages the
    gradients over the ranks in every backward pass (except under its no_sync()).
    """
    if world_size() == 1:
        return module
    on_gpu = next(module.parameters()).device.type == "cuda"
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[local_rank()] if on_gpu else None)
