"""One worker thread fed from asyncio: the base of the search engine and the fast path.

Callers on the event loop queue jobs (:meth:`Worker._put`); the worker thread takes work
from the queue under one lock (:meth:`Worker._take`), does it outside the lock
(:meth:`Worker._work`), and resolves each job's future back on the job's own loop. A job's
future is always settled: with its result, with the exception its batch raised (the thread
goes on with the next batch), or with :class:`WorkerStopped` when the worker stops with the
job still queued or in progress.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class WorkerStopped(RuntimeError):
    """The worker stopped before this job was done."""


@dataclass(eq=False)
class Job:
    """A queued piece of work and the future (on its caller's loop) that gets its result."""

    future: asyncio.Future = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future = self.loop.create_future()

    def resolve(self, value: Any) -> None:
        """Set the result from any thread (ignored if the future is already done, or its
        loop has closed: nobody is waiting any more)."""
        self._call(_set_result, value)

    def fail(self, err: BaseException) -> None:
        """Set the exception from any thread (ignored as resolve is)."""
        self._call(_set_exception, err)

    def _call(self, setter, value) -> None:
        try:
            self.loop.call_soon_threadsafe(setter, self.future, value)
        except RuntimeError:  # the loop is closed
            pass


class Worker:
    """A daemon thread draining a queue of :class:`Job`; subclasses say how to batch.

    Subclasses implement :meth:`_take` (called with the lock held: move what to work on out
    of ``self._queue``) and :meth:`_work` (called without it); they may override
    :meth:`_busy` (work in progress that needs the thread even with an empty queue) and
    :meth:`_in_progress` (jobs taken but not yet settled, failed when the worker stops).
    """

    def __init__(self, name: str):
        self.name = name
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; every job still queued or in progress fails with WorkerStopped."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        else:  # never started: nothing else will fail what was queued
            with self._cond:
                self._fail_remaining()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _put(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                job.fail(WorkerStopped(f"{self.name} stopped"))
                return job
            self._queue.append(job)
            self._cond.notify()
        return job

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- for subclasses --------------------------------------------------------------------

    def _on_thread_start(self) -> None:
        """Called once on the worker thread before any work."""

    def _busy(self) -> bool:
        """True while work in progress needs the thread even when the queue is empty."""
        return False

    def _take(self) -> Any:
        """With the lock held: take the next work out of the queue (None: nothing to do)."""
        raise NotImplementedError

    def _work(self, work: Any) -> None:
        """Without the lock: do the work and settle its jobs' futures."""
        raise NotImplementedError

    def _in_progress(self) -> list[Job]:
        """Jobs taken out of the queue and not yet settled (failed on errors and at stop)."""
        return []

    def _abandon_in_progress(self) -> None:
        """Forget the jobs in progress (after they were failed)."""

    # -- the thread --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._on_thread_start()
            while True:
                with self._cond:
                    while not self._stopping and not self._queue and not self._busy():
                        self._cond.wait()
                    if self._stopping:
                        return
                    work = self._take()
                if work is None:
                    continue
                try:
                    self._work(work)
                except Exception as err:  # never leave futures hanging on a failed batch
                    log.exception("%s: work failed", self.name)
                    with self._cond:
                        self._fail_in_progress(err, work)
        except Exception:
            log.exception("%s stopped: its thread failed", self.name)
        finally:  # stopped, or the thread itself failed: no job may wait for it any more
            with self._cond:
                self._stopping = True
                self._fail_remaining()

    def _fail_in_progress(self, err: Exception, work: Any) -> None:
        # What was taken (when it is a list of jobs) and what is in progress: failing a job
        # twice is harmless (a settled future is left alone).
        jobs = (list(work) if isinstance(work, list) else []) + self._in_progress()
        for job in jobs:  # first: forgetting them may fail as the work did
            job.fail(err)
        self._abandon_in_progress()

    def _fail_remaining(self) -> None:
        stopped = WorkerStopped(f"{self.name} stopped")
        jobs = list(self._queue) + self._in_progress()
        self._queue.clear()
        for job in jobs:
            job.fail(stopped)
        self._abandon_in_progress()


def resolve_all(jobs: list[Job], values: list[Any]) -> None:
    """Set many jobs' results from any thread with one wake-up per event loop (instead of
    one per job: a batch of a thousand frames is then one hop back to asyncio)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for job, value in zip(jobs, values, strict=True):
        by_loop.setdefault(job.loop, []).append((job.future, value))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_results, pairs)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _set_results(pairs: list[tuple[asyncio.Future, Any]]) -> None:
    for future, value in pairs:
        _set_result(future, value)


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
