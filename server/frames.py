"""Frame validation and decoding: protobuf frames → float32 (C, H, W) arrays in [0, 1].

Pure functions; every problem is a :class:`FrameError` whose message the client sees in
the frame's INVALID_ARGUMENT status. Scaling is explicit by dtype, never guessed.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogan.v1 import inspection_pb2 as pb
from anogan_inspect.pixels import image_pixels
from anogan_inspect.server.options import FrameLimits  # noqa: F401 (re-exported)

RAW_DTYPES = {
    pb.DATA_TYPE_UINT8: (np.dtype("u1"), 255.0),
    pb.DATA_TYPE_UINT16: (np.dtype("<u2"), 65535.0),
    pb.DATA_TYPE_FLOAT32: (np.dtype("<f4"), 1.0),
}
ENCODED_FORMATS = ("PNG", "JPEG")


class FrameError(ValueError):
    """A malformed frame: the reason is sent back as the frame's error message."""


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
            if image.format == "JPEG":
                _check_jpeg_scan(data, image)
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


def decoded_bytes(frame: pb.Frame, limits: FrameLimits) -> int:
    """About the bytes decoding and resizing the frame take at their peak: four float32
    copies of its pixels (the pixels, the decoder's working copy, the stacked batch, the
    resize's copy; measured: 2048×2048 RGBA peaks at 195 MB), from the raw shape or the
    encoded header (0 when it has neither, or more pixels than --max-pixels: decoding says
    why). Held against --max-bytes-in-flight before any pixel is decoded."""
    kind = frame.WhichOneof("image")
    if kind == "raw":
        width, height, channels = frame.raw.width, frame.raw.height, frame.raw.channels or 1
    elif kind == "encoded":
        width, height, channels = encoded_shape(frame.encoded.data)
    else:
        return 0
    if width * height > limits.max_pixels:
        return 0
    return max(width, 0) * max(height, 0) * max(channels, 0) * 4 * 4


def encoded_shape(data: bytes) -> tuple[int, int, int]:
    """Width, height and the channels decoding keeps (1: grey, 3: colour) from a PNG's IHDR
    or a JPEG's frame header alone: on the event loop, so nothing is decompressed (Pillow's
    open would inflate every text and ICC chunk before the pixels). (0, 0, 0) when the
    header is not there: decoding says what is wrong."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 26:
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, colour = data[24], data[25]  # Pillow opens 16-bit grey + alpha as RGBA
        return width, height, 1 if colour == 0 or (colour == 4 and depth != 16) else 3
    shape = 0, 0, 0
    if data.startswith(b"\xff\xd8"):  # the last frame header before the scan, as Pillow
        for marker, start, end in _jpeg_markers(data, header_only=True):
            if (marker in HUFFMAN_SOF or marker in ARITHMETIC_SOF) and \
                    start + 6 <= min(end, len(data)):  # P, Y, X, Nf
                height = int.from_bytes(data[start + 1:start + 3], "big")
                width = int.from_bytes(data[start + 3:start + 5], "big")
                shape = width, height, 1 if data[start + 5] == 1 else 3
    return shape


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG frame markers: SOF0-3, 5-7 Huffman-coded; SOF9-11, 13-15 arithmetic-coded.
HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}
ARITHMETIC_SOF = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# The end of a scan's coded data: a run of 0xFF (fill bytes may precede any marker)
# followed by neither 0x00 (a stuffed 0xFF) nor a restart marker (0xD0-0xD7), nor the end
# of the data. The run is matched from its start, so each byte is looked at a few times.
SCAN_END = re.compile(rb"(?<!\xff)\xff+(?![\x00\xd0-\xd7\xff])(?=.)", re.DOTALL)
FILL = re.compile(rb"\xff+")
HEADER_MARKERS = 256  # more segments before the scan than any camera writes
PROGRESSIVE_SOF = {0xC2, 0xC6}  # a progressive scan can code a run of empty blocks at once


def _check_jpeg_scan(data: bytes, image) -> None:
    """Refuse a JPEG whose scan data cannot cover the size its header declares (libjpeg
    would fill the missing blocks with grey and score them): every 8×8 block of every
    component takes at least two Huffman-coded bits in a sequential JPEG (its DC and its
    first AC code) and one in a progressive one (its DC). A lower bound: it catches a
    header that overstates the data many times over, not a few missing rows. Arithmetic
    coding, which can go below it, is refused (cameras write Huffman-coded JPEGs)."""
    sof, scan_bytes = _jpeg_segments(data)
    if sof in ARITHMETIC_SOF:
        raise FrameError("arithmetic-coded JPEG is not supported: send a baseline or "
                         "progressive JPEG, or a PNG")
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    blocks = sum(_ceil(_ceil(image.width * h, h_max), 8) * _ceil(_ceil(image.height * v, v_max), 8)
                 for _, h, v, _ in layers)
    bits = 1 if sof in PROGRESSIVE_SOF else 2  # sequential: a DC code and an AC code
    if scan_bytes * 8 < blocks * bits:
        raise FrameError(
            f"the JPEG's header declares {image.width}x{image.height} pixels, but its "
            f"{scan_bytes} bytes of scan data cannot hold them (at least {_ceil(blocks * bits, 8)} "
            "bytes): the image is truncated or its header is wrong")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_markers(data: bytes, header_only: bool = False):
    """A JPEG's marker segments in order, as (marker, start, end) of the payload; for a
    start of scan, (0xDA, start, end) of its entropy-coded data. Bytes between segments
    that are no marker are skipped, as libjpeg does (it warns, and decodes). header_only:
    up to the first scan, at most HEADER_MARKERS segments (it runs on the event loop)."""
    i, segments = 2, 0
    while i + 4 <= len(data):
        if data[i] != 0xFF:  # stray bytes before the next marker
            i = data.find(b"\xff", i)
            if i < 0:
                return
            continue
        i = FILL.match(data, i).end() - 1  # the last of a run of fill bytes
        if i + 4 > len(data):
            return
        marker = data[i + 1]
        segments += 1
        if marker == 0xD9 or (header_only and (marker == 0xDA or segments > HEADER_MARKERS)):
            return
        if 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01):  # markers without a length
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: coded data up to the next real marker
            found = SCAN_END.search(data, end)
            i = found.start() if found else len(data)
            yield marker, end, i
        else:
            yield marker, i + 4, end
            i = end


def _jpeg_segments(data: bytes) -> tuple[int | None, int]:
    """A JPEG's frame (SOF) marker and the bytes of entropy-coded data in its scans."""
    sof, scan_bytes = None, 0
    for marker, start, end in _jpeg_markers(data):
        if marker in HUFFMAN_SOF or marker in ARITHMETIC_SOF:
            sof = marker
        elif marker == 0xDA:
            scan_bytes += end - start
    return sof, scan_bytes


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
