"""`subbench demo`: the tool's story on real blood cells shipped with the package, no download.

A plain CNN and a hidden-aware one (the `cpu` recipe, shortened) train on the same split of the embedded PBC
cells; both are checked and scored on the held-out cells, clean and corrupted like the AN2DL hidden set. The
plain model looks excellent on clean cells and collapses on hidden-like ones; the hidden-aware one keeps much
more. Measured on 2 CPU cores (an AMD EPYC with AVX-512, no AMX, float32): 6.5 minutes, plain 0.924 clean /
0.297 hidden-like, hidden-aware (64 px / 32..256, the size the recipe timed and kept) 0.938 / 0.724
(bench/bench_demo.py measures the same steps).
"""

from __future__ import annotations

import html
import shutil
import time
from pathlib import Path

import click

from subbench.errors import OutputExistsError

from . import main, profile_option

# On top of the `cpu` recipe, for both models: one split, a TTA-free zip, batches of 32 (the demo's 1,110
# training cells make short epochs). The plain model is a fixed small CNN at 48 px; the hidden-aware one is the
# recipe as shipped, which times its candidate sizes on this host and picks the largest that fits its epochs.
COMMON = {"holdout": 0.25, "seed": 0, "tta": "none", "batch_size": 32}
PLAIN = {"augment": "none", "val_corrupt": "none", "inputs": "none", "epochs": 200, "patience": 200,
         "input_size": 48, "progressive": 0}
AWARE = {"epochs": 1000, "patience": 1000}
MODELS = (("plain", "a plain CNN: no augmentation, validated on clean cells", PLAIN),
          ("hidden-aware", "the cpu recipe: trained on the hidden set's own corruption", AWARE))


def _say(step: str) -> None:
    click.secho(step, bold=True)


def _story(board) -> list[str]:
    rows = {r.name: r for r in board.rows}
    lines = []
    for name, _, _ in MODELS:
        r = rows[name]
        if r.score is None or r.clean is None:
            lines.append(f"{name}: {r.status}")
            continue
        lines.append(f"{name:>12}: clean {r.clean:.3f} -> hidden-like {r.score:.3f} ({r.score - r.clean:+.3f})")
    plain, aware = rows["plain"].score, rows["hidden-aware"].score
    if plain is not None and aware is not None:
        lines.append(f"on hidden-like cells the hidden-aware model gets {aware - plain:+.3f} over the plain one")
    return lines


def _combined_page(board, scores: dict) -> str:
    """One self-contained page: the leaderboard, then each model's report."""
    story = "".join(f"<p class='sbr' style='font-family:sans-serif;font-weight:600'>{html.escape(line)}</p>"
                    for line in _story(board))
    parts = [board.html(), story] + [f"<h1 style='font-family:sans-serif'>{html.escape(n)}</h1>{s.html()}"
                                     for n, s in scores.items()]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>subbench demo</title></head>"
            f"<body>{''.join(parts)}</body></html>")


@main.command()
@click.option("-o", "--output", "output", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="Folder for the data, the zips, the build folders and the reports.")
@click.option("--plain-minutes", type=float, default=1.5, show_default=True, help="Training time of the plain model.")
@click.option("--aware-minutes", type=float, default=4.0, show_default=True,
              help="Training time of the hidden-aware model.")
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@profile_option
def demo(output, plain_minutes, aware_minutes, force, profile):
    """Train a plain and a hidden-aware model on real blood cells (embedded), check and score both."""
    from subbench import api
    from subbench.atomic import write_text_atomic
    from subbench.datasets import demo_attribution, demo_path

    from .check import print_report
    from .score import print_score

    if output.exists():
        if not force:
            raise OutputExistsError(f"{output} already exists", "pass --force to replace it, or choose another -o")
        shutil.rmtree(output)
    output.mkdir(parents=True)
    t0 = time.perf_counter()
    data = demo_path(output / "cells.npz")
    _say(f"1/4 data: {data} - real blood cells shipped with subbench")
    click.echo("    " + demo_attribution().strip().splitlines()[0])
    minutes = {"plain": plain_minutes, "hidden-aware": aware_minutes}
    zips = {}
    for name, what, overrides in MODELS:
        _say(f"2/4 build {name}: {what} ({minutes[name]:g} min)")
        zips[name] = api.train("cpu", data, output / f"{name}.zip", profile, echo=click.echo,
                               max_train_minutes=minutes[name], **COMMON, **overrides)
    scores = {}
    for name, zip_path in zips.items():
        _say(f"3/4 check {name}: would the server accept it?")
        print_report(api.check(zip_path, profile=profile))
    for name, zip_path in zips.items():
        _say(f"4/4 score {name}: held-out cells, clean and corrupted like the hidden set")
        scores[name] = api.score(zip_path, data=data, simulate_hidden="an2dl", clean_too=True, profile=profile,
                                 cross_cwd=False)
        print_score(scores[name])
        scores[name].save(output / f"{name}-score", force=True)
    board = api.compare(scores)
    click.echo("\n" + str(board) + "\n")
    for line in _story(board):
        click.secho(line, bold=True)
    board.save(output / "leaderboard", force=True)
    write_text_atomic(output / "report.html", _combined_page(board, scores), force=True)
    click.echo(f"report: {output / 'report.html'}  ({(time.perf_counter() - t0) / 60:.1f} min)")
