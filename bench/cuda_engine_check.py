"""The committed default bundle through the server's SearchEngine on CUDA against the CPU.

    PYTHONPATH=. python3 bench/cuda_engine_check.py      (on a CUDA machine)

Loads bundles/default's torch.export programs on the GPU (they were exported with another
torch version than the GPU machine's), checks ONNX Runtime parity against them there, and
scores 40 random frames with 30 search steps from E(x) through the engine (16 slots, so
slots are refilled) on both devices, TF32 off. Prints both checks.
"""

import asyncio

import numpy as np
import torch

from anogan_inspect.bundle import check_parity, load_torch_models, read_bundle
from anogan_inspect.search import SearchConfig
from anogan_inspect.server.engine import SearchEngine

FRAMES, STEPS, SLOTS = 40, 30, 16


async def scores(bundle, x: torch.Tensor, device: str):
    """Engine scores of frames x on a device (z0 = E(x), computed by the engine)."""
    models = load_torch_models(bundle, device)
    engine = SearchEngine(models, SearchConfig(steps=STEPS), bundle.image_shape, SLOTS,
                          device).start()
    try:
        requests = [engine.submit(x[i], None, STEPS) for i in range(len(x))]
        outcomes = await asyncio.gather(*(r.future for r in requests))
        return np.array([o.result.score for o in outcomes]), engine.stats
    finally:
        engine.stop()


def main() -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    bundle = read_bundle("bundles/default")
    x = torch.rand(FRAMES, *bundle.image_shape) * 2 - 1
    cpu, _ = asyncio.run(scores(bundle, x, "cpu"))
    gpu, stats = asyncio.run(scores(bundle, x, "cuda"))
    print("torch", torch.__version__, "ONNX Runtime vs torch on cuda:",
          check_parity(bundle, load_torch_models(bundle, "cuda")))
    print("engine on cuda vs cpu: max relative difference",
          float(np.max(np.abs(gpu - cpu) / cpu)), stats)


if __name__ == "__main__":
    main()
