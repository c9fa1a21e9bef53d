"""Run a sweep on a Dask client: grid, random or Optuna search, or walk-forward windows.

The client process plans the cells, submits them, and writes each finished row at once
(``ResultStore``), so an interrupted sweep loses at most the cells still running; started
again, it skips every key already on disk. Workers run ``sweeps.cell.run_cell_task``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ratchet.common.config import Settings
from ratchet.common.errors import RatchetError, UserError
from sweeps.cell import CellTask, cell_key, run_cell_task
from sweeps.objective import dsr_of, score
from sweeps.plan import SweepPlan
from sweeps.store import ResultStore
from sweeps.walkforward import choose

#: progress(done, total): called after every finished (or reused) cell.
Progress = Callable[[int, int], None]


class SweepError(RatchetError):
    """The sweep could not finish (a cell kept killing workers, the cluster went away)."""

    exit_code = 1


@dataclass
class SweepOutcome:
    """What ``run_sweep`` did and found."""

    folder: Path
    results: pd.DataFrame
    computed: int
    reused: int
    seconds: float
    best: Mapping[str, Any] | None
    dsr: float | None
    n_trials: int
    walk_forward: dict[str, Any] | None = None
    oos_dir: Path | None = None


def _settle(fut: Any) -> dict[str, Any]:
    """A task's row; user errors (bad data on a worker) pass through as they are."""
    from distributed import KilledWorker

    try:
        return fut.result()
    except UserError:
        raise
    except KilledWorker as exc:
        raise SweepError(f"a cell killed {exc.args[1] if len(exc.args) > 1 else 'its'} "
                         "worker(s) repeatedly (out of memory?): give workers more memory or "
                         "use fewer symbols per sweep") from None


class Sweeper:
    """Submits a plan's cells to a Dask client and records the rows."""

    def __init__(self, client: Any, plan: SweepPlan, store: ResultStore,
                 progress: Progress | None = None) -> None:
        self.client = client
        self.plan = plan
        self.store = store
        self.progress = progress or (lambda done, total: None)
        self.rows: dict[str, dict[str, Any]] = {}
        self.computed = 0
        self.reused = 0

    # ---------------------------------------------------------------------- building blocks

    def task(self, params: dict[str, Any], phase: str, window: int, start_ns: int | None,
             end_ns: int | None, settings: Settings | None = None,
             extra: dict[str, Any] | None = None) -> CellTask:
        """A task with its content key."""
        settings = settings or self.plan.base.replace(**params)
        key = cell_key(self.plan.spec.fingerprint, self.plan.spec.code_version, settings, phase,
                       start_ns, end_ns)
        return CellTask(key, phase, window, settings, params, start_ns, end_ns,
                        keep_frames=phase == "test", extra=extra or {})

    def submit(self, task: CellTask) -> Any:
        """Send one task; its Dask key is the cell key (a resubmitted cell is not doubled)."""
        return self.client.submit(run_cell_task, self.plan.spec, task, key=f"cell-{task.key}",
                                  pure=False)

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """Persist a finished row and keep it (without frames) in memory."""
        self.store.write_row(row)
        self.rows[row["key"]] = row
        self.computed += 1
        return row

    def scored(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with this sweep's objective and qualification."""
        value, ok = score(row, self.plan.objective, self.plan.min_trades)
        return {**row, "objective": value, "qualified": ok}

    # ------------------------------------------------------------------------------ drivers

    def run(self) -> SweepOutcome:
        """Run the plan to the end and write ``results.parquet`` (and the OOS run folder)."""
        t0 = time.perf_counter()
        self.rows = self.store.rows()
        wf = None
        oos_dir = None
        if self.plan.windows:
            wf, oos_dir = self._walk_forward()
        elif self.plan.search == "optuna":
            self._optuna()
        else:
            self._cells()
        results = self._results()
        best, dsr, n = None, None, 0
        pool = results[results["phase"] == "cell"] if not results.empty else results
        if not pool.empty:
            records = pool.to_dict("records")
            best = choose(records)
            n = len(records)
            dsr = dsr_of(records, best) if best is not None else None
        return SweepOutcome(self.plan.folder, results, self.computed, self.reused,
                            time.perf_counter() - t0, best, dsr, n, wf, oos_dir)

    def _run_tasks(self, tasks: list[CellTask], total: int, done0: int) -> None:
        done = done0
        self.progress(done, total)
        if not tasks:
            return
        from distributed import as_completed

        futures = [self.submit(t) for t in tasks]
        try:
            for fut in as_completed(futures, loop=self.client.loop):
                self.record(_settle(fut))
                done += 1
                self.progress(done, total)
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def cell_tasks(self) -> dict[str, CellTask]:
        """A plain sweep's tasks by key (cells giving the same settings count once)."""
        tasks: dict[str, CellTask] = {}
        for params in self.plan.cells:
            t = self.task(params, "cell", -1, self.plan.start_ns, None)
            tasks.setdefault(t.key, t)
        return tasks

    def needs_cluster(self) -> bool:
        """False when a finished grid/random sweep is run again: nothing to compute."""
        if self.plan.windows:
            return True
        done = self.store.done_keys()
        if self.plan.search == "optuna":
            return len(done) < int(self.plan.trials or 0)
        return any(k not in done for k in self.cell_tasks())

    def _cells(self) -> None:
        tasks = self.cell_tasks()
        todo = [t for k, t in tasks.items() if k not in self.rows]
        self.reused = len(tasks) - len(todo)
        self._run_tasks(todo, len(tasks), self.reused)

    def _optuna(self) -> None:
        import optuna
        from distributed import as_completed

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = self.plan.space
        budget = int(self.plan.trials or 0)
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=self.plan.seed))
        dists = {p.name: _distribution(p) for p in space.params}
        # Finished cells of an earlier (interrupted) run are told first: never recomputed.
        for row in sorted(self.rows.values(), key=lambda r: str(r.get("computed_at"))):
            if row.get("phase") != "cell":
                continue
            params = json.loads(row["params"])
            value, ok = score(row, self.plan.objective, self.plan.min_trades)
            shown = {p.name: _user_value(p, params[p.field]) for p in space.params}
            state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
            study.add_trial(optuna.trial.create_trial(
                params=shown, distributions=dists, value=value if ok else None, state=state))
            self.reused += 1
        told = self.reused
        self.progress(told, budget)
        if told >= budget:  # an earlier run used the whole budget
            return
        in_flight: dict[str, tuple[Any, list[Any]]] = {}
        ac = as_completed(loop=self.client.loop)
        parallel = max(2, 2 * max(1, sum(self.client.nthreads().values())))
        asks = 0
        try:
            while told < budget:
                while told + sum(len(v[1]) for v in in_flight.values()) < budget \
                        and len(in_flight) < parallel and asks < 50 * budget:
                    asks += 1
                    trial = study.ask()
                    params = {p.field: p.suggest(trial) for p in space.params}
                    made = space.make(self.plan.base, params)
                    if isinstance(made, str):  # against a constraint: not a try
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        continue
                    t = self.task(params, "cell", -1, self.plan.start_ns, None, settings=made)
                    if t.key in self.rows:
                        self._tell(study, trial, self.rows[t.key])
                        told += 1
                        self.progress(told, budget)
                    elif t.key in in_flight:
                        in_flight[t.key][1].append(trial)
                    else:
                        fut = self.submit(t)
                        in_flight[t.key] = (fut, [trial])
                        ac.add(fut)
                if not in_flight:
                    if asks >= 50 * budget:
                        break
                    continue
                fut = next(ac)
                row = self.record(_settle(fut))
                _, trials = in_flight.pop(row["key"])
                for trial in trials:
                    self._tell(study, trial, row)
                    told += 1
                self.progress(told, budget)
        finally:
            self.client.cancel([f for f, _ in in_flight.values()])

    def _tell(self, study: Any, trial: Any, row: dict[str, Any]) -> None:
        import optuna

        value, ok = score(row, self.plan.objective, self.plan.min_trades)
        if ok:
            study.tell(trial, value)
        else:  # too few trades or no value: not a result the sampler should learn from
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _walk_forward(self) -> tuple[dict[str, Any], Path]:
        from distributed import as_completed

        plan = self.plan
        train: dict[int, list[CellTask]] = {}
        for w in plan.windows:
            seen: dict[str, CellTask] = {}
            for params in plan.cells:
                t = self.task(params, "train", w.index, w.train_start, w.train_end)
                seen.setdefault(t.key, t)
            train[w.index] = list(seen.values())
        total = sum(len(v) for v in train.values()) + len(plan.windows)
        todo = [t for ts in train.values() for t in ts if t.key not in self.rows]
        self.reused = sum(len(v) for v in train.values()) - len(todo)
        done = self.reused
        self.progress(done, total)
        ac = as_completed(loop=self.client.loop)
        futures = []
        for t in todo:
            fut = self.submit(t)
            futures.append(fut)
            ac.add(fut)
        state: dict[str, Any] = {"next": 0, "future": None, "cash": plan.base.cash}
        summary: list[dict[str, Any]] = []

        def advance() -> int:
            """Submit the next window's test run once its training rows are all in."""
            finished = 0
            while state["next"] < len(plan.windows) and state["future"] is None:
                w = plan.windows[state["next"]]
                if any(t.key not in self.rows for t in train[w.index]):
                    return finished
                rows = [self.scored(self.rows[t.key]) for t in train[w.index]]
                best = choose(rows)
                entry: dict[str, Any] = {"window": w.index, **w.describe(), "trials": len(rows)}
                if best is None:
                    entry.update(chosen=None, note="no qualified cell: the window stays in cash")
                    summary.append(entry)
                    state["next"] += 1
                    finished += 1
                    continue
                params = json.loads(best["params"])
                entry.update(chosen=params, chosen_key=best["key"],
                             is_objective=best["objective"], is_sharpe=best.get("sharpe"),
                             is_total_return=best.get("total_return"),
                             dsr=dsr_of(rows, best))
                settings = plan.base.replace(**params, cash=state["cash"])
                t = self.task(params, "test", w.index, w.test_start, w.test_end,
                              settings=settings, extra={"chosen_key": best["key"]})
                entry["test_key"] = t.key
                summary.append(entry)
                if t.key in self.rows:
                    self._finish_test(entry, self.rows[t.key], state)
                    self.reused += 1
                    finished += 1
                    continue
                state["future"] = self.submit(t)
                futures.append(state["future"])
                ac.add(state["future"])
            return finished

        try:
            done += advance()
            self.progress(done, total)
            for fut in ac:
                row = self.record(_settle(fut))
                done += 1
                if row["phase"] == "test":
                    state["future"] = None
                    self._finish_test(summary[-1], row, state)
                done += advance()
                self.progress(done, total)
            done += advance()
            self.progress(done, total)
        finally:
            self.client.cancel([f for f in futures if not f.done()])
        from sweeps.stitch import stitch_oos

        oos_dir, oos_stats = stitch_oos(self.store, plan, summary)
        value, _ = score(oos_stats, plan.objective, 0)
        is_values = [e["is_objective"] for e in summary if e.get("is_objective") is not None]
        wf = {"windows": summary, "oos_stats": oos_stats, "oos_objective": value,
              "is_objective_mean": sum(is_values) / len(is_values) if is_values else None,
              "objective": plan.objective}
        from ratchet.common.atomic import write_json_atomic

        write_json_atomic(plan.folder / "walk_forward.json", wf)
        return wf, oos_dir

    def _finish_test(self, entry: dict[str, Any], row: dict[str, Any],
                     state: dict[str, Any]) -> None:
        scored = self.scored(row)
        entry.update(oos_objective=scored["objective"], oos_sharpe=row.get("sharpe"),
                     oos_total_return=row.get("total_return"),
                     oos_trades=row.get("trade_count"),
                     oos_open_positions=json.loads(row["stats"]).get("open_positions", {}))
        if row.get("end_value") is not None and pd.notna(row.get("end_value")):
            state["cash"] = float(row["end_value"])
        state["next"] += 1

    def _results(self) -> pd.DataFrame:
        rows = [self.scored(r) for r in self.rows.values()]
        if not rows:
            return pd.DataFrame()
        frame = pd.DataFrame(rows)
        frame["_rank"] = frame["objective"].where(frame["qualified"])
        frame = frame.sort_values(["phase", "window", "_rank"], ascending=[True, True, False],
                                  na_position="last").drop(columns="_rank")
        self.store.write_results(frame.reset_index(drop=True))
        return frame.reset_index(drop=True)


def _distribution(p: Any) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if p.values:
        return CategoricalDistribution(list(p.values))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1))
    return FloatDistribution(p.low, p.high, step=p.step)


def _user_value(p: Any, value: Any) -> Any:
    """A stored settings value in the units the user typed (percent for ``risk``)."""
    if p.percent and not p.values:
        return round(float(value) * 100, 10)
    return value
