"""Safe image loading: any file Pillow can decode becomes an 8-bit RGB image, or a `DataError`.

What "safe" means here:

* Truncated or corrupt files are refused, never half-decoded. Pillow opens files lazily (only the
  header is read by `Image.open`), so the pixels are decoded inside the same `try` with
  `img.load()`. We rely on Pillow's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`; setting it
  to True elsewhere would make truncated JPEGs load with a grey bottom, silently.
* Pillow's decompression-bomb guard stays on (`Image.MAX_IMAGE_PIXELS` is not touched). Above that
  many pixels Pillow warns, above twice as many it raises; both become a `DataError`, because a
  detection image of 90+ megapixels is almost certainly a mistake or an attack.
* Only regular files are opened (`open_regular_file`): a FIFO, which would make `open()` wait
  for a writer forever, a folder or a device is a `DataError`.
* Every error Pillow's decoders raise (`_DECODER_ERRORS`) is a `DataError` for that image, so
  that callers can list it and go on with the others: among them the `ValueError` of Pillow's
  text-chunk guard (a PNG whose zTXt chunk inflates past `PngImagePlugin.MAX_TEXT_CHUNK`).
* Pixels are taken as stored: the EXIF orientation tag is *not* applied, like
  `torchvision.io.decode_image` by default. VOC and COCO boxes refer to the stored pixel grid.
* Every mode becomes RGB (see `to_rgb`): grey, palette and CMYK by Pillow's own conversion,
  transparent images composited on white (what an image viewer shows; the colour stored under
  fully transparent pixels is arbitrary, often black), 16-bit integer images scaled to 8 bits.
"""
from __future__ import annotations

import os
import stat
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fasterrcnn_edu.data.errors import DataError

# Modes holding integers wider than 8 bits. "I" (32-bit) is what older Pillow versions return for
# 16-bit PNGs, so its values are also read as 0..65535.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# What Pillow raises for a file it cannot parse. Besides OSError (truncated data) these include
# ValueError (a PNG text chunk that inflates beyond `PngImagePlugin.MAX_TEXT_CHUNK`, or text chunks
# beyond MAX_TEXT_MEMORY: Pillow's guard against text bombs), SyntaxError (a malformed header),
# EOFError, struct.error and the index/type/zero-division errors of a few plugins on garbage.
_DECODER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError,
                   ZeroDivisionError)


@contextmanager
def open_regular_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`path` opened for binary reading if it is a regular file (or a link to one); `DataError` otherwise.

    Opened with O_NONBLOCK and checked with fstat on the open descriptor: opening a FIFO for
    reading would otherwise wait for a writer forever, and checking the path before opening it
    would leave a window in which the file could be swapped for a FIFO or a device.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except ValueError:            # os.open's "embedded null byte"
        raise DataError(path, "the file name contains a NUL byte, which no file name can") from None
    except OSError as e:
        raise DataError(path, f"cannot open image ({e.strerror})") from None
    kind = _file_kind(os.fstat(fd).st_mode)
    if kind != "regular file":
        os.close(fd)
        raise DataError(path, f"is {kind}, not an image file; only regular files are read")
    with os.fdopen(fd, "rb") as f:
        yield f


def _file_kind(mode: int) -> str:
    """"regular file", "a folder", "a FIFO (named pipe)", ... for an `st_mode`."""
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """An image file opened with Pillow (header read, pixels not decoded yet), or `DataError`.

    A context manager: the file is closed on leaving it, so decode (`img.load()`) inside. The
    decoded pixels stay valid afterwards (closing the file is not `img.close()`).
    """
    path = Path(path)
    # Turn the "this is large" warning into an error for this call only; the hard limit
    # (DecompressionBombError, at 2 x MAX_IMAGE_PIXELS) is an error already.
    with open_regular_file(path) as f, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(f)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(path, f"refused, too many pixels for a detection image ({e})") from None
        except UnidentifiedImageError:
            raise DataError(path, "not an image file Pillow can read (corrupt or wrong format)") from None
        except _DECODER_ERRORS as e:
            raise DataError(path, f"cannot read the image header ({e})") from None
        yield img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """The (width, height) in pixels stored in the file's header, without decoding pixels."""
    with open_image(path) as img:
        return img.size


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file completely and return it as an 8-bit RGB `PIL.Image`.

    Raises `DataError` (naming the file) for missing, truncated, corrupt or oversized files, for
    anything but a regular file, and for modes that have no sensible RGB meaning.
    """
    path = Path(path)
    with open_image(path) as img:
        try:
            img.load()  # decode now, inside the try: this is where truncated files fail
        except _DECODER_ERRORS as e:
            raise DataError(path, f"cannot decode image, file truncated or corrupt ({e})") from None
    return to_rgb(img, path)


def to_rgb(img: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB (returns `img` itself if already RGB)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_INTEGER_MODES:
        # Scale the 16-bit range to 8 bits (65535 / 257 = 255) rather than clip at 255, which
        # would turn most 16-bit photographs completely white. Values outside 0..65535 (only
        # possible in mode "I") are clipped.
        wide = np.asarray(img).astype(np.float32)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        raise DataError(path, "floating-point image (mode F): its value range is unknown, "
                              "convert it to an 8-bit format first")
    if "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, ...
    except ValueError as e:
        raise DataError(path, f"cannot convert image mode {mode!r} to RGB ({e})") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB `PIL.Image` -> float32 tensor (3, H, W) with values in [0, 1].

    No normalisation and no resizing: like torchvision's detection models, the model does both,
    so that boxes stay in the image's own pixel coordinates everywhere outside the model.
    """
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; use to_rgb() first")
    # In numpy, single-threaded, on purpose: for one image torch's multi-threaded kernels cost
    # more in thread start-up and waiting than they save (10x slower on a busy 2-core machine).
    # The copy made here is writable, which torch.from_numpy needs.
    chw = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32)
    chw /= 255.0
    return torch.from_numpy(chw)


def read_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """`load_image` then `pil_to_tensor`: float32 (3, H, W) in [0, 1], RGB."""
    return pil_to_tensor(load_image(path))
