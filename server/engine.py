"""The search engine: continuous batching of latent searches on one device, on its own thread.

Requests from every stream wait in one queue. The engine thread admits waiting requests
into free slots of a :class:`~anogan_inspect.search.SlotTable`, runs one search step on
all active slots, and hands finished searches back to the asyncio loop. A finished slot is
refilled at the next step, so frames at different steps share every pass. Cancelled
requests (their stream ended) leave the queue and their slots before the next step.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anogan_inspect.search import ScoringModels, SearchConfig, SlotResult, SlotTable, to_device
from anogan_inspect.server.options import PRECISION_NAMES
from anogan_inspect.server.worker import Job, Worker, resolve_all

log = logging.getLogger(__name__)

# The search's precisions: the autocast dtype of its steps (None: float32 throughout).
PRECISIONS: dict[str, torch.dtype | None] = dict(zip(PRECISION_NAMES, (None, torch.bfloat16),
                                                      strict=True))
# Slot counts tried when a GPU's table is sized at load (the exported programs take
# batches up to 4096).
SLOT_CANDIDATES = (256, 512, 1024, 2048, 4096)


@dataclass(eq=False)
class SearchRequest(Job):
    """One frame's search: input x (C, H, W) in [-1, 1], start z0 (None: E(x), computed
    by the engine at admission), budget; await ``future`` for its :class:`SearchOutcome`."""

    x: torch.Tensor = None
    z0: torch.Tensor | None = None
    steps: int = 0
    want_reconstruction: bool = False
    owner: Any = None  # whose frame (a stream): slots are shared out among owners
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    cancelled: bool = False


class FairQueue:
    """Queued searches, taken in turn from each owner (stream): a stream with thousands of
    frames waiting takes one free slot per round like any other, so another stream's frame
    waits at most one admission round behind it. The deque methods the worker uses."""

    def __init__(self):
        self._owners: OrderedDict[Any, deque] = OrderedDict()
        self._length = 0

    def append(self, request: SearchRequest) -> None:
        self._owners.setdefault(request.owner, deque()).append(request)
        self._length += 1

    def popleft(self) -> SearchRequest:
        """The next owner's oldest request; that owner then goes to the back of the line."""
        owner, requests = next(iter(self._owners.items()))
        request = requests.popleft()
        del self._owners[owner]
        if requests:
            self._owners[owner] = requests
        self._length -= 1
        return request

    def remove_if(self, predicate) -> int:
        """Drop the requests that match (cancelled ones); returns how many."""
        dropped = 0
        for owner in list(self._owners):
            kept = deque(r for r in self._owners[owner] if not predicate(r))
            dropped += len(self._owners[owner]) - len(kept)
            if kept:
                self._owners[owner] = kept
            else:
                del self._owners[owner]
        self._length -= dropped
        return dropped

    def clear(self) -> None:
        self._owners.clear()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return (r for requests in self._owners.values() for r in requests)


@dataclass
class SearchOutcome:
    """A finished search, with its timings; reconstruction G(best z) when asked for."""

    result: SlotResult
    queue_seconds: float
    compute_seconds: float
    reconstruction: np.ndarray | None


@dataclass
class EngineStats:
    batches: int = 0
    slot_steps: int = 0
    max_batch: int = 0
    completed: int = 0
    cancelled: int = 0


class SearchEngine(Worker):
    """A slot table on one device, driven by one thread; ``submit`` is called from asyncio."""

    def __init__(self, models: ScoringModels, cfg: SearchConfig, image_shape: tuple[int, ...],
                 capacity: int = 64, device: torch.device | str = "cpu", name: str = "engine",
                 autocast_dtype: torch.dtype | None = None, cuda_graphs: bool = False):
        super().__init__(f"search-{name}")
        self._queue = FairQueue()
        self.table = SlotTable(models, cfg, capacity, image_shape, device, autocast_dtype,
                               cuda_graphs, reconstruct=_wants_reconstruction)
        self.models, self.device = models, torch.device(device)
        self.stats = EngineStats()
        self._cancel_pending = False

    def submit(self, x: torch.Tensor, z0: torch.Tensor | None, steps: int,
               want_reconstruction: bool = False, owner: Any = None) -> SearchRequest:
        """Queue a search; await ``request.future`` for its :class:`SearchOutcome`.
        `owner` (e.g. the stream): free slots go to owners in turn (FairQueue)."""
        return self._put(SearchRequest(x=x, z0=z0, steps=steps,
                                       want_reconstruction=want_reconstruction, owner=owner))

    def cancel(self, request: SearchRequest) -> None:
        """Drop a request wherever it is (queue or slot) before the engine's next step."""
        with self._cond:
            request.cancelled = True
            self._cancel_pending = True
            self._cond.notify()

    # -- engine thread -----------------------------------------------------------------------

    def _on_thread_start(self) -> None:
        torch.set_grad_enabled(True)
        if self.device.type == "cuda":  # this thread's work and streams on its own device
            torch.cuda.set_device(self.device)

    def _busy(self) -> bool:
        return self.table.n > 0 or self.table.waiting > 0

    def _in_progress(self) -> list[SearchRequest]:
        return list(self.table.tags) + self.table.landing_tags()

    def _fail_remaining(self) -> None:
        """Stopping: searches already finished (their scores on the way back) are handed
        back; the rest fail as the worker's jobs do."""
        try:
            done = self.table.collect(wait=True)
        except Exception:  # the device failed: they fail with the rest
            done = []
        if done:
            self._finish(done)
        super()._fail_remaining()

    def _abandon_in_progress(self) -> None:
        self.table.remove(lambda r: True)
        self.table.forget_landing()

    def _take(self) -> list[SearchRequest]:
        """Drop cancelled requests; take as many queued ones as slots are free."""
        if self._cancel_pending:
            self._cancel_pending = False
            dropped = (self._queue.remove_if(lambda r: r.cancelled)
                       + self.table.remove(lambda r: r.cancelled))
            self.stats.cancelled += dropped
        return [self._queue.popleft() for _ in range(min(self.table.free, len(self._queue)))]

    def _work(self, admitted: list[SearchRequest]) -> None:
        self._admit(admitted)
        self._step()

    def _admit(self, requests: list[SearchRequest]) -> None:
        if not requests:
            return
        now = time.perf_counter()
        for request in requests:
            request.started = now
        x = to_device(torch.stack([r.x for r in requests]), self.device)
        self.table.admit(x, self._starts(x, requests), [r.steps for r in requests], requests)

    def _starts(self, x: torch.Tensor, requests: list[SearchRequest]) -> torch.Tensor:
        """z0 per request: given, or E(x) for those without one (one batched encoder pass)."""
        missing = [i for i, r in enumerate(requests) if r.z0 is None]
        if missing and self.models.encoder is None:
            raise ValueError("no z0 given and the model has no encoder")
        if not missing:
            return to_device(torch.stack([r.z0 for r in requests]).float(), self.device)
        with torch.no_grad():
            if len(missing) == len(requests):
                return self.models.encoder(x)
            z0 = torch.stack([torch.zeros(self.models.latent_dim) if r.z0 is None
                              else r.z0.float().cpu() for r in requests])
            z0 = to_device(z0, self.device)
            rows = to_device(missing, self.device)
            z0[rows] = self.models.encoder(x[rows]).float()
        return z0

    def _step(self) -> None:
        """One step of the table (if any search is active); hands back the searches whose
        scores have landed, and, once the table is empty, waits for the rest."""
        active = self.table.n
        finished = []
        if active:
            finished = self.table.step()
            self.stats.batches += 1
            self.stats.slot_steps += active
            self.stats.max_batch = max(self.stats.max_batch, active)
        if not self.table.n:
            try:
                finished += self.table.collect(wait=True)
            except Exception as err:  # those read already have left the table: fail them
                for result in finished:
                    result.tag.fail(err)
                raise
        if finished:
            try:
                self._finish(finished)
            except Exception as err:  # they have left the table: fail them here
                for result in finished:
                    result.tag.fail(err)
                raise

    def _finish(self, finished: list[SlotResult]) -> None:
        """Resolve finished searches on their loops (with G(best z) where asked)."""
        now = time.perf_counter()
        self.stats.completed += len(finished)
        resolve_all([r.tag for r in finished], [
            SearchOutcome(r, r.tag.started - r.tag.enqueued, now - r.tag.started,
                          r.reconstruction) for r in finished])


def _wants_reconstruction(request: SearchRequest) -> bool:
    return request.want_reconstruction


def size_slots(models: ScoringModels, cfg: SearchConfig, image_shape: tuple[int, ...],
               device: torch.device, autocast_dtype: torch.dtype | None = None,
               candidates: tuple[int, ...] = SLOT_CANDIDATES, steps: int = 8,
               within: float = 0.9, cuda_graphs: bool = False) -> tuple[int, dict[int, float]]:
    """The slot count for this device: the smallest candidate whose measured frame-steps/s
    is within `within` of the best one's (more slots past that knee only add latency).
    Returns it with the measured rates (frame-steps/s per slot count), full tables stepped
    as the engine will step them (with `cuda_graphs`: replaying the full table's graph)."""
    device = torch.device(device)
    # The table's own GPU (a bare synchronize() waits for the current one: GPU 0)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rates: dict[int, float] = {}
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for capacity in candidates:
            try:
                # with graphs, the full table's only: it is what is timed
                table = SlotTable(models, cfg, capacity, image_shape, device, autocast_dtype,
                                  cuda_graphs, graph_min_rows=capacity)
                x = torch.rand(capacity, *image_shape, generator=gen) * 2 - 1
                z0 = torch.randn(capacity, models.latent_dim, generator=gen)
                table.admit(x, z0, [1 << 30] * capacity, range(capacity))
                table.step()  # warm-up: kernels chosen, memory allocated
                sync()
                started = time.perf_counter()
                for _ in range(steps):
                    table.step()
                sync()
            except torch.OutOfMemoryError:  # this many do not fit: choose among the fewer
                log.warning("search slots: %d do not fit in %s's memory", capacity, device)
                break
            finally:
                table = None
            rates[capacity] = capacity * steps / (time.perf_counter() - started)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not rates:
        raise ValueError(f"not even {candidates[0]} search slots fit on {device}: "
                         "pass --max-batch")
    best = max(rates.values())
    chosen = min(c for c, rate in rates.items() if rate >= within * best)
    log.info("search slots sized for %s: %d (frame-steps/s by slots: %s)", device, chosen,
             ", ".join(f"{c}: {r:,.0f}" for c, r in rates.items()))
    return chosen, rates
