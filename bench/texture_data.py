"""The texture benchmark: normal frames cut from a texture, small defects drawn on others.

    python -m bench.texture_data --out data/texture [--size 192] [--train 200] [--test 50]
    python -m bench.texture_data --out data/texture-varied --variation
    python -m bench.texture_data --out data/texture-weave --texture weave

Writes an MVTec AD layout: ``train/good``, ``test/good``, ``test/<defect>`` and
``ground_truth/<defect>/<name>_mask.png`` for four defect kinds a line camera meets:

- ``scratch``: a thin line, 1–2 px wide, 15–45 px long, bright or dark;
- ``hole``: a black disc 3–6 px across;
- ``stain``: a soft-edged blob 10–20 px across, darker or lighter by 35–50 %;
- ``patch``: a 12–20 px foreign patch (smooth, with fine noise).

The texture is scikit-image's ``grass.png`` (CC0, ``data/textures/grass.png``), or with
``--texture weave`` a plain-woven fabric generated here (:func:`weave`: yarns over and under
in turn, each with its own width, brightness and waviness, fibres and sensor noise), a
regular texture of the kind a line inspects, where grass is an irregular one. Training
frames come from the texture's left 320 columns, test frames from the rest, each crop
flipped and rotated at random, so no test pixel was seen in training. Deterministic for a
seed.

``--variation`` makes the second benchmark: normal frames vary as a line's do, training and
test frames alike (gain 0.8–1.2 and offset ±0.08, a lighting gradient of up to ±25 % across
the frame, rotation ±4°, scale ±5 %, sensor noise σ 0.005–0.025, JPEG quality 70–95), and the
defects are subtler (scratches and holes only 0.2–0.4 off the texture, stains 20–35 %,
patches near the texture's own level). Defects are drawn after the geometric variation and
before the photometric one, as a real part is lit and photographed with its defect. Its
split leaves the margin rotation needs: training crops from columns [0, 290).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT

TEXTURE = ROOT / "data" / "textures" / "grass.png"
TEXTURES = ("grass", "weave")
TRAIN_COLUMNS = 320  # training crops from columns [0, 320), test crops from the rest
VARIED_TRAIN_COLUMNS = 290  # the varied benchmark's split: rotation needs a wider source
DEFECTS = ("scratch", "hole", "stain", "patch")


def load_texture(path: Path = TEXTURE) -> np.ndarray:
    """The texture as float32 (H, W) in [0, 1]."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def weave(shape: tuple[int, int] = (512, 512), period: float = 10.0, seed: int = 0
          ) -> np.ndarray:
    """A plain-woven fabric seen from above, float32 (H, W) in [0, 1]: warp (vertical) and
    weft (horizontal) yarns `period` pixels apart cross over and under in turn; each yarn
    has its own width and brightness and drifts slowly sideways along its length, is
    brightest along its middle and shaded where it dives under its neighbour, and carries
    fibres (noise stretched along it); dark gaps show between yarns; sensor noise on top."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    count = int(max(shape) / period) + 2

    def yarns(across: np.ndarray, along: np.ndarray, axis: int):
        # a smooth sideways drift: slow along the yarns, about a yarn wide across them
        sigma = (12.0, period) if axis == 0 else (period, 12.0)
        drift = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma, mode="wrap")
        position = (across - 1.5 * drift / drift.std()) / period
        index = np.floor(position).astype(int)
        offset = position - index - 0.5  # −0.5..0.5 across the yarn
        width = 0.42 + 0.04 * rng.standard_normal(count + 2)
        brightness = 0.62 + 0.05 * rng.standard_normal(count + 2)
        index = np.clip(index + 1, 0, count + 1)
        profile = np.sqrt(np.clip(1 - (offset / width[index]) ** 2, 0, 1))
        return index, brightness[index] * (0.35 + 0.65 * profile), profile

    warp_index, warp, warp_profile = yarns(xx, yy, axis=0)
    weft_index, weft, weft_profile = yarns(yy, xx, axis=1)
    warp_on_top = (warp_index + weft_index) % 2 == 0
    dive_warp = 0.75 + 0.25 * np.sin(np.pi * ((yy / period) % 1.0))
    dive_weft = 0.75 + 0.25 * np.sin(np.pi * ((xx / period) % 1.0))
    image = np.where(warp_on_top, warp * dive_warp, weft * dive_weft)
    image = np.where(np.where(warp_on_top, warp_profile, weft_profile) < 0.05, 0.15, image)
    fibres = np.where(warp_on_top, ndimage.gaussian_filter(rng.normal(0, 1, shape), (4, 0.6)),
                      ndimage.gaussian_filter(rng.normal(0, 1, shape), (0.6, 4)))
    image = image * (1 + 0.2 * fibres / fibres.std()) + rng.normal(0, 0.02, shape)
    return np.clip(image, 0, 1).astype(np.float32)


def source_texture(name: str) -> np.ndarray:
    """A benchmark's source texture by name (:data:`TEXTURES`)."""
    if name == "grass":
        return load_texture()
    if name == "weave":
        return weave()
    raise ValueError(f"unknown texture {name!r}: choose from {', '.join(TEXTURES)}")


def crop(texture: np.ndarray, size: int, columns: tuple[int, int], rng) -> np.ndarray:
    """A random size×size crop within `columns`, flipped and rotated at random."""
    top = rng.integers(0, texture.shape[0] - size + 1)
    left = rng.integers(columns[0], columns[1] - size + 1)
    frame = texture[top:top + size, left:left + size]
    frame = np.rot90(frame, rng.integers(4))
    return np.ascontiguousarray(frame[:, ::-1] if rng.random() < 0.5 else frame)


def draw_scratch(frame, rng, subtle=False):
    size = frame.shape[0]
    length, angle = rng.uniform(15, 45), rng.uniform(0, np.pi)
    cy, cx = rng.uniform(length / 2, size - length / 2, 2)
    width = rng.uniform(0.6, 1.1)  # half-width: 1–2 px lines
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = np.sin(angle), np.cos(angle)
    along = (yy - cy) * dy + (xx - cx) * dx
    across = np.abs(-(yy - cy) * dx + (xx - cx) * dy)
    mask = (across <= width) & (np.abs(along) <= length / 2)
    sign = 1 if rng.random() < 0.5 else -1
    if subtle:
        frame[mask] = np.clip(frame[mask].mean() + sign * rng.uniform(0.2, 0.4), 0, 1)
    else:
        frame[mask] = 0.95 if sign > 0 else 0.05
    return mask


def draw_hole(frame, rng, subtle=False):
    size = frame.shape[0]
    radius = rng.uniform(1.5, 3.0)
    cy, cx = rng.uniform(6, size - 6, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    frame[mask] = np.clip(frame[mask].mean() - rng.uniform(0.2, 0.4), 0, 1) if subtle else 0.0
    return mask


def draw_stain(frame, rng, subtle=False):
    size = frame.shape[0]
    radius = rng.uniform(5, 10)
    cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    weight = np.clip(1.5 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius, 0, 1)
    change = rng.uniform(*((0.2, 0.35) if subtle else (0.35, 0.5))) * \
        (1 if rng.random() < 0.5 else -1)
    frame[:] = np.clip(frame * (1 + change * weight), 0, 1)
    return weight >= 0.5


def draw_patch(frame, rng, subtle=False):
    size = frame.shape[0]
    h, w = rng.integers(12, 21, 2)
    top, left = rng.integers(2, size - h - 2), rng.integers(2, size - w - 2)
    level = (frame.mean() + rng.uniform(0.15, 0.3) * (1 if rng.random() < 0.5 else -1)
             if subtle else rng.uniform(0.2, 0.8))
    frame[top:top + h, left:left + w] = np.clip(
        level + rng.normal(0, 0.03, (h, w)), 0, 1)
    mask = np.zeros(frame.shape, dtype=bool)
    mask[top:top + h, left:left + w] = True
    return mask


DRAW = {"scratch": draw_scratch, "hole": draw_hole, "stain": draw_stain, "patch": draw_patch}


def varied_crop(texture: np.ndarray, size: int, columns: tuple[int, int], rng) -> np.ndarray:
    """A crop as `crop` cuts it, then rotated by ±4° and scaled by ±5 % about its centre."""
    from scipy import ndimage

    source = crop(texture, min(columns[1] - columns[0], texture.shape[0]), columns, rng)
    angle, zoom = np.deg2rad(rng.uniform(-4, 4)), rng.uniform(0.95, 1.05)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation / zoom  # output coordinates → source coordinates
    centre_out = np.full(2, (size - 1) / 2)
    spare = source.shape[0] - size * 1.075 / 0.95  # room left for the frame to move in
    centre_in = (source.shape[0] - 1) / 2 + rng.uniform(-1, 1, 2) * max(0.0, spare / 2)
    frame = ndimage.affine_transform(source, matrix, offset=centre_in - matrix @ centre_out,
                                     output_shape=(size, size), order=3, mode="reflect")
    return np.clip(frame, 0, 1).astype(np.float32)


def photograph(frame: np.ndarray, rng) -> np.ndarray:
    """A line's photometric variation: gain and offset, a lighting gradient, sensor noise,
    then JPEG (quality 70–95); returns the decoded frame."""
    import io

    size = frame.shape[0]
    yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) / size
    direction = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(-0.25, 0.25) * (np.cos(direction) * xx + np.sin(direction) * yy) * 2
    frame = frame * rng.uniform(0.8, 1.2) * light + rng.uniform(-0.08, 0.08)
    frame = frame + rng.normal(0, rng.uniform(0.005, 0.025), frame.shape)
    buffer = io.BytesIO()
    Image.fromarray((np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
        buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0


def save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def write_benchmark(out: Path, size: int = 192, n_train: int = 200, n_test_good: int = 50,
                    n_per_defect: int = 25, seed: int = 0, variation: bool = False,
                    texture: str = "grass") -> Path:
    """Write the benchmark under `out` (MVTec layout); returns `out`."""
    texture = source_texture(texture)
    split = VARIED_TRAIN_COLUMNS if variation else TRAIN_COLUMNS
    if size > min(split, texture.shape[1] - split, texture.shape[0]):
        raise ValueError(f"frames of {size} px do not fit the texture's halves")
    rng = np.random.default_rng(seed)
    train_columns, test_columns = (0, split), (split, texture.shape[1])
    cut = varied_crop if variation else crop
    finish = (lambda frame: photograph(frame, rng)) if variation else (lambda frame: frame)
    for i in range(n_train):
        save(out / "train" / "good" / f"{i:03d}.png",
             finish(cut(texture, size, train_columns, rng)))
    for i in range(n_test_good):
        save(out / "test" / "good" / f"{i:03d}.png", finish(cut(texture, size, test_columns, rng)))
    for defect in DEFECTS:
        for i in range(n_per_defect):
            frame = cut(texture, size, test_columns, rng).copy()
            mask = DRAW[defect](frame, rng, subtle=variation)
            save(out / "test" / defect / f"{i:03d}.png", finish(frame))
            save(out / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.float32))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.texture_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "texture",
                        help="where to write the MVTec layout (default: data/texture)")
    parser.add_argument("--size", type=int, default=192, help="frame side, pixels")
    parser.add_argument("--train", type=int, default=200, help="normal training frames")
    parser.add_argument("--test", type=int, default=50, help="normal test frames")
    parser.add_argument("--per-defect", type=int, default=25, help="test frames per defect")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--variation", action="store_true",
                        help="normal frames vary as a line's do; subtler defects")
    parser.add_argument("--texture", choices=TEXTURES, default="grass",
                        help="grass (the photograph) or weave (a generated fabric); "
                             "default: grass")
    args = parser.parse_args(argv)
    write_benchmark(args.out, args.size, args.train, args.test, args.per_defect, args.seed,
                    args.variation, args.texture)
    kind = "with normal variation" if args.variation else "clean"
    print(f"{args.texture} benchmark ({kind}): {args.out} ({args.train} train, {args.test} "
          f"normal and {args.per_defect * len(DEFECTS)} defective test frames of "
          f"{args.size}×{args.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
