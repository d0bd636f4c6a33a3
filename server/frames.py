"""Frame validation and decoding: protobuf frames → float32 (C, H, W) arrays in [0, 1].

Pure functions; every problem is a :class:`FrameError` whose message the client sees in
the frame's INVALID_ARGUMENT status. Scaling is explicit by dtype, never guessed.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogan.v1 import inspection_pb2 as pb
from anogan_inspect.pixels import image_pixels

RAW_DTYPES = {
    pb.DATA_TYPE_UINT8: (np.dtype("u1"), 255.0),
    pb.DATA_TYPE_UINT16: (np.dtype("<u2"), 65535.0),
    pb.DATA_TYPE_FLOAT32: (np.dtype("<f4"), 1.0),
}
ENCODED_FORMATS = ("PNG", "JPEG")


class FrameError(ValueError):
    """A malformed frame: the reason is sent back as the frame's error message."""


@dataclass(frozen=True)
class FrameLimits:
    """Bounds on what one frame may carry."""

    max_pixels: int = 4096 * 4096
    # Longest a frame's scoring may take (0: no limit); past it the frame's result is
    # DEADLINE_EXCEEDED and its searches leave their slots.
    max_seconds: float = 300.0
    # Server-wide: frames being scored at once, and the bytes their model inputs hold (a
    # tiled frame's tiles); past either, a frame gets RESOURCE_EXHAUSTED, never an OOM.
    max_frames_in_flight: int = 16384
    max_bytes_in_flight: int = 4 << 30


def decode_frame(frame: pb.Frame, limits: FrameLimits) -> np.ndarray:
    """The frame's pixels as float32 (C, H, W) in [0, 1], C in {1, 3}."""
    kind = frame.WhichOneof("image")
    if kind == "raw":
        return decode_raw(frame.raw, limits)
    if kind == "encoded":
        return decode_encoded(frame.encoded.data, limits)
    raise FrameError("frame has no image: set `raw` or `encoded`")


def decode_raw(raw: pb.RawImage, limits: FrameLimits) -> np.ndarray:
    """Row-major HWC pixels of the declared type and shape."""
    if raw.data_type not in RAW_DTYPES:
        raise FrameError(f"unsupported data_type {pb.DataType.Name(raw.data_type)}"
                         if raw.data_type in pb.DataType.values() else
                         f"unknown data_type {raw.data_type}")
    channels = raw.channels or 1
    if channels not in (1, 3):
        raise FrameError(f"channels must be 1 or 3, got {channels}")
    if raw.height <= 0 or raw.width <= 0:
        raise FrameError(f"height and width must be positive, got {raw.height}x{raw.width}")
    _check_pixels(raw.width, raw.height, limits)
    dtype, full_scale = RAW_DTYPES[raw.data_type]
    expected = raw.height * raw.width * channels * dtype.itemsize
    if len(raw.data) != expected:
        raise FrameError(f"data has {len(raw.data)} bytes; {raw.height}x{raw.width}x{channels} "
                         f"{dtype.name} needs {expected}")
    pixels = np.frombuffer(raw.data, dtype=dtype).reshape(raw.height, raw.width, channels)
    image = pixels.astype(np.float32) / np.float32(full_scale)
    if dtype.kind == "f":
        if not np.isfinite(image).all():
            raise FrameError("float32 pixels contain NaN or infinity")
        if image.min() < 0.0 or image.max() > 1.0:
            raise FrameError(f"float32 pixels must lie in [0, 1], got "
                             f"[{image.min():.4g}, {image.max():.4g}]")
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def decode_encoded(data: bytes, limits: FrameLimits) -> np.ndarray:
    """A PNG or JPEG, checked for size before its pixels are decoded."""
    if not data:
        raise FrameError("encoded image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ENCODED_FORMATS:
                raise FrameError(f"encoded image is {image.format}, expected PNG or JPEG")
            _check_pixels(image.width, image.height, limits)
            image.load()
    except FrameError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise FrameError(f"the encoded image is larger than this server's limit of "
                         f"{limits.max_pixels} pixels (anogan-serve --max-pixels)") from err
    except UnidentifiedImageError as err:
        raise FrameError("cannot decode image: its data is not a PNG or JPEG this server "
                         "can read") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise FrameError(f"cannot decode image: {_plain(err)}") from err
    try:
        pixels = image_pixels(image)
    except ValueError as err:  # e.g. a 32-bit integer PNG beyond 16 bits
        raise FrameError(str(err)) from err
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _check_pixels(width: int, height: int, limits: FrameLimits) -> None:
    if width * height > limits.max_pixels:
        raise FrameError(f"frame has {width}x{height} = {width * height} pixels; "
                         f"the limit is {limits.max_pixels} (anogan-serve --max-pixels)")


def _plain(err: Exception) -> str:
    """An error's text without Python object representations (`<_io.BytesIO object at
    0x...>`): a client is told about its data, not the server's objects."""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the data", str(err))


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, C) uint8 → PNG bytes (for clients and tests)."""
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image
                    ).save(buffer, format="PNG")
    return buffer.getvalue()
