"""The `subbench` command: a thin top that parses options and calls the library.

Each command group lives in its own module here and is registered below. A `SubbenchError` raised anywhere
is printed as `Name: cause` + `hint:` and exits with the error's code, without a traceback.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import SubbenchError

# TensorFlow's C++ start-up chatter hides the messages users need; keep errors only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class SubbenchGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SubbenchError as exc:
            click.secho(f"error: {exc.name}: {exc.cause}", fg="red", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)


profile_option = click.option(
    "--profile", "profile", default=None, metavar="NAME|PATH",
    help="Competition profile: a shipped name (default an2dl-2024) or a path to a profile TOML.")


@click.group(cls=SubbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="subbench")
def main():
    """Build, check and score Codabench image-classification submissions locally."""


def _register():
    # Imported here so each command module can import `main`/`profile_option` from this package.
    from . import build, bundle, check, corrupt, data, demo, env, explain, score  # noqa: F401


_register()
