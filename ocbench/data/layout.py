"""File names of OpenCell's public raw layout.

``<root>/microscopy/raw/<GENE>_<ENSG>/OC-FOV_<GENE>_<ENSG>_CID<6 digits>_FID<8 digits>_<kind>.tif``

Gene names may contain ``-`` and lower case (``H1-0``, ``HLA-A``, ``C12orf57``) but never ``_``,
which is the field separator; the ENSG id, ``CID`` and ``FID`` fields have fixed shapes, so a
name parses in exactly one way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Folder (relative to a dataset root) that holds one sub-folder per protein.
RAW_DIR = "microscopy/raw"

#: ``proj``: CYX uint16 max-projection (what ocbench reads); ``stack``: ZCYX z-stack.
FOV_KINDS: tuple[str, ...] = ("proj", "stack")

#: Human-readable pattern, used in warnings and errors.
FOV_PATTERN = "OC-FOV_<GENE>_<ENSG>_CID<6 digits>_FID<8 digits>_proj.tif"

_GENE = r"[A-Za-z0-9][A-Za-z0-9.\-]*"  # no '_': it separates the fields
_ENSG = r"ENSG\d{11}"
_FOV_RE = re.compile(
    rf"^OC-FOV_(?P<gene>{_GENE})_(?P<ensg>{_ENSG})_CID(?P<cid>\d{{6}})_FID(?P<fid>\d{{8}})_(?P<kind>[a-z]+)\.tif$"
)
_GENE_RE = re.compile(rf"^{_GENE}$")
_ENSG_RE = re.compile(rf"^{_ENSG}$")


@dataclass(frozen=True)
class FovName:
    """The parts of one raw file name; builds the name and relative path back from them."""

    gene: str
    ensg: str
    cid: int
    fid: int
    kind: str = "proj"

    def __post_init__(self) -> None:
        # Refuse parts that would write a name parse_fov_filename cannot read back.
        if not _GENE_RE.match(self.gene):
            raise ValueError(f"gene {self.gene!r} must be letters, digits, '-' or '.', without '_'")
        if not _ENSG_RE.match(self.ensg):
            raise ValueError(f"ensg {self.ensg!r} must look like ENSG00000123456")
        if not 0 <= self.cid < 10**6:
            raise ValueError(f"cid {self.cid} must fit in 6 digits")
        if not 0 <= self.fid < 10**8:
            raise ValueError(f"fid {self.fid} must fit in 8 digits")
        if self.kind not in FOV_KINDS:
            raise ValueError(f"kind {self.kind!r} must be one of {', '.join(FOV_KINDS)}")

    @property
    def fov_id(self) -> str:
        """The file stem without ``_<kind>``: one id per field of view."""
        return f"OC-FOV_{self.gene}_{self.ensg}_CID{self.cid:06d}_FID{self.fid:08d}"

    @property
    def folder(self) -> str:
        """The protein folder name, ``<GENE>_<ENSG>``."""
        return f"{self.gene}_{self.ensg}"

    @property
    def filename(self) -> str:
        return f"{self.fov_id}_{self.kind}.tif"

    @property
    def relpath(self) -> str:
        """POSIX path relative to the dataset root."""
        return f"{RAW_DIR}/{self.folder}/{self.filename}"


def parse_fov_filename(name: str) -> FovName | None:
    """Parse a raw file name (a bare name or a path; only the last part is read); None if not in the layout."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _FOV_RE.match(base)
    if match is None or match["kind"] not in FOV_KINDS:
        return None
    return FovName(
        gene=match["gene"], ensg=match["ensg"], cid=int(match["cid"]), fid=int(match["fid"]), kind=match["kind"]
    )


def fov_filename(gene: str, ensg: str, cid: int, fid: int, kind: str = "proj") -> str:
    """The file name for these parts, e.g. ``OC-FOV_CANX_ENSG00000283777_CID000149_FID00000001_proj.tif``."""
    return FovName(gene=gene, ensg=ensg, cid=cid, fid=fid, kind=kind).filename
