"""Shared pieces of the exercise tests, which grade a folder of exercise scripts.

These tests run only when GPT_SCRATCH_EXERCISES names the folder to grade (the one holding
ch01/, ch02/, ...); the grader sets it:
    python -m gpt_scratch grade --chapter 1            (or by hand:)
    GPT_SCRATCH_EXERCISES=solutions python -m pytest tests/exercises/test_ch01.py
The normal test run (`python -m pytest`) does not collect them: untouched exercises fail on
purpose. Each test function grades one exercise: test_ex_<chapter>_<number>_<task>.
"""

import importlib.util
import os
import signal
from pathlib import Path

import pytest

FOLDER = os.environ.get("GPT_SCRATCH_EXERCISES")
TIME_LIMIT = int(os.environ.get("GPT_SCRATCH_EXERCISE_TIMEOUT", "60"))  # seconds per exercise

if not FOLDER:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def load_exercise():
    """load_exercise("ch01/ex1_bpe.py") -> the module imported from the graded folder, by path."""
    loaded = {}

    def load(relative_path: str):
        if not FOLDER:
            pytest.skip("set GPT_SCRATCH_EXERCISES to the folder to grade (or use python -m gpt_scratch grade)")
        path = Path(FOLDER) / relative_path
        if relative_path not in loaded:
            if not path.is_file():
                raise FileNotFoundError(f"no {relative_path} in {FOLDER}")
            name = "graded_" + relative_path.replace("/", "_").removesuffix(".py")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as err:  # e.g. a syntax error: one line that names the file and the problem
                raise ImportError(f"could not import {relative_path}: {type(err).__name__}: {err}") from err
            loaded[relative_path] = module
        return loaded[relative_path]

    return load


@pytest.fixture(autouse=True)
def time_limit():
    """Fail an exercise that runs longer than TIME_LIMIT seconds (an endless loop) instead of hanging."""
    if not hasattr(signal, "SIGALRM"):  # Windows has no alarm signal; the grader's overall timeout remains
        yield
        return

    def too_slow(signum, frame):
        raise TimeoutError(f"took longer than {TIME_LIMIT} s; is there an endless loop?")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
