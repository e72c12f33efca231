"""Reading images from disk into one consistent float layout.

Every readable image becomes a ``float32`` array of shape ``(H, W, C)`` with values in
``[0, 1]`` and ``C`` either 1 (grey) or 3 (RGB, in that order). 8- and 16-bit files,
grey, grey+alpha, RGB and RGBA inputs all end up in that layout; alpha is dropped
(composited over black would invent dark borders on cut-outs, dropping keeps the pixels
the camera saw). A file that cannot be read raises :class:`ImageReadError` with a reason a
person can act on; callers that walk a folder record the reason and go on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(Exception):
    """An image file could not be turned into pixels; ``str(err)`` is the reason."""


@dataclass(frozen=True)
class Skipped:
    """A file left out of a batch, and why."""

    path: Path
    reason: str


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension), sorted by path; masks of a dataset layout,
    hidden files and earlier scan outputs are left out (:func:`core.data.listing.list_folder`,
    which also says what it left out and why).

    Raises ``FileNotFoundError``/``NotADirectoryError`` for a wrong path so that the
    caller can say which path is wrong.
    """
    from core.data.listing import list_folder

    return list_folder(folder, recursive=recursive).images


def _to_float(arr: np.ndarray) -> np.ndarray:
    # in place after one conversion: the same float32 values as ``arr.astype(np.float32) / 255``
    # with one array allocated instead of two (a 900 px RGB image: 2 ms instead of 13)
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32)
        out /= 255.0
        return out
    if arr.dtype == np.uint16:
        out = arr.astype(np.float32)
        out /= 65535.0
        return out
    if arr.dtype in (np.int8, np.int16, np.int32, np.uint32):
        info = np.iinfo(arr.dtype)
        out = (arr.astype(np.float64) - info.min) / float(info.max - info.min)
        return out.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(out.max()) if out.size else 0.0
        lo = float(out.min()) if out.size else 0.0
        if lo < 0.0 or hi > 1.0:  # a float image in an arbitrary range: stretch it
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        return out
    raise ImageReadError(f"unsupported pixel type {arr.dtype}")


def _normalise_channels(arr: np.ndarray, bgr: bool) -> np.ndarray:
    """(H, W[, C]) in any channel count -> (H, W, 1) or (H, W, 3) RGB."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise ImageReadError(f"unsupported image shape {arr.shape}")
    c = arr.shape[2]
    if c == 1:
        return arr
    if c == 2:  # grey + alpha
        return arr[:, :, :1]
    if c == 3 and arr.dtype in (np.uint8, np.uint16) and _not_grey(arr):
        # the common colour case, a quarter of the time (RGB from imagecodecs: as it is)
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if bgr else arr
    if c >= 3:
        rgb = arr[:, :, :3]
        if bgr:
            rgb = rgb[:, :, ::-1]
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]):
            # Grey stored as RGB (common for industrial JPEGs): keep it grey.
            return np.ascontiguousarray(rgb[:, :, :1])
        return np.ascontiguousarray(rgb)
    raise ImageReadError(f"unsupported channel count {c}")


def _not_grey(arr: np.ndarray) -> bool:
    """Whether an (H, W, 3) array certainly has colour: some of every 97th pixel's channels
    differ (a sample: False means "look at every pixel", not "grey")."""
    sample = arr.reshape(-1, 3)[::97]
    return bool((sample[:, 0] != sample[:, 1]).any() or (sample[:, 1] != sample[:, 2]).any())


def _decode_with_pillow(path: Path) -> np.ndarray | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with torchvision
        return None
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's EXIF warnings; failures raise
            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                return np.asarray(im)
    except Exception:
        return None


#: Images with more pixels than this are refused ("too large"); the environment variable
#: ``ANOMALY_INSPECTOR_MAX_PIXELS`` changes it. 160 M pixels holds the largest area-scan
#: inspection cameras (151 M pixels) and decodes to at most about 1.9 GB of float32 grey.
DEFAULT_MAX_PIXELS = 160_000_000
#: JPEGs above this many pixels (but within the limit) are decoded at 1/2, 1/4 or 1/8 scale,
#: which the JPEG codec does without ever holding the full image.
FULL_DECODE_PIXELS = 40_000_000
_EXIF_ORIENTATION = 0x0112
#: Decoding above this many bytes of pixels takes a share of the process-wide decode budget
#: (:class:`DecodeBudget`); smaller images (any camera's) never wait.
BUDGET_FROM_BYTES = 32 * 1024 * 1024
#: The budget itself, in MiB: at most this much memory held by decodes in flight at once, across
#: all threads (``ANOMALY_INSPECTOR_DECODE_MIB`` changes it).
DEFAULT_DECODE_MIB = 1024


class DecodeBudget:
    """Bytes of pixels the decoding threads of this process may hold at once.

    A decode of ``n`` bytes waits until ``n`` fit beside the decodes in flight; one larger than
    the whole budget waits until it is alone, then goes ahead (it is never refused: the pixel
    limit does that). So four threads decoding four 144 M-pixel PNGs take turns instead of
    holding 2 GB each at the same moment. ``peak`` is the most ever reserved at once.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = max(1, int(limit_bytes))
        self.used = 0
        self.peak = 0
        self.waiting = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, n: int) -> Iterator[None]:
        n = max(0, min(int(n), self.limit))
        with self._cond:
            self.waiting += 1
            try:
                self._cond.wait_for(lambda: self.used + n <= self.limit)
            finally:
                self.waiting -= 1
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def _budget_limit() -> int:
    text = os.environ.get("ANOMALY_INSPECTOR_DECODE_MIB", "").strip()
    try:
        mib = float(text) if text else DEFAULT_DECODE_MIB
    except ValueError:
        mib = DEFAULT_DECODE_MIB
    return int(max(1.0, mib) * 1024 * 1024)


_BUDGET: DecodeBudget | None = None
_BUDGET_LOCK = threading.Lock()


def decode_budget() -> DecodeBudget:
    """The process-wide :class:`DecodeBudget` (made on first use, sized from the environment)."""
    global _BUDGET
    with _BUDGET_LOCK:
        if _BUDGET is None:
            _BUDGET = DecodeBudget(_budget_limit())
        return _BUDGET


def _decode_bytes(w: int, h: int, bands: int, sample_bytes: int, out_side: int | None) -> int:
    """What decoding a ``w`` x ``h`` image holds at its peak: the decoded samples twice (the
    codec's buffer and the array; measured: 276 MB for a 144 M-pixel grey PNG) and the float32
    copy, of the image shrunk to ``out_side`` when it is."""
    raw = w * h * bands * sample_bytes
    kept = w * h if out_side is None or max(w, h) <= out_side else (w * h * out_side * out_side) // max(w, h) ** 2
    return 2 * raw + kept * min(bands, 3) * 4


def max_pixels() -> int:
    """The pixel limit in force (:data:`DEFAULT_MAX_PIXELS` or ``ANOMALY_INSPECTOR_MAX_PIXELS``)."""
    text = os.environ.get("ANOMALY_INSPECTOR_MAX_PIXELS", "").strip()
    try:
        return max(1, int(float(text))) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS


def _header(path: Path) -> tuple[int, int, int, int, int]:
    """(width, height, EXIF orientation, bands, bytes per sample) from the file header, without
    decoding pixels; (0, 0, 1, 3, 1) when the header cannot be read here (the decoder then decides)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                bands = len(im.getbands())
                sample = 2 if im.mode in ("I;16", "I;16B", "I;16L", "I") else 4 if im.mode == "F" else 1
                orient = 1
                # Pillow's PNG reader decodes the whole image to look for an eXIf chunk after
                # the pixels: ask only formats that carry EXIF in the header (or a PNG whose
                # eXIf came before the pixels).
                if im.format in ("JPEG", "MPO", "TIFF", "WEBP") or "exif" in im.info:
                    try:
                        orient = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                    except Exception:
                        orient = 1
                return int(w), int(h), orient, bands, sample
    except Image.DecompressionBombError as exc:
        if Image.MAX_IMAGE_PIXELS and max_pixels() > 2 * Image.MAX_IMAGE_PIXELS:
            return 0, 0, 1, 3, 1  # our limit was raised above Pillow's: let OpenCV decide
        raise ImageReadError(f"image too large ({exc}); the limit is {max_pixels()} pixels") from None
    except Exception:
        return 0, 0, 1, 3, 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a raw decoded array upright by its EXIF orientation tag (1..8)."""
    if orientation in (2, 4, 5, 7):
        arr = arr[:, ::-1] if orientation == 2 else arr[::-1] if orientation == 4 else arr
    if orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 5:
        arr = np.swapaxes(arr, 0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, k=-1)
    elif orientation == 7:
        arr = np.swapaxes(arr, 0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)


def _jpeg_truncated(raw: np.ndarray) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it was cut short."""
    data = raw.tobytes()
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one file into ``float32 (H, W, C)``, C in {1, 3}, values in [0, 1].

    Every failure, whatever the codec did, is an :class:`ImageReadError` with a reason: not a
    regular file, too large (more than :func:`max_pixels` pixels), truncated, corrupt. EXIF
    orientation is applied, so the pixels are those a viewer shows upright (the GUI's
    thumbnails and full view read through here too). JPEGs over :data:`FULL_DECODE_PIXELS`
    are decoded at a reduced scale.
    """
    return read_image_for(path, None)[0]


def read_image_for(path: str | os.PathLike, max_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image` for a reader that shrinks every image to a working size anyway (a
    detector's ``decode_side``): an image over :data:`FULL_DECODE_PIXELS` pixels is decoded at
    reduced size, its long side no shorter than ``max_side`` (a JPEG by the codec at 1/2, 1/4
    or 1/8; anything else decoded as 8/16-bit samples and shrunk before the float copy, which
    is four times larger). Returns the image and its full (H, W), upright. Large decodes take
    turns within the process-wide :func:`decode_budget`."""
    import stat

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except OSError as exc:
        raise ImageReadError(f"cannot access file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError("not a regular file (a folder, pipe, socket or device)")
    if st.st_size == 0:
        raise ImageReadError("empty file (0 bytes)")
    limit = max_pixels()
    if st.st_size > 8 * limit + (1 << 20):
        raise ImageReadError(f"file too large ({st.st_size} bytes) for the limit of {limit} pixels")
    w, h, orientation, bands, sample = _header(p)
    if w * h > limit:
        raise ImageReadError(f"image too large ({w} x {h} pixels; the limit is {limit}, "
                             "set ANOMALY_INSPECTOR_MAX_PIXELS to change it)")
    shrink = max_side if max_side is not None and w * h > FULL_DECODE_PIXELS else None
    need = _decode_bytes(w, h, bands, sample, shrink)
    try:
        with decode_budget().reserve(need) if need > BUDGET_FROM_BYTES else nullcontext():
            try:
                raw = np.fromfile(p, dtype=np.uint8)  # handles non-ASCII paths, unlike cv2.imread
            except PermissionError:
                raise ImageReadError("permission denied") from None
            except OSError as exc:
                raise ImageReadError(f"cannot read file: {exc.strerror or exc}") from None
            img, full = _decode(p, raw, w * h, orientation, shrink)
            return img, full
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError("image too large to decode (out of memory)") from None
    except Exception:  # any codec failure on a damaged file is a skip, never fatal to a batch
        raise ImageReadError("corrupt image data (the decoder failed)") from None


def _shrink(arr: np.ndarray, side: int) -> np.ndarray:
    """``arr`` (H, W[, C]) with its long side brought down to ``side`` (area averaging), in
    its own sample type: before the float copy, not after."""
    h, w = arr.shape[:2]
    f = side / max(h, w)
    if f >= 1.0:
        return arr
    out = cv2.resize(arr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return out[:, :, None] if arr.ndim == 3 and out.ndim == 2 else out


def _decode(p: Path, raw: np.ndarray, pixels: int, orientation: int,
            shrink: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    head = bytes(raw[:8])
    is_png, is_jpeg = head.startswith(b"\x89PNG"), head[:3] == b"\xff\xd8\xff"
    if is_jpeg and _jpeg_truncated(raw):
        raise ImageReadError("corrupt image data (truncated JPEG: the file ends inside the image data)")
    arr = _decode_plain_png(raw) if is_png else None
    bgr = arr is None  # OpenCV's channel order; the fast decoder's is RGB
    full: tuple[int, int] | None = None
    if is_jpeg and pixels > FULL_DECODE_PIXELS:
        factor = next((f for f, _ in _REDUCED_FLAGS[::-1] if pixels / (f * f) <= FULL_DECODE_PIXELS), 8)
        wh = _jpeg_size(raw)
        if shrink is not None and wh:  # as far down as the reader's working size allows
            factor = max([factor] + [f for f, _ in _REDUCED_FLAGS if max(wh) // f >= shrink])
        flag = {f: fl for f, fl in _REDUCED_FLAGS}[factor] | cv2.IMREAD_IGNORE_ORIENTATION
        arr = cv2.imdecode(raw, flag)
        full = (wh[1], wh[0]) if wh else None
    if arr is None:
        arr = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if (arr is None or arr.size == 0) and not is_png:
        # OpenCV's libpng reads every PNG there is: a PNG it refuses is damaged, and Pillow
        # would fill its missing rows with black without a word.
        arr = _decode_with_pillow(p)
        bgr = False
    if arr is None or arr.size == 0:
        if is_png or is_jpeg:
            raise ImageReadError("corrupt image data (truncated or damaged file)")
        raise ImageReadError("not a decodable image (unknown or damaged format)")
    if arr.ndim == 3 and arr.shape[0] > 0 and arr.shape[2] > 4 and bgr is False:
        arr = arr[:, :, :4]
    if min(arr.shape[:2]) < 1:
        raise ImageReadError(f"image has no pixels ({arr.shape})")
    if full is None:
        full = (int(arr.shape[0]), int(arr.shape[1]))
    if shrink is not None:
        arr = _shrink(arr, shrink)
    out = _to_float(_normalise_channels(arr, bgr=bgr))
    if orientation in (5, 6, 7, 8):
        full = (full[1], full[0])
    return (_orient(out, orientation) if orientation != 1 else out), full


#: ``ANOMALY_INSPECTOR_PNG=opencv`` decodes every PNG with OpenCV even where imagecodecs is installed
PNG_ENV = "ANOMALY_INSPECTOR_PNG"
_FAST_PNG: list = []


def _fast_png():
    """imagecodecs' PNG decoder (libpng with a faster zlib; the optional ``fast-png`` extra), or
    None: it decodes an 8-bit PNG 1.6 times faster than OpenCV's (10.2 against 16.2 ms for a
    900 px MVTec bottle image here), to the same pixels (tests/core/test_png_decode.py), and lets
    go of the GIL while it decodes, so that decoding threads do not stall the scoring thread
    (pyspng, 9.0 ms, holds it: a Python loop beside it ran 2.2 times slower; not used)."""
    if not _FAST_PNG:
        fn = None
        if os.environ.get(PNG_ENV, "").strip().lower() not in ("opencv", "cv2"):
            try:
                from imagecodecs import png_decode as fn
            except ImportError:
                fn = None
        _FAST_PNG.append(fn)
    return _FAST_PNG[0]


#: chunks that send a PNG to OpenCV: transparency (OpenCV makes it alpha), animation (OpenCV
#: gives an APNG's first frame, which need not be the default image the fast decoder gives)
_NOT_PLAIN = (b"tRNS", b"acTL", b"fcTL", b"fdAT")


def _plain_png(raw: np.ndarray) -> bool:
    """Whether the fast decoder may decode this PNG: 8-bit grey, RGB or RGBA (the types tested to
    give exactly OpenCV's pixels; 16-bit, grey + alpha and palettes go to OpenCV), without a
    tRNS or animation chunk (:data:`_NOT_PLAIN`), every chunk's CRC right and the IEND there, so that
    whatever is damaged reaches OpenCV, whose refusal and message stay what they were."""
    import zlib

    n = raw.shape[0]
    if n < 45 or raw[24] != 8 or raw[25] not in (0, 2, 6):
        return False
    mv = memoryview(raw)
    pos = 8
    while pos + 12 <= n:
        length = int.from_bytes(mv[pos:pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > n:
            return False
        kind = bytes(mv[pos + 4:pos + 8])
        if kind in _NOT_PLAIN or zlib.crc32(mv[pos + 4:end]) != int.from_bytes(mv[end:end + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        pos = end + 4
    return False


def _decode_plain_png(raw: np.ndarray) -> np.ndarray | None:
    """``raw`` decoded by the fast decoder (RGB, RGBA or grey, uint8) when it is installed and the
    PNG is plain (:func:`_plain_png`), else None: OpenCV decodes it (and words any error)."""
    fast = _fast_png()
    if fast is None or not _plain_png(raw):
        return None
    try:
        arr = fast(raw)
    except Exception:  # the fast decoder refused it
        return None
    bands = {0: 1, 2: 3, 6: 4}[int(raw[25])]
    size = (int.from_bytes(bytes(raw[20:24]), "big"), int.from_bytes(bytes(raw[16:20]), "big"))
    if arr.dtype != np.uint8 or arr.shape[:2] != size or (arr.shape[2] if arr.ndim == 3 else 1) != bands:
        return None  # not the pixels OpenCV would give
    return arr


def _jpeg_size(raw: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker, or None."""
    data = raw.tobytes()
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def read_thumbnail(path: str | os.PathLike, max_side: int) -> np.ndarray:
    """A small uint8 preview (at most ``max_side`` on the long side): ``(h, w)`` grey or ``(h, w, 3)`` RGB.

    Large files are decoded straight at 1/2, 1/4 or 1/8 scale (OpenCV's reduced decoding),
    about twice as fast as a full decode on 900 px PNGs (``benchmarks/bench_thumbnails.py``).
    Anything unusual (16-bit, alpha, odd formats) falls back to :func:`read_image`, so a bad
    file raises :class:`ImageReadError` with the same reasons.
    """
    p = Path(path)
    arr = None
    if not p.is_file():  # a pipe would block the header read; read_image says what it is
        read_image(p)
    try:
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:  # reads the header only
                w, h = im.size
                plain = im.mode in ("L", "RGB")
        if plain:
            factor, flag = next(((f, fl) for f, fl in _REDUCED_FLAGS if max(w, h) // f >= max_side), (1, None))
            raw = np.fromfile(p, dtype=np.uint8) if flag is not None and p.stat().st_size <= 8 * max_pixels() else None
            if raw is not None and w * h <= max_pixels() and not (
                    bytes(raw[:3]) == b"\xff\xd8\xff" and _jpeg_truncated(raw)):
                dec = cv2.imdecode(raw, flag)
                if dec is not None and dec.ndim == 3:
                    arr = np.ascontiguousarray(dec[:, :, ::-1])
    except Exception:
        arr = None
    if arr is None:
        img = read_image(p)
        arr = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        arr = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2]):
        arr = arr[:, :, 0]
    return np.ascontiguousarray(arr)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert an (H, W, C) float image to 1 or 3 channels (luma for RGB -> grey)."""
    c = img.shape[2]
    if c == channels:
        return img
    if channels == 1:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (img[:, :, :3] @ w)[:, :, None].astype(np.float32)
    if channels == 3:
        return np.repeat(img[:, :, :1], 3, axis=2)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize(img: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """Resize (H, W, C) or (H, W) to ``size`` = (height, width), keeping the channel axis."""
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    out = cv2.resize(img, (w, h), interpolation=interpolation)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


class ImageSource(Sequence[np.ndarray]):
    """Lazy, indexable list of images backed by files (or arrays, for tests and the GUI).

    ``source[i]`` decodes on demand and raises :class:`ImageReadError` for a bad file;
    :func:`iter_batches` turns those errors into :class:`Skipped` entries.
    """

    def __init__(self, items: Sequence[str | os.PathLike | np.ndarray], names: Sequence[str] | None = None):
        self._items = list(items)
        if names is None:
            names = [str(it) if not isinstance(it, np.ndarray) else f"array-{i}" for i, it in enumerate(self._items)]
        if len(names) != len(self._items):
            raise ValueError("names and items differ in length")
        self._names = list(names)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, recursive: bool = False) -> ImageSource:
        return cls(list_images(folder, recursive=recursive))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return ImageSource(self._items[i], self._names[i])
        item = self._items[i]
        if isinstance(item, np.ndarray):
            arr = item.astype(np.float32, copy=False)
            return arr[:, :, None] if arr.ndim == 2 else arr
        return read_image(item)

    def subset(self, indices: Sequence[int]) -> ImageSource:
        return ImageSource([self._items[i] for i in indices], [self._names[i] for i in indices])

    def name(self, i: int) -> str:
        return self._names[i]

    def path(self, i: int) -> Path | None:
        item = self._items[i]
        return None if isinstance(item, np.ndarray) else Path(item)


def iter_batches(
    source: Sequence[np.ndarray],
    batch_size: int,
    skipped: list[Skipped] | None = None,
    cancel=None,
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Yield ``(indices, images)`` batches, skipping unreadable files.

    Unreadable items are appended to ``skipped`` (if given) and left out of the batch;
    ``cancel`` (a :class:`core.runtime.cancel.CancelToken`) is checked before each image.
    """
    idx: list[int] = []
    imgs: list[np.ndarray] = []
    for i in range(len(source)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            img = source[i]
        except ImageReadError as exc:
            if skipped is not None:
                p = source.path(i) if isinstance(source, ImageSource) else None
                skipped.append(Skipped(p if p is not None else Path(str(i)), str(exc)))
            continue
        idx.append(i)
        imgs.append(img)
        if len(imgs) >= batch_size:
            yield idx, imgs
            idx, imgs = [], []
    if imgs:
        yield idx, imgs
