"""`subbench env create | list | keys`: the server environment (the profile's TensorFlow/Keras)."""

from pathlib import Path

import click

from .. import server_env
from ..profile import load_profile
from . import main, profile_option


@main.group()
def env():
    """Server environments: the competition's TensorFlow/Keras in a cached virtualenv."""


@env.command("create")
@profile_option
@click.option("--force", is_flag=True, help="Re-create it even if it exists.")
@click.option("--requirements", "requirements", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="FILE", help="Instead: a virtualenv with this pip requirements file (a competition image's old "
              "packages, e.g. numpy<2), cached by content; prints its python for `score --bundle --python`.")
@click.option("--python", "python", default=None, metavar="PATH",
              help="With --requirements: the base interpreter (default: this one).")
def env_create(profile, force, requirements, python):
    """Create (once) the virtualenv with the profile's server versions, or one from --requirements."""
    if requirements:
        server_env.create_from_requirements(requirements, python=python, force=force, echo=click.echo)
        return
    server_env.create(load_profile(profile), force=force, echo=click.echo)


@env.command("list")
def env_list():
    """Show the server environments that exist."""
    envs = server_env.list_envs()
    if not envs:
        click.echo("no server environments; create one with `subbench env create`")
    for e in envs:
        if not e["ready"]:
            state = "unfinished"
        elif "requirements" in e:
            state = f"Python {e.get('python')} + {e['requirements']}"
        else:
            state = f"TF {e.get('tensorflow')} / Keras {e.get('keras')}"
        click.echo(f"{e['name']}\t{state}\t{e['path']}")


@env.command("keys")
@profile_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the table here instead of into the server environment.")
@click.option("--force", is_flag=True, help="Overwrite -o if it exists.")
def env_keys(profile, output, force):
    """Regenerate the table of config keys the server's Keras accepts (used by build and check)."""
    prof = load_profile(profile)
    python = server_env.resolve_python("server", prof)
    dest = output or server_env.env_dir(prof) / "keras-keys.json"
    server_env.write_keys(python, dest, echo=click.echo, force=force or output is None)
    click.echo(f"wrote {dest}")
