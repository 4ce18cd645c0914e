"""Where a measured figure comes from: the command that made it (here) and the machine it ran on
(`hardware.measured_on`).

    {"command": command_line(), "measured_on": measured_on()}
    -> {"command": "python exercises/ch08/ablations.py --steps 50",
        "measured_on": {"device": "AMD EPYC 7B13", "dtype": "bf16", "torch": "2.13.0", "date": "2026-12-06"}}

Every results file the course commits (a run's summary.json, an ablation's results.json) carries
both, so that a figure in a README can be traced to the command and machine that produced it.
"""

import sys
from pathlib import Path


def shown_path(path: str | Path) -> str:
    """A path as a reader should see it: relative to the current folder when it lies inside it, so that
    no machine's absolute path is written into a results file.

    Example (run from /home/ana/gpt-scratch): "/home/ana/gpt-scratch/runs/default" -> "runs/default"
    """
    path = Path(path)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def command_line() -> str:
    """How this process was started, as a user would type it: the script's path relative to the folder it
    was run from (never a machine's absolute path), then its arguments."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if script.is_absolute():
        script = Path(shown_path(script)) if script.is_relative_to(Path.cwd()) else Path(script.name)
    return " ".join(["python", str(script), *sys.argv[1:]])
