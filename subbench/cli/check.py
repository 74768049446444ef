"""`subbench check sub.zip`: find what would fail on the server, before uploading."""

from pathlib import Path

import click

from . import main, profile_option


def print_report(report) -> None:
    for r in report.results:
        if r.ok and r.details.get("warning"):
            click.secho(f"WARN  {r.name}: {r.cause}", fg="yellow")
            if r.hint:
                click.echo(f"      hint: {r.hint}")
        elif r.ok:
            extra = ""
            if r.name == "live-run":
                d = r.details
                extra = f" ({d['elapsed_s']:.1f} s, peak {d['peak_memory_mb'] or 0:.0f} MB)"
            elif r.name == "probe":
                extra = f" ({r.details['file']}: max |diff| {r.details['max_abs_diff']:.1e} in Keras {r.details['keras']})"
            click.secho(f"PASS  {r.name}{extra}", fg="green")
        else:
            click.secho(f"FAIL  {r.name}: {r.cause}", fg="red")
            if r.hint:
                click.echo(f"      hint: {r.hint}")
            tail = r.details.get("stderr_tail")
            if tail:
                click.echo("      " + "\n      ".join(tail.strip().splitlines()[-5:]))
    verdict = "all checks passed" if report.ok else "checks failed"
    click.echo(f"{verdict} ({report.env} environment: {report.python})")


@main.command()
@click.argument("zip_path", type=click.Path(path_type=Path))
@click.option("--env", "env", type=click.Choice(["local", "server"]), default="local", show_default=True,
              help="Interpreter for the live run: this one, or the server environment (`subbench env create`).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--time-limit", type=float, default=None, help="Seconds for the live run (default: the profile's).")
@click.option("--no-live", is_flag=True, help="Skip the live run (static checks only).")
@profile_option
def check(zip_path, env, as_json, time_limit, no_live, profile):
    """Check a submission zip; exit 0 when every check passes, 1 when one fails."""
    from ..api import check as run_check

    report = run_check(zip_path, env=env, profile=profile, time_limit=time_limit, live=not no_live)
    if as_json:
        click.echo(report.to_json(), nl=False)
    else:
        print_report(report)
    raise SystemExit(0 if report.ok else 1)
