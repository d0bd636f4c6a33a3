"""ONNX Runtime sessions with explicit providers, and the torch-vs-ORT parity check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def providers_for(device: str) -> list:
    """CUDA only when asked for and present (asking for it without a GPU logs loud errors),
    on the device named, TF32 off."""
    import onnxruntime as ort

    wanted = device.startswith("cuda") and torch.cuda.is_available()
    if wanted and "CUDAExecutionProvider" in ort.get_available_providers():
        return [cuda_provider(device), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cuda_provider(device: str) -> tuple[str, dict[str, str]]:
    """ONNX Runtime's CUDA provider for a torch device name ("cuda", "cuda:1"): on that
    GPU (without device_id every session runs on GPU 0), and without TF32 (on by default
    on Ampere and later), which rounds float32 convolutions to ~1e-3: the fast path's
    scores must match the search's within the cascade's margin."""
    index = torch.device(device).index or 0
    return "CUDAExecutionProvider", {"device_id": str(index), "use_tf32": "0"}


def make_session(model: Path | str | bytes, device: str = "cpu", intra_op_threads: int = 0,
                 optimization: str = "all"):
    """An InferenceSession with explicit providers and full graph optimisation (the other
    levels, 'disable', 'basic', 'extended', are for experiments). model: path or bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    options.intra_op_num_threads = intra_op_threads  # 0: one per physical core
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers_for(device))


def max_parity_error(session, torch_fn: Callable, example: torch.Tensor) -> float:
    """Largest |ORT - torch| on one example input, over every output (a memory scorer has
    two: map and score), relative to the outputs' scale."""
    input_name = session.get_inputs()[0].name
    ort_outs = session.run(None, {input_name: example.cpu().numpy()})
    with torch.no_grad():
        torch_outs = torch_fn(example)
    if isinstance(torch_outs, torch.Tensor):
        torch_outs = (torch_outs,)
    torch_outs = [t.detach().cpu().numpy() for t in torch_outs]
    scale = max(1.0, *(float(np.abs(t).max()) for t in torch_outs))
    return max(float(np.abs(o - t).max()) for o, t in zip(ort_outs, torch_outs, strict=True)
               ) / scale
