"""The bundle: a directory with torch and ONNX exports of G, f and E, and a manifest.

Reading, verifying (sha256 of every file, ONNX-vs-torch parity) and loading; the trainer's
``export`` module writes bundles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from anogan_inspect.configs import PARITY_TOLERANCE  # noqa: F401 (re-exported)
from anogan_inspect.manifest import FORMAT, FORMAT_VERSION, validate_manifest
from anogan_inspect.search import ScoringModels, SearchConfig
from anogan_inspect.tiling import Tiling

MANIFEST = "manifest.json"
# Fixed input/output names of the three networks, in torch and ONNX.
SIGNATURES = {
    "generator": ("z", "image"),
    "features": ("image", "features"),
    "encoder": ("image", "z"),
}
# The largest batch the exported torch programs accept (their batch axis's bound): the
# server's search slots and fast-path batches stay within it.
MAX_BATCH = 4096


class BundleError(Exception):
    """A bundle that cannot be served: missing, malformed, tampered or out of parity."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A bundle directory and its parsed manifest."""

    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def channels(self) -> int:
        return self.manifest["geometry"]["channels"]

    @property
    def image_size(self) -> int:
        return self.manifest["geometry"]["height"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def latent_dim(self) -> int:
        return self.manifest["latent_dim"]

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"]["value"])

    @property
    def thresholds_by_steps(self) -> dict[int, float]:
        """Search budget → the threshold calibrated for it: the manifest's `thresholds`,
        and always the bundle's own search budget with `threshold`."""
        table = {int(steps): float(entry["value"])
                 for steps, entry in (self.manifest.get("thresholds") or {}).items()}
        table[self.search_config.steps] = self.threshold
        return table

    @property
    def fast_threshold(self) -> float:
        """MODE_FAST's threshold, calibrated on the fast scores; bundles from before it was
        (marked "shared_with_search") use the search's."""
        entry = self.manifest.get("fast_threshold")
        if not entry or entry.get("shared_with_search"):
            return self.threshold
        return float(entry["value"])

    @property
    def search_config(self) -> SearchConfig:
        return SearchConfig.from_dict(self.manifest["search"])

    @property
    def tiling(self) -> Tiling | None:
        """How frames are tiled (a tiled bundle), or None (whole frames, resized)."""
        entry = self.manifest.get("tiling")
        return Tiling.from_dict(entry) if entry else None

    @property
    def pixel_threshold(self) -> float | None:
        """Anomaly-map value above which pixels form regions (tiled bundles)."""
        entry = self.manifest.get("tiling")
        return float(entry["pixel_threshold"]) if entry else None

    @property
    def memory(self) -> dict | None:
        """A memory bundle's scorer and calibration (anogan_inspect/memory.py), or None."""
        return self.manifest.get("memory")

    def memory_file(self, kind: str) -> Path:
        """Path of the memory scorer's 'torch' or 'onnx' program."""
        return self.path / self.manifest["memory"]["scorer"][kind]

    def heldout_frames(self):
        """A memory bundle's held-out normal frames, float32 (N, C, H, W) in [0, 1], or
        None for a bundle written without them."""
        import numpy as np

        name = (self.memory or {}).get("heldout")
        if name is None:
            return None
        try:
            frames = np.load(self.path / name, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BundleError(f"{self.path / name}: not the held-out frames ({err})") from err
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != self.channels:
            raise BundleError(f"{self.path / name}: expected uint8 frames (N, "
                              f"{self.channels}, H, W), got {frames.dtype} {frames.shape}")
        return frames.astype(np.float32) / 255.0

    @property
    def has_encoder(self) -> bool:
        return "encoder" in self.manifest["networks"]

    def file(self, network: str, kind: str) -> Path:
        """Path of a network's 'torch' or 'onnx' artifact."""
        return self.path / self.manifest["networks"][network][kind]


def read_bundle(path: Path | str) -> Bundle:
    """Parse a bundle's manifest; BundleError when it is missing or not this format."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: no {MANIFEST} (is this a bundle directory?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    try:
        validate_manifest(manifest, manifest_path)  # anogan_inspect/manifest.py
    except ValueError as err:
        raise BundleError(str(err)) from None
    if manifest["networks"].get("encoder") is None:
        manifest["networks"].pop("encoder", None)
    return Bundle(path, manifest)


def verify_checksums(bundle: Bundle) -> None:
    """Check every file listed in the manifest against its sha256; BundleError names them."""
    problems = []
    for name, entry in bundle.manifest["files"].items():
        file = bundle.path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(file) != entry["sha256"]:
            problems.append(f"{name} does not match its sha256")
    if problems:
        raise BundleError(f"{bundle.path}: " + "; ".join(problems))


def load_torch_models(bundle: Bundle, device: torch.device | str = "cpu",
                      channels_last: bool = True) -> ScoringModels:
    """The exported torch programs, frozen, on the device (no trainer classes needed).

    channels_last weights made the CPU search step 17-25 % faster (docs/performance.md).
    """
    nets = {}
    for network in ("generator", "features", "encoder"):
        if network not in bundle.manifest["networks"]:
            continue
        module = torch.export.load(str(bundle.file(network, "torch"))).module()
        module.requires_grad_(False)
        module = module.to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        nets[network] = module
    return ScoringModels(nets["generator"], nets["features"], bundle.latent_dim,
                         nets.get("encoder")).prepare()


def example_input(bundle_or_shape, network: str, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """A random input for a network: z ~ N(0, 1) for G, images in [-1, 1] for f and E."""
    gen = torch.Generator().manual_seed(seed)
    if network == "generator":
        return torch.randn(batch, bundle_or_shape.latent_dim, generator=gen)
    return torch.rand(batch, *bundle_or_shape.image_shape, generator=gen) * 2 - 1


Signature = tuple[tuple[str, list[int]], tuple[str, list[int] | None]]


def expected_shapes(bundle: Bundle) -> dict[str, Signature]:
    """Per network: (input name, shape), (output name, shape or None), batch left out."""
    image = [bundle.channels, bundle.image_size, bundle.image_size]
    return {"generator": (("z", [bundle.latent_dim]), ("image", image)),
            "features": (("image", image), ("features", None)),
            "encoder": (("image", image), ("z", [bundle.latent_dim]))}


def check_shapes(bundle: Bundle) -> None:
    """Each ONNX program's input and output against the manifest's geometry and latent
    size: a swapped or mismatched file is refused by its shape (BundleError naming it)."""
    from anogan_inspect.onnxrt import make_session

    expected = expected_shapes(bundle)
    for network in bundle.manifest["networks"]:
        (in_name, in_shape), (out_name, out_shape) = expected[network]
        file = bundle.file(network, "onnx")
        session = make_session(file, "cpu", intra_op_threads=1)
        found_in = [(i.name, list(i.shape[1:])) for i in session.get_inputs()]
        found_out = [(o.name, list(o.shape[1:])) for o in session.get_outputs()]
        if found_in != [(in_name, in_shape)] or found_out[0][0] != out_name or \
                (out_shape is not None and found_out[0][1] != out_shape):
            raise BundleError(
                f"{file}: the {network} should map {in_name} {in_shape} to {out_name} "
                f"{out_shape or '[...]'} (geometry {bundle.image_shape}, latent_dim "
                f"{bundle.latent_dim}); this file maps {found_in} to {found_out}")


def check_program_shapes(bundle: Bundle, models: ScoringModels) -> None:
    """Each loaded torch program's output on an example input, against the manifest."""
    for network, ((in_name, in_shape), (out_name, out_shape)) in expected_shapes(bundle).items():
        if network not in bundle.manifest["networks"]:
            continue
        example = example_input(bundle, network, batch=2).to(_device(models))
        try:
            with torch.no_grad():
                output = getattr(models, network)(example)
        except Exception as err:  # a program for other shapes raises on our example
            raise BundleError(f"{bundle.file(network, 'torch')}: the {network} program "
                              f"does not take {in_name} {in_shape}: {err}") from err
        want = [2, *out_shape] if out_shape is not None else None
        if (want is not None and list(output.shape) != want) or output.dim() < 2:
            raise BundleError(f"{bundle.file(network, 'torch')}: the {network} program "
                              f"gives {out_name} {list(output.shape[1:])}, expected "
                              f"{out_shape}")


def load_checked_models(bundle: Bundle, device: torch.device | str = "cpu") -> ScoringModels:
    """The bundle's torch programs, after its checksums and the ONNX and torch shapes are
    checked (the offline tools' load: evaluate, score, calibrate)."""
    verify_checksums(bundle)
    check_shapes(bundle)
    models = load_torch_models(bundle, device)
    check_program_shapes(bundle, models)
    return models


def load_memory_scorer(bundle: Bundle, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A memory bundle's scorer program (image → map, score), frozen, on the device; its
    file's checksum is verify_checksums' to check, its output here (BundleError naming it)."""
    path = bundle.memory_file("torch")
    try:
        scorer = torch.export.load(str(path)).module()
    except Exception as err:  # a damaged or foreign file
        raise BundleError(f"{path}: not a loadable memory scorer program ({err})") from err
    scorer.requires_grad_(False)
    scorer = scorer.to(device)
    example = example_input(bundle, "features", batch=1).to(device)
    example = torch.nn.functional.pad(example, (0, 8, 0, 8), mode="replicate")
    try:
        with torch.no_grad():
            anomaly_map, score = scorer(example)
    except Exception as err:
        raise BundleError(f"{path}: the memory scorer does not take a {bundle.channels}-channel "
                          f"frame: {err}") from err
    if tuple(anomaly_map.shape) != (1, *example.shape[-2:]) or tuple(score.shape) != (1,):
        raise BundleError(f"{path}: the memory scorer gives a map {list(anomaly_map.shape)} "
                          f"and score {list(score.shape)} for a frame {list(example.shape)}")
    return scorer


def check_memory_parity(bundle: Bundle, scorer: torch.nn.Module,
                        tolerance: float = PARITY_TOLERANCE) -> float:
    """ONNX Runtime (CPU) vs the torch memory scorer on a random frame; BundleError above
    tolerance."""
    from anogan_inspect.onnxrt import make_session, max_parity_error

    session = make_session(bundle.memory_file("onnx"), "cpu", intra_op_threads=1)
    example = torch.rand(1, bundle.channels, 40, 48, generator=torch.Generator().manual_seed(0))
    device = next(iter(scorer.buffers()), torch.zeros(0)).device
    error = max_parity_error(session, lambda x: scorer(x.to(device)), example * 2 - 1)
    if error > tolerance:
        raise BundleError(f"{bundle.path}: the memory scorer's ONNX and torch programs differ "
                          f"by {error:.2e} (tolerance {tolerance:.0e})")
    return error


def _device(models: ScoringModels) -> torch.device:
    return next(iter(_parameters(models.generator)), torch.zeros(0)).device


def check_parity(bundle: Bundle, models: ScoringModels, tolerance: float = PARITY_TOLERANCE,
                 ) -> dict[str, float]:
    """ONNX Runtime (CPU) vs the torch programs on random inputs; BundleError above tolerance."""
    from anogan_inspect.onnxrt import make_session, max_parity_error

    errors = {}
    device = next(iter(_parameters(models.generator)), torch.zeros(0)).device
    for network in bundle.manifest["networks"]:
        session = make_session(bundle.file(network, "onnx"), "cpu", intra_op_threads=1)
        example = example_input(bundle, network).to(device)
        fn = getattr(models, network)
        errors[network] = max_parity_error(session, lambda t, fn=fn: fn(t).cpu(), example)
        if errors[network] > tolerance:
            raise BundleError(f"{bundle.path}: {network} ONNX and torch differ by "
                              f"{errors[network]:.2e} (tolerance {tolerance:.0e})")
    return errors


def _parameters(module):
    return module.parameters() if isinstance(module, torch.nn.Module) else []
