"""AnoGAN latent search: one implementation, used by the trainer and the server's engine.

For an image x, find the z whose G(z) reproduces it, by Adam on z with the networks frozen
and in eval mode:

    loss(z) = (1 - λ)·Σ|x - G(z)| + λ·Σ|f(x) - f(G(z))|

and keep each image's best loss (and z) as its anomaly score.

The work is organised as a :class:`SlotTable`: a fixed-capacity table of searches on one
device, kept compact (active slots are rows ``[0, n)``), so one step runs G and f once on
every active slot and backpropagates to z only. Each slot has its own Adam moments, step
count and budget, so slots at different steps share every pass, and a finished slot is
replaced by a waiting image at the next step (continuous batching). Each slot's loss
depends on its own z alone (eval mode), so a batch gives each image the score it would get
alone.

On a GPU a step does not make the host wait for the device (without early stopping):
step counts and budgets are kept on the host, so which slots finish is known without
reading the device; index tensors go to the device from pinned memory without a blocking
copy; and finished slots' scores come back by an asynchronous copy, read once it has
landed (:meth:`SlotTable.collect`). The host then queues the next step while the device
still runs the last one, instead of the device idling while Python launches it; it waits
only when it is MAX_STEPS_AHEAD steps ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anogan_inspect.configs import SearchConfig  # noqa: F401 (re-exported)

Network = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ScoringModels:
    """The frozen networks a search needs: G, f and (optionally) the encoder E."""

    generator: Network
    features: Network
    latent_dim: int
    encoder: Network | None = None

    def prepare(self) -> ScoringModels:
        """Eval mode and frozen parameters, so backward computes input gradients only."""
        for net in (self.generator, self.features, self.encoder):
            if isinstance(net, torch.nn.Module):
                set_eval(net)
                net.requires_grad_(False)
        return self


def set_eval(module: torch.nn.Module) -> None:
    """Eval mode for eager modules; exported programs are already traced in eval mode."""
    try:
        module.eval()
    except NotImplementedError:  # torch.export modules refuse .eval(); they were exported eval
        pass


def score_parts(
    models: ScoringModels, x: torch.Tensor, fx: torch.Tensor, z: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (loss, residual Σ|x-G(z)|, feature distance Σ|f(x)-f(G(z))|)."""
    reconstruction = models.generator(z)
    residual = (x - reconstruction).abs().flatten(1).sum(1)
    feature = (fx - models.features(reconstruction)).abs().flatten(1).sum(1)
    return (1.0 - lam) * residual + lam * feature, residual, feature


@dataclass
class SlotResult:
    """A finished search: best score, its parts and z, and the steps it ran."""

    tag: Any
    score: float
    residual: float
    feature: float
    z: np.ndarray
    steps: int
    reconstruction: np.ndarray | None = None  # G(z), where the table's `reconstruct` asked


class SlotTable:
    """A compact, fixed-capacity table of latent searches on one device.

    Rows ``[0, n)`` are active. :meth:`admit` appends searches, :meth:`step` advances every
    active search by one Adam step and returns those that finished, :meth:`remove` drops
    searches (e.g. of a cancelled stream). Finished and removed rows are filled by moving
    the last active rows down, so the active block stays contiguous and needs no gathers.
    """

    def __init__(self, models: ScoringModels, cfg: SearchConfig, capacity: int,
                 image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None, cuda_graphs: bool = False,
                 graph_min_rows: int | None = None,
                 reconstruct: Callable[[Any], bool] | None = None):
        """`cuda_graphs` (on a GPU): capture the step as CUDA graphs, one per bucket of rows
        from the capacity halved down to `graph_min_rows` (GRAPH_MIN_ROWS); a failed
        capture raises. `reconstruct(tag)`: whether a finished search also comes back with
        its reconstruction G(z)."""
        self.models, self.cfg, self.capacity = models, cfg, capacity
        self.reconstruct = reconstruct
        self.device = torch.device(device)
        # Mixed precision for G and f (e.g. torch.bfloat16 on GPUs); z, Adam and the loss
        # sums stay float32, and a finished search is re-scored in float32 (see _pop).
        self.autocast_dtype = autocast_dtype
        with torch.no_grad():
            probe = torch.zeros(1, *image_shape, device=self.device)
            feature_dim = models.features(probe).flatten(1).shape[1]
        new = lambda *shape: torch.zeros(capacity, *shape, device=self.device)  # noqa: E731
        latent = models.latent_dim
        self.x, self.fx = new(*image_shape), new(feature_dim)
        self.z, self.m, self.v, self.best_z = new(latent), new(latent), new(latent), new(latent)
        self.start_z = new(latent)
        self.best_loss, self.best_residual, self.best_feature = new(), new(), new()
        # Integer counts (a float32 count stops growing at 2^24 steps); the device's step
        # count drives Adam's bias corrections, the host's copy (and the budgets) decide
        # which slots finish without reading the device.
        count = lambda: torch.zeros(capacity, dtype=torch.int64, device=self.device)  # noqa: E731
        self.step_count, self.since_best = count(), count()
        self.steps_run = np.zeros(capacity, dtype=np.int64)
        self.budget = np.zeros(capacity, dtype=np.int64)
        self.tags: list[Any] = []
        # Finished searches whose scores are still being copied back (oldest first), and
        # how many searches they hold (read from other threads: a count, not the deque).
        self._landing: deque[_Landing] = deque()
        self._waiting = 0
        # On a GPU, a marker after each step's work: the host queues at most `max_ahead`
        # steps beyond what the device has done (enough to overlap launches with the
        # device's work, few enough to keep latency and pinned buffers bounded).
        self._steps_queued: deque[torch.cuda.Event] = deque()
        self.max_ahead = MAX_STEPS_AHEAD
        # CUDA graphs of the step, by bucket (rows computed); empty: eager steps.
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_buckets: tuple[int, ...] = ()
        if cuda_graphs and self.device.type == "cuda":
            try:
                self._capture_graphs(graph_min_rows or GRAPH_MIN_ROWS)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as err:
                raise GraphCaptureError(f"the search step's CUDA graphs could not be "
                                        f"captured on {self.device}: {err}") from err

    @property
    def n(self) -> int:
        """Active searches."""
        return len(self.tags)

    @property
    def free(self) -> int:
        return self.capacity - self.n

    @property
    def waiting(self) -> int:
        """Finished searches not yet returned (their scores are on their way to the host)."""
        return self._waiting

    def collect(self, wait: bool = False) -> list[SlotResult]:
        """Finished searches whose scores have reached the host, in the order they finished;
        with `wait`, all of them (waiting for the device). On the CPU nothing waits."""
        ready = 0
        while ready < len(self._landing) and (wait or self._landing[ready].landed()):
            ready += 1
        # Read them all before any leaves the queue: if the device fails on one, every
        # search of these is still among those in progress (and failed as such).
        results = [result for i in range(ready) for result in self._landing[i].results()]
        for _ in range(ready):
            self._waiting -= len(self._landing.popleft().tags)
        return results

    def landing_tags(self) -> list[Any]:
        """The tags of the finished searches not yet returned."""
        return [tag for landing in self._landing for tag in landing.tags]

    def forget_landing(self) -> None:
        """Drop the finished searches not yet returned (their jobs were failed)."""
        self._landing.clear()
        self._waiting = 0

    def admit(self, x: torch.Tensor, z0: torch.Tensor, budgets: Iterable[int],
              tags: Iterable[Any]) -> None:
        """Start searches for images x (k, C, H, W) from z0 (k, latent); f(x) computed once."""
        tags, budgets = list(tags), list(budgets)
        k = len(tags)
        if k > self.free:
            raise ValueError(f"{k} searches do not fit in {self.free} free slots")
        if k == 0:
            return
        rows = slice(self.n, self.n + k)
        x = to_device(x, self.device).float()
        with torch.no_grad():
            self.fx[rows] = self.models.features(x).flatten(1)
        self.x[rows] = x
        self.z[rows] = to_device(z0, self.device).float().reshape(k, -1)
        self.best_z[rows] = self.z[rows]
        self.start_z[rows] = self.z[rows]
        for buf in (self.m, self.v, self.step_count, self.since_best):
            buf[rows] = 0.0
        self.best_loss[rows] = float("inf")
        self.steps_run[rows] = 0
        self.budget[rows] = budgets
        self.tags.extend(tags)

    def step(self) -> list[SlotResult]:
        """One Adam step on every active search; frees the ones that finish and returns the
        finished searches whose scores have reached the host (on the CPU: those of this
        step; on a GPU possibly of earlier steps: :meth:`collect` waits for the rest)."""
        n = self.n
        if n == 0:
            return self.collect()
        graph = self._graph_for(n)
        if graph is not None:
            graph.replay()
        else:
            self._advance(n)
        self.steps_run[:n] += 1
        done = self.steps_run[:n] >= self.budget[:n]
        if self.cfg.patience > 0:  # the one check that reads the device every step
            done |= (self.since_best[:n] >= self.cfg.patience).cpu().numpy()
        self._pop(np.flatnonzero(done).tolist())
        if self.device.type == "cuda":
            self._steps_queued.append(_marker(self.device))
            if len(self._steps_queued) > self.max_ahead:
                self._steps_queued.popleft().synchronize()
        return self.collect()

    def _advance(self, rows: int) -> None:
        """The device's part of a step, on rows [0, rows): loss, its gradient to z, best
        tracking, Adam. Rows past the active ones (a CUDA graph's bucket) are computed and
        ignored: each row depends on its own z alone, and admission resets a row."""
        z = self.z[:rows].clone().requires_grad_(True)
        # No autocast cache: a CUDA graph cannot capture one (and each weight is cast once
        # a step anyway).
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=False):
            loss, residual, feature = score_parts(self.models, self.x[:rows], self.fx[:rows],
                                                  z, self.cfg.lam)
        loss, residual, feature = loss.float(), residual.float(), feature.float()
        (grad,) = torch.autograd.grad(loss.sum(), z)
        with torch.no_grad():
            self._track_best(rows, loss.detach(), residual.detach(), feature.detach())
            self._adam_update(rows, grad)

    def _graph_for(self, n: int) -> torch.cuda.CUDAGraph | None:
        """The captured step of the smallest bucket holding n rows (None: step eagerly)."""
        for bucket in self.graph_buckets:
            if bucket >= n:
                return self._graphs[bucket]
        return None

    def _capture_graphs(self, min_rows: int) -> None:
        """Capture the device's part of a step as one CUDA graph per bucket (the capacity,
        halved down to `min_rows`): a step is then one replay instead of a few hundred
        kernel launches from Python. Warmed up on a side stream first, as CUDA graphs need;
        every bucket is captured on one stream of the table's device (torch's default
        capture stream belongs to whichever device was current when it was made) and they
        share one memory pool (they never run at once). The rows' contents are whatever
        they hold: no row is active yet. Each capture waits for the whole device once."""
        buckets = sorted({self.capacity} | {self.capacity >> k for k in range(1, 16)
                                            if self.capacity >> k >= min_rows})
        with torch.cuda.device(self.device), torch.enable_grad():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for bucket in buckets:
                    for _ in range(2):
                        self._advance(bucket)
            torch.cuda.current_stream(self.device).wait_stream(side)
            pool, graphs = torch.cuda.graph_pool_handle(), {}
            for bucket in reversed(buckets):  # the largest first: it sizes the shared pool
                graph = torch.cuda.CUDAGraph()
                # thread_local: other threads (engines, fast paths) keep using the device
                with torch.cuda.graph(graph, pool=pool, stream=side,
                                      capture_error_mode="thread_local"):
                    self._advance(bucket)
                graphs[bucket] = graph
        self._graphs, self.graph_buckets = graphs, tuple(buckets)

    def remove(self, predicate: Callable[[Any], bool]) -> int:
        """Drop the searches whose tag matches; returns how many were dropped."""
        rows = [i for i, tag in enumerate(self.tags) if predicate(tag)]
        if rows:  # nothing is read out (no device work): they are only forgotten
            self._compact(set(rows))
        return len(rows)

    def _track_best(self, n: int, loss, residual, feature) -> None:
        """Keep each slot's best loss, its parts and its z (the loss is at the current z)."""
        best = self.best_loss[:n]
        threshold = torch.where(best.isfinite(), best - self.cfg.min_delta * best.abs(), best)
        improved = loss < best
        self.since_best[:n] = torch.where(loss < threshold, 0, self.since_best[:n] + 1)
        self.best_loss[:n] = torch.where(improved, loss, best)
        self.best_residual[:n] = torch.where(improved, residual, self.best_residual[:n])
        self.best_feature[:n] = torch.where(improved, feature, self.best_feature[:n])
        self.best_z[:n] = torch.where(improved[:, None], self.z[:n], self.best_z[:n])

    def _adam_update(self, n: int, grad: torch.Tensor) -> None:
        """Adam on z with per-slot step counts (bias corrections differ per slot)."""
        cfg = self.cfg
        m, v, t = self.m[:n], self.v[:n], self.step_count[:n]
        t += 1
        m.mul_(cfg.beta1).add_(grad, alpha=1 - cfg.beta1)
        v.mul_(cfg.beta2).addcmul_(grad, grad, value=1 - cfg.beta2)
        m_hat = m / (1 - cfg.beta1 ** t)[:, None]
        v_hat = v / (1 - cfg.beta2 ** t)[:, None]
        self.z[:n] -= cfg.lr * m_hat / (v_hat.sqrt() + cfg.eps)

    def _pop(self, rows: list[int]) -> None:
        """Free rows, moving the last active rows into the holes; their scores and z start
        on their way to the host (:meth:`collect`)."""
        if not rows:
            return
        rows_t = to_device(rows, self.device)
        if self.autocast_dtype is None:
            loss, residual, feature, z = (self.best_loss[rows_t], self.best_residual[rows_t],
                                          self.best_feature[rows_t], self.best_z[rows_t])
        else:
            loss, residual, feature, z = self._rescore(rows_t)
        # One copy back: (score, residual, feature, z...) per row, and G(z) where asked.
        out = torch.cat([torch.stack([loss, residual, feature], 1), z], 1)
        tags = [self.tags[r] for r in rows]
        wanted = [i for i, tag in enumerate(tags) if self.reconstruct and self.reconstruct(tag)]
        images = None
        if wanted:
            with torch.no_grad():
                images = self.models.generator(z[to_device(wanted, self.device)]).float()
            images = images.to("cpu", non_blocking=True)
        self._landing.append(_Landing(out.to("cpu", non_blocking=True), images, wanted,
                                      _marker(self.device), tags,
                                      self.steps_run[rows].tolist()))
        self._waiting += len(rows)
        self._compact(set(rows))

    @torch.no_grad()
    def _rescore(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Low-precision searches, finished: the float32 score at the best z found and at
        the start z0, whichever is lower. Every score returned is then a float32 evaluation
        (the precision thresholds are calibrated in), and never above the float32 score at
        z0, which the fast path computes: the cascade stays exact."""
        x, fx, lam = self.x[rows], self.fx[rows], self.cfg.lam
        best = score_parts(self.models, x, fx, self.best_z[rows], lam)
        start = score_parts(self.models, x, fx, self.start_z[rows], lam)
        keep_start = start[0] < best[0]
        parts = [torch.where(keep_start, s, b) for s, b in zip(start, best)]
        z = torch.where(keep_start[:, None], self.start_z[rows], self.best_z[rows])
        return (*parts, z)

    def _compact(self, holes: set[int]) -> None:
        """Move surviving rows from the tail into the holes so rows [0, n) stay active."""
        n = self.n
        keep_n = n - len(holes)
        tail = [r for r in range(keep_n, n) if r not in holes]
        dest = sorted(h for h in holes if h < keep_n)
        if dest:
            src_t, dst_t = to_device(tail, self.device), to_device(dest, self.device)
            for buf in self._buffers():
                buf[dst_t] = buf[src_t]
            for host in (self.steps_run, self.budget):
                host[dest] = host[tail]
            for d, s in zip(dest, tail):
                self.tags[d] = self.tags[s]
        del self.tags[keep_n:]

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        return (self.x, self.fx, self.z, self.m, self.v, self.best_z, self.start_z,
                self.best_loss, self.best_residual, self.best_feature, self.step_count,
                self.since_best)


def to_device(values, device: torch.device) -> torch.Tensor:
    """A host list, array or tensor on `device`; to a GPU through pinned memory, so the copy
    does not wait for the work queued before it (a plain host-to-GPU copy does)."""
    tensor = torch.as_tensor(values)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _marker(device: torch.device) -> torch.cuda.Event | None:
    """An event marking the work (copies included) queued so far on a GPU (None on the
    CPU: already done)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))  # the device's: not the current device's
    return event


@dataclass
class _Landing:
    """Finished searches' (score, residual, feature, z) rows on their way to the host, and
    the reconstructions of those at `wanted` (indices into the rows)."""

    rows: torch.Tensor
    images: torch.Tensor | None
    wanted: list[int]
    copied: torch.cuda.Event | None
    tags: list[Any]
    steps: list[int]

    def landed(self) -> bool:
        return self.copied is None or self.copied.query()

    def results(self) -> list[SlotResult]:
        if self.copied is not None:
            self.copied.synchronize()
        rows = self.rows.numpy()
        images = dict(zip(self.wanted, self.images.numpy())) if self.wanted else {}
        return [SlotResult(tag, float(row[0]), float(row[1]), float(row[2]), row[3:].copy(),
                           steps, images.get(i))
                for i, (tag, row, steps) in enumerate(zip(self.tags, rows, self.steps))]


@dataclass
class SearchResult:
    """Scores of a batch of images, in input order."""

    score: np.ndarray
    residual: np.ndarray
    feature: np.ndarray
    z: np.ndarray
    steps: np.ndarray


def search(models: ScoringModels, x: torch.Tensor, z0: torch.Tensor, cfg: SearchConfig,
           batch_size: int = 64, device: torch.device | str = "cpu",
           progress: Callable[[int], None] | None = None,
           autocast_dtype: torch.dtype | None = None) -> SearchResult:
    """Score images x (N, C, H, W) in [-1, 1] by latent search from z0 (N, latent).

    Runs the same continuously refilled :class:`SlotTable` as the server: at most
    ``batch_size`` searches at once, a waiting image takes a slot as soon as one frees.
    """
    n = x.shape[0]
    table = SlotTable(models, cfg, min(batch_size, max(n, 1)), tuple(x.shape[1:]), device,
                      autocast_dtype)
    results: list[SlotResult | None] = [None] * n
    next_index = 0
    while next_index < n or table.n or table.waiting:
        k = min(table.free, n - next_index)
        if k:
            rows = range(next_index, next_index + k)
            table.admit(x[next_index:next_index + k], z0[next_index:next_index + k],
                        [cfg.steps] * k, rows)
            next_index += k
        for result in table.step() if table.n else table.collect(wait=True):
            results[result.tag] = result
            if progress:
                progress(1)
    return SearchResult(
        score=np.array([r.score for r in results], dtype=np.float64),
        residual=np.array([r.residual for r in results], dtype=np.float64),
        feature=np.array([r.feature for r in results], dtype=np.float64),
        z=np.stack([r.z for r in results]) if n else np.zeros((0, models.latent_dim)),
        steps=np.array([r.steps for r in results], dtype=np.int64),
    )


def random_start(n: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    """z ~ N(0, 1) from a fixed seed: the paper's (and the seed's) starting point."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, latent_dim, generator=generator)


def fast_score(models: ScoringModels, x: torch.Tensor, lam: float,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Encoder-only score s0 at z0 = E(x), no search; returns (scores, z0)."""
    if models.encoder is None:
        raise ValueError("fast_score needs an encoder")
    scores, zs = [], []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            z0 = models.encoder(xb)
            loss, _, _ = score_parts(models, xb, models.features(xb).flatten(1), z0, lam)
            scores.append(loss.cpu().numpy())
            zs.append(z0.cpu())
    if not scores:
        return np.zeros(0), torch.zeros(0, models.latent_dim)
    return np.concatenate(scores).astype(np.float64), torch.cat(zs)


class GraphCaptureError(RuntimeError):
    """The step could not be captured as a CUDA graph (not for lack of memory)."""


# How many steps the host may queue on a GPU beyond those the device has finished.
MAX_STEPS_AHEAD = 3

# The smallest bucket of rows a CUDA graph of the step is captured for: below it, replaying
# a graph of this many rows costs about as much as a step of fewer rows.
GRAPH_MIN_ROWS = 32

# The fast path passes a frame (or a tile) at once only when s0 is below the threshold by
# this relative margin, so ONNX-vs-torch rounding can never make the cascade disagree with
# the search.
CASCADE_MARGIN = 1e-4


def fast_clears(fast_score, threshold: float):
    """Exact cascade: the search from E(x) can only lower s0, so s0 ≤ threshold PASSes.

    Works on floats and arrays alike."""
    return fast_score <= threshold - CASCADE_MARGIN * abs(threshold)
