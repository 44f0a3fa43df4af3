"""The Hub model card (``README.md``) of a converted backbone folder, written from its ``config.json``.

A leaf (standard library only): the converter writes it at import time, the publisher rewrites a
missing one before an upload.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["render_model_card"]


def render_model_card(config: dict[str, Any]) -> str:
    """Hub README (YAML front matter + text) for a converted backbone, from its ``config.json``."""
    meta = config.get("ocbench", {})
    name = meta.get("card", "backbone")
    license_id = _hub_license(meta.get("license", ""))
    channels = meta.get("input_channels") or []
    arch = config.get("architecture", "?")
    model_args = config.get("model_args", {})
    lines = [
        "---",
        f"license: {license_id}",
        "library_name: timm",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        "- ocbench",
        "- image-feature-extraction",
        "- microscopy",
        "- dino",
        "- vision-transformer",
        "---",
        "",
        f"# {name}",
        "",
        meta.get("pretraining") or "Self-supervised DINO Vision Transformer backbone.",
        "",
        f"Converted by ocbench {meta.get('ocbench_version', '')} from the original checkpoint "
        "to safetensors; the weights are the DINO *teacher* backbone, the DINO projection head is dropped. "
        "Nothing was retrained.",
        "",
        "## Model",
        "",
        f"- architecture: timm `{arch}` with {json.dumps(model_args)}",
        f"- patch size: {meta.get('patch_size')}, embedding (CLS feature) dim: {config.get('num_features')}",
        f"- input normalization: {meta.get('normalization', '-')}",
        "- position embeddings: for inputs other than the pretraining size, resize them the way the original "
        "DINO code does (bicubic, scale factor (n + 0.1) / sqrt(N)); ocbench does this, timm's own resize differs slightly",
        "",
        "## Input channels",
        "",
        "| index | channel |",
        "|---|---|",
    ]
    lines += [f"| {i} | {channel} |" for i, channel in enumerate(channels)]
    lines += [
        "",
        "## Provenance",
        "",
        f"- original checkpoint: {meta.get('source_url') or meta.get('source') or '-'}",
        f"- file converted: `{meta.get('source_filename') or '-'}`",
        f"- sha256 of the original checkpoint: `{meta.get('source_sha256', '-')}`",
        "- matched to a checksum published with the original: "
        + {True: "yes", False: "no (weights not matched to a published checksum)"}.get(meta.get("source_verified"), "not recorded"),
        f"- entry used: `{meta.get('checkpoint_key') or 'bare state dict'}`",
        "",
        "## Usage",
        "",
        "```python",
        "import timm",
        f'model = timm.create_model("hf-hub:<this repo>", pretrained=True)  # {arch}, num_classes=0',
        "```",
        "",
        "With ocbench, point a backbone card's `source` at `hf-hub:<this repo>@<commit>` and run "
        "`ocbench embed --backbone NAME ...`.",
        "",
        "## License",
        "",
        f"{meta.get('license') or 'See the original release.'}",
    ]
    citation = meta.get("citation")
    if citation:
        lines += ["", "## Citation", "", "```bibtex" if citation.lstrip().startswith("@") else "```", citation.strip(), "```"]
    return "\n".join(lines) + "\n"


def _hub_license(text: str) -> str:
    """Hub license id: known ids pass through, anything else is 'other'."""
    known = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-sa-4.0", "cc0-1.0", "gpl-3.0"}
    value = (text or "").strip().lower()
    return value if value in known else "other"
