"""Data-parallel training across processes: `torchrun --nproc-per-node N --no-python
anogan-train train ...` (several GPUs, or several CPU processes with gloo).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE above 1 the trainer joins
the process group (NCCL on CUDA, gloo on the CPU), wraps G, D and E in
DistributedDataParallel, and each process trains on its own share of every epoch
(DistributedSampler: a seeded shuffle, one slice per rank, the same number of batches on
every rank). `--batch-size` is per process. Rank 0 alone writes checkpoints, samples,
calibrates and writes the bundle, in the same format as one process would; the others end
when training does. Multi-node: torchrun's `--nnodes`, `--node-rank` and
`--rdzv-endpoint`, as PyTorch documents them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed | None:
        """Join the job torchrun started (None when this is the only process)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
        job = cls(dist.get_rank(), dist.get_world_size(), local_rank, backend)
        log.info("distributed training: rank %d of %d (%s)", job.rank, job.world_size,
                 backend)
        return job

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process (its LOCAL_RANK), or the CPU."""
        return torch.device("cuda", self.local_rank) if requested.type == "cuda" else requested

    def wrap(self, module: torch.nn.Module) -> DistributedDataParallel:
        """Gradients averaged over the processes at every backward; buffers (G's BatchNorm
        statistics) broadcast from rank 0 at every forward."""
        on_gpu = next(module.parameters()).device.type == "cuda"
        return DistributedDataParallel(module, device_ids=[self.local_rank] if on_gpu
                                       else None)

    def order(self, n: int, epoch: int, seed: int) -> torch.Tensor:
        """This rank's share of epoch `epoch`'s shuffle of n images."""
        sampler = DistributedSampler(range(n), self.world_size, self.rank, shuffle=True,
                                     seed=seed)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (for the epoch's log and history)."""
        tensor = torch.tensor(list(values.values()), dtype=torch.float64)
        if self.backend == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist()))

    def close(self) -> None:
        """Wait for every process, then leave the group."""
        dist.barrier()
        dist.destroy_process_group()
