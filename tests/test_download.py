"""``download_opencell`` against a local fake of the S3 bucket (no network needed).

The fake speaks the parts of S3 the downloader uses: ListObjectsV2 XML with continuation tokens,
GET with ``Range``, quoted ETags (MD5 for single-part, ``<hex>-<n>`` for multipart uploads). It
can fail a transfer half-way once, or serve corrupt bytes, and counts what it sends.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
from pathlib import Path
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

import numpy as np
import pytest
import tifffile

import ocbench
from ocbench.data import download as dl
from ocbench.data.cards import DOWNLOAD_MARKER
from ocbench.data.download import download_opencell
from ocbench.errors import ConfigError, DataError

NS = "http://s3.amazonaws.com/doc/2006-03-01/"

# Gene names as in the real bucket: one with a dash, one lower-case orf name.
FOVS = [
    ("ATL3", "ENSG00000184743", 367, 30311),
    ("ATL3", "ENSG00000184743", 367, 30312),
    ("H1-0", "ENSG00000189060", 12, 4),
    ("H1-0", "ENSG00000189060", 12, 5),
    ("C12orf57", "ENSG00000111678", 900, 77),
]
ANNOTATIONS = (
    b"ensg_id,target_name,annotation_name,annotation_grade\n"
    b"ENSG00000184743,ATL3,er,3\nENSG00000189060,H1-0,chromatin,3\nENSG00000111678,C12orf57,nucleoplasm,2\n"
)


def tif_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 4000, size=(2, 16, 16), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def key_of(gene, ensg, cid, fid, kind="proj"):
    return f"microscopy/raw/{gene}_{ensg}/OC-FOV_{gene}_{ensg}_CID{cid:06d}_FID{fid:08d}_{kind}.tif"


class FakeBucket:
    """State shared by the handler threads."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.listed_sizes: dict[str, int] = {}  # override the size reported in the listing
        self.served: dict[str, bytes] = {}  # override what a GET returns (corruption)
        self.fail_once: set[str] = set()  # cut the connection half-way through, once
        self.extra: dict[str, bytes] = {}  # non-bucket paths (annotation table)
        self.page_size = 4
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {}  # bytes of body sent per key
        self.ranges: list[str] = []
        self.list_calls = 0

    def add(self, key: str, data: bytes, multipart: bool = False):
        self.objects[key] = data
        md5 = hashlib.md5(data).hexdigest()
        self.etags[key] = f"{md5[:30]}ab-2" if multipart else md5

    def count(self, key: str, n: int):
        with self.lock:
            self.sent[key] = self.sent.get(key, 0) + n

    def listing(self, prefix: str, token: str | None) -> bytes:
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        start = int(token) if token else 0
        page = keys[start : start + self.page_size]
        truncated = start + self.page_size < len(keys)
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{NS}">']
        parts.append(f"<Name>czb-opencell</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>")
        parts.append(f"<MaxKeys>{self.page_size}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>")
        for key in page:
            size = self.listed_sizes.get(key, len(self.objects[key]))
            parts.append(
                f"<Contents><Key>{escape(key)}</Key><LastModified>2021-04-01T00:00:00.000Z</LastModified>"
                f"<ETag>&quot;{self.etags[key]}&quot;</ETag><Size>{size}</Size>"
                f"<StorageClass>STANDARD</StorageClass></Contents>"
            )
        if truncated:
            parts.append(f"<NextContinuationToken>{start + self.page_size}</NextContinuationToken>")
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()


def make_handler(bucket: FakeBucket):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def send_body(self, status: int, body: bytes, headers: dict | None = None, key: str | None = None):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if key is not None and key in bucket.fail_once:
                bucket.fail_once.discard(key)
                half = body[: len(body) // 2]
                self.wfile.write(half)
                bucket.count(key, len(half))
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
            if key is not None:
                bucket.count(key, len(body))

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path == "/" and query.get("list-type") == ["2"]:
                bucket.list_calls += 1
                token = query.get("continuation-token", [None])[0]
                body = bucket.listing(query.get("prefix", [""])[0], token)
                return self.send_body(200, body, {"Content-Type": "application/xml"})
            path = urllib.parse.unquote(url.path)
            if path in bucket.extra:
                return self.send_body(200, bucket.extra[path], {"Content-Type": "text/csv"})
            key = path.lstrip("/")
            if key not in bucket.objects:
                return self.send_body(404, b"<Error><Code>NoSuchKey</Code></Error>")
            data = bucket.served.get(key, bucket.objects[key])
            etag = {"ETag": f'"{bucket.etags[key]}"'}
            range_header = self.headers.get("Range")
            if range_header:
                bucket.ranges.append(f"{key} {range_header}")
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                headers = {**etag, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                return self.send_body(206, data[start:], headers, key=key)
            return self.send_body(200, data, etag, key=key)

    return Handler


@pytest.fixture
def bucket():
    state = FakeBucket()
    for i, (gene, ensg, cid, fid) in enumerate(FOVS):
        state.add(key_of(gene, ensg, cid, fid), tif_bytes(i), multipart=(i == 4))
        state.add(key_of(gene, ensg, cid, fid, "stack"), tif_bytes(100 + i))  # never fetched
    state.add("microscopy/raw/README.txt", b"not an image")
    # A well-formed name in the wrong folder must not be written anywhere.
    state.add("microscopy/raw/elsewhere/" + key_of(*FOVS[0]).rsplit("/", 1)[1], b"stray")
    state.extra["/annotations.csv"] = ANNOTATIONS
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(dl, "_BACKOFF_S", 0.0)


def run(bucket, root, **kwargs):
    kwargs.setdefault("annotations_url", bucket.endpoint + "/annotations.csv")
    return download_opencell(root, endpoint=bucket.endpoint, workers=3, progress=False, **kwargs)


def proj_keys():
    return [key_of(*fov) for fov in FOVS]


def test_downloads_all_projections_and_annotations_then_nothing(bucket, tmp_path):
    report = run(bucket, tmp_path)

    assert bucket.list_calls >= 2  # the listing is paginated and every page was read
    assert (report.listed, report.downloaded, report.skipped) == (5, 5, 0)
    assert report.bytes == sum(len(bucket.objects[k]) for k in proj_keys())
    for key in proj_keys():
        assert (tmp_path / key).read_bytes() == bucket.objects[key]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    # no stacks, strays, .part; the provenance marker at the root
    assert files == sorted(proj_keys() + ["opencell-localization-annotations.csv", DOWNLOAD_MARKER])
    assert report.annotations == tmp_path / "opencell-localization-annotations.csv"
    assert report.annotations.read_bytes() == ANNOTATIONS
    assert report.annotations_url == bucket.endpoint + "/annotations.csv"
    assert report.annotations_sha256 == hashlib.sha256(ANNOTATIONS).hexdigest()
    assert "5 downloaded" in report.summary()

    sent_before = dict(bucket.sent)
    again = run(bucket, tmp_path)
    assert (again.listed, again.downloaded, again.skipped, again.bytes) == (5, 0, 5, 0)
    assert bucket.sent == sent_before  # not a single image byte fetched again
    assert again.annotations_url is None  # kept the existing table


def test_a_download_records_its_source_so_the_folder_is_opencell(bucket, tmp_path):
    from ocbench.data.cards import recorded_name

    assert recorded_name(tmp_path)[1].startswith("local:")
    report = run(bucket, tmp_path, targets=["ATL3"])
    assert report.marker == tmp_path / DOWNLOAD_MARKER
    marker = json.loads(report.marker.read_text())
    assert marker["format"] == "ocbench-download/1" and marker["dataset"] == "opencell"
    assert marker["source"] == {"endpoint": bucket.endpoint, "bucket": None, "prefix": "microscopy/raw/"}
    assert marker["selection"] == {"targets": ["ATL3"], "limit": None, "projections": report.listed}
    assert marker["annotations"] == {
        "file": "opencell-localization-annotations.csv",
        "url": bucket.endpoint + "/annotations.csv",
        "sha256": hashlib.sha256(ANNOTATIONS).hexdigest(),
    }
    assert marker["ocbench_version"] == ocbench.__version__
    assert marker["downloaded"] == marker["first_downloaded"]
    datetime.datetime.fromisoformat(marker["downloaded"])
    card, name = recorded_name(tmp_path)
    assert (card.name, name) == ("opencell", "opencell")
    # A re-run (nothing new to fetch, table kept) keeps the first date and the table's source.
    marker["first_downloaded"] = "2020-01-01T00:00:00+00:00"
    report.marker.write_text(json.dumps(marker))
    again = json.loads(run(bucket, tmp_path, targets=["ATL3"]).marker.read_text())
    assert again["first_downloaded"] == "2020-01-01T00:00:00+00:00"
    assert again["annotations"]["url"] == bucket.endpoint + "/annotations.csv"


def test_bucket_is_read_from_the_endpoint():
    assert dl.bucket_of("https://czb-opencell.s3.amazonaws.com") == "czb-opencell"
    assert dl.bucket_of("https://czb-opencell.s3.us-west-2.amazonaws.com") == "czb-opencell"
    assert dl.bucket_of("https://s3.amazonaws.com/czb-opencell") == "czb-opencell"
    assert dl.bucket_of("http://127.0.0.1:9000") is None


def test_targets_filter_by_gene_or_ensg_case_insensitive(bucket, tmp_path):
    report = run(bucket, tmp_path, targets=["h1-0", "ENSG00000111678"], annotations_url=None)
    got = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tif"))
    assert got == sorted(key_of(*fov) for fov in FOVS if fov[0] in ("H1-0", "C12orf57"))
    assert report.listed == 3 and report.annotations is None
    assert not (tmp_path / "opencell-localization-annotations.csv").exists()


def test_unknown_target_is_a_config_error_with_suggestion(bucket, tmp_path):
    with pytest.raises(ConfigError, match=r"ATL33 \(did you mean ATL3\?\)"):
        run(bucket, tmp_path, targets=["ATL33"], annotations_url=None)


def test_limit_takes_the_first_fovs_in_key_order(bucket, tmp_path):
    report = run(bucket, tmp_path, limit=2, annotations_url=None)
    assert report.listed == report.downloaded == 2
    got = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tif"))
    assert got == sorted(proj_keys())[:2]
    with pytest.raises(ConfigError, match="--limit"):
        run(bucket, tmp_path, limit=0)


def test_resumes_a_part_file_left_by_a_killed_run(bucket, tmp_path):
    key = proj_keys()[0]
    data = bucket.objects[key]
    part = tmp_path / (key + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100])
    # Another file already complete from the killed run.
    done = proj_keys()[2]
    (tmp_path / done).parent.mkdir(parents=True)
    (tmp_path / done).write_bytes(bucket.objects[done])

    report = run(bucket, tmp_path, annotations_url=None)

    assert report.skipped == 1 and report.downloaded == 4
    assert bucket.ranges == [f"{key} bytes=100-"]
    assert bucket.sent[key] == len(data) - 100  # only the missing tail was transferred
    assert done not in bucket.sent
    assert (tmp_path / key).read_bytes() == data and not part.exists()


def test_connection_cut_mid_file_is_retried_from_where_it_stopped(bucket, tmp_path):
    key = proj_keys()[1]
    data = bucket.objects[key]
    bucket.fail_once.add(key)

    report = run(bucket, tmp_path, annotations_url=None)

    assert report.downloaded == 5
    half = len(data) // 2
    assert bucket.ranges == [f"{key} bytes={half}-"]
    assert bucket.sent[key] == len(data)  # half, then the other half
    assert (tmp_path / key).read_bytes() == data


def test_multipart_etag_part_is_refetched_not_resumed(bucket, tmp_path):
    key = proj_keys()[4]  # multipart ETag: no MD5 to check a joined file, so start over
    part = tmp_path / (key + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage from an older run")
    run(bucket, tmp_path, annotations_url=None)
    assert bucket.ranges == []
    assert (tmp_path / key).read_bytes() == bucket.objects[key] and not part.exists()


def test_corrupt_content_is_detected_and_not_left_in_place(bucket, tmp_path):
    key = proj_keys()[0]
    good = bucket.objects[key]
    bucket.served[key] = bytes(b ^ 0xFF for b in good)  # same size, wrong MD5

    with pytest.raises(DataError, match="MD5") as info:
        run(bucket, tmp_path, annotations_url=None)
    assert "\n" not in str(info.value) and key.split("/")[-1] in str(info.value)
    assert not (tmp_path / key).exists() and not (tmp_path / (key + ".part")).exists()
    for other in proj_keys()[1:]:  # the rest completed and is kept
        assert (tmp_path / other).read_bytes() == bucket.objects[other]

    del bucket.served[key]  # the source is fixed: a re-run fetches only the missing file
    sent_before = sum(bucket.sent.values())
    report = run(bucket, tmp_path, annotations_url=None)
    assert (report.downloaded, report.skipped) == (1, 4)
    assert sum(bucket.sent.values()) - sent_before == len(good)


def test_wrong_size_is_detected(bucket, tmp_path):
    key = proj_keys()[4]  # multipart: only the size can be checked
    bucket.listed_sizes[key] = len(bucket.objects[key]) + 7
    with pytest.raises(DataError, match="size"):
        run(bucket, tmp_path, annotations_url=None)
    assert not (tmp_path / key).exists() and not (tmp_path / (key + ".part")).exists()
    assert not (tmp_path / DOWNLOAD_MARKER).exists()  # an incomplete download is not marked as OpenCell


def test_unreachable_endpoint_is_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match=r"cannot list http://127\.0\.0\.1:9/") as info:
        download_opencell(tmp_path, endpoint="http://127.0.0.1:9", annotations_url=None, progress=False)
    assert "\n" not in str(info.value)


def test_annotation_sources_fall_back_in_order_and_fail_with_advice(bucket, tmp_path, monkeypatch):
    missing = bucket.endpoint + "/no-such-table.csv"
    good = bucket.endpoint + "/annotations.csv"
    report = run(bucket, tmp_path / "a", annotations_url=[missing, good], limit=1)
    assert report.annotations_url == good

    # A pinned source whose bytes differ from the pinned checksum is not used.
    monkeypatch.setitem(dl.KNOWN_ANNOTATIONS_SHA256, good, "0" * 64)
    with pytest.raises(DataError, match="--annotations PATH") as info:
        run(bucket, tmp_path / "b", annotations_url=[missing, good])
    message = str(info.value)
    assert "HTTP 404" in message and "differs from the pinned" in message and "\n" not in message
    assert not (tmp_path / "b" / "opencell-localization-annotations.csv").exists()


def test_default_annotation_sources_are_the_cited_addresses():
    assert dl.DEFAULT_ANNOTATIONS_URLS[0].startswith(
        "https://raw.githubusercontent.com/czbiohub-sf/2021-opencell-figures/e0bedae07e6c1870f54c501bfa9a9120c8c38e09/"
    )
    assert dl.DEFAULT_ANNOTATIONS_URLS[1] == (
        "https://opencell.czbiohub.org/data/datasets/opencell-localization-annotations.csv"
    )
    assert dl.KNOWN_ANNOTATIONS_SHA256[dl.DEFAULT_ANNOTATIONS_URLS[0]]


# OpenCell's own public files (annotation table, cell-line table, nucleus frames; not ours to
# redistribute): read from OCBENCH_OPENCELL_SAMPLES, else from the folder kept beside the checkout.
OPENCELL_SAMPLES = Path(
    os.environ.get("OCBENCH_OPENCELL_SAMPLES") or Path(__file__).resolve().parents[2] / "shared" / "data" / "opencell"
)
SAMPLES_HINT = "set OCBENCH_OPENCELL_SAMPLES to a folder that holds it to run this test"
REAL_FLAT = OPENCELL_SAMPLES / "2021-09-29-public-annotations-flat.csv"


@pytest.mark.skipif(
    not REAL_FLAT.is_file(), reason=f"needs OpenCell's public annotation table {REAL_FLAT.name}: {SAMPLES_HINT}"
)
def test_pinned_checksum_matches_the_published_flat_table():
    expected = dl.KNOWN_ANNOTATIONS_SHA256[dl.GITHUB_FLAT_ANNOTATIONS_URL]
    assert hashlib.sha256(REAL_FLAT.read_bytes()).hexdigest() == expected
