"""HPA image sets: channel files, fields, bit depth and instance masks in a :class:`Store`.

An *image set* holds ``<id>_<channel>.<ext>`` files, channel in red (microtubules), green
(protein), blue (nucleus), yellow (ER). A *field* is the four channels of one id, read as an
H×W×4 array in R, G, B, Y order. A *mask set* holds ``<id>.png`` 16-bit instance label images
(0 = background, 1..N = cells). See ``docs/io.md`` for the accepted file forms and the
16-bit → 8-bit rule.
"""

from __future__ import annotations

import gzip
import io
import zlib

import cv2
import numpy as np
import tifffile

from hpasc.errors import InputError
from hpasc.io.store import Store

__all__ = [
    "CHANNELS",
    "IMAGE_EXTS",
    "MASK_EXTS",
    "list_field_ids",
    "field_files",
    "read_channel",
    "read_field",
    "write_channel",
    "write_field",
    "to_uint8",
    "to_uint16",
    "EIGHT_BIT_RULES",
    "read_mask",
    "write_mask",
    "list_mask_ids",
    "decode_image",
    "encode_png",
    "parse_channel_file",
]

CHANNELS = ("red", "green", "blue", "yellow")  # array order R, G, B, Y
#: Accepted channel file endings, in order of preference when one channel has several files.
IMAGE_EXTS = (".png", ".tif", ".tiff", ".tif.gz", ".tiff.gz", ".jpg", ".jpeg")
#: Accepted mask file endings (written masks are always PNG).
MASK_EXTS = (".png", ".tif", ".tiff")
MAX_MASK_LABEL = 65535

_EXTS_LONGEST_FIRST = sorted(set(IMAGE_EXTS), key=len, reverse=True)
_TIFF_EXTS = (".tif", ".tiff", ".tif.gz", ".tiff.gz")
# Component of an HPA-website false-colour RGB file that carries each channel. Yellow is drawn
# as R+G; R alone reproduces the grayscale file best (docs/io.md has the measurements).
_COLOUR_COMPONENT = {"red": 0, "green": 1, "blue": 2, "yellow": 0}
_DTYPES = (None, "uint8", "uint16")
#: How 16-bit channels become 8-bit: "ceil257" converts the decoded values with :func:`to_uint8`
#: (HPA's own rule); "opencv" decodes every file with OpenCV's ``IMREAD_GRAYSCALE`` (the 7th
#: place's reader; ``v >> 8`` for a 16-bit PNG), so the field is 8-bit from the start.
EIGHT_BIT_RULES = ("ceil257", "opencv")

# OpenCV's own "[ WARN ]" lines (e.g. on a truncated PNG) would reach stderr beside our one-line
# error; errors are still raised as InputError below.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

# Colour-space chunks of a PNG: hpasc reads raw intensities and ignores them, and libpng prints a
# warning for each malformed one (e.g. "iCCP: known incorrect sRGB profile") straight to stderr.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_CHUNKS = {b"iCCP", b"sRGB", b"gAMA", b"cHRM"}

# ceil(v / 257): the mapping of HPA's shipped 8-bit files from their 16-bit originals.
_U16_TO_U8 = ((np.arange(65536, dtype=np.uint32) + 256) // 257).astype(np.uint8)


def _split_ext(name: str) -> tuple[str, str] | None:
    lower = name.lower()
    for ext in _EXTS_LONGEST_FIRST:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    return None


def parse_channel_file(name: str) -> tuple[str, str] | None:
    """``(field_id, channel)`` for a channel file name like ``"abc_red.png"``, else None."""
    split = _split_ext(name.rsplit("/", 1)[-1])
    if split is None:
        return None
    stem = split[0]
    for channel in CHANNELS:
        suffix = "_" + channel
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], channel
    return None


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")


def list_field_ids(store: Store) -> list[str]:
    """Sorted ids of the fields in ``store`` (ids with at least one channel file)."""
    ids = {parsed[0] for name in store.list() if (parsed := parse_channel_file(name))}
    return sorted(ids)


def _channel_file(store: Store, field_id: str, channel: str) -> str | None:
    for ext in IMAGE_EXTS:
        name = f"{field_id}_{channel}{ext}"
        if store.exists(name):
            return name
    return None


def _missing_channels_error(store: Store, field_id: str, missing: list[str]) -> InputError:
    files = ", ".join(store.location(f"{field_id}_{ch}.png") for ch in missing)
    return InputError(
        f"field {field_id!r} is incomplete: missing {files} (also looked for "
        f"{', '.join(IMAGE_EXTS[1:])}); every field needs red, green, blue and yellow channel "
        "files: add the missing files or remove the field's other files"
    )


def field_files(store: Store, field_id: str) -> dict[str, str]:
    """Channel → file name for one field; InputError naming the missing files if incomplete.

    When one channel has several files (``x_red.png`` and ``x_red.tif``) the first ending in
    :data:`IMAGE_EXTS` order wins.
    """
    files = {ch: _channel_file(store, field_id, ch) for ch in CHANNELS}
    missing = [ch for ch, name in files.items() if name is None]
    if missing:
        raise _missing_channels_error(store, field_id, missing)
    return files


def _read_decoded(store: Store, name: str, channel: str | None = None) -> np.ndarray:
    data = store.read_bytes(name)
    try:
        return decode_image(data, name, channel=channel)
    except InputError as e:
        message = str(e).removeprefix(f"{name}: ")  # named once, by its full location
        raise InputError(f"{store.location(name)}: {message}") from None


def _read_grayscale8(store: Store, name: str, channel: str | None = None) -> np.ndarray:
    """A channel file as OpenCV's ``IMREAD_GRAYSCALE`` decodes it (gzip removed first)."""
    data = store.read_bytes(name)
    if name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{store.location(name)}: not a readable gzip file ({e})") from None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise InputError(f"{store.location(name)}: not an image OpenCV can read (corrupt or empty)")
    return array


def read_channel(store: Store, field_id: str, channel: str, dtype: str | None = None) -> np.ndarray:
    """One channel of a field as a 2-D array.

    Parameters
    ----------
    dtype
        None keeps the file's uint8/uint16; ``"uint8"`` converts with :func:`to_uint8`;
        ``"uint16"`` with :func:`to_uint16`.
    """
    _check_channel(channel)
    _check_dtype(dtype)
    name = _channel_file(store, field_id, channel)
    if name is None:
        raise _missing_channels_error(store, field_id, [channel])
    return _convert(_read_decoded(store, name, channel), dtype)


def read_field(
    store: Store, field_id: str, dtype: str | None = None, eight_bit: str = "ceil257"
) -> np.ndarray:
    """The four channels of a field as an H×W×4 array in R, G, B, Y order.

    Parameters
    ----------
    dtype
        None keeps the files' depth; when 8- and 16-bit channels are mixed, the 8-bit ones are
        promoted with :func:`to_uint16` (v × 257) so the field is uint16. ``"uint8"`` or
        ``"uint16"`` convert every channel.
    eight_bit
        ``"ceil257"`` (default) or ``"opencv"``: every channel decoded by OpenCV's
        ``IMREAD_GRAYSCALE`` (8-bit, equal to ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``), as the
        7th-place code reads its inputs; see :data:`EIGHT_BIT_RULES`.

    Raises
    ------
    InputError
        A channel file is missing (naming the missing files), unreadable, or the channels have
        different sizes (naming each file and its size).
    """
    _check_dtype(dtype)
    if eight_bit not in EIGHT_BIT_RULES:
        raise ValueError(f"eight_bit must be one of {EIGHT_BIT_RULES}, got {eight_bit!r}")
    files = field_files(store, field_id)
    read = _read_grayscale8 if eight_bit == "opencv" else _read_decoded
    planes = [read(store, files[ch], ch) for ch in CHANNELS]
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        sizes = ", ".join(
            f"{store.location(files[ch])} {p.shape[1]}x{p.shape[0]}"
            for ch, p in zip(CHANNELS, planes, strict=True)
        )
        raise InputError(
            f"field {field_id!r}: channels have different sizes ({sizes}); all four channel "
            "files of a field must have the same width and height"
        )
    if dtype is None and len({p.dtype for p in planes}) > 1:
        dtype = "uint16"
    return np.stack([_convert(p, dtype) for p in planes], axis=-1)


def write_channel(store: Store, field_id: str, channel: str, array: np.ndarray) -> None:
    """Write one channel as ``<id>_<channel>.png``, keeping uint8/uint16."""
    _check_channel(channel)
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"a channel must be a 2-D uint8 or uint16 array, got {array.dtype} {array.shape}"
        )
    store.write_bytes(f"{field_id}_{channel}.png", encode_png(array))


def write_field(store: Store, field_id: str, image_hw4: np.ndarray) -> None:
    """Write an H×W×4 (R, G, B, Y) field as four ``<id>_<channel>.png`` files."""
    image_hw4 = np.asarray(image_hw4)
    if image_hw4.ndim != 3 or image_hw4.shape[-1] != len(CHANNELS):
        raise ValueError(f"a field must be an H×W×4 array, got shape {image_hw4.shape}")
    for i, channel in enumerate(CHANNELS):
        write_channel(store, field_id, channel, image_hw4[..., i])


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Convert a uint16 image to uint8 as HPA does: ``ceil(v / 257)``; uint8 is returned as is.

    This reproduces HPA's shipped 8-bit files from their 16-bit originals exactly (see
    ``docs/io.md``). It maps 0 → 0, 1..257 → 1, …, 65279..65535 → 255.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype != np.uint16:
        raise ValueError(f"to_uint8 takes a uint8 or uint16 array, got {array.dtype}")
    return _U16_TO_U8[array]


def to_uint16(array: np.ndarray) -> np.ndarray:
    """Convert a uint8 image to uint16 as ``v × 257`` (0 → 0, 255 → 65535); uint16 as is.

    The inverse of :func:`to_uint8` on 8-bit values: ``to_uint8(to_uint16(a)) == a``.
    """
    array = np.asarray(array)
    if array.dtype == np.uint16:
        return array
    if array.dtype != np.uint8:
        raise ValueError(f"to_uint16 takes a uint8 or uint16 array, got {array.dtype}")
    return array.astype(np.uint16) * np.uint16(257)


def _check_dtype(dtype: str | None) -> None:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")


def _convert(array: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype == "uint8":
        return to_uint8(array)
    if dtype == "uint16":
        return to_uint16(array)
    return array


# --- decoding / encoding ---------------------------------------------------------------------


def _without_colour_chunks(data: bytes) -> bytes:
    """PNG bytes without the colour-space chunks before the first IDAT (the spec puts them
    there); the same bytes when there are none or the file is not a well-formed PNG."""
    if not data.startswith(_PNG_SIGNATURE):
        return data
    pos, drop = len(_PNG_SIGNATURE), []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind == b"IDAT" or end > len(data):
            break
        if kind in _PNG_COLOUR_CHUNKS:
            drop.append((pos, end))
        pos = end
    if not drop:
        return data
    parts, start = [], 0
    for begin, end in drop:
        parts.append(data[start:begin])
        start = end
    parts.append(data[start:])
    return b"".join(parts)


def _decode_raw(data: bytes, name: str) -> np.ndarray:
    """Bytes → array (H×W or H×W×C, RGB order), any dtype, by file ending."""
    split = _split_ext(name)
    if split is None:
        raise InputError(f"{name}: unknown image type; expected one of {', '.join(IMAGE_EXTS)}")
    ext = split[1]
    if not data:
        raise InputError(f"{name}: empty file (0 bytes); re-copy or re-create it")
    if ext.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{name}: not a readable gzip file ({e})") from None
    if ext in _TIFF_EXTS:
        try:
            array = tifffile.imread(io.BytesIO(data))
        except Exception as e:  # tifffile raises many types for corrupt input
            raise InputError(f"{name}: not a readable TIFF file ({e})") from None
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # planar RGB
    else:
        if ext == ".png":
            data = _without_colour_chunks(data)
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise InputError(f"{name}: not a readable {ext[1:].upper()} image (corrupt or empty)")
        if array.ndim == 3:
            array = array[..., [2, 1, 0]]  # OpenCV's BGR(A) → RGB, alpha dropped
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _to_depth(array: np.ndarray, name: str) -> np.ndarray:
    """Keep uint8/uint16; other non-negative integer arrays that fit become uint16."""
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind in "ui" and array.size and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.uint16)
    raise InputError(f"{name}: unsupported pixel type {array.dtype}; expected 8- or 16-bit")


def _colour_channel(rgb: np.ndarray, channel: str | None, name: str) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return np.ascontiguousarray(r)  # grayscale saved as RGB
    if channel is None:
        raise InputError(
            f"{name}: a colour image, but its channel is unknown; name it <id>_<channel>.<ext> "
            f"with channel one of {', '.join(CHANNELS)}"
        )
    return np.ascontiguousarray(rgb[..., _COLOUR_COMPONENT[channel]])


def decode_image(data: bytes, name: str, channel: str | None = None) -> np.ndarray:
    """Decode a channel file's bytes to a 2-D uint8/uint16 array, keeping its bit depth.

    Parameters
    ----------
    data
        The file content: PNG, JPEG, TIFF or gzip-compressed TIFF (``.tif.gz``).
    name
        The file name; its ending picks the decoder and, for a false-colour RGB file, its
        ``_<channel>`` part picks the colour component (red → R, green → G, blue → B,
        yellow → R).
    channel
        Overrides the channel taken from ``name``.

    Raises
    ------
    InputError
        Unknown ending, corrupt data, or an image that is not one grayscale channel.
    """
    array = _decode_raw(data, name)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if channel is None:
            parsed = parse_channel_file(name)
            channel = parsed[1] if parsed else None
        else:
            _check_channel(channel)
        array = _colour_channel(array[..., :3], channel, name)
    if array.ndim != 2:
        raise InputError(f"{name}: expected a grayscale or RGB image, got shape {array.shape}")
    return _to_depth(array, name)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8/uint16 array (or H×W×3/4 RGB(A)), bit depth kept."""
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3):
        raise ValueError(f"encode_png takes a uint8/uint16 image, got {array.dtype} {array.shape}")
    if array.ndim == 3:
        if array.shape[-1] not in (3, 4):
            raise ValueError(f"colour images must be H×W×3 or H×W×4, got {array.shape}")
        order = [2, 1, 0, 3][: array.shape[-1]]  # RGB(A) → OpenCV's BGR(A)
        array = array[..., order]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


# --- masks -----------------------------------------------------------------------------------


def _mask_file(store: Store, field_id: str) -> str | None:
    for ext in MASK_EXTS:
        if store.exists(field_id + ext):
            return field_id + ext
    return None


def list_mask_ids(store: Store) -> list[str]:
    """Sorted ids of the masks in ``store`` (``<id>.png`` files that are not channel files)."""
    ids = set()
    for name in store.list():
        lower = name.lower()
        ext = next((e for e in MASK_EXTS if lower.endswith(e)), None)
        if ext is not None and parse_channel_file(name) is None:
            ids.add(name[: -len(ext)])
    return sorted(ids)


def read_mask(store: Store, field_id: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The instance mask ``<id>.png`` as an H×W label array (0 = background).

    Returns uint16 (8-bit masks are widened); a 32-bit TIFF mask with labels above 65535 is
    returned as int32.

    Parameters
    ----------
    shape
        The field's (H, W); a mask of another size raises InputError naming the file.
    """
    name = _mask_file(store, field_id)
    if name is None:
        raise InputError(
            f"mask not found: {store.location(field_id + '.png')}; segment the field first "
            "(hpasc segment) or point to the folder that holds the masks"
        )
    array = _decode_raw(store.read_bytes(name), store.location(name))
    if array.ndim != 2 or array.dtype.kind not in "uib":
        raise InputError(
            f"{store.location(name)}: a mask must be a single-channel integer label image, got "
            f"{array.dtype} {array.shape}"
        )
    if array.dtype.itemsize > 2 and array.size and array.max() > MAX_MASK_LABEL:
        if array.min() < 0 or array.max() > np.iinfo(np.int32).max:
            raise InputError(f"{store.location(name)}: mask labels out of range")
        array = array.astype(np.int32)
    else:
        if array.size and array.min() < 0:
            raise InputError(f"{store.location(name)}: negative mask labels")
        array = array.astype(np.uint16, copy=False)
    if shape is not None and array.shape != tuple(shape):
        raise InputError(
            f"mask {store.location(name)} is {array.shape[1]}x{array.shape[0]} but its field is "
            f"{shape[1]}x{shape[0]}; a mask must have its field's size (re-run segmentation "
            "on these images)"
        )
    return array


def write_mask(store: Store, field_id: str, mask: np.ndarray) -> None:
    """Write an instance mask as a 16-bit ``<id>.png`` (labels 0..65535)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "uib":
        raise ValueError(f"a mask must be a 2-D integer array, got {mask.dtype} {mask.shape}")
    if mask.size:
        low, high = int(mask.min()), int(mask.max())
        if low < 0 or high > MAX_MASK_LABEL:
            raise ValueError(
                f"mask labels must lie in 0..{MAX_MASK_LABEL} (16-bit PNG), got {low}..{high}"
            )
    store.write_bytes(f"{field_id}.png", encode_png(mask.astype(np.uint16, copy=False)))
