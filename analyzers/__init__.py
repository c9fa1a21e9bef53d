"""Run artifacts: the recorder that writes a run folder, its statistics, and the loader.

    from analyzers import load_run
    run = load_run("runs/<run id>")
"""

from analyzers.runfolder import Run, latest_run, load_run

__all__ = ["Run", "latest_run", "load_run"]
