"""Run artifacts: the recorder that writes a run folder, its statistics, and the loaders.

    from analyzers import load_run, load_sweep
    run = load_run("runs/<run id>")
    sweep = load_sweep("runs/sweeps/<sweep id>")
"""

from analyzers.runfolder import Run, latest_run, load_run
from analyzers.sweepfolder import Sweep, load_sweep

__all__ = ["Run", "Sweep", "latest_run", "load_run", "load_sweep"]
