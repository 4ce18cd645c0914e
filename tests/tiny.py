"""Tiny configs shared by the tests: models of a few thousand parameters keep the suite fast."""

import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpt_scratch.model import GPTConfig, llama_config
from gpt_scratch.world.corpus import build_world, generate_corpus

REPO = Path(__file__).resolve().parents[1]
GPT2_TIKTOKEN = REPO.parent / "shared" / "data" / "gpt2.tiktoken"  # reference data beside the clone


def load_script(path: str, name: str | None = None):
    """A chapter's or an exercise's script (a path under the repository) imported as a module, for its tests."""
    spec = importlib.util.spec_from_file_location(name or Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> GPTConfig:
    settings = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    settings.update(overrides)
    return GPTConfig(**settings)


# The two layouts every stage's main test runs on: GPT-2's and the modern one (chapter 12: RMSNorm,
# RoPE, SwiGLU, grouped-query attention, no biases, an untied head), so that a change that breaks
# either one fails.
LAYOUTS = ("gpt2", "llama")


def layout_config(layout: str, **settings) -> GPTConfig:
    """GPTConfig(**settings) in GPT-2's layout, or llama_config(**settings)."""
    return llama_config(**settings) if layout == "llama" else GPTConfig(**settings)


def write_world_corpus(folder, characters=30_000):
    """A small corpus of the embedded world (seed 0) in folder/corpus.txt: enough text for a tiny pretraining."""
    path = folder / "corpus.txt"
    path.write_text(generate_corpus(build_world(0), characters, 0), encoding="utf-8")
    return path


def write_yes_data(folder, n_train=64, n_test=16):
    """A task a tiny model learns in seconds: the answer is always 'yes'."""
    folder.mkdir(parents=True, exist_ok=True)
    def records(n, split):
        return [{"id": f"{split}-{i}", "family": "facts", "level": 1, "instruction": f"Is {i} a number?",
                 "input": "", "output": "yes", "answer": "yes", "unseen": False} for i in range(n)]
    for split, n in (("train", n_train), ("val", 8), ("test", n_test)):
        (folder / f"sft_{split}.json").write_text(json.dumps(records(n, split)))
    return folder


def torchrun(*argv) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m gpt_scratch argv...` (or a script: argv[0] ending in .py),
    with this checkout's gpt_scratch; CPU processes, gloo."""
    target = [str(argv[0])] if str(argv[0]).endswith(".py") else ["-m", "gpt_scratch", str(argv[0])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*launcher, *target, *map(str, argv[1:])], capture_output=True, text=True, env=env,
                          timeout=180)


def forkserver() -> multiprocessing.context.BaseContext:
    """The processes of two_ranks(), cli_in_a_forked_process() and the notebook test are forked from
    one server process (per pytest worker) that has imported these once: gpt_scratch.cli imports
    torch and every stage; torch._dynamo is imported by the first optimizer a process builds
    (torch.optim wraps add_param_group with it), 1-3 s of CPU; IPython's shell and matplotlib's
    inline backend are what a notebook runs in."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gpt_scratch.cli", "torch._dynamo", "IPython.core.interactiveshell",
                                    "matplotlib_inline.backend_inline"])  # when the server starts
    return context


def two_ranks(*argv) -> subprocess.CompletedProcess:
    """`python -m gpt_scratch argv...` (or a script: argv[0] ending in .py) as ranks 0 and 1 of 2: what
    torchrun does for our code (tell each process RANK, LOCAL_RANK, WORLD_SIZE and where the group
    meets, MASTER_ADDR and MASTER_PORT), without torchrun's three new Pythons: each would spend
    ~5 s of CPU importing torch, most of a tiny run. The ranks are forked from forkserver() instead,
    with this process's environment and working directory. returncode: the first failing rank's
    exit code (0 when both succeed); stdout and stderr: rank 0's, then rank 1's. A rank still running
    10 s after the other failed is stopped (it would wait for its peer forever), as torchrun does.
    A forked rank ends with os._exit (multiprocessing's way), skipping the interpreter's shutdown;
    test_distributed.py and the DDP appendix's test still run the real torchrun, shutdown included."""
    argv = [str(arg) for arg in argv]
    with socket.socket() as probe:  # a free port for the group to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = forkserver()
    with tempfile.TemporaryDirectory(prefix="two-ranks-") as folder:
        logs = [(Path(folder) / f"rank{rank}.out", Path(folder) / f"rank{rank}.err") for rank in (0, 1)]
        processes = []
        for rank in (0, 1):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            process = context.Process(target=run_command, args=(argv, env, os.getcwd(), *logs[rank]))
            process.start()
            processes.append(process)
        wait_for_all(processes, timeout=180)
        codes = [process.exitcode for process in processes]
        return subprocess.CompletedProcess(["two_ranks", *argv], next((code for code in codes if code != 0), 0),
                                           "".join(out.read_text() for out, _ in logs),
                                           "".join(err.read_text() for _, err in logs))


def cli_in_a_forked_process(command: list, **run_options) -> subprocess.CompletedProcess:
    """A stand-in for subprocess.run([sys.executable, "-m", "gpt_scratch", stage, ...], capture_output=True,
    text=True) (what compare and compare-alignment run each method with): the same command line and
    environment, in a process forked from forkserver() instead of a new Python, which would spend
    ~5 s of CPU importing torch and building its first optimizer, most of a tiny stage. A test that
    patches it in checks the comparison; test_compare_alignment.py also runs one real process."""
    assert [str(part) for part in command[:3]] == [sys.executable, "-m", "gpt_scratch"], command
    assert run_options == {"capture_output": True, "text": True}, run_options
    argv = [str(arg) for arg in command[3:]]
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as folder:
        out, err = Path(folder) / "stdout.txt", Path(folder) / "stderr.txt"
        process = forkserver().Process(target=run_command, args=(argv, dict(os.environ), os.getcwd(), out, err))
        process.start()
        wait_for_all([process], timeout=180)
        return subprocess.CompletedProcess(command, process.exitcode, out.read_text(), err.read_text())


def wait_for_all(processes: list, timeout: float) -> None:
    """Wait until every process has exited; once one has failed, give the others 10 s more, then stop them."""
    deadline = time.monotonic() + timeout
    while any(process.is_alive() for process in processes) and time.monotonic() < deadline:
        multiprocessing.connection.wait([process.sentinel for process in processes if process.is_alive()], timeout=1)
        if any(process.exitcode not in (None, 0) for process in processes):
            deadline = min(deadline, time.monotonic() + 10)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()


def run_command(argv: list[str], env: dict, cwd: str, out: Path, err: Path) -> None:
    """In a forked process (a rank of two_ranks, or cli_in_a_forked_process): the command line, a script
    or `python -m gpt_scratch`'s arguments, with its output in files; its exit code is the process's."""
    settle_forked_process(env, cwd, out, err)
    if argv[0].endswith(".py"):
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")  # the script ends with sys.exit(main(...))
    else:
        from gpt_scratch.cli import main
        sys.exit(main(argv))


def settle_forked_process(env: dict, cwd: str | Path, out: Path, err: Path) -> None:
    """In a process forked from forkserver(): the caller's environment and working directory (the
    server's are those of when it started), and stdout and stderr into these files."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for stream, path in ((1, out), (2, err)):  # the file descriptors themselves, so C++ output is kept too
        with open(path, "w") as file:
            os.dup2(file.fileno(), stream)


def fingerprint_script(module: str, before_main: str = "") -> str:
    """A script for two_ranks (or torchrun): `python -m gpt_scratch` whose RL stage (module ppo or grpo)
    writes, after every step, a hash of the weights of each rank's models (the policy, and the value
    model or the reference) to $FINGERPRINTS/rank<N>.txt; with $CRASH_AT_CALL = n it exits at its n-th
    step instead.
    before_main: more lines to run first (e.g. a monkeypatch)."""
    return f"""
import hashlib, os, sys
from pathlib import Path
import torch
import gpt_scratch.{module} as stage
from gpt_scratch import distributed
from gpt_scratch.cli import main

real_step, calls = stage.{module}_step, []

def step_and_fingerprint(policy, other, *args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ.get("CRASH_AT_CALL", "0")):
        sys.exit(3)
    metrics = real_step(policy, other, *args, **kwargs)
    weights = b"".join(p.detach().numpy().tobytes() for model in (policy, other) for p in model.parameters())
    with open(Path(os.environ["FINGERPRINTS"]) / f"rank{{distributed.rank()}}.txt", "a") as file:
        file.write(hashlib.sha256(weights).hexdigest() + "\\n")
    return metrics

stage.{module}_step = step_and_fingerprint
{before_main}
sys.exit(main(sys.argv[1:]))
"""


class FixedLogits(torch.nn.Module):
    """A stand-in policy whose next-token logits are the same at every position (e.g. [2, 1, 0]), so that its
    log-probabilities are known by hand. A zero parameter is added to them: an optimizer has something to step."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.shift = torch.nn.Parameter(torch.zeros(len(logits)))

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return (self.logits + self.shift).expand(*x.shape, -1)


class TokenTable(torch.nn.Module):
    """A stand-in policy whose next-token logits depend on the input token only: logits[b, t] = table[x[b, t]]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone().float())

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.table[x]


class PositionValues(torch.nn.Module):
    """A stand-in value model: value[b, t] = 0.5 * t + 0.1 * x[b, t], so a value read one position off shows."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        positions = torch.arange(x.shape[1], dtype=torch.float32)
        return 0.5 * positions + 0.1 * x.float() + self.shift
