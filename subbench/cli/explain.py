"""`subbench explain ZIP`: heat maps of what the zip's model looked at, on the images `score` would score."""

from __future__ import annotations

from pathlib import Path

import click

from ..atomic import check_writable
from . import main, profile_option


def _err(line: str) -> None:
    click.echo(line, err=True)


@main.command()
@click.argument("zip_path", metavar="ZIP", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", type=click.Path(), default=None,
              help="npz (images, labels) or <class>/<image> folder. Default: the data recorded in the zip's manifest.")
@click.option("--split", "split", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A split.json: explain its held-out part. Default: the split in the zip's manifest.")
@click.option("--every-image", "use_all", is_flag=True,
              help="Use every image of --data even when a split exists.")
@click.option("--simulate-hidden", "simulate_hidden", is_flag=False, flag_value="an2dl", default=None,
              type=click.Choice(["an2dl", "noise"]),
              help="Corrupt the images with the hidden-set simulator first (bare flag: an2dl); the clean original "
                   "is drawn beside each one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulator.")
@click.option("-n", "n", type=click.IntRange(min=0), default=16, show_default=True,
              help="Explain at most N images.")
@click.option("--misclassified-only/--all", "misclassified_only", default=True, show_default=True,
              help="Only the images the zip gets wrong, or every image.")
@click.option("--method", type=click.Choice(["auto", "gradcam", "saliency"]), default="auto", show_default=True,
              help="Grad-CAM on the last convolutional feature map; auto falls back to gradient saliency.")
@click.option("--env", type=click.Choice(["local", "server"]), default="local", show_default=True,
              help="local: this interpreter; server: the profile's TensorFlow/Keras (subbench env create).")
@click.option("--time-limit", type=float, default=None, metavar="S",
              help="One wall clock over the explain process. Default: the profile's.")
@click.option("-o", "--out", "out", type=click.Path(), required=True,
              help="Write explain.html, explain.json and heatmaps.npz into this folder.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@profile_option
def explain(zip_path, out, force, **kw):
    """Grad-CAM heat maps of ZIP's predictions, run in a fresh process as scoring runs it."""
    from ..api import explain as run_explain

    check_writable(Path(out), force)  # fail before the run, not after it
    result = run_explain(zip_path, data=kw["data"], split=kw["split"], use_all=kw["use_all"],
                         simulate_hidden=kw["simulate_hidden"], seed=kw["seed"], n=kw["n"],
                         misclassified_only=kw["misclassified_only"], method=kw["method"], env=kw["env"],
                         time_limit=kw["time_limit"], profile=kw["profile"], echo=_err)
    for w in result.warnings:
        click.secho(f"warning: {w}", fg="red" if w.startswith("LEAKAGE") else "yellow", err=True)
    wrong = "" if result.n_misclassified is None else f", {result.n_misclassified} misclassified"
    click.echo(f"{result.method}" + (f" on {result.layer}" if result.layer else "")
               + f": {len(result.items)} images explained of {result.n_images}{wrong}"
               + (f" ({result.note})" if result.note else ""))
    for line in result.summary_lines():
        click.echo(line)
    result.save(out, force=force)
    click.echo(f"wrote {Path(out) / 'explain.html'} and {Path(out) / 'explain.json'}")
