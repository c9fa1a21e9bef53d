"""A step's orders sent side by side: the second order of a bar no longer waits for the
first order's answer (issue 11).

At ``--speed 60`` the slowest decisions of a rehearsal were the second order of a step: the
main thread sent it only after the first order's intent was fsynced, its POST answered and
the answer applied (9-27 ms). ``OrderSender`` runs ``OrderGateway.submit`` (intent journaled
and synced FIRST, then one POST, an ambiguous answer resolved by client order id, never
resent: the gateway's rules, unchanged) on worker threads, so the main thread goes on with
the Strategy's other symbols while the request is out.

What stays as it was:

* **The answer is applied before any stream update of that order.** Workers touch no
  Backtrader object and no broker state: the main thread takes a finished job back
  (``take``) and applies its answer exactly as it applied the synchronous one. The broker
  takes a symbol's jobs before anything else of that symbol (a new order, a cancel, a
  replace), the order's job before routing any trade update of it, and every job before a
  step's fills are settled, at the loop's turn and at shutdown: no update can be applied
  before the (older) answer, so no answer ever overwrites a newer state.
* **One request per symbol at a time**: a symbol's next order waits for its job, so the
  per-symbol order of requests is the decision order. Different symbols go side by side.
* Only entries, fallbacks and exits go this way (an exit with its stop's DELETE before it:
  ``exit_chain.py``); protective stops keep their own paths (``protector.py`` at a fill, the
  main thread otherwise).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from brokers.alpaca.orders import Outcome, SubmitResult

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: worker threads: a step rarely sends more than a few orders; each worker keeps its own
#: keep-alive connection in the client's pool
SEND_WORKERS = 4
#: the workers' thread names start with it (the latency probe counts their requests)
SENDER_THREAD_PREFIX = "order-send"


@dataclass
class SendJob:
    """One order request in flight; ``result`` is set before ``done`` (None: nothing was
    POSTed, an exit chain that left its exit to the main thread)."""

    cid: str
    symbol: str
    done: threading.Event = field(default_factory=threading.Event)
    result: SubmitResult | None = None


class OrderSender:
    """Runs order submissions on worker threads (see the module docstring).

    ``post`` and ``take`` are for the main thread only; the workers only run the callable
    they were given (venue I/O and the journal) and set the job's result.
    """

    def __init__(self, workers: int = SEND_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix=SENDER_THREAD_PREFIX)
        self._lock = threading.Lock()
        self._jobs: dict[str, SendJob] = {}  # by client order id, in submission order
        self._closed = False

    def post(self, cid: str, symbol: str,
             send: Callable[[], SubmitResult | None]) -> SendJob:
        """Run ``send`` (one ``OrderGateway.submit``) on a worker; the main thread takes the
        job back with ``take``. After ``close`` it runs at once on the caller's thread."""
        job = SendJob(cid, symbol)
        with self._lock:
            self._jobs[cid] = job
            closed = self._closed
        if closed:
            self._work(job, send)
        else:
            self._pool.submit(self._work, job, send)
        return job

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on a worker (an exit's intent written while its stop's DELETE is
        out); not a job: nothing waits for it but its caller. After ``close`` it runs at
        once on the caller's thread."""
        with self._lock:
            closed = self._closed
        if not closed:
            try:
                return self._pool.submit(fn)
            except RuntimeError:  # closed meanwhile: run it here
                pass
        done: Future[T] = Future()
        try:
            done.set_result(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            done.set_exception(exc)
        return done

    def _work(self, job: SendJob, send: Callable[[], SubmitResult | None]) -> None:
        job.result = self._run(job, send)
        job.done.set()

    @staticmethod
    def _run(job: SendJob, send: Callable[[], SubmitResult | None]) -> SubmitResult | None:
        try:
            return send()
        except Exception as exc:  # noqa: BLE001 - the order may exist: resolved by client order id
            logger.warning("%s: order %s: %s; looking it up by client order id", job.symbol,
                           job.cid, exc)
            return SubmitResult(Outcome.AMBIGUOUS, job.cid, reason=str(exc))

    def pending(self, cid: str | None = None, symbol: str | None = None) -> bool:
        """A job not taken yet (of ``cid``, of ``symbol``, or any)."""
        with self._lock:
            if cid is not None:
                return cid in self._jobs
            if symbol is not None:
                return any(j.symbol == symbol for j in self._jobs.values())
            return bool(self._jobs)

    def in_flight(self) -> bool:
        """A job's request has not been answered yet."""
        with self._lock:
            return any(not j.done.is_set() for j in self._jobs.values())

    def take(self, cid: str | None = None, symbol: str | None = None) -> list[SendJob]:
        """Wait for the jobs of ``cid`` / ``symbol`` (None, None: all) and hand them over,
        removed, in submission order. Waits as long as the requests take: the gateway
        bounds them (one POST, then bounded look-ups)."""
        with self._lock:
            jobs = [j for j in self._jobs.values()
                    if (cid is None or j.cid == cid) and (symbol is None or j.symbol == symbol)]
        taken = []
        for job in jobs:
            job.done.wait()
            with self._lock:
                if self._jobs.get(job.cid) is job:
                    del self._jobs[job.cid]
                    taken.append(job)
        return taken

    def close(self) -> None:
        """Finish the requests in flight (the caller takes them); later posts run inline."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
