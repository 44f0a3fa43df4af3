"""``ocbench compare`` and ``ocbench leaderboard ...``: commands that read entries, never torch."""

from __future__ import annotations

import click

from ocbench.cli._app import _Group, cli


@cli.command()
@click.argument("entry_a", type=click.Path(dir_okay=False))
@click.argument("entry_b", type=click.Path(dir_okay=False))
def compare(entry_a, entry_b):
    """Compare two entries on the same items: difference of main scores, paired intervals, verdict.

    Uses the corrected resampled t-test over the paired folds and the paired protein bootstrap on
    the predictions kept beside the entries; refuses entries of different tasks or splits.

    \b
    Example:
      ocbench compare results/hpa-fov-vitb8__map-p1-n2__fov-mlp__paper.json results/imagenet-dino-vitb8__map-p1-n2__fov-mlp__paper.json
    """
    from ocbench.leaderboard.compare import compare_entries

    click.echo(compare_entries(entry_a, entry_b).text)


@cli.group(cls=_Group)
def leaderboard() -> None:
    """Validate entries, build the board (Markdown, CSV, HTML, plots), publish it to the Hub.

    \b
    Example:
      ocbench leaderboard build results --out board
    """


@leaderboard.command("build")
@click.argument("entries", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--no-reported", is_flag=True, help="Leave out the paper's reported rows.")
@click.option("--rank-reported", is_flag=True, help="Rank reported rows together with computed ones.")
@click.option("--allow-empty", is_flag=True, help="Build even with no valid entry (the paper's reported rows alone).")
@click.option(
    "--zero-shot-only", is_flag=True,
    help="Leave out entries whose backbone was trained on the evaluated data or its labels (backbone.not_zero_shot).",
)
def leaderboard_build(entries, out, no_reported, rank_reported, allow_empty, zero_shot_only):
    """Build LEADERBOARD.md, leaderboard.csv, index.html and plots from entry folders/files/Hub repos.

    \b
    Example:
      ocbench leaderboard build results --out board
      ocbench leaderboard build results --out board-zero-shot --zero-shot-only
    """
    from ocbench.leaderboard import build_board

    report = build_board(
        list(entries), out, include_reported=not no_reported, rank_reported=rank_reported, allow_empty=allow_empty,
        zero_shot_only=zero_shot_only,
    )
    click.echo(report.summary())


@leaderboard.command("validate")
@click.argument("entries", nargs=-1, required=True)
def leaderboard_validate(entries):
    """Check entry files against the schema; one line per problem (exit 1 if any).

    \b
    Example:
      ocbench leaderboard validate results leaderboard/entries
    """
    from ocbench.leaderboard import validate_entries

    problems = validate_entries(list(entries))
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("all entries valid")


@leaderboard.command("publish")
@click.argument("board_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--repo-id", required=True, help="Hub dataset repo, ORG/NAME.")
@click.option("--dry-run", is_flag=True, help="Print what would be uploaded; upload nothing.")
@click.option("--allow-synthetic", is_flag=True, help="Publish entries on synthetic data (the demo) too.")
@click.option("--allow-off-protocol", is_flag=True, help="Publish off-protocol entries too.")
@click.option("--revision", default=None, help="Branch of the repo to commit to (default: main).")
def leaderboard_publish(board_dir, repo_id, dry_run, allow_synthetic, allow_off_protocol, revision):
    """Upload a built board (entries and tables) to a Hugging Face dataset repo.

    \b
    Example:
      ocbench leaderboard publish board --repo-id my-org/ocbench-leaderboard --dry-run
    """
    from ocbench.leaderboard import publish
    from ocbench.leaderboard.hub import publish_target

    files = publish(
        board_dir, repo_id, dry_run=dry_run, allow_synthetic=allow_synthetic, allow_off_protocol=allow_off_protocol,
        revision=revision,
    )
    where = publish_target(repo_id, revision)
    click.echo(f"{'dry run: would upload' if dry_run else 'uploaded'} {len(files)} files to {where}; "
               "entries/ and plots/ files there that are not listed are deleted in the same commit:")
    for line in files:
        click.echo(f"  {line}")
