"""``ocbench data download opencell``: fetch the public OpenCell projections and annotation table.

The raw images live in the AWS open-data bucket ``czb-opencell`` (anonymous HTTPS, no AWS account
or SDK needed). We list ``microscopy/raw/`` with the S3 REST ListObjectsV2 call, keep the
``_proj.tif`` files (CYX uint16 max-projections; the ``_stack.tif`` z-stacks are ~100x larger and
unused), and fetch them in parallel with the standard library.

Downloads are resumable and verified:

- a file whose local size equals the listed size is skipped (a re-run costs one listing);
- bytes go to ``<file>.part`` and are renamed onto ``<file>`` only after the size and, for
  single-part uploads (ETag without ``-``, which S3 defines as the MD5 of the content), the MD5
  match; a mismatch deletes the partial file;
- an interrupted ``.part`` is continued with an HTTP ``Range`` request when the MD5 can verify
  the joined result afterwards, otherwise fetched again from the start.

Annotation table: by default the flat table published with the OpenCell paper's figure code,
pinned to a commit and checked against its SHA-256 (immutable, so the dataset version is
reproducible); if GitHub is unreachable, the portal's own "Protein localization annotations" CSV
(changes over time, so no checksum). Both formats are read by ``ocbench.data.annotations``. The
file is stored as ``<root>/opencell-localization-annotations.csv``, a name the dataset reader
looks for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

from ocbench import __version__
from ocbench._io import atomic_write, read_json_or_none, sha256_bytes, sha256_file
from ocbench.data.cards import DOWNLOAD_MARKER
from ocbench.data.layout import RAW_DIR, parse_fov_filename
from ocbench.errors import ConfigError, DataError

#: Public AWS open-data bucket of OpenCell (https://registry.opendata.aws/czb-opencell/), as
#: linked from the portal's download page (czbiohub-sf/opencell-portal-pub @ 40526e64,
#: client/src/views/download/Download.jsx).
DEFAULT_ENDPOINT = "https://czb-opencell.s3.amazonaws.com"
RAW_PREFIX = f"{RAW_DIR}/"  # "microscopy/raw/"

#: Flat annotation table (ensg_id, target_name, annotation_name, annotation_grade; 2,749 rows,
#: 1,310 targets) from the OpenCell figures repository, czbiohub-sf/2021-opencell-figures,
#: data/2021-09-29-public-annotations-flat.csv at commit e0bedae0 (the file is unchanged since
#: it was added in 1e17c1ac, 2021-10-18). A raw URL at a full commit id never changes.
GITHUB_FLAT_ANNOTATIONS_URL = (
    "https://raw.githubusercontent.com/czbiohub-sf/2021-opencell-figures/"
    "e0bedae07e6c1870f54c501bfa9a9120c8c38e09/data/2021-09-29-public-annotations-flat.csv"
)
#: The OpenCell portal's download page links "Protein localization annotations" CSV as
#: ``${origin}/data/datasets/opencell-localization-annotations.csv`` (portal code:
#: czbiohub-sf/opencell-portal-pub @ 40526e64, client/src/views/download/Download.jsx builds
#: ``apiUrl.replace('/api', '/data') + '/datasets/<name>.csv'`` and client/webpack.prod.js sets
#: ``API_URL = window.location.origin + '/api'``). Portal export format; updated over time.
PORTAL_ANNOTATIONS_URL = "https://opencell.czbiohub.org/data/datasets/opencell-localization-annotations.csv"

#: Tried in order; the first that answers wins.
DEFAULT_ANNOTATIONS_URLS: tuple[str, ...] = (GITHUB_FLAT_ANNOTATIONS_URL, PORTAL_ANNOTATIONS_URL)

#: Known content of immutable annotation sources (sha256 of the bytes).
KNOWN_ANNOTATIONS_SHA256: dict[str, str] = {
    GITHUB_FLAT_ANNOTATIONS_URL: "f50a385ddb9a3a090e1cd2d3350540e7795dfd02783901a642131a0936368dc5",
}

ANNOTATIONS_FILENAME = "opencell-localization-annotations.csv"
DOWNLOAD_PAGE = "https://opencell.czbiohub.org/download"

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_CHUNK = 1 << 16
_ATTEMPTS = 3  # per file: transient network errors and failed verification are retried
_TIMEOUT_S = 60
_BACKOFF_S = 0.2  # first retry waits 0.4 s, then 0.8 s
_USER_AGENT = f"ocbench/{__version__} (+https://registry.opendata.aws/czb-opencell/)"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One object of the bucket listing."""

    key: str
    size: int
    etag: str  # without quotes

    @property
    def md5(self) -> str | None:
        """The content MD5 when S3 gives it: single-part uploads have ETag = hex MD5."""
        if "-" in self.etag or len(self.etag) != 32:
            return None
        return self.etag.lower()


@dataclasses.dataclass(frozen=True)
class DownloadReport:
    """What ``download_opencell`` did."""

    root: Path
    listed: int  # projections selected (after --targets / --limit)
    downloaded: int  # fetched in this run
    skipped: int  # already complete on disk
    bytes: int  # bytes transferred in this run
    annotations: Path | None  # local annotation table, None when skipped
    annotations_url: str | None = None  # where it came from (None: already present / skipped)
    annotations_sha256: str | None = None
    marker: Path | None = None  # the provenance file written at the root

    def summary(self) -> str:
        lines = [
            f"{self.listed} projections under {self.root}: {self.downloaded} downloaded "
            f"({self.bytes / 1e6:.1f} MB), {self.skipped} already complete",
        ]
        if self.annotations is not None:
            source = f" from {self.annotations_url}" if self.annotations_url else " (already present)"
            lines.append(f"annotations: {self.annotations}{source}")
        if self.marker is not None:
            lines.append(f"source recorded in {self.marker}")
        return "\n".join(lines)


def download_opencell(
    root: str | os.PathLike,
    *,
    targets: Sequence[str] | None = None,
    limit: int | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
    annotations_url: str | Sequence[str] | None = DEFAULT_ANNOTATIONS_URLS,
    workers: int = 8,
    progress: bool = True,
) -> DownloadReport:
    """Download OpenCell ``_proj.tif`` files into ``<root>/microscopy/raw/...`` and the annotations.

    ``targets``: gene names or ENSG ids (case-insensitive) to keep; ``limit``: at most this many
    FOVs (the first in key order, after the target filter). ``annotations_url``: one URL or
    several tried in order (default: the pinned GitHub flat table, then the OpenCell portal);
    ``None`` skips the annotation table. Raises ``DataError`` (one line) on network failures or
    files that fail verification; completed files stay, so running again resumes.
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive number of FOVs, got {limit}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    endpoint = endpoint.rstrip("/")

    listing = list_objects(endpoint, RAW_PREFIX)
    selected = select_projections(listing, targets=targets, limit=limit)
    root.mkdir(parents=True, exist_ok=True)

    # The annotation table before the images: small, and a failure should not come after hours of transfer.
    annotations_path, ann_url, ann_sha = None, None, None
    if annotations_url is not None:
        urls = (annotations_url,) if isinstance(annotations_url, str) else tuple(annotations_url)
        annotations_path, ann_url, ann_sha = fetch_annotations(root, urls)

    todo: list[tuple[RemoteFile, Path]] = []
    skipped = 0
    for remote in selected:
        dest = root / local_relpath(remote.key)
        if dest.is_file() and dest.stat().st_size == remote.size:
            skipped += 1
        else:
            todo.append((remote, dest))

    transferred = _fetch_all(endpoint, todo, workers=workers, progress=progress)
    report = DownloadReport(
        root=root,
        listed=len(selected),
        downloaded=len(todo),
        skipped=skipped,
        bytes=transferred,
        annotations=annotations_path,
        annotations_url=ann_url,
        annotations_sha256=ann_sha,
    )
    # Written last, once every selected file is complete: a folder with it is OpenCell as fetched.
    marker = write_download_marker(report, endpoint=endpoint, targets=targets, limit=limit)
    return dataclasses.replace(report, marker=marker)


#: Format of the download marker (``DOWNLOAD_MARKER`` at the data root).
DOWNLOAD_MARKER_FORMAT = "ocbench-download/1"


def bucket_of(endpoint: str) -> str | None:
    """The S3 bucket an endpoint names: virtual-hosted (``https://<bucket>.s3...``) or path style."""
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or ""
    if ".s3." in host or host.endswith(".s3.amazonaws.com"):
        return host.split(".s3.", 1)[0]
    if host.startswith("s3.") or host.startswith("s3-"):
        first = parsed.path.strip("/").split("/", 1)[0]
        return first or None
    return None


def write_download_marker(
    report: DownloadReport, *, endpoint: str, targets: Sequence[str] | None, limit: int | None
) -> Path:
    """Record where the data came from in ``<root>/ocbench-download.json`` (see ``DOWNLOAD_MARKER``).

    ``ocbench.data.cards.recorded_name`` reads its presence: entries computed on this folder are
    named ``opencell``. A re-run rewrites it and keeps the date of the first download, and the
    annotation source recorded then when this run kept the existing table.
    """
    path = report.root / DOWNLOAD_MARKER
    earlier: dict = read_json_or_none(path, dict) or {}
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    annotations = None
    if report.annotations is not None:
        annotations = {"file": report.annotations.name, "url": report.annotations_url, "sha256": report.annotations_sha256}
        before = earlier.get("annotations")
        if report.annotations_url is None and isinstance(before, dict) and before.get("sha256") == report.annotations_sha256:
            annotations["url"] = before.get("url")  # kept the table fetched earlier: keep its source
    elif isinstance(earlier.get("annotations"), dict) and (report.root / str(earlier["annotations"].get("file"))).is_file():
        annotations = earlier["annotations"]  # not asked for this time; the earlier table is still there
    marker = {
        "format": DOWNLOAD_MARKER_FORMAT,
        "dataset": "opencell",
        "source": {"endpoint": endpoint, "bucket": bucket_of(endpoint), "prefix": RAW_PREFIX},
        "selection": {
            "targets": sorted(targets) if targets else None,
            "limit": limit,
            "projections": report.listed,
        },
        "annotations": annotations,
        "first_downloaded": earlier.get("first_downloaded") or now,
        "downloaded": now,
        "ocbench_version": __version__,
    }
    with atomic_write(path) as fh:
        fh.write(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return path


# --------------------------------------------------------------------------------------- listing


def list_objects(endpoint: str, prefix: str) -> list[RemoteFile]:
    """All objects under ``prefix`` (S3 ListObjectsV2, following continuation tokens)."""
    objects: list[RemoteFile] = []
    token: str | None = None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        url = f"{endpoint}/?{urllib.parse.urlencode(query)}"
        body = _get_with_retries(url, what="list")
        try:
            tree = ET.fromstring(body)
        except ET.ParseError as exc:
            raise DataError(f"listing {url} is not S3 ListObjectsV2 XML ({exc}); check --endpoint") from exc
        for item in tree.iter(f"{_S3_NS}Contents"):
            objects.append(
                RemoteFile(
                    key=item.findtext(f"{_S3_NS}Key", ""),
                    size=int(item.findtext(f"{_S3_NS}Size", "0")),
                    etag=item.findtext(f"{_S3_NS}ETag", "").strip().strip('"'),
                )
            )
        truncated = tree.findtext(f"{_S3_NS}IsTruncated", "false").strip().lower() == "true"
        token = tree.findtext(f"{_S3_NS}NextContinuationToken")
        if not truncated:
            return objects
        if not token:
            raise DataError(f"listing {url} is truncated but has no NextContinuationToken; check --endpoint")


def local_relpath(key: str) -> str:
    """Local path (relative to root) for a bucket key: rebuilt from the parsed name, never the raw key."""
    fov = parse_fov_filename(key.rsplit("/", 1)[-1])
    if fov is None:  # select_projections only passes parsed names
        raise DataError(f"bucket key {key!r} does not follow the OpenCell raw layout")
    return fov.relpath


def select_projections(
    listing: Sequence[RemoteFile], *, targets: Sequence[str] | None = None, limit: int | None = None
) -> list[RemoteFile]:
    """Keep the well-named ``_proj.tif`` objects, optionally of some targets, at most ``limit``."""
    projections: list[tuple[RemoteFile, str, str]] = []
    for remote in listing:
        fov = parse_fov_filename(remote.key.rpartition("/")[2])
        # The whole key must be the layout path of its name: nothing lands outside <root>/microscopy/raw.
        if fov is None or fov.kind != "proj" or remote.key != fov.relpath:
            continue
        projections.append((remote, fov.gene, fov.ensg))
    projections.sort(key=lambda item: item[0].key)

    if targets:
        wanted = {t.strip().upper() for t in targets if t.strip()}
        known = {gene.upper() for _, gene, _ in projections} | {ensg.upper() for _, _, ensg in projections}
        missing = sorted(wanted - known)
        if missing:
            hints = []
            for name in missing[:3]:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
            raise ConfigError(
                f"--targets not found in the bucket listing: {', '.join(hints)}"
                f"{' and more' if len(missing) > 3 else ''}; use gene names or ENSG ids as on opencell.czbiohub.org"
            )
        projections = [p for p in projections if p[1].upper() in wanted or p[2].upper() in wanted]

    selected = [remote for remote, _, _ in projections]
    return selected[:limit] if limit is not None else selected


# ------------------------------------------------------------------------------------- fetching


class _Stop(Exception):
    """Raised inside workers after Ctrl-C in the main thread."""


def _fetch_all(endpoint: str, todo: list[tuple[RemoteFile, Path]], *, workers: int, progress: bool) -> int:
    if not todo:
        return 0
    from tqdm.auto import tqdm

    stop = threading.Event()
    counted = _Counter()
    total = sum(remote.size for remote, _ in todo)
    # Bytes of .part files that will be continued (not refetched) start the bar where it left off.
    resumable = sum(
        min(_part_path(dest).stat().st_size, remote.size)
        for remote, dest in todo
        if remote.md5 is not None and _part_path(dest).is_file()
    )
    failures: list[str] = []
    with tqdm(
        total=total,
        initial=resumable,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="opencell",
        disable=None if progress else True,
    ) as bar:

        def advance(n: int) -> None:
            counted.add(n)
            bar.update(n)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocbench-download")
        try:
            futures = [pool.submit(_fetch_one, endpoint, remote, dest, advance, stop) for remote, dest in todo]
            for future in as_completed(futures):
                error = future.exception()
                if error is not None:
                    failures.append(str(error))
        except BaseException:  # Ctrl-C: workers stop between chunks; their .part files stay for resuming
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    if failures:
        raise DataError(
            f"{len(failures)} of {len(todo)} files failed ({failures[0]}); "
            "completed files were kept: run the same command again to resume"
        )
    return counted.value


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _fetch_one(endpoint: str, remote: RemoteFile, dest: Path, advance, stop: threading.Event) -> None:
    """Fetch one object into ``dest`` via ``dest.part``; retries, resumes, verifies."""
    url = f"{endpoint}/{urllib.parse.quote(remote.key)}"
    part = _part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(_ATTEMPTS):
        if stop.is_set():
            raise _Stop(url)
        if attempt:
            time.sleep(min(2.0, _BACKOFF_S * 2**attempt))
        try:
            _transfer(url, remote, part, advance, stop)
        except _Stop:
            raise
        except _WrongSize as exc:  # the object is not what the listing says: never keep its bytes
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            last_error = f"{url}: {exc}"
            continue
        except Exception as exc:  # URLError, timeouts, http.client.IncompleteRead, ...: retry, resuming
            last_error = f"{url}: {_reason(exc)}"
            continue
        problem = _verify(part, remote)
        if problem is None:
            os.replace(part, dest)
            return
        # A corrupt file is never left in place, neither as the final name nor as a resumable part.
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        last_error = f"{url}: {problem}"
    raise DataError(last_error)


def _transfer(url: str, remote: RemoteFile, part: Path, advance, stop: threading.Event) -> None:
    """Append the missing bytes of ``remote`` to ``part`` (or write it anew)."""
    have = part.stat().st_size if part.is_file() else 0
    # Resume only when the MD5 will check the joined bytes afterwards; else start over.
    if have >= remote.size or (have and remote.md5 is None):
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(url, headers) as response:
        status = getattr(response, "status", 200)
        if have and status != 206:  # server ignored the range: start over
            have = 0
        server_size = _total_size(response, have)
        if server_size is not None and server_size != remote.size:
            raise _WrongSize(f"size {server_size} bytes on the server, listing says {remote.size}")
        with open(part, "ab" if have else "wb") as fh:
            while True:
                if stop.is_set():
                    raise _Stop(url)
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                advance(len(chunk))
    # http.client returns b"" rather than raising when a connection closes early: check here, so
    # the retry continues this .part instead of verification discarding it.
    got = part.stat().st_size
    if got < remote.size:
        raise ConnectionError(f"connection closed after {got} of {remote.size} bytes")


class _WrongSize(Exception):
    """The server's size for an object differs from the listing."""


def _total_size(response, offset: int) -> int | None:
    """Full object size announced by a response (Content-Range total, else offset + Content-Length)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.strip().isdigit() else None


def _verify(part: Path, remote: RemoteFile) -> str | None:
    size = part.stat().st_size
    if size != remote.size:
        return f"size {size} bytes, listing says {remote.size}"
    if remote.md5 is not None:
        digest = hashlib.md5(usedforsecurity=False)  # S3 ETag check, not security
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != remote.md5:
            return f"MD5 {digest.hexdigest()} does not match the ETag {remote.md5}"
    return None


# ----------------------------------------------------------------------------------- annotations


def fetch_annotations(root: Path, urls: Sequence[str]) -> tuple[Path, str | None, str]:
    """Store the annotation table as ``<root>/opencell-localization-annotations.csv``.

    Returns (path, url it came from or None when an existing file was kept, sha256). An existing
    file is kept (delete it to fetch a fresh copy); each URL is tried in order, and a pinned one
    must match its known SHA-256.
    """
    dest = root / ANNOTATIONS_FILENAME
    if dest.is_file() and dest.stat().st_size > 0:  # written atomically, so complete: keep it like the images
        return dest, None, sha256_file(dest)
    errors: list[str] = []
    for url in urls:
        try:
            with _open(url) as response:
                data = response.read()
        except Exception as exc:  # urllib errors, HTTPException, timeouts: try the next source
            errors.append(f"{url}: {_reason(exc)}")
            continue
        digest = sha256_bytes(data)
        expected = KNOWN_ANNOTATIONS_SHA256.get(url)
        if expected is not None and digest != expected:
            errors.append(f"{url}: sha256 {digest[:12]}... differs from the pinned {expected[:12]}...")
            continue
        if not data.strip():
            errors.append(f"{url}: empty response")
            continue
        with atomic_write(dest, "wb") as fh:
            fh.write(data)
        return dest, url, digest
    raise DataError(
        f"could not download the annotation table ({'; '.join(errors)}); get "
        f"opencell-localization-annotations.csv from {DOWNLOAD_PAGE} and pass --annotations PATH"
    )


# ----------------------------------------------------------------------------------------- http


def _get_with_retries(url: str, *, what: str) -> bytes:
    """GET a small document, retrying transient failures; DataError (one line) if all fail."""
    for attempt in range(_ATTEMPTS):
        if attempt:
            time.sleep(min(2.0, _BACKOFF_S * 2**attempt))
        try:
            with _open(url) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            error = exc
            if exc.code < 500:  # 403/404 will not get better by asking again
                break
        except Exception as exc:  # URLError, timeouts, http.client.IncompleteRead, ...
            error = exc
    raise DataError(
        f"cannot {what} {url}: {_reason(error)}; check the network connection (or --endpoint) and run again"
    )


def _open(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(request, timeout=_TIMEOUT_S)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
