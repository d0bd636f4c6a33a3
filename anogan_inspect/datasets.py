"""Dataset loaders for normal/anomalous images: MNIST-style CSV, image folders, ``.npy`` arrays.

Every loader returns an :class:`ImageSet` whose images are float32 ``(N, C, H, W)`` in [0, 1].
Scaling is decided by the stored dtype only (uint8 / 255, uint16 / 65535, floats must already
lie in [0, 1]), never guessed from pixel content. Bad input raises :class:`DatasetError` with a
message that starts with the offending file and names the row/entry where there is one.
Only numpy and Pillow are used, so importing this module does not import torch.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogan_inspect.pixels import image_pixels

PathLike = str | os.PathLike[str]
Index = slice | Sequence[int] | np.ndarray

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
IGNORED_DIRS = frozenset({"ground_truth"})
GOOD_CLASS = "good"
SPLITS = ("train", "test")
NORMAL, ANOMALOUS, UNKNOWN = 0, 1, -1
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """Bad dataset; the message names the file (and row/entry where there is one)."""


@dataclass
class ImageSet:
    """Images in [0, 1] with their labels and, when known, anomaly flags."""

    images: np.ndarray
    labels: np.ndarray
    is_anomaly: np.ndarray | None
    source: str
    # Image folders: each image's path relative to the split folder ("scratch/003.png").
    files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check that the arrays agree in shape."""
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {self.images.shape}")
        n = len(self.images)
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        if self.is_anomaly is not None and self.is_anomaly.shape != (n,):
            raise ValueError(f"is_anomaly must have shape ({n},), got {self.is_anomaly.shape}")
        if self.files is not None and len(self.files) != n:
            raise ValueError(f"files must name {n} images, got {len(self.files)}")

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def subset(self, idx: Index) -> ImageSet:
        """Return the images selected by ``idx`` (indices, boolean mask or slice)."""
        sel = idx if isinstance(idx, slice) else np.asarray(idx)
        flags = None if self.is_anomaly is None else self.is_anomaly[sel]
        files = None if self.files is None else tuple(np.asarray(self.files)[sel].tolist())
        return ImageSet(self.images[sel], self.labels[sel], flags, self.source, files)


# --------------------------------------------------------------------------------------- CSV


def load_csv(
    path: PathLike,
    normal_labels: Sequence[int] | None = None,
    anomaly_labels: Sequence[int] | None = None,
) -> ImageSet:
    """Load an MNIST-style CSV (``label, p1 .. pH*W``; optional header; optionally gzipped).

    A first row whose label cell is not a number is a header.

    Only ``normal_labels``: keep those rows, all normal. Both: keep rows in either set,
    ``is_anomaly`` = label in ``anomaly_labels``. Only ``anomaly_labels``: keep all rows,
    flag those. Neither: keep all rows, ``is_anomaly`` is None.
    """
    path = Path(path)
    lines = _nonblank_lines(path, _read_text(path))
    header = _header_cells(lines[0][1])
    if header is not None:
        lines = lines[1:]
        if not lines:
            raise DatasetError(f"{path}: no data rows (only a header on line 1)")
    ncols = len(header) if header is not None else _count_cells(lines[0][1])
    if ncols < 2:
        raise DatasetError(f"{path}: need a label column and pixel columns, found {ncols} column")
    _check_column_counts(path, lines, ncols, from_header=header is not None)
    data = _parse_numbers(path, lines)
    line_numbers = np.array([number for number, _ in lines])
    labels = _integer_labels(path, data[:, 0], line_numbers)
    pixels = data[:, 1:]
    _check_pixel_range(path, pixels, line_numbers)
    side = _square_side(path, pixels.shape[1])
    keep, is_anomaly = _select_rows(path, labels, normal_labels, anomaly_labels)
    images = pixels[keep].astype(np.float32) / np.float32(255)
    flags = None if is_anomaly is None else is_anomaly[keep]
    return ImageSet(images.reshape(-1, 1, side, side), labels[keep], flags, str(path))


def _read_text(path: Path) -> str:
    """Read a text file, transparently gunzipping it when it starts with the gzip magic."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw.startswith(_GZIP_MAGIC):
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a CSV file") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from exc


def _nonblank_lines(path: Path, text: str) -> list[tuple[int, str]]:
    """Return ``(1-based line number, line)`` for every non-blank line; error if none."""
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: file is empty")
    return lines


def _is_number(cell: str) -> bool:
    """Whether a CSV cell parses as a number."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _header_cells(line: str) -> list[str] | None:
    """Return the cells of ``line`` if it is a header (its label cell is not numeric), else None.

    Keying on the label cell keeps a data row with one bad pixel from passing as a header.
    """
    cells = next(csv.reader([line]))
    return None if _is_number(cells[0]) else cells


def _count_cells(line: str) -> int:
    """Number of comma-separated cells in a data line."""
    return line.count(",") + 1


def _check_column_counts(
    path: Path, lines: list[tuple[int, str]], ncols: int, *, from_header: bool
) -> None:
    """Raise on the first data line whose column count differs from ``ncols``."""
    reference = "the header" if from_header else f"the first data row (line {lines[0][0]})"
    for number, line in lines:
        found = _count_cells(line)
        if found != ncols:
            raise DatasetError(
                f"{path}: line {number} has {found} columns, expected {ncols} as in {reference}"
            )


def _parse_numbers(path: Path, lines: list[tuple[int, str]]) -> np.ndarray:
    """Parse the data lines into a 2-D array (fast path via ``np.loadtxt``)."""
    texts = [line for _, line in lines]
    for dtype in (np.int64, np.float64):
        try:
            return np.loadtxt(
                texts, delimiter=",", dtype=dtype, quotechar='"', comments=None, ndmin=2
            )
        except (ValueError, OverflowError):
            continue
    return _parse_numbers_slowly(path, lines)


def _parse_numbers_slowly(path: Path, lines: list[tuple[int, str]]) -> np.ndarray:
    """Parse cell by cell, raising on the first non-numeric cell with its line and column."""
    rows = []
    for number, cells in zip((n for n, _ in lines), csv.reader(t for _, t in lines)):
        row = []
        for column, cell in enumerate(cells, start=1):
            try:
                row.append(float(cell))
            except ValueError:
                raise DatasetError(
                    f"{path}: line {number}, column {column}: non-numeric value {cell!r}"
                ) from None
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def _integer_labels(path: Path, values: np.ndarray, line_numbers: np.ndarray) -> np.ndarray:
    """Return the label column as int64, raising on a non-integer label."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(np.argmax(bad))
            raise DatasetError(
                f"{path}: line {line_numbers[row]}, column 1: label {values[row]!r} "
                "is not an integer"
            )
    return values.astype(np.int64)


def _check_pixel_range(path: Path, pixels: np.ndarray, line_numbers: np.ndarray) -> None:
    """Raise on the first pixel outside 0..255 (NaN included), naming line and column."""
    bad = ~((pixels >= 0) & (pixels <= 255))
    if bad.any():
        row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise DatasetError(
            f"{path}: line {line_numbers[row]}, column {col + 2}: pixel value "
            f"{pixels[row, col]} outside 0..255"
        )


def _square_side(path: Path, npixels: int) -> int:
    """Side of the square image with ``npixels`` pixels, or raise."""
    side = math.isqrt(npixels)
    if side * side != npixels:
        raise DatasetError(
            f"{path}: {npixels} pixel columns is not a perfect square (need H*W with H == W)"
        )
    return side


def _select_rows(
    path: Path,
    labels: np.ndarray,
    normal_labels: Sequence[int] | None,
    anomaly_labels: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(row mask, is_anomaly per row or None)`` for the requested label sets."""
    normal = sorted(set(normal_labels)) if normal_labels is not None else None
    anomaly = sorted(set(anomaly_labels)) if anomaly_labels is not None else None
    if normal is not None and anomaly is not None and set(normal) & set(anomaly):
        both = sorted(set(normal) & set(anomaly))
        raise DatasetError(f"{path}: labels {both} are listed as both normal and anomalous")
    present = sorted(int(v) for v in np.unique(labels))
    for option, asked in (("--normal-labels", normal), ("--anomaly-labels", anomaly)):
        absent = sorted(set(asked or []) - set(present))
        if absent:  # a typo would otherwise drop a class (and its AUROC) silently
            raise DatasetError(f"{path}: {option} {','.join(map(str, asked))}: no rows with "
                               f"label{'s' if len(absent) > 1 else ''} "
                               f"{', '.join(map(str, absent))}; labels present: "
                               f"{', '.join(map(str, present))}")
    is_anomaly = None if anomaly is None else np.isin(labels, anomaly)
    if normal is None:
        keep = np.ones(len(labels), dtype=bool)
    else:
        keep = np.isin(labels, normal + (anomaly or []))
        if is_anomaly is None:
            is_anomaly = np.zeros(len(labels), dtype=bool)
    return keep, is_anomaly


# ------------------------------------------------------------------------------------ folder


def load_folder(path: PathLike, split: str = "train") -> ImageSet:
    """Load PNG/JPEG/BMP images from a flat folder, class folders, or an MVTec AD category.

    MVTec layout (``root/train/good``, ``root/test/<class>``): loads ``root/<split>``.
    Class folders: ``good`` is normal (label 0), any other folder anomalous (label 1).
    Flat folder: labels -1 and ``is_anomaly`` None.
    """
    listing = list_folder(path, split)
    images = _decode_all(listing.folder, listing.files)
    labels = np.array(listing.labels, dtype=np.int64)
    return ImageSet(images, labels, None if listing.flat else labels == ANOMALOUS,
                    str(listing.root), listing.names)


@dataclass
class FolderListing:
    """An image folder's files, in order, without decoding any (load_folder decodes them
    all; the streaming client reads one at a time)."""

    root: Path
    folder: Path  # the split folder, or root
    files: list[Path]
    labels: list[int]  # NORMAL/ANOMALOUS by class folder, UNKNOWN in a flat folder
    flat: bool

    @property
    def names(self) -> tuple[str, ...]:
        """Each file's path relative to the split folder ("scratch/003.png")."""
        return tuple(str(f.relative_to(self.folder)) for f in self.files)


def list_folder(path: PathLike, split: str = "train") -> FolderListing:
    """The layout rules of load_folder, applied to file names only."""
    root = Path(path)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "directory not found"
        raise DatasetError(f"{root}: {what}")
    if any((root / name).is_dir() for name in SPLITS):
        if split not in SPLITS:
            raise DatasetError(f"{root}: unknown split {split!r}, expected one of {SPLITS}")
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir}: split folder not found")
        return _list_class_folders(root, split_dir)
    entries = _visible_entries(root)
    if entries and all(entry.is_dir() for entry in entries):
        return _list_class_folders(root, root)
    files = _image_files(root)
    return FolderListing(root, root, files, [UNKNOWN] * len(files), flat=True)


def _visible_entries(folder: Path) -> list[Path]:
    """Sorted entries of ``folder`` without hidden names and ``ground_truth`` folders."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".")
        and not (entry.name in IGNORED_DIRS and entry.is_dir())
    )


def _image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in ``folder``; raise on subfolders or non-image files."""
    files = []
    for entry in _visible_entries(folder):
        if entry.is_dir():
            raise DatasetError(f"{entry}: unexpected subfolder next to image files")
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            allowed = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetError(f"{entry}: not an image file (expected {allowed})")
        files.append(entry)
    return files


def _list_class_folders(root: Path, folder: Path) -> FolderListing:
    """``folder/<class>/*``: class ``good`` is normal, every other class anomalous."""
    files: list[Path] = []
    labels: list[int] = []
    for entry in _visible_entries(folder):
        if not entry.is_dir():
            raise DatasetError(f"{entry}: unexpected file next to class folders in {folder}")
        class_files = _image_files(entry)
        files += class_files
        labels += [NORMAL if entry.name == GOOD_CLASS else ANOMALOUS] * len(class_files)
    return FolderListing(root, folder, files, labels, flat=False)


def _decode_all(folder: Path, files: list[Path]) -> np.ndarray:
    """Decode ``files`` into one float32 ``(N, C, H, W)`` array; C=1 only if all are gray."""
    if not files:
        raise DatasetError(f"{folder}: no images found")
    arrays = [decode_image_file(files[0])]
    height, width = arrays[0].shape[:2]
    for file in files[1:]:
        array = decode_image_file(file)
        if array.shape[:2] != (height, width):
            raise DatasetError(
                f"{file}: image size {array.shape[1]}x{array.shape[0]} differs from "
                f"{width}x{height} of {files[0].name}"
            )
        arrays.append(array)
    channels = max(array.shape[2] for array in arrays)
    stacked = np.stack([np.broadcast_to(a, (height, width, channels)) for a in arrays])
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def decode_image_file(file: Path) -> np.ndarray:
    """Decode one image file into float32 ``(H, W, C)`` in [0, 1], C = 1 (gray) or 3."""
    try:
        with Image.open(file) as img:
            img.load()
            try:
                return image_pixels(img)
            except ValueError as exc:  # values outside the storage type's range
                raise DatasetError(f"{file}: {exc}") from exc
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{file}: cannot decode image: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{file}: image too large: {exc}") from exc


# --------------------------------------------------------------------------------------- npy


def load_npy(path: PathLike, labels_path: PathLike | None = None) -> ImageSet:
    """Load ``(N, H, W)`` or ``(N, H, W, C)`` (C in {1, 3}) images, uint8/uint16/float [0, 1].

    ``labels_path`` names an optional ``.npy`` of 0/1 integers (1 = anomalous).
    """
    path = Path(path)
    array = _read_npy(path)
    images = _npy_images(path, array)
    if labels_path is None:
        return ImageSet(images, np.full(len(images), UNKNOWN, dtype=np.int64), None, str(path))
    labels = _npy_labels(Path(labels_path), len(images))
    return ImageSet(images, labels, labels == ANOMALOUS, str(path))


def _read_npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` array without pickles; raise DatasetError on any failure."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path}: expected a single .npy array, not an archive")
    return array


def _npy_images(path: Path, array: np.ndarray) -> np.ndarray:
    """Validate shape and dtype of an image array and return float32 ``(N, C, H, W)``."""
    if array.ndim == 3:
        array = array[..., None]
    elif array.ndim != 4 or array.shape[3] not in (1, 3):
        raise DatasetError(
            f"{path}: expected shape (N, H, W) or (N, H, W, C) with C in (1, 3), "
            f"got {array.shape}"
        )
    if len(array) == 0:
        raise DatasetError(f"{path}: contains no images")
    return np.ascontiguousarray(_scale_array(path, array).transpose(0, 3, 1, 2))


def _scale_array(path: Path, array: np.ndarray) -> np.ndarray:
    """Scale an ``(N, ...)`` array to float32 [0, 1] by dtype; floats are range-checked."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    if array.dtype.kind != "f":
        raise DatasetError(
            f"{path}: unsupported dtype {array.dtype} (expected uint8, uint16 or float in [0, 1])"
        )
    flat = array.reshape(len(array), -1)
    _raise_first_bad_image(path, ~np.isfinite(flat), "non-finite values (NaN or inf)")
    _raise_first_bad_image(path, (flat < 0) | (flat > 1), "float values outside [0, 1]")
    return array.astype(np.float32)


def _raise_first_bad_image(path: Path, bad: np.ndarray, problem: str) -> None:
    """Raise naming the first image (row of ``bad``) that has any flagged value."""
    per_image = bad.any(axis=1)
    if per_image.any():
        raise DatasetError(f"{path}: image {int(np.argmax(per_image))} has {problem}")


def _npy_labels(path: Path, n: int) -> np.ndarray:
    """Read 0/1 anomaly labels for ``n`` images as int64."""
    labels = _read_npy(path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise DatasetError(f"{path}: expected {n} labels of shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise DatasetError(f"{path}: labels must be integers 0/1, got dtype {labels.dtype}")
    bad = (labels != NORMAL) & (labels != ANOMALOUS)
    if bad.any():
        index = int(np.argmax(bad))
        raise DatasetError(f"{path}: label {index} is {labels[index]}, expected 0 or 1")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------- dispatch


def load_dataset(
    path: PathLike,
    *,
    split: str = "train",
    normal_labels: Sequence[int] | None = None,
    anomaly_labels: Sequence[int] | None = None,
) -> ImageSet:
    """Load ``.csv``/``.csv.gz``, ``.npy`` or an image folder, chosen by path type.

    ``split`` applies to folders only; the label sets apply to CSV files only (asking for
    them with anything else is a DatasetError rather than a filter silently not applied).
    """
    path = Path(path)
    name = path.name.lower()
    if (normal_labels or anomaly_labels) and not name.endswith((".csv", ".csv.gz")):
        raise DatasetError(f"{path}: --normal-labels/--anomaly-labels select rows of a CSV "
                           "file; folders use good/<defect> folders and .npy arrays are all "
                           "normal")
    if path.is_dir():
        return load_folder(path, split)
    if name.endswith((".csv", ".csv.gz")):
        return load_csv(path, normal_labels, anomaly_labels)
    if name.endswith(".npy"):
        return load_npy(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    raise DatasetError(f"{path}: unsupported dataset (expected .csv, .csv.gz, .npy or a folder)")


def normal_subset(data: ImageSet) -> ImageSet:
    """The normal images of ``data``: ``data`` itself when it flags no image anomalous.

    Training uses these only: a class-folder layout (``root/good`` + ``root/<defect>``)
    holds anomalies too. Raises naming ``data.source`` when no image is normal.
    """
    if data.is_anomaly is None or not data.is_anomaly.any():
        return data
    normal = data.subset(~data.is_anomaly)
    if len(normal) == 0:
        raise DatasetError(
            f"{data.source}: no normal images to train on: all {len(data)} are anomalous "
            f"(normal images go in a '{GOOD_CLASS}' folder)"
        )
    return normal


def heldout_split(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic sorted, disjoint ``(train_idx, holdout_idx)`` covering ``range(n)``.

    The holdout has ``round(n * fraction)`` items, at least 1 when ``fraction > 0`` and
    ``n >= 2``, and never all ``n`` (at least one index stays in the training part).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    k = round(n * fraction)
    if fraction > 0 and n >= 2:
        k = max(k, 1)
    k = min(k, max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[k:]).astype(np.int64), np.sort(order[:k]).astype(np.int64)
