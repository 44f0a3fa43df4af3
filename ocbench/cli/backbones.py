"""``ocbench backbones ...``: the backbone registry (list, show, import, push, check)."""

from __future__ import annotations

from pathlib import Path

import click

from ocbench.cli._app import _Group, cli


@cli.group(cls=_Group)
def backbones() -> None:
    """The backbone registry: list, show, import checkpoints, push to the Hub, check conformance.

    \b
    Example:
      ocbench backbones show hpa-fov-vitb8
    """


@backbones.command("list")
def backbones_list():
    """Table of registered backbones with the paper's reported score.

    \b
    Example:
      ocbench backbones list
    """
    from ocbench.backbones.cards import format_cards_table

    click.echo(format_cards_table())


@backbones.command("show")
@click.argument("name")
def backbones_show(name):
    """Everything a card declares.

    \b
    Example:
      ocbench backbones show hpa-fov-vitb8
    """
    from ocbench.backbones.cards import format_card
    from ocbench.backbones.derive import resolve_backbone

    click.echo(format_card(resolve_backbone(name)))


@backbones.command("import")
@click.argument("name")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A downloaded DINO .pth (default: download the card's).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: where the card reads its weights: <cache>/weights/NAME for a url: card, its folder for a local: card).")
@click.option("--checkpoint-key", default="teacher", show_default=True, help="Which network of the checkpoint to convert.")
def backbones_import(name, checkpoint, out, checkpoint_key):
    """Convert a Dino4Cells/DINO (or SubCell encoder) .pth checkpoint to safetensors + config (Hub-style folder).

    \b
    Example:
      ocbench backbones import hpa-fov-vitb8 --checkpoint DINO_FOV_checkpoint.pth
    """
    from ocbench.backbones.archs import import_checkpoint
    from ocbench.backbones.derive import resolve_backbone

    # the card's architecture family converts its own checkpoint layout (DINO for timm ViTs, SubCell's)
    folder = import_checkpoint(resolve_backbone(name), checkpoint, out_dir=out, checkpoint_key=checkpoint_key)
    click.echo(f"wrote {folder}")


@backbones.command("push")
@click.argument("name")
@click.option("--repo-id", required=True, help="Hub model repo, ORG/NAME.")
@click.option("--folder", type=click.Path(file_okay=False), default=None, help="Converted folder (default: the card's weights cache).")
@click.option("--dry-run", is_flag=True, help="Check and list what would be uploaded; upload nothing.")
def backbones_push(name, repo_id, folder, dry_run):
    """Upload converted weights (safetensors + config + model card) to the Hugging Face Hub.

    \b
    Example:
      ocbench backbones push hpa-fov-vitb8 --repo-id my-org/hpa-fov-vitb8 --dry-run
    """
    from ocbench.backbones.cards import get_card
    from ocbench.backbones.hub import push_backbone
    from ocbench.backbones.sources import weights_dir

    card = get_card(name)
    result = push_backbone(Path(folder) if folder else weights_dir(card), repo_id, dry_run=dry_run)
    click.echo(result.summary())


@backbones.command("check")
@click.argument("name")
@click.option("--device", default="cpu", show_default=True, help="Where to run the checks: cpu, cuda, cuda:1, ...")
def backbones_check(name, device):
    """Conformance check for contributors: loads, embeds, shapes, determinism, batch invariance.

    \b
    Example:
      ocbench backbones check tiny-vit-random
    """
    from ocbench.backbones.check import check_backbone, format_check

    report = check_backbone(name, device=device)
    click.echo(format_check(report))
    if not report.ok:
        raise click.exceptions.Exit(1)
