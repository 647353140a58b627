"""Import public-HPA fields: download the four channels from the HPA image server, convert, resize.

The public-HPA table (``kaggle_2021.tsv``: ``Image, Label_idx, in_trainset, Cellline, ...``) names
each field by an URL-like ``Image`` path, e.g. ``https://images.proteinatlas.org/10005/921_B9_1``.
The field id is its last part (``921_B9_1``); the server holds one file per channel at
``<Image>_<color>.<ext>`` (16-bit gzip TIFF for ``tif.gz``, 8-bit for ``jpg``/``png``).

:func:`import_public_hpa` downloads, for every field the table keeps (see
:func:`read_public_hpa_fields`), its four channels, resizes each (area interpolation by default, in
the source bit depth; ``also`` adds more sizes, each resized from the download), converts to 8 bits (:func:`hpasc.io.images.to_uint8`) unless ``dtype="keep"``
and writes an image set ``<id>_<color>.png`` to the output store. Failures of the network or
the server (connection errors, timeouts, HTTP 5xx / 408 / 429) and corrupt downloads (body
shorter than ``Content-Length``, gzip CRC error, undecodable image) are retried with exponential
back-off and seeded jitter; other HTTP errors (404, 403, ...) fail the field at once. Fields whose
four PNGs exist are skipped (resume).

Only the standard library talks to the network (``urllib.request``); this module imports no
heavy package at import time so the CLI stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import random
import string
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpasc import __version__
from hpasc.classes import public_hpa_field_id, read_public_hpa_labels
from hpasc.errors import ConfigError, HpascError, InputError
from hpasc.io.images import CHANNELS, decode_image, to_uint8, write_channel
from hpasc.io.store import open_output
from hpasc.options import option, validate
from hpasc.prepare import INTERPOLATIONS, resize_image
from hpasc.runner import guard_output, parse_shard, run_fields, shard_ids

if TYPE_CHECKING:
    import numpy as np

    from hpasc.io.store import Store
    from hpasc.runner import RunSummary

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_URL_TEMPLATE",
    "EXTENSIONS",
    "DownloadError",
    "ImportOptions",
    "ImportSummary",
    "PublicHpaField",
    "RetryPolicy",
    "channel_url",
    "download_channel",
    "fetch",
    "field_id",
    "image_path",
    "import_field",
    "import_public_hpa",
    "read_public_hpa_fields",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "https://images.proteinatlas.org"
#: Environment variable that overrides :data:`DEFAULT_BASE_URL` (``--base-url`` overrides both).
BASE_URL_ENV = "HPASC_HPA_BASE_URL"
#: ``{base}`` base URL, ``{path}`` the ``Image`` path without scheme and host (``10005/921_B9_1``),
#: ``{id}`` the field id (``921_B9_1``), ``{color}`` the channel, ``{ext}`` the file extension.
DEFAULT_URL_TEMPLATE = "{base}/{path}_{color}.{ext}"
EXTENSIONS = ("tif.gz", "jpg", "png")
_TEMPLATE_KEYS = {"base", "path", "id", "color", "ext"}
_USER_AGENT = f"hpasc/{__version__} (public-HPA import)"


# --------------------------------------------------------------------------------------------
# The table


def image_path(image: str) -> str:
    """The ``Image`` value without scheme, host and surrounding slashes.

    >>> image_path("https://images.proteinatlas.org/10005/921_B9_1")
    '10005/921_B9_1'
    >>> image_path("10005/921_B9_1/")
    '10005/921_B9_1'
    """
    text = str(image)
    parsed = urllib.parse.urlsplit(text)
    path = parsed.path if parsed.scheme and parsed.netloc else text
    return path.strip("/")


field_id = public_hpa_field_id  # one rule for ids, shared with the label parser


@dataclass(frozen=True)
class PublicHpaField:
    """One public-HPA field: its id and its ``Image`` path on the server (no scheme or host)."""

    id: str
    path: str


def read_public_hpa_fields(table: str | Path) -> list[PublicHpaField]:
    """The fields of a public-HPA table that :func:`hpasc.classes.read_public_hpa_labels` keeps.

    Rows in the Kaggle train set, without a label or without a cell line are dropped by that
    parser; this adds the ``Image`` path of each kept id. Table order is kept.

    Raises
    ------
    InputError
        Unreadable table, or one field id given by two different ``Image`` paths.
    """
    labels = read_public_hpa_labels(table)
    paths: dict[str, str] = {}
    for fid, image in zip(labels.ids, labels.images or [], strict=True):
        p = image_path(image)
        if paths.setdefault(fid, p) != p:
            raise InputError(
                f"{table}: field id {fid!r} is given by two Image paths ({paths[fid]!r} and "
                f"{p!r}); ids are the last part of Image and must be unique — drop one row"
            )
    return [PublicHpaField(fid, paths[fid]) for fid in labels.ids]


# --------------------------------------------------------------------------------------------
# URLs


def resolve_base_url(base_url: str | None = None) -> str:
    """``base_url``, else ``$HPASC_HPA_BASE_URL``, else :data:`DEFAULT_BASE_URL`; checked."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise ConfigError(
            f"base URL {url!r} must start with http://, https:// or file:// "
            f"(--base-url or ${BASE_URL_ENV})"
        )
    return url.rstrip("/")


def check_url_template(template: str) -> str:
    """Return ``template`` if it only uses the known placeholders, else raise ConfigError."""
    try:
        keys = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"bad --url-template {template!r}: {exc}") from None
    unknown = keys - _TEMPLATE_KEYS
    if unknown or "color" not in keys:
        raise ConfigError(
            f"bad --url-template {template!r}: placeholders must be among "
            f"{{{', '.join(sorted(_TEMPLATE_KEYS))}}} and include {{color}}"
            + (f"; unknown: {sorted(unknown)}" if unknown else "")
        )
    return template


def channel_url(
    fld: PublicHpaField,
    color: str,
    *,
    ext: str = "tif.gz",
    base_url: str = DEFAULT_BASE_URL,
    template: str = DEFAULT_URL_TEMPLATE,
) -> str:
    """The URL of one channel file of a field.

    >>> channel_url(PublicHpaField("921_B9_1", "10005/921_B9_1"), "blue")
    'https://images.proteinatlas.org/10005/921_B9_1_blue.tif.gz'
    """
    return template.format(base=base_url, path=fld.path, id=fld.id, color=color, ext=ext)


# --------------------------------------------------------------------------------------------
# Downloads


class TransientError(Exception):
    """A failure worth retrying (network, server overload, corrupt or truncated body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class DownloadError(HpascError):
    """A channel could not be downloaded: a permanent HTTP error, or retries exhausted."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a download is retried.

    The wait before try ``k + 1`` (``k`` = 0, 1, ...) is ``d / 2 + U(0, d / 2)`` with
    ``d = min(max_backoff, backoff * 2**k)``, ``U`` drawn from a generator seeded by ``seed``
    and the URL (the same run waits the same), and at least the server's ``Retry-After``.
    ``timeout`` bounds each connect and each read on the socket, in seconds.
    """

    retries: int = option(5, "Retries per file on transient failures.", min=0)
    timeout: float = option(60.0, "Socket timeout per connect/read, seconds.", min=0.001)
    backoff: float = option(
        1.0, "First retry wait in seconds; doubles per retry (jittered).", min=0.0
    )
    max_backoff: float = option(60.0, "Longest retry wait in seconds.", min=0.0)
    seed: int = option(0, "Seed of the back-off jitter.", min=0)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.timeout <= 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        d = min(self.max_backoff, self.backoff * 2.0**attempt)
        wait = d / 2 + rng.uniform(0, d / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the back-off alone is fine


def fetch(url: str, timeout: float) -> bytes:
    """One GET of ``url``; the whole body, checked against ``Content-Length``.

    Raises
    ------
    TransientError
        Connection errors, timeouts, HTTP 408 / 429 / 5xx, a body shorter or longer than
        announced.
    DownloadError
        Any other HTTP error (404, 403, ...) or a missing ``file://`` file: retrying would not
        help.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            data = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (408, 429) or exc.code >= 500:
            raise TransientError(f"HTTP {exc.code}", _retry_after(exc.headers)) from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # file:// mirror: no such file
            raise DownloadError(f"{url}: no such file") from None
        raise TransientError(f"{type(exc).__name__}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        # URLError, timeouts, resets and IncompleteRead (closed before Content-Length bytes).
        raise TransientError(f"{type(exc).__name__}: {exc}") from None
    if expected is not None and expected.isdigit() and len(data) != int(expected):
        raise TransientError(f"truncated: got {len(data)} of {expected} bytes")
    return data


def download_channel(
    url: str,
    policy: RetryPolicy = RetryPolicy(),
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[np.ndarray, int, int]:
    """Download and decode one channel file, retrying transient failures.

    Returns
    -------
    image : ndarray
        The 2-D image in its stored bit depth (:func:`hpasc.io.images.decode_image`).
    retries : int
        How many tries failed before the one that worked.
    nbytes : int
        Size of the downloaded file.

    Raises
    ------
    DownloadError
        A permanent HTTP error, or ``policy.retries + 1`` failed tries (the message names the
        URL and the last error).
    """
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    rng = random.Random(f"{policy.seed}|{url}")
    for attempt in range(policy.retries + 1):
        try:
            data = fetch(url, policy.timeout)
            try:
                image = decode_image(data, name)
            except Exception as exc:  # any decoder failure on fresh bytes = corrupt download
                raise TransientError(f"corrupt download ({type(exc).__name__}: {exc})") from None
            if image.ndim != 2:
                raise TransientError(f"corrupt download: expected a 2-D image, got {image.shape}")
            return image, attempt, len(data)
        except TransientError as exc:
            if attempt == policy.retries:
                raise DownloadError(
                    f"{url}: gave up after {attempt + 1} tries; last error: {exc}"
                ) from None
            sleep(policy.delay(attempt, rng, exc.retry_after))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Fields


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """What to fetch and how to convert it (see :func:`import_public_hpa`)."""

    size: int = option(768, "Output side length in pixels (area resize by default).", min=1)
    ext: str = option(
        "tif.gz",
        f"Server file type: {' | '.join(EXTENSIONS)} (tif.gz: 16-bit).",
        choices=EXTENSIONS,
    )
    dtype: str = option(
        "uint8",
        "uint8: convert to 8 bits (hpasc.io.images.to_uint8); keep: source depth.",
        choices=("uint8", "keep"),
    )
    base_url: str | None = option(
        None,
        f"Image server (default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}); replaces the host "
        "of Image URLs.",
    )
    url_template: str = option(
        DEFAULT_URL_TEMPLATE,
        "Channel URL; placeholders {base} {path} (Image without host) {id} {color} {ext}.",
    )
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    interpolation: str = option(
        "auto",
        "auto (area when shrinking), area, linear (the 7th place's cv2.resize), nearest, cubic.",
    )  # checked below: the names live in hpasc.prepare
    # (size, store) pairs: more copies of every field, each resized from the downloaded
    # original (the 7th place made its 768 and 1536 sets so, not 768 from 1536)
    also: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", resolve_base_url(self.base_url))
        object.__setattr__(self, "also", tuple((int(n), str(u)) for n, u in self.also))
        validate(self, ConfigError)
        for size, _ in self.also:
            if size < 1:
                raise ConfigError(f"--also: sizes must be positive numbers of pixels, got {size}")
        if self.interpolation != "auto" and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"--interpolation must be auto or one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        check_url_template(self.url_template)


@dataclass
class FieldResult:
    """A converted field (``images[color]``) and what fetching it took."""

    images: dict[str, np.ndarray]
    retries: int = 0
    nbytes: int = 0
    also: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # size → colour → image


def import_field(
    fld: PublicHpaField,
    options: ImportOptions | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> FieldResult:
    """Download the four channels of one field (concurrently), resize and convert them.

    Resizing happens before the 8-bit conversion so area averaging sees all 16 bits and the
    result is rounded once.

    Raises
    ------
    DownloadError
        A channel failed for good, or the channels differ in shape.
    """
    options = options or ImportOptions()
    urls = {
        c: channel_url(
            fld, c, ext=options.ext, base_url=options.base_url, template=options.url_template
        )
        for c in CHANNELS
    }
    with ThreadPoolExecutor(len(urls)) as pool:
        futures = {
            c: pool.submit(download_channel, u, options.policy, sleep=sleep)
            for c, u in urls.items()
        }
        fetched = {c: f.result() for c, f in futures.items()}
    shapes = {c: r[0].shape for c, r in fetched.items()}
    if len(set(shapes.values())) > 1:
        raise DownloadError(f"field {fld.id}: channels differ in shape {shapes}")
    result = FieldResult({})

    def convert(image: np.ndarray, size: int) -> np.ndarray:
        image = resize_image(image, size, options.interpolation)
        return to_uint8(image) if options.dtype == "uint8" else image

    for c, (image, retries, nbytes) in fetched.items():
        result.images[c] = convert(image, options.size)
        for size, _ in options.also:
            result.also.setdefault(size, {})[c] = convert(image, size)
        result.retries += retries
        result.nbytes += nbytes
    return result


def output_names(fid: str) -> list[str]:
    """The files a finished field has in the image set."""
    return [f"{fid}_{c}.png" for c in CHANNELS]


# The job of the worker processes, set once per worker by _init_worker (with fork it is
# inherited, never pickled per field: the id -> path map of a whole table is large).
_JOB: dict[str, Any] = {}


def _init_worker(fields: dict[str, PublicHpaField], options: ImportOptions) -> None:
    _JOB["fields"], _JOB["options"] = fields, options


def _import_one(fid: str) -> FieldResult:
    return import_field(_JOB["fields"][fid], _JOB["options"])


@dataclass
class ImportSummary:
    """What :func:`import_public_hpa` did: the runner's counts plus retries and bytes."""

    run: RunSummary
    retries: int = 0
    nbytes: int = 0
    out: str = ""

    def __str__(self) -> str:
        return (
            f"import-summary: {self.run}; {self.retries} retries; "
            f"{_size(self.nbytes)} downloaded -> {self.out}"
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e10 else f"{nbytes / 1e6:.1f} MB"


def import_public_hpa(
    table: str | Path,
    out: str | Path | Store,
    options: ImportOptions | None = None,
    *,
    workers: int = 8,
    limit: int | None = None,
    shard: tuple[int, int] | str | None = None,
    on_error: Literal["stop", "skip"] = "stop",
    progress: bool = True,
) -> ImportSummary:
    """Download, convert and resize every field of a public-HPA table into an image set.

    Parameters
    ----------
    table
        The public-HPA table (``kaggle_2021.tsv``); rows are filtered as by
        :func:`hpasc.classes.read_public_hpa_labels`.
    out
        Output store (folder, folder in a zip, URL); receives ``<id>_<color>.png`` and, with
        ``on_error="skip"``, ``errors.csv`` (``id,error``), and the manifest of how it was made
        (size, format, bit depth, interpolation: a rerun with others refuses). Nothing else:
        labels stay in the table.
    options
        Size, extension, bit depth, server and retry policy (default: ``ImportOptions()``).
    workers
        Fields processed at once (worker processes; each fetches its 4 channels in threads).
    limit
        Only the first ``limit`` fields of the table (before sharding).
    shard
        ``(i, n)`` or ``"i/n"``: this process's share of the fields (:mod:`hpasc.runner`).
    on_error
        ``"stop"``: the first failed field stops the run with one line. ``"skip"``: failed
        fields go to ``errors.csv`` and the run goes on.
    progress
        Show a progress bar.

    Returns
    -------
    ImportSummary
    """
    options = options or ImportOptions()
    fields = read_public_hpa_fields(table)
    if limit is not None:
        fields = fields[:limit]
    by_id = {f.id: f for f in fields}
    # open_output commits what was written (zip stores; finished fields are complete) and
    # discards an output that this run created but finished nothing in
    with contextlib.ExitStack() as outputs:
        store = outputs.enter_context(open_output(out))
        extra = {size: outputs.enter_context(open_output(url)) for size, url in options.also}
        if isinstance(shard, str):
            shard = parse_shard(shard)
        ids = list(by_id) if shard is None else shard_ids(list(by_id), *shard)
        # The table is no input fingerprint: a longer table into the same OUT adds its new fields.
        made = {"ext": options.ext, "dtype": options.dtype, "interpolation": options.interpolation}
        done = [
            guard_output(
                s, "import public-hpa", {**made, "size": size}, {}, ids,
                output_names, fix="choose another OUT or delete it",
            )
            for s, size in ((store, options.size), *((s, n) for n, s in extra.items()))
        ]  # fmt: skip
        totals = {"retries": 0, "nbytes": 0}

        def write(fid: str, result: FieldResult) -> None:
            # In this process: a zip store may be written by one process only.
            for size, images in result.also.items():
                for color, image in images.items():
                    write_channel(extra[size], fid, color, image)
            for color, image in result.images.items():
                write_channel(store, fid, color, image)
            totals["retries"] += result.retries
            totals["nbytes"] += result.nbytes

        try:
            run = run_fields(
                list(by_id),
                _import_one,
                workers=workers,
                shard=shard,
                skip=lambda fid: all(d(fid) for d in done),
                on_error=on_error,
                errors_csv=store,
                desc="import public-HPA",
                initializer=functools.partial(_init_worker, by_id, options),
                on_result=write,
                progress=progress,
            )
        finally:
            _JOB.clear()
    return ImportSummary(run, totals["retries"], totals["nbytes"], str(store))
