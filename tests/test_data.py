"""anogan_inspect.datasets: CSV, folder and .npy loaders, dispatch and the holdout split."""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogan_inspect.datasets import (
    DatasetError,
    ImageSet,
    heldout_split,
    load_csv,
    load_dataset,
    load_folder,
    load_npy,
    normal_subset,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_GZ = REPO_ROOT / "data" / "mnist_train.csv.gz"
HEADER_2X2 = "label,1x1,1x2,2x1,2x2"


# ------------------------------------------------------------------------------- helpers


def write_csv(path: Path, rows: Sequence[str], header: str | None = HEADER_2X2) -> Path:
    """Write CSV lines (optionally with a header) to ``path`` and return it."""
    lines = ([header] if header else []) + list(rows)
    path.write_text("\n".join(lines) + "\n")
    return path


def pixel_rows(labels: Sequence[int], side: int = 2) -> list[str]:
    """One CSV row per label with pixels ``label*10 + k``."""
    n = side * side
    return [",".join(str(v) for v in [lab] + [lab * 10 + k for k in range(n)]) for lab in labels]


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Save ``array`` as an image at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path)
    return path


def gray(value: int, size: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Uniform uint8 grayscale image of ``size`` (H, W)."""
    return np.full(size, value, dtype=np.uint8)


def rgb(value: tuple[int, int, int], size: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Uniform uint8 RGB image of ``size`` (H, W)."""
    return np.broadcast_to(np.array(value, dtype=np.uint8), (*size, 3)).copy()


def assert_unit_float(ds: ImageSet) -> None:
    """Images are float32 NCHW in [0, 1]."""
    assert ds.images.dtype == np.float32
    assert ds.images.ndim == 4
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0


# ----------------------------------------------------------------------------------- CSV


def test_csv_with_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([1, 2, 3]))
    ds = load_csv(path)
    assert len(ds) == 3
    assert ds.images.shape == (3, 1, 2, 2)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [1, 2, 3]
    assert ds.is_anomaly is None
    assert ds.source == str(path)
    assert_unit_float(ds)
    np.testing.assert_allclose(ds.images[1, 0].ravel(), np.array([20, 21, 22, 23]) / 255)


def test_csv_without_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([4, 5]), header=None)
    ds = load_csv(path)
    assert ds.labels.tolist() == [4, 5]
    assert ds.images.shape == (2, 1, 2, 2)


def test_csv_header_with_numeric_pixel_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([4]), header="label,0,1,2,3")
    assert load_csv(path).labels.tolist() == [4]


def test_csv_float_cells_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"label,a,b,c,d\r\n3,0.0,255.0,0,0\r\n\r\n4,1,2,3,4\r\n")
    ds = load_csv(path)
    assert ds.labels.tolist() == [3, 4]
    assert ds.images[0, 0, 0, 1] == pytest.approx(1.0)


def test_csv_gz(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    text = "\n".join([HEADER_2X2, *pixel_rows([7, 8, 2])]) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    ds = load_dataset(path, normal_labels=[7, 8])
    assert ds.labels.tolist() == [7, 8]


def test_csv_normal_labels_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2, 8, 1, 7]))
    ds = load_csv(path, normal_labels=[7, 8])
    assert ds.labels.tolist() == [7, 8, 7]
    assert ds.is_anomaly is not None and not ds.is_anomaly.any()


def test_csv_normal_and_anomaly_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2, 8, 1, 7]))
    ds = load_csv(path, normal_labels=(7, 8), anomaly_labels=(2,))
    assert ds.labels.tolist() == [7, 2, 8, 7]
    assert ds.is_anomaly is not None
    assert ds.is_anomaly.tolist() == [False, True, False, False]


def test_csv_anomaly_labels_only_keeps_all_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2, 8]))
    ds = load_csv(path, anomaly_labels=[2])
    assert ds.is_anomaly is not None and ds.is_anomaly.tolist() == [False, True, False]


def test_csv_overlapping_label_sets(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2]))
    with pytest.raises(DatasetError, match="both normal and anomalous"):
        load_csv(path, normal_labels=[7], anomaly_labels=[7, 2])


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.csv"):
        load_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_csv_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"empty\.csv.*empty"):
        load_csv(path)


def test_csv_empty_gz_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv.gz"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.csv\.gz.*empty"):
        load_csv(path)


def test_csv_corrupt_gz(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3,4,5\n")[:-8] + b"garbage!")
    with pytest.raises(DatasetError, match=r"bad\.csv\.gz"):
        load_csv(path)


def test_csv_header_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "h.csv", [])
    with pytest.raises(DatasetError, match=r"h\.csv.*no data rows"):
        load_csv(path)


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    rows = pixel_rows([1, 2]) + ["3,1,2,3"]
    path = write_csv(tmp_path / "cols.csv", rows)
    with pytest.raises(DatasetError, match=r"cols\.csv: line 4 has 4 columns, expected 5"):
        load_csv(path)


def test_csv_wrong_column_count_without_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cols.csv", ["1,0,0,0,0", "2,0,0,0,0,0"], header=None)
    with pytest.raises(DatasetError, match=r"cols\.csv: line 2 .*first data row \(line 1\)"):
        load_csv(path)


def test_csv_non_numeric_cell(tmp_path: Path) -> None:
    rows = pixel_rows([1, 2]) + ["3,1,2,oops,4"]
    path = write_csv(tmp_path / "nn.csv", rows)
    with pytest.raises(DatasetError, match=r"nn\.csv: line 4, column 4: non-numeric value 'oops'"):
        load_csv(path)


def test_csv_non_numeric_cell_in_first_row_without_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "nn.csv", ["3,1,x,3,4", "1,0,0,0,0"], header=None)
    with pytest.raises(DatasetError, match=r"nn\.csv: line 1, column 3"):
        load_csv(path)


@pytest.mark.parametrize("value", ["256", "-1", "nan", "300.5"])
def test_csv_pixel_out_of_range(tmp_path: Path, value: str) -> None:
    rows = pixel_rows([1]) + [f"2,0,0,{value},0"]
    path = write_csv(tmp_path / "range.csv", rows)
    with pytest.raises(DatasetError, match=r"range\.csv: line 3, column 4: .*outside 0\.\.255"):
        load_csv(path)


def test_csv_non_integer_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "lab.csv", ["1,0,0,0,0", "2.5,0,0,0,0"])
    with pytest.raises(DatasetError, match=r"lab\.csv: line 3, column 1: label"):
        load_csv(path)


def test_csv_not_square(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "sq.csv", ["1,0,0,0"], header="label,a,b,c")
    with pytest.raises(DatasetError, match=r"sq\.csv.*perfect square"):
        load_csv(path)


def test_csv_no_rows_after_filter(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "f.csv", pixel_rows([1, 2, 1]))
    with pytest.raises(DatasetError, match=r"f\.csv: --normal-labels 7,8: no rows with labels "
                                           r"7, 8; labels present: 1, 2"):
        load_csv(path, normal_labels=[7, 8])


@pytest.mark.parametrize("normal, anomaly, says", [
    ([7, 8], [12], "--anomaly-labels 12: no rows with label 12; labels present: 2, 7, 8"),
    ([7, 9], [2], "--normal-labels 7,9: no rows with label 9;"),
    (None, [2, 3], "--anomaly-labels 2,3: no rows with label 3;"),
])
def test_a_label_asked_for_but_absent_is_an_error_naming_it(tmp_path: Path, normal, anomaly,
                                                             says) -> None:
    """Before, --anomaly-labels 12 was accepted and the AUROC just disappeared."""
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2, 8]))
    with pytest.raises(DatasetError, match=re.escape(f"d.csv: {says}")):
        load_csv(path, normal_labels=normal, anomaly_labels=anomaly)


def test_csv_large_file_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.integers(0, 10, 4000), rng.integers(0, 256, (4000, 784))])
    path = tmp_path / "big.csv"
    np.savetxt(path, data, fmt="%d", delimiter=",", header="label," + ",".join(["p"] * 784))
    ds = load_csv(path)
    assert ds.images.shape == (4000, 1, 28, 28)
    np.testing.assert_array_equal(ds.labels, data[:, 0])


@pytest.mark.skipif(not MNIST_GZ.exists(), reason="MNIST sample not present")
def test_mnist_sample_normal_digits() -> None:
    ds = load_dataset(MNIST_GZ, normal_labels=(7, 8))
    assert len(ds) == 800
    assert ds.images.shape == (800, 1, 28, 28)
    assert_unit_float(ds)
    assert set(ds.labels.tolist()) == {7, 8}
    assert ds.is_anomaly is not None and not ds.is_anomaly.any()


# -------------------------------------------------------------------------------- folder


def test_folder_flat_gray(tmp_path: Path) -> None:
    for i, name in enumerate(["b.png", "a.png", "c.bmp"]):
        write_png(tmp_path / name, gray(50 * i))
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    ds = load_folder(tmp_path)
    assert ds.images.shape == (3, 1, 4, 4)
    assert ds.labels.tolist() == [-1, -1, -1]
    assert ds.is_anomaly is None
    np.testing.assert_allclose(ds.images[:, 0, 0, 0], np.array([50, 0, 100]) / 255)


def test_folder_mixed_gray_and_rgb_becomes_rgb(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", gray(255))
    write_png(tmp_path / "b.png", rgb((255, 0, 0)))
    ds = load_folder(tmp_path)
    assert ds.images.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(ds.images[0, :, 0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(ds.images[1, :, 0, 0], [1.0, 0.0, 0.0])


def test_folder_jpeg_and_rgba(tmp_path: Path) -> None:
    write_png(tmp_path / "a.jpg", rgb((0, 128, 255)))
    write_png(tmp_path / "b.png", np.full((4, 4, 4), 200, dtype=np.uint8))
    ds = load_folder(tmp_path)
    assert ds.images.shape == (2, 3, 4, 4)
    assert_unit_float(ds)


def test_folder_16bit_gray_scaling(tmp_path: Path) -> None:
    array = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    write_png(tmp_path / "a.png", array)
    ds = load_folder(tmp_path)
    np.testing.assert_allclose(ds.images[0, 0], array / 65535, rtol=1e-6)


def test_folder_mvtec_layout(tmp_path: Path) -> None:
    for name in ["000.png", "001.png"]:
        write_png(tmp_path / "train" / "good" / name, rgb((10, 20, 30)))
    write_png(tmp_path / "test" / "good" / "000.png", rgb((10, 20, 30)))
    write_png(tmp_path / "test" / "crack" / "000.png", rgb((200, 20, 30)))
    write_png(tmp_path / "test" / "scratch" / "000.png", rgb((10, 200, 30)))
    write_png(tmp_path / "ground_truth" / "crack" / "000_mask.png", gray(255))
    (tmp_path / "license.txt").write_text("not loaded")

    train = load_folder(tmp_path)
    assert train.images.shape == (2, 3, 4, 4)
    assert train.labels.tolist() == [0, 0]
    assert train.is_anomaly is not None and not train.is_anomaly.any()

    test = load_dataset(tmp_path, split="test")
    assert test.labels.tolist() == [1, 0, 1]  # crack, good, scratch (sorted)
    assert test.is_anomaly is not None
    assert test.is_anomaly.tolist() == [True, False, True]
    assert test.source == str(tmp_path)


def test_folder_class_folders_directly(tmp_path: Path) -> None:
    write_png(tmp_path / "good" / "a.png", gray(1))
    write_png(tmp_path / "hole" / "a.png", gray(2))
    ds = load_folder(tmp_path / "")
    assert ds.labels.tolist() == [0, 1]
    assert ds.images.shape == (2, 1, 4, 4)


def test_folder_bad_split(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "good" / "a.png", gray(1))
    with pytest.raises(DatasetError, match="unknown split"):
        load_folder(tmp_path, split="val")
    with pytest.raises(DatasetError, match="test"):
        load_folder(tmp_path, split="test")


def test_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nodir"):
        load_folder(tmp_path / "nodir")


def test_folder_empty(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DatasetError, match=r"imgs.*no images found"):
        load_folder(tmp_path / "imgs")


def test_folder_non_image_file(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", gray(1))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes\.txt.*not an image"):
        load_folder(tmp_path)


def test_folder_undecodable_image(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", gray(1))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"broken\.png.*cannot decode"):
        load_folder(tmp_path)


def test_folder_truncated_image(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    good = write_png(tmp_path / "a.png", noise)
    (tmp_path / "b.png").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"b\.png.*cannot decode"):
        load_folder(tmp_path)


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", gray(1, (4, 4)))
    write_png(tmp_path / "b.png", gray(1, (4, 4)))
    write_png(tmp_path / "c.png", gray(1, (5, 4)))
    with pytest.raises(DatasetError, match=r"c\.png.*4x5.*4x4"):
        load_folder(tmp_path)


# ----------------------------------------------------------------------------------- npy


def test_npy_uint8_nhw(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.save(tmp_path / "x.npy", array)
    ds = load_dataset(tmp_path / "x.npy")
    assert ds.images.shape == (2, 1, 3, 3)
    np.testing.assert_allclose(ds.images[:, 0], array / 255, rtol=1e-6)
    assert ds.labels.tolist() == [-1, -1] and ds.is_anomaly is None


def test_npy_float_nhwc_with_labels(tmp_path: Path) -> None:
    array = np.random.default_rng(0).random((3, 4, 4, 3))
    np.save(tmp_path / "x.npy", array)
    np.save(tmp_path / "y.npy", np.array([0, 1, 0]))
    ds = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert ds.images.shape == (3, 3, 4, 4) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[1, 2], array[1, :, :, 2], rtol=1e-6)
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.is_anomaly is not None and ds.is_anomaly.tolist() == [False, True, False]


def test_npy_uint16_scaling(tmp_path: Path) -> None:
    array = np.array([[[0, 65535], [257, 1]]], dtype=np.uint16)
    np.save(tmp_path / "x.npy", array)
    ds = load_npy(tmp_path / "x.npy")
    np.testing.assert_allclose(ds.images[0, 0], array[0] / 65535, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npy_non_finite(tmp_path: Path, bad: float) -> None:
    array = np.zeros((4, 2, 2), dtype=np.float32)
    array[2, 1, 0] = bad
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DatasetError, match=r"x\.npy: image 2 has non-finite"):
        load_npy(tmp_path / "x.npy")


def test_npy_float_out_of_range(tmp_path: Path) -> None:
    array = np.zeros((3, 2, 2))
    array[1] = 255.0
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DatasetError, match=r"x\.npy: image 1 .*outside \[0, 1\]"):
        load_npy(tmp_path / "x.npy")


@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 4, 2), (2, 1, 4, 4, 1), (0, 4, 4)])
def test_npy_bad_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"x\.npy"):
        load_npy(tmp_path / "x.npy")


def test_npy_bad_dtype(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 2), dtype=np.int32))
    with pytest.raises(DatasetError, match=r"x\.npy: unsupported dtype int32"):
        load_npy(tmp_path / "x.npy")


def test_npy_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"gone\.npy"):
        load_npy(tmp_path / "gone.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    with pytest.raises(DatasetError, match=r"junk\.npy"):
        load_npy(tmp_path / "junk.npy")


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 1], "expected 3 labels"), ([0, 2, 1], "label 1 is 2"), ([0.0, 1.0, 0.0], "integers")],
)
def test_npy_bad_labels(tmp_path: Path, labels: list[float], message: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2, 2), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.array(labels))
    with pytest.raises(DatasetError, match=rf"y\.npy.*{message}"):
        load_npy(tmp_path / "x.npy", tmp_path / "y.npy")


# ------------------------------------------------------------------------ dispatch/subset


def test_load_dataset_unknown_and_missing(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(DatasetError, match=r"x\.txt.*unsupported"):
        load_dataset(tmp_path / "x.txt")
    with pytest.raises(DatasetError, match=r"missing\.bin"):
        load_dataset(tmp_path / "missing.bin")


def test_subset(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2, 8, 1]))
    ds = load_csv(path, normal_labels=[7, 8], anomaly_labels=[1, 2])
    sub = ds.subset([3, 0])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 7]
    assert sub.is_anomaly is not None and sub.is_anomaly.tolist() == [True, False]
    assert ds.subset(ds.labels == 2).labels.tolist() == [2]
    assert ds.subset(slice(1, 3)).labels.tolist() == [2, 8]
    assert sub.source == ds.source


def test_normal_subset_drops_anomalous_class_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "good" / "a.png", gray(1))
    write_png(tmp_path / "good" / "b.png", gray(2))
    write_png(tmp_path / "hole" / "a.png", gray(3))
    normal = normal_subset(load_folder(tmp_path))
    assert normal.labels.tolist() == [0, 0]
    np.testing.assert_allclose(normal.images[:, 0, 0, 0], np.array([1, 2]) / 255)


def test_normal_subset_keeps_unflagged_and_all_normal_sets(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", pixel_rows([7, 2, 8]))
    for ds in (load_csv(path), load_csv(path, normal_labels=[7, 8])):
        assert normal_subset(ds) is ds


def test_normal_subset_without_normal_images(tmp_path: Path) -> None:
    write_png(tmp_path / "parts" / "hole" / "a.png", gray(3))
    with pytest.raises(DatasetError, match=r"parts: no normal images .*'good' folder"):
        normal_subset(load_folder(tmp_path / "parts"))


# --------------------------------------------------------------------------------- split


@pytest.mark.parametrize(
    ("n", "fraction", "expected"), [(100, 0.1, 10), (10, 0.25, 2), (2, 0.01, 1), (5, 0.0, 0)]
)
def test_heldout_split_sizes(n: int, fraction: float, expected: int) -> None:
    train, hold = heldout_split(n, fraction)
    assert len(hold) == expected
    assert np.array_equal(np.sort(np.concatenate([train, hold])), np.arange(n))
    assert not set(train.tolist()) & set(hold.tolist())
    assert np.all(np.diff(train) > 0) and np.all(np.diff(hold) > 0)


def test_heldout_split_deterministic() -> None:
    first = heldout_split(50, 0.2, seed=3)
    second = heldout_split(50, 0.2, seed=3)
    other = heldout_split(50, 0.2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[1], other[1])


def test_heldout_split_edges() -> None:
    train, hold = heldout_split(2, 0.9)
    assert len(train) == 1 and len(hold) == 1
    assert [len(part) for part in heldout_split(0, 0.5)] == [0, 0]
    with pytest.raises(ValueError):
        heldout_split(10, 1.0)
    with pytest.raises(ValueError):
        heldout_split(10, -0.1)


def test_label_filters_on_non_csv_data_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 4), np.uint8))
    for path in (tmp_path / "x.npy", tmp_path):
        with pytest.raises(DatasetError, match="select rows of a CSV file"):
            load_dataset(path, normal_labels=[7])
