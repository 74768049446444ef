"""`subbench bundle inspect | make`: competition bundles (Codabench's competition.yaml, v2 or legacy).

`subbench score SUB.zip --bundle BUNDLE` (in score.py) runs a submission through one; the printing of its result
lives here so both commands share it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import SubbenchError
from . import main, profile_option


def _err(line: str) -> None:
    click.echo(line, err=True)


def _all_steps(r) -> list:
    """The steps of a result and of its child submissions (a multi-task phase, --phase all), in order."""
    return [s for child in r.children for s in _all_steps(child)] + list(r.steps)


def print_bundle_score(r, err: bool = False) -> None:
    """What `subbench score --bundle` prints about a `BundleScore`."""
    say = _err if err else click.echo
    click.secho(f"status: {r.status}" + (f" ({r.failure}, {r.failed_step} step)" if r.failure else ""),
                fg="green" if r.ok else "red", bold=True, err=err)
    if not r.ok:
        say(f"  {r.message}")
    for child in r.children:
        label = (f"phase {child.phase.get('index')} ({child.phase.get('name')})" if r.phase.get("name") == "all"
                 else f"task {child.task.get('index')} ({child.task.get('name')})")
        say(f"{label}: {child.status}"
            + (f" ({child.failure}, {child.failed_step} step: {child.message})" if child.failure else ""))
    for c in r.columns:
        value = f"{c.value:.{max(c.precision, 0)}f}" if c.value is not None else "missing"
        where = (f"phase {c.phase} " if c.phase is not None else "") + (f"task {c.task} " if c.task is not None else "")
        say((where if r.children else "") + f"{c.title} [{c.key}]: {value}"
            + (f" ({c.computed})" if c.computed else ""))
    for s in _all_steps(r):
        progs = "; ".join(
            f"{p.role} {p.action}" + (f" exit {p.exit_code}" if p.exit_code is not None else "")
            + (f" {p.elapsed_s:.2f} s" if p.elapsed_s is not None else "") + (" KILLED" if p.killed else "")
            for p in s.programs)
        say(f"{s.step}: {s.elapsed_s:.2f} s of {s.time_limit_s:g} s ({progs})")
    for w in r.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    for s in _all_steps(r):
        for p in s.programs:
            if p.stderr_tail and (p.killed or p.exit_code not in (0, None) or not r.ok):
                _err(f"last lines of the {p.role}'s stderr ({s.step} step):")
                _err("\n".join("  " + line for line in p.stderr_tail.splitlines()[-12:]))


@main.group()
def bundle():
    """Codabench competition bundles: inspect one, or make one for a profile."""


@bundle.command("inspect")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option("--python", "python", default=None, metavar="PATH",
              help="The interpreter the programs would run in (default: this one); its missing modules are listed.")
@click.option("--env", type=click.Choice(["local", "server"]), default="local", show_default=True,
              help="server: the profile's environment (subbench env create).")
@click.option("--strict", is_flag=True, help="competition.yaml keys Codabench does not know (and ignores) are "
              "errors, not warnings: for organizers checking their own bundle.")
@click.option("--ignore-unknown-keys", is_flag=True, hidden=True, help="Deprecated: the default now.")
@click.option("--json", "as_json", is_flag=True, help="Print the inspection as JSON.")
@profile_option
def bundle_inspect(bundle_path, python, env, strict, ignore_unknown_keys, as_json, profile):
    """Phases, tasks, programs, data, leaderboard columns, time limits, docker image, and what a local run lacks.

    Exit code: 0 runnable here, 1 something is missing for a local run, 2 the bundle cannot be read."""
    from ..api import bundle_inspect as inspect

    info = inspect(bundle_path, python=python, env=env, profile=profile, strict=strict and not ignore_unknown_keys)
    if as_json:
        click.echo(info.to_json(), nl=False)
    else:
        for line in info.lines():
            click.echo(line)
    for w in info.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    sys.exit(0 if info.runnable else 1)


@bundle.command("make")
@click.option("--data", type=click.Path(exists=True), required=True,
              help="npz (images, labels) or <class>/<image> folder: the images the bundle scores.")
@click.option("--split", "split", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A split.json (subbench data split): the bundle holds its held-out part.")
@click.option("--all", "use_all", is_flag=True, help="Every image even when --split is given.")
@click.option("--simulate-hidden", "simulate_hidden", is_flag=False, flag_value="an2dl", default=None,
              type=click.Choice(["an2dl", "noise"]),
              help="Corrupt the images like the hidden set first (bare flag: an2dl), as `subbench score` does.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulator.")
@click.option("--docker-image", default=None, metavar="IMAGE",
              help="The competition's image. Default: tensorflow/tensorflow:<the profile's TensorFlow>.")
@click.option("--title", default=None, help="The competition's title.")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True, help="The bundle zip to write.")
@click.option("--force", is_flag=True, help="Overwrite -o if it exists.")
@profile_option
def bundle_make(data, split, use_all, simulate_hidden, seed, docker_image, title, out, force, profile):
    """Write a Codabench bundle (version 2) whose programs score the profile's submissions like `subbench score`."""
    from ..api import bundle_make as make

    make(data, out, profile=profile, simulate_hidden=simulate_hidden, seed=seed, split=split, use_all=use_all,
         docker_image=docker_image, title=title, force=force, echo=_err)


# `subbench score` options that mean nothing for a bundle (its own data, programs and limits decide).
_NOT_WITH_BUNDLE = {"data": "--data", "split": "--split", "use_all": "--all", "cwd": "--cwd",
                    "chunk": "--chunk", "hidden_size": "--hidden-size",
                    "simulate_hidden": "--simulate-hidden", "clean_too": "--clean-too", "keep_run_dir": "--keep-run-dir"}


class BundleOptionError(SubbenchError):
    """An option of `subbench score` that does not apply with --bundle."""


def score_bundle_command(zip_path, bundle_path, kw: dict, out, force: bool, as_json: bool, quiet: bool) -> None:
    """`subbench score SUB --bundle BUNDLE ...` (called by score.py)."""
    from ..api import score_bundle

    given = [flag for key, flag in _NOT_WITH_BUNDLE.items() if kw.get(key)]
    if given:
        raise BundleOptionError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply with --bundle: "
                                "the bundle's own input data and programs are run",
                                "drop them, or score the profile's way without --bundle")
    result = score_bundle(zip_path, bundle_path, phase=kw.get("phase"), task=kw.get("task"),
                          python=kw.get("python"), env=kw.get("env") or "local", profile=kw.get("profile"),
                          time_limit=kw.get("time_limit"), memory_limit_mb=kw.get("memory_limit"),
                          no_network=bool(kw.get("no_network")), out=out,
                          force=force,
                          strict=bool(kw.get("strict")) and not kw.get("ignore_unknown_keys"),
                          echo=None if quiet else _err)
    print_bundle_score(result, err=as_json)
    if out:
        (_err if as_json else click.echo)(f"wrote {Path(out) / 'scores.json'} and {Path(out) / 'report.html'}"
                                          + (f"; detailed results: {Path(out) / result.detailed_results}"
                                             if result.detailed_results else ""))
    if as_json:
        click.echo(result.to_json(), nl=False)
    sys.exit(result.exit_code)
