"""`subbench score ZIP` and `subbench compare DIR|ZIP ...`: run a zip like Codabench, score it, report it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..atomic import check_writable
from . import main, profile_option


def _draws_value(ctx, param, value):
    if value in (None, "auto"):
        return value
    try:
        k = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number") from None
    if k < 1:
        raise click.BadParameter("at least 1 draw")
    return k


def _run_options(f):
    """Options shared by score and compare (compare passes them on to the zips it scores)."""
    opts = [
        click.option("--data", type=click.Path(), default=None,
                     help="npz (images, labels) or <class>/<image> folder. Default: the data recorded in the "
                          "zip's manifest, when it is here."),
        click.option("--split", "split", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A split.json (subbench data split): score its held-out part. Default: the split in "
                          "the zip's manifest."),
        click.option("--all", "use_all", is_flag=True, help="Score every image even when a split exists "
                     "(the leakage check still runs)."),
        click.option("--env", type=click.Choice(["local", "server"]), default="local", show_default=True,
                     help="local: this interpreter; server: the profile's TensorFlow/Keras (subbench env create)."),
        click.option("--cwd", "cwd", type=click.Choice(["submission", "program"]), default=None,
                     help="Working directory of the run: the submission folder or program/ (Codabench's stock "
                          "layout). Default: the profile's."),
        click.option("--time-limit", type=float, default=None, metavar="S",
                     help="One wall clock over start, imports, Model() and predict. Default: the profile's."),
        click.option("--memory-limit", type=float, default=None, metavar="MB",
                     help="Kill the run (Out_Of_Memory) when its resident memory passes this. With --bundle: each "
                          "program of both steps, its whole process tree. Codabench's worker sets no memory limit "
                          "(nor does subbench unless asked), and leaves the network on unless its queue sets "
                          "COMPETITION_CONTAINER_NETWORK_DISABLED=true."),
        click.option("--chunk", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Feed predict() N images at a time (progress bar per chunk)."),
        click.option("--hidden-size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Project the time for N images. Default: the profile's expected hidden-set size."),
        click.option("--server-speed", type=click.FloatRange(min=0, min_open=True), default=1.0,
                     show_default=True, metavar="X",
                     help="The server is X times as fast as this machine (0.5: half as fast)."),
        click.option("--simulate-hidden", "simulate_hidden", is_flag=False, flag_value="an2dl", default=None,
                     type=click.Choice(["an2dl", "noise", "suite"]),
                     help="Corrupt the scored images with the hidden-set simulator first (bare flag: an2dl); "
                          "suite: robustness table over every corruption and severity."),
        click.option("--clean-too", is_flag=True, help="With --simulate-hidden: also score the clean images and "
                     "report the gap."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulator."),
        click.option("--draws", "draws", default="auto", show_default=True, metavar="K|auto", callback=_draws_value,
                     help="With --simulate-hidden: corrupt every image K times (seeds SEED, SEED+1, ...) and report "
                          "the mean, the spread over draws and an interval counting images and draws; auto: as "
                          "many as fit 120 s of extra predict time (at most 8)."),
        click.option("--suite-size", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Images per corruption and severity in the suite."),
        click.option("--mce-baseline", "mce_baseline", type=click.Path(exists=True), default=None, metavar="DIR",
                     help="With --simulate-hidden=suite: a baseline model's suite score folder; reports the mean "
                          "corruption error (ImageNet-C's mCE) against it."),
        click.option("--explain", "explain", type=click.IntRange(min=0), default=0, show_default=True,
                     metavar="N", help="With --simulate-hidden: Grad-CAM heat maps of up to N misclassified images "
                     "for each of the 3 costliest ops, beside their clean originals, in report.html."),
        click.option("--cross-cwd/--no-cross-cwd", default=True, show_default=True,
                     help="Also try the other working directory on a few images and warn if only one works."),
        profile_option,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


_OPTION_FIELDS = {"env": "env", "cwd": "cwd", "time_limit": "time_limit_s", "memory_limit": "memory_limit_mb",
                  "chunk": "chunk", "hidden_size": "hidden_size", "server_speed": "server_speed", "split": "split",
                  "use_all": "use_all", "seed": "seed", "cross_cwd": "cross_cwd", "suite_size": "suite_size",
                  "keep_run_dir": "keep_run_dir", "mce_baseline": "mce_baseline", "no_network": "no_network",
                  "explain": "explain", "draws": "draws"}


def _options(kw: dict, progress: bool) -> dict:
    """The command's options as subbench.score keyword arguments."""
    return {field: kw[opt] for opt, field in _OPTION_FIELDS.items() if opt in kw} | {"progress": progress}


def _err(line: str) -> None:
    click.echo(line, err=True)


def summary_lines(s) -> list[str]:
    """What `subbench score` prints about a `Score`."""
    lines = []
    if s.ok:
        lo, hi = s.metrics.accuracy_ci95
        d = s.draws
        lines.append(f"{s.leaderboard_key}: {s.value:.4f}  (95% interval {lo:.4f}–{hi:.4f}, n = {s.n}"
                     + (f" images x {d.k} draws)" if d and d.k > 1 else ")"))
        if d:
            lines += draw_lines(d)
        lines.append(f"balanced accuracy {s.metrics.balanced_accuracy:.4f} · macro F1 {s.metrics.macro_f1:.4f}")
        if s.clean and s.clean.metrics:
            lines.append(f"clean {s.clean.metrics.accuracy:.4f} · gap {s.clean.gap:+.4f}")
        rob = s.robustness
        if rob and rob.mean_corruption_accuracy is not None:
            rce = rob.relative_corruption_error
            lines.append(f"robustness: mCA {rob.mean_corruption_accuracy:.4f} · rCE "
                         f"{'undefined' if rce is None else f'{rce:.3f}'} ({len(rob.accuracy)} corruptions)")
            worst = list(rob.drop_points.items())[:TOP_OPS]
            if worst:
                lines.append("costliest corruptions: " + ", ".join(f"{k} -{v:.1f} pts" for k, v in worst))
            if rob.mce is not None:
                lines.append(f"mCE {rob.mce:.3f} against {rob.mce_baseline} (1.0 = as robust as the baseline)")
        lines += breakdown_lines(s.breakdown)
    else:
        lines.append(f"{s.leaderboard_key}: –  ({s.message})")
    t = s.timing
    stages = " · ".join(f"{k} {v:.2f} s" for k, v in t.stages.items())
    lines.append(f"time {t.elapsed_s:.2f} s of {t.time_limit_s:g} s ({stages})")
    proj = t.projection
    if proj:
        lines.append(f"projected for {proj.hidden_size} images at server speed {proj.server_speed:g}×: "
                     f"{proj.projected_s:.1f} s (margin {proj.margin_s or 0:.1f} s)")
    if s.peak_memory_mb:
        lines.append(f"peak memory {s.peak_memory_mb:.0f} MB")
    return lines


TOP_OPS = 3


def draw_lines(d) -> list[str]:
    """The corruption draw's part of a simulated hidden score."""
    out = []
    if d.k > 1:
        out.append(f"over {d.k} corruption draws: " + " ".join(f"{a:.4f}" for a in d.per_draw)
                   + f" (spread {d.spread:.4f}; {d.chosen})")
    lo, hi = d.next_draw_ci95
    text = f"one more draw of these images: {lo:.4f}–{hi:.4f}"
    if d.hidden_ci95:
        text += f" · the server's draw of {d.hidden_size} hidden images: {d.hidden_ci95[0]:.4f}–{d.hidden_ci95[1]:.4f}"
    return out + [text]


def breakdown_lines(b, k: int = TOP_OPS) -> list[str]:
    """The costliest ops of a simulated hidden score, one line each."""
    if b is None:
        return []
    over = f"{b.n // b.draws} images x {b.draws} draws" if b.draws > 1 else f"{b.n} images"
    lines = [f"costliest ops of the corruption ({b.errors} errors on {over}; excess errors over images without "
             "the op):"]
    unit = "image-draws" if b.draws > 1 else "images"
    for o in b.top(k):
        lines.append(f"  {o.op:<24} -{o.points:.1f} pts  accuracy {o.accuracy_with:.3f} on {o.n_with} {unit} that "
                     f"drew it vs {o.accuracy_without:.3f} on {o.n_without} without")
    return lines


def print_score(s, err: bool = False) -> None:
    say = _err if err else click.echo
    click.secho(f"status: {s.status}", fg="green" if s.ok else "red", bold=True, err=err)
    for line in summary_lines(s):
        say(line)
    for w in s.warnings:
        loud = w.startswith("LEAKAGE")
        click.secho(f"warning: {w}", fg="red" if loud else "yellow", bold=loud, err=True)
    if not s.ok and s.stderr_tail:
        _err("last lines of the submission's stderr:")
        _err("\n".join("  " + line for line in s.stderr_tail.splitlines()[-12:]))


@main.command()
@click.argument("zip_path", metavar="ZIP", type=click.Path(exists=True))
@_run_options
@click.option("-o", "--out", "out", type=click.Path(), default=None,
              help="Write scores.json, report.html and predictions.npy into this folder.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print scores.json to stdout (messages go to stderr).")
@click.option("--keep-run-dir", is_flag=True, help="Keep the run folder (program/, ingested_program/, ...).")
@click.option("-q", "--quiet", is_flag=True, help="No per-stage lines or progress bars.")
@click.option("--bundle", "bundle", type=click.Path(exists=True), default=None, metavar="BUNDLE",
              help="Run ZIP through this Codabench competition bundle (zip or folder) instead: its own ingestion and "
                   "scoring programs, the worker's two steps. With --phase, --task, --python, --time-limit, --env.")
@click.option("--phase", default=None, metavar="NAME|INDEX|all", help="With --bundle: the phase (default: the "
              "first); all: every phase in order, a row per phase.")
@click.option("--task", default=None, type=int, metavar="INDEX", help="With --bundle: one task of the phase "
              "(default: every task, each a child submission as on the server).")
@click.option("--python", "python", default=None, metavar="PATH",
              help="With --bundle: the interpreter the programs run in (default: --env's).")
@click.option("--strict", is_flag=True, help="With --bundle: competition.yaml keys Codabench does not know (and "
              "ignores) are errors, not warnings.")
@click.option("--ignore-unknown-keys", is_flag=True, hidden=True, help="Deprecated: the default now.")
@click.option("--no-network", "no_network", is_flag=True, help="Run the submission (with --bundle: every program) "
              "in a network namespace of its own (Linux; named error where it cannot be applied), as on a Codabench "
              "queue with COMPETITION_CONTAINER_NETWORK_DISABLED=true: a download at Model() then fails as on a "
              "server without internet. The worker's default, and subbench's, is network on.")
def score(zip_path, out, force, as_json, quiet, **kw):
    """Run ZIP exactly as Codabench does, time it, score it and report it.

    Exit code: 0 ok, 2 bad input; a failed run exits with its status: 11 Import_Error, 12 Init_Error,
    13 Predict_Error, 14 Output_Shape_Error, 15 Output_Value_Error, 16 Execution_Time_Limit_Exceeded,
    17 Out_Of_Memory. With --bundle: 0 Finished; Failed: 20 Execution_Time_Limit_Exceeded, 21 Missing_Metadata,
    22 Missing_Command, 23 Scores_Not_Found, 24 Scores_Not_Decodable, 25 Metadata_Exists,
    26 Scoring_Program_Failed (the scoring program exited non-zero: the current worker fails it, scores or not),
    27 Out_Of_Memory (--memory-limit).
    """
    from ..api import score as run_score

    if kw.get("bundle"):
        from .bundle import score_bundle_command

        return score_bundle_command(zip_path, kw["bundle"], kw, out, force, as_json, quiet)
    if out:
        check_writable(Path(out), force)  # fail before a long run, not after it
    result = run_score(zip_path, data=kw["data"], simulate_hidden=kw["simulate_hidden"], clean_too=kw["clean_too"],
                       profile=kw["profile"], echo=None if quiet else _err, **_options(kw, progress=not quiet))
    print_score(result, err=as_json)
    if out:
        result.save(out, force=force)
        (_err if as_json else click.echo)(f"wrote {Path(out) / 'scores.json'} and {Path(out) / 'report.html'}")
    if as_json:
        click.echo(result.to_json(), nl=False)
    sys.exit(result.exit_code)


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@_run_options
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@click.option("-o", "--out", "out", type=click.Path(), default=None,
              help="Write leaderboard.json and report.html into this folder.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def compare(results, as_json, out, force, **kw):
    """A leaderboard of local results: score folders (from `score --out`) or zips (scored now, with --data)."""
    from ..api import compare as run_compare

    if out:
        check_writable(Path(out), force)
    # Folders of `score --bundle --out` give the bundle's own columns (api.compare tells them apart).
    board = run_compare(list(results), data=kw["data"], profile=kw["profile"], echo=None,
                        simulate_hidden=kw["simulate_hidden"], clean_too=kw["clean_too"],
                        **_options(kw, progress=False))
    click.echo(board.to_json(), nl=False) if as_json else click.echo(str(board))
    if board.warning:
        click.secho(f"warning: {board.warning}", fg="yellow", err=True)
    if out:
        board.save(out, force=force)
        _err(f"wrote {Path(out) / 'leaderboard.json'} and {Path(out) / 'report.html'}")
