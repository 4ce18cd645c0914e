"""The chapter notebooks run top to bottom, and are committed with their outputs.

    python -m pytest -q tests/test_notebooks.py

Every chapters/*/*.ipynb runs in fast mode (GPT_SCRATCH_FAST=1: each notebook uses its small
sizes and takes seconds), with the notebook's own folder as working directory. A new chapter's
notebook is picked up by the glob, no list to update. A cell that raises fails the test with that
cell's number and traceback.

Where they run: one notebook in a real Jupyter kernel started by nbclient, as a student runs it.
The others in an IPython shell set up as that kernel sets up its own (the notebook's folder first on
sys.path, matplotlib's inline backend drawing every figure), in a process forked from one that has
already imported torch, the package and IPython (tests/tiny.py's forkserver): a new kernel spends
~6 s of CPU on those imports, and waits between cells, for each notebook.

The last tests read the committed files without running them: every code cell that has source
must have outputs, so a notebook cannot be committed unexecuted (run it in full mode and save it,
e.g. with nbclient, or "Restart kernel and run all" in Jupyter).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import pytest
from IPython.core.interactiveshell import InteractiveShell
from matplotlib_inline.backend_inline import configure_inline_support

from tiny import forkserver, settle_forked_process

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "chapters").glob("*/*.ipynb"))
IN_A_KERNEL = REPO / "chapters" / "ch01_tokenization" / "ch01.ipynb"  # the quickest; the others fork
NOTEBOOK_TIMEOUT_S = 240  # for the whole notebook in fast mode (each takes well under a minute)
INLINE = "module://matplotlib_inline.backend_inline"  # the backend a Jupyter kernel draws with
# One thread: fast mode's models are tiny, and on a busy machine (other tests, other jobs) two
# threads that keep waiting for each other can make a step many times slower.
FAST_ENV = {"GPT_SCRATCH_FAST": "1", "OMP_NUM_THREADS": "1"}


def notebook_id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def cells_of(path: Path) -> list[dict]:
    """The notebook's cells, read as the JSON it is, each source joined into one string. nbformat is
    imported only by the tests that need it: with jsonschema it takes ~3 s of CPU, which every pytest
    worker would pay while collecting this file."""
    return [{**cell, "source": "".join(cell["source"])} for cell in json.loads(path.read_text())["cells"]]


def test_a_notebook_runs_in_a_real_jupyter_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    for name, value in FAST_ENV.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    nb = nbformat.read(IN_A_KERNEL, as_version=4)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    # nbclient's timeout is per cell; giving each cell the time left makes it a per-notebook limit.
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        resources={"metadata": {"path": str(IN_A_KERNEL.parent)}})
    try:
        client.execute()
    except CellTimeoutError as err:
        pytest.fail(f"{notebook_id(IN_A_KERNEL)} ran past its {NOTEBOOK_TIMEOUT_S} s limit in fast mode:\n{err}",
                    pytrace=False)
    except CellExecutionError as err:  # the message holds the failing cell's source and traceback
        pytest.fail(f"{notebook_id(IN_A_KERNEL)}: a cell failed in fast mode:\n{err}", pytrace=False)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p != IN_A_KERNEL], ids=notebook_id)
def test_notebook_runs_in_fast_mode(path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="notebook-") as folder:
        out, err = Path(folder) / "stdout.txt", Path(folder) / "stderr.txt"
        env = {**os.environ, **FAST_ENV, "MPLBACKEND": INLINE}  # the kernel's backend, also for what a cell starts
        process = forkserver().Process(target=run_cells, args=(path, env, out, err))
        process.start()
        process.join(NOTEBOOK_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(f"{notebook_id(path)} ran past its {NOTEBOOK_TIMEOUT_S} s limit in fast mode", pytrace=False)
        if process.exitcode != 0:  # the end of the output: the failing cell's traceback, number and source
            pytest.fail(f"{notebook_id(path)} failed in fast mode (exit {process.exitcode}):\n"
                        f"{err.read_text()[-3000:]}\n{out.read_text()[-6000:]}", pytrace=False)


def run_cells(path: Path, env: dict, out: Path, err: Path) -> None:
    """In a forked process: every code cell of the notebook in order, in an IPython shell set up as a
    Jupyter kernel sets up its own; output into the files; exit 1 at the first cell that raises."""
    settle_forked_process(env, path.parent, out, err)
    sys.path.insert(0, "")  # the working directory first, as in a kernel: a notebook imports its chapter's scripts
    matplotlib.use(INLINE)
    shell = InteractiveShell.instance(colors="NoColor")
    configure_inline_support(shell, INLINE)  # each cell's figures drawn (PNG) and closed when it ends
    for index, cell in enumerate(cells_of(path)):
        if cell["cell_type"] == "code" and not shell.run_cell(cell["source"], store_history=True).success:
            print(f"\ncell {index} raised (its traceback above):\n{cell['source']}")  # the shell printed the traceback
            sys.exit(1)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_committed_notebook_has_outputs(path: Path) -> None:
    cells = cells_of(path)
    empty = [index for index, cell in enumerate(cells)
             if cell["cell_type"] == "code" and cell["source"].strip() and not cell.get("outputs")]
    assert not empty, (f"{notebook_id(path)}: code cells {empty} have no outputs; execute the notebook "
                       f"top to bottom (full mode) and save it with its outputs before committing")
    errors = [index for index, cell in enumerate(cells) if cell["cell_type"] == "code"
              and any(output.get("output_type") == "error" for output in cell.get("outputs", []))]
    assert not errors, f"{notebook_id(path)}: code cells {errors} were saved with an error output"


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no chapters/*/*.ipynb found"
    assert IN_A_KERNEL in NOTEBOOKS, f"{notebook_id(IN_A_KERNEL)}: the notebook run in a real kernel is missing"


def test_committed_notebooks_are_valid_version_4_notebooks() -> None:
    """What Jupyter checks when it opens one (nbformat's schema): a cell with a wrong field fails here."""
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        assert nb.nbformat == 4, f"{notebook_id(path)}: nbformat {nb.nbformat}, not 4"
        nbformat.validate(nb)
