"""The worker base of the search engine and the fast path: results, errors, stop."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
import torch

from anogan_inspect.server.worker import Job, Worker, WorkerStopped, resolve_all


@dataclass(eq=False)
class Square(Job):
    value: int = 0


class SquareWorker(Worker):
    """Squares numbers in batches of up to 2; a batch holding -1 raises; `gate` holds the
    thread inside its work until set."""

    def __init__(self):
        super().__init__("squares")
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.in_work = threading.Event()

    def submit(self, value: int) -> asyncio.Future:
        return self._put(Square(value=value)).future

    def _take(self) -> list[Square]:
        return [self._queue.popleft() for _ in range(min(2, len(self._queue)))]

    def _work(self, jobs: list[Square]) -> None:
        self.in_work.set()
        self.gate.wait()
        self.batches.append([j.value for j in jobs])
        if any(j.value == -1 for j in jobs):
            raise ValueError("negative one")
        for job in jobs:
            job.resolve(job.value ** 2)


def test_results_come_back_in_batches():
    async def run():
        worker = SquareWorker().start()
        try:
            return await asyncio.gather(*(worker.submit(v) for v in range(5))), worker.batches
        finally:
            worker.stop()

    results, batches = asyncio.run(run())
    assert results == [0, 1, 4, 9, 16]
    assert sorted(v for batch in batches for v in batch) == list(range(5))
    assert max(len(batch) for batch in batches) <= 2


def test_a_failing_batch_fails_its_jobs_only_and_the_thread_goes_on():
    async def run():
        worker = SquareWorker()
        worker.gate.clear()
        worker.start()
        first = worker.submit(7)  # taken alone: the thread waits in its work
        await asyncio.to_thread(worker.in_work.wait, 10)
        bad, same_batch = worker.submit(-1), worker.submit(3)
        worker.gate.set()
        later = worker.submit(4)
        outcomes = await asyncio.gather(first, bad, same_batch, later, return_exceptions=True)
        worker.stop()
        return outcomes

    first, bad, same_batch, later = asyncio.run(run())
    assert first == 49 and later == 16
    assert isinstance(bad, ValueError) and isinstance(same_batch, ValueError)


def test_stop_fails_what_is_queued_and_refuses_new_jobs():
    async def run():
        worker = SquareWorker()
        worker.gate.clear()
        worker.start()
        running = worker.submit(1)
        await asyncio.to_thread(worker.in_work.wait, 10)
        queued = [worker.submit(v) for v in (2, 3, 4)]
        stopper = asyncio.get_running_loop().run_in_executor(None, worker.stop)
        while not worker._stopping:  # stop() has asked; the thread is still in its work
            await asyncio.sleep(0.01)
        worker.gate.set()  # the batch in progress finishes; the queue is failed
        await stopper
        after = worker.submit(5)
        return await asyncio.gather(running, *queued, after, return_exceptions=True)

    running, *rest = asyncio.run(run())
    assert running == 1
    assert all(isinstance(outcome, WorkerStopped) for outcome in rest)


def test_stop_before_start_fails_the_queue():
    async def run():
        worker = SquareWorker()
        pending = worker.submit(2)
        worker.stop()
        with pytest.raises(WorkerStopped):
            await pending

    asyncio.run(run())


class BrokenStart(SquareWorker):
    def _on_thread_start(self) -> None:
        raise RuntimeError("no device")


def test_a_worker_whose_thread_dies_fails_its_jobs_and_refuses_new_ones():
    async def run():
        worker = SquareWorker()
        queued = worker.submit(2)
        broken = BrokenStart()
        waiting = broken.submit(3)
        broken.start()
        await asyncio.to_thread(broken._thread.join, 10)
        later = broken.submit(4)
        worker.stop()
        return await asyncio.gather(queued, waiting, later, return_exceptions=True)

    outcomes = asyncio.run(run())
    assert all(isinstance(outcome, WorkerStopped) for outcome in outcomes)


def test_the_engine_fails_searches_whose_hand_back_fails(tiny_bundle):
    """A search that finished but could not be handed back (say, G(z) ran out of memory)
    fails; the engine goes on with the next searches."""
    from anogan_inspect.bundle import load_torch_models, read_bundle
    from anogan_inspect.server.engine import SearchEngine

    bundle = read_bundle(tiny_bundle)
    engine = SearchEngine(load_torch_models(bundle), bundle.search_config, bundle.image_shape,
                          capacity=4)
    finish = engine._finish
    calls = []

    def flaky_finish(finished):
        calls.append(len(finished))
        if len(calls) == 1:
            raise MemoryError("out of memory handing back")
        finish(finished)

    engine._finish = flaky_finish

    async def run():
        engine.start()
        try:
            x = torch.rand(*bundle.image_shape) * 2 - 1
            first = engine.submit(x, None, 3)
            failed = await asyncio.gather(first.future, return_exceptions=True)
            second = engine.submit(x, None, 3)
            return failed[0], await asyncio.wait_for(second.future, 30)
        finally:
            engine.stop()

    failed, second = asyncio.run(run())
    assert isinstance(failed, MemoryError)
    assert second.result.steps == 3


def test_resolve_all_settles_each_job_on_its_own_loop_from_another_thread():
    async def make(n: int) -> list[Square]:
        return [Square(value=i) for i in range(n)]

    async def wait(jobs: list[Square]) -> list[int]:
        return list(await asyncio.gather(*(job.future for job in jobs)))

    loops = [asyncio.new_event_loop() for _ in range(2)]
    try:
        jobs = [loop.run_until_complete(make(3)) for loop in loops]
        mixed = jobs[0] + jobs[1]
        thread = threading.Thread(target=resolve_all,
                                  args=(mixed, [j.value ** 2 + k for k, j in enumerate(mixed)]))
        thread.start()
        thread.join()
        assert loops[0].run_until_complete(wait(jobs[0])) == [0, 2, 6]
        assert loops[1].run_until_complete(wait(jobs[1])) == [3, 5, 9]
        # A job whose loop has closed is skipped, not an error.
        late = loops[1].run_until_complete(make(1))
        loops[1].close()
        resolve_all(late, [1])
    finally:
        for loop in loops:
            loop.close()


def test_fair_queue_takes_each_owners_frames_in_turn():
    from anogan_inspect.server.engine import FairQueue

    @dataclass(eq=False)
    class Request:
        owner: str
        n: int
        cancelled: bool = False

    queue = FairQueue()
    for n in range(4):
        queue.append(Request("hog", n))
    queue.append(Request("light", 0))
    queue.append(Request("hog", 4))
    queue.append(Request("other", 0))
    assert len(queue) == 7 and sorted(r.n for r in queue) == [0, 0, 0, 1, 2, 3, 4]
    taken = [queue.popleft() for _ in range(3)]
    assert [(r.owner, r.n) for r in taken] == [("hog", 0), ("light", 0), ("other", 0)]
    for r in queue:
        r.cancelled = r.n == 2
    assert queue.remove_if(lambda r: r.cancelled) == 1 and len(queue) == 3
    assert [queue.popleft().n for _ in range(3)] == [1, 3, 4]
    assert not queue
