"""Write a bundle: torch.export programs and ONNX for G, f and E, checked, with a manifest.

Everything is written into a temporary sibling directory and renamed into place at the
end, so a failed export (ONNX checker, parity above tolerance, a full disk) leaves no
half-written bundle behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anogan_inspect.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MAX_BATCH,
    PARITY_TOLERANCE,
    SIGNATURES,
    example_input,
    sha256_file,
)
from anogan_inspect.networks import ModelConfig
from anogan_inspect.onnxrt import make_session, max_parity_error
from anogan_inspect.preprocess import NORMALIZATION

log = logging.getLogger(__name__)


# A memory bundle's held-out normal frames (uint8, N × C × H × W): trainer/learn.py
# calibrates each new version on them again, wherever the bundle is.
HELDOUT_FILE = "heldout.npy"


class ExportError(Exception):
    """The export failed a check; nothing was written."""


def export_torch(module: nn.Module, example: torch.Tensor, input_name: str, path: Path) -> None:
    """A torch.export program with a dynamic batch axis (loadable without our classes)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def export_onnx(module: nn.Module, example: torch.Tensor, names: tuple[str, str],
                path: Path) -> None:
    """ONNX with fixed input/output names and a dynamic batch axis; checked in full."""
    import onnx

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module, (example,), str(path), input_names=[names[0]], output_names=[names[1]],
            dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}},
            dynamo=True, external_data=False, verbose=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def export_bundle(out_dir: Path, model: ModelConfig, networks: dict[str, nn.Module],
                  manifest_fields: dict, tolerance: float = PARITY_TOLERANCE,
                  memory_scorer: nn.Module | None = None,
                  heldout_frames: np.ndarray | None = None) -> Path:
    """Export networks ('generator', 'features', optionally 'encoder') into a new bundle.

    ``manifest_fields`` carries name, version, search defaults, threshold and training
    metadata (and ``memory``, for a memory bundle, whose scorer is exported as
    memory.pt2 and memory.onnx). Raises ExportError (leaving nothing) when a parity check
    fails.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        entries, parity = {}, {}
        for name, module in networks.items():
            # Export from a CPU copy: bundles are device-independent, and the trainer's
            # networks (perhaps on CUDA) stay where they are.
            cpu_module = copy.deepcopy(module).cpu().eval()
            entries[name], parity[name] = _export_network(tmp, name, cpu_module, model,
                                                          tolerance)
        if memory_scorer is not None:
            manifest_fields = dict(manifest_fields)
            manifest_fields["memory"] = {
                **manifest_fields["memory"],
                "scorer": export_memory_scorer(tmp, memory_scorer, model.channels, tolerance)}
            parity["memory"] = manifest_fields["memory"]["scorer"]["parity_error"]
            if heldout_frames is not None:  # what a new version is calibrated on again
                np.save(tmp / HELDOUT_FILE, np.round(np.asarray(heldout_frames) * 255)
                        .astype(np.uint8))
                manifest_fields["memory"]["heldout"] = HELDOUT_FILE
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **manifest_fields,
            "model": model.to_dict(),
            "geometry": {"channels": model.channels, "height": model.image_size,
                         "width": model.image_size},
            "normalization": NORMALIZATION,
            "latent_dim": model.latent_dim,
            "networks": entries,
            "parity": {"tolerance": tolerance, "max_error": parity},
            "files": file_entries(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s", out_dir)
    return out_dir


def _export_network(tmp: Path, name: str, module: nn.Module, model: ModelConfig,
                    tolerance: float) -> tuple[dict, float]:
    """Both exports of one network, and its ONNX Runtime parity against eager torch."""
    names = SIGNATURES[name]
    example = example_input(_Shape(model), name)
    export_torch(module, example, names[0], tmp / f"{name}.pt2")
    export_onnx(module, example, names, tmp / f"{name}.onnx")
    session = make_session(tmp / f"{name}.onnx", "cpu", intra_op_threads=1)
    error = max_parity_error(session, module, example_input(_Shape(model), name, batch=5, seed=1))
    if error > tolerance:
        raise ExportError(f"{name}: ONNX Runtime and torch differ by {error:.2e} "
                          f"(tolerance {tolerance:.0e})")
    entry = {"torch": f"{name}.pt2", "onnx": f"{name}.onnx",
             "inputs": [names[0]], "outputs": [names[1]]}
    return entry, error


MEMORY_INPUT_MIN = 16  # the smallest frame side a memory scorer is exported for


def export_memory_scorer(tmp: Path, scorer: nn.Module, channels: int, tolerance: float
                         ) -> dict:
    """The memory scorer (image → map, score) as a torch.export program and ONNX (the
    memory an initializer), batch, height and width dynamic; ONNX Runtime checked against
    torch on a frame of another size than the one exported with."""
    import onnx

    scorer = copy.deepcopy(scorer).cpu().eval()
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH),
            2: torch.export.Dim("height", min=MEMORY_INPUT_MIN, max=8192),
            3: torch.export.Dim("width", min=MEMORY_INPUT_MIN, max=8192)}
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(2, channels, 64, 80, generator=gen) * 2 - 1
    program = torch.export.export(scorer, (example,), dynamic_shapes=(dims,))
    torch.export.save(program, str(tmp / "memory.pt2"))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(scorer, (example,), str(tmp / "memory.onnx"),
                          input_names=["image"], output_names=["map", "score"],
                          dynamic_shapes=(dims,), dynamo=True, external_data=False,
                          verbose=False)
    onnx.checker.check_model(onnx.load(str(tmp / "memory.onnx")), full_check=True)
    check = torch.rand(3, channels, 72, 56, generator=gen) * 2 - 1
    error = max_parity_error(make_session(tmp / "memory.onnx", "cpu", intra_op_threads=1),
                             scorer, check)
    if error > tolerance:
        raise ExportError(f"memory scorer: ONNX Runtime and torch differ by {error:.2e} "
                          f"(tolerance {tolerance:.0e})")
    return {"torch": "memory.pt2", "onnx": "memory.onnx", "inputs": ["image"],
            "outputs": ["map", "score"], "parity_error": error}


class _Shape:
    """What example_input needs to know about a model."""

    def __init__(self, model: ModelConfig):
        self.latent_dim = model.latent_dim
        self.image_shape = (model.channels, model.image_size, model.image_size)


def file_entries(folder: Path) -> dict:
    """The manifest's `files`: every file of a bundle folder with its sha256 and size."""
    return {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(folder.iterdir())}


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Rename tmp into out_dir, replacing an existing bundle only after tmp is complete."""
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
