"""Atomic file writes: a file is either the old one or the complete new one, never half.

    write_atomic("runs/x/notes.txt", text)              # text, UTF-8, "\\n" line ends
    with atomic_path("runs/x/model.safetensors") as tmp:
        save_file(tensors, str(tmp))                     # any writer that takes a path

Both write a temporary file next to the target (same folder, so the same disk) and rename it
over the target only once writing has finished; os.replace is atomic. If the writer raises --
or the run is stopped with Ctrl-C -- the temporary file is deleted and the old file is left
as it was. (A checkpoint is a folder, not a file: checkpoint.py swaps whole folders.)
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces path, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(handle)  # the writer opens the file itself, by name
    temp = Path(temp)
    try:
        yield temp
        os.chmod(temp, 0o644)  # mkstemp makes the file private; our files are for everyone to read
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text (UTF-8, "\\n" line ends on every system) to path atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)
    return path
