"""The chapter notebooks run top to bottom, and are committed with their outputs.

    python -m pytest -q tests/test_notebooks.py

Every chapters/*/*.ipynb is executed in a fresh Jupyter kernel by nbclient, with the notebook's
own folder as working directory and GPT_SCRATCH_FAST=1 in the kernel's environment, so each
notebook uses its small sizes and takes seconds. A new chapter's notebook is picked up by the
glob, no list to update. A cell that raises fails the test with that cell's source and error.

The second test reads the committed files without running them: every code cell that has source
must have outputs, so a notebook cannot be committed unexecuted (run it in full mode and save it,
e.g. with nbclient, or "Restart kernel and run all" in Jupyter).
"""

import os
import time
from pathlib import Path

import nbclient
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError, CellTimeoutError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "chapters").glob("*/*.ipynb"))
NOTEBOOK_TIMEOUT_S = 240  # for the whole notebook in fast mode (each takes well under a minute)


def notebook_id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_runs_in_fast_mode(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT_SCRATCH_FAST", "1")  # the kernel inherits this process's environment
    # One thread: fast mode's models are tiny, and on a busy machine (other tests, other jobs) two
    # threads that keep waiting for each other can make a step many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    # nbclient's timeout is per cell; giving each cell the time left makes it a per-notebook limit.
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellTimeoutError as err:
        pytest.fail(f"{notebook_id(path)} ran past its {NOTEBOOK_TIMEOUT_S} s limit in fast mode:\n{err}",
                    pytrace=False)
    except CellExecutionError as err:  # the message holds the failing cell's source and traceback
        pytest.fail(f"{notebook_id(path)}: a cell failed in fast mode:\n{err}", pytrace=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_committed_notebook_has_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    empty = [index for index, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and cell.source.strip() and not cell.get("outputs")]
    assert not empty, (f"{notebook_id(path)}: code cells {empty} have no outputs; execute the notebook "
                       f"top to bottom (full mode) and save it with its outputs before committing")
    errors = [index for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
              and any(output.get("output_type") == "error" for output in cell.get("outputs", []))]
    assert not errors, f"{notebook_id(path)}: code cells {errors} were saved with an error output"


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no chapters/*/*.ipynb found"
