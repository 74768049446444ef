"""The server environment: a cached virtualenv with the profile's TensorFlow/Keras versions.

`check`, `build` and `score` run submissions in it when asked (`--env server`), which is the only local test
that catches a model the server's Keras cannot load. Created once under `cache_root()/envs/`; a folder is a
finished environment only once its `env.json` exists (written last, atomically).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from .atomic import write_text_atomic
from .errors import ServerEnvError
from .paths import cache_root
from .profile import Profile

ENV_OVERRIDE = "SUBBENCH_SERVER_PYTHON"  # a ready interpreter to use as the server env (CI, shared machines)


def env_name(profile: Profile) -> str:
    return f"tf{profile.server_tensorflow}-keras{profile.server_keras}-py{sys.version_info[0]}{sys.version_info[1]}"


def env_dir(profile: Profile) -> Path:
    return cache_root() / "envs" / env_name(profile)


def _python_in(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _introspect_script() -> Path:
    return Path(str(resources.files("subbench") / "keras_introspect.py"))


def _run(cmd: list[str], what: str, echo) -> str:
    echo(f"  $ {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ServerEnvError(f"{what} failed (exit {proc.returncode}): {tail}",
                             "check the network/pip access; the server versions need Python 3.9-3.12 "
                             "(TensorFlow 2.17 has no wheels for newer Pythons)")
    return proc.stdout


def probe(python: str | Path) -> dict:
    """Versions seen by an interpreter: {python, tensorflow, keras}."""
    code = ("import json,sys,os;os.environ['TF_CPP_MIN_LOG_LEVEL']='3';import tensorflow as tf,keras;"
            "print(json.dumps({'python':sys.version.split()[0],'tensorflow':tf.__version__,"
            "'keras':keras.__version__}))")
    out = _run([str(python), "-c", code], "importing TensorFlow/Keras in the server environment", lambda _: None)
    return json.loads(out.strip().splitlines()[-1])


def create(profile: Profile, force: bool = False, echo=print) -> Path:
    """Make (or reuse) the server environment; return its folder."""
    folder = env_dir(profile)
    marker = folder / "env.json"
    if marker.exists() and not force:
        echo(f"server environment exists: {folder}")
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # unfinished or --force: start clean
    folder.parent.mkdir(parents=True, exist_ok=True)
    echo(f"creating server environment {env_name(profile)} in {folder}")
    _run([sys.executable, "-m", "venv", str(folder)], "creating the virtualenv", echo)
    py = _python_in(folder)
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          f"tensorflow=={profile.server_tensorflow}", f"keras=={profile.server_keras}"],
         "installing the server's TensorFlow/Keras", echo)
    versions = probe(py)
    if versions["tensorflow"] != profile.server_tensorflow or versions["keras"] != profile.server_keras:
        raise ServerEnvError(f"the environment got TF {versions['tensorflow']} / Keras {versions['keras']}, "
                             f"not {profile.server_tensorflow} / {profile.server_keras}",
                             "remove it and retry: `subbench env create --force`")
    write_keys(py, folder / "keras-keys.json", echo)
    write_text_atomic(marker, json.dumps({**versions, "profile": profile.name, "python_path": str(py)}, indent=1),
                      force=True)
    echo(f"ready: TensorFlow {versions['tensorflow']}, Keras {versions['keras']}")
    return folder


def write_keys(python: str | Path, dest: Path, echo=print, force: bool = True) -> Path:
    """Generate the Keras key table by introspecting the interpreter's Keras (see keras_introspect.py)."""
    out = _run([str(python), str(_introspect_script())], "introspecting the server's Keras", echo)
    json.loads(out)  # refuse to write something that is not the table
    return write_text_atomic(dest, out, force=force)


def list_envs() -> list[dict]:
    root = cache_root() / "envs"
    found = []
    for folder in sorted(root.glob("*")) if root.exists() else []:
        marker = folder / "env.json"
        info = json.loads(marker.read_text()) if marker.exists() else {}
        found.append({"name": folder.name, "path": str(folder), "ready": marker.exists(), **info})
    return found


def resolve_python(env: str, profile: Profile) -> str:
    """The interpreter for `--env local|server`."""
    if env == "local":
        return sys.executable
    if env != "server":
        raise ServerEnvError(f"unknown environment {env!r}", "use --env local or --env server")
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        if not Path(override).exists():
            raise ServerEnvError(f"${ENV_OVERRIDE}={override} does not exist", f"unset {ENV_OVERRIDE} or fix it")
        return override
    folder = env_dir(profile)
    if not (folder / "env.json").exists():
        raise ServerEnvError(f"no server environment for TF {profile.server_tensorflow} / Keras "
                             f"{profile.server_keras} (looked in {folder})",
                             "create it once with `subbench env create` (a few minutes, needs pip access)")
    return str(_python_in(folder))


# ------------------------------------------------------------------------------------------------ requirements
def requirements_env_dir(requirements: str | Path, python: str | None = None) -> Path:
    """The cached environment for a requirements file: keyed by its content and the base interpreter's version,
    so an edited file or another Python makes another environment."""
    import hashlib

    req = Path(requirements)
    base = str(python or sys.executable)
    version = _python_version(base)
    digest = hashlib.sha256(req.read_bytes() + f"\0{version}".encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in req.stem)[:40] or "requirements"
    return cache_root() / "envs" / f"req-{stem}-{digest}-py{version.replace('.', '')[:3]}"


def _python_version(python: str) -> str:
    if str(python) == sys.executable:
        return f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ServerEnvError(f"cannot run {python} ({exc.strerror or exc})", "give --python PATH to a Python "
                             "interpreter") from None
    if out.returncode != 0:
        raise ServerEnvError(f"{python} is not a working Python interpreter", "give --python PATH to one")
    return out.stdout.strip()


def create_from_requirements(requirements: str | Path, python: str | None = None, force: bool = False,
                             echo=print) -> Path:
    """Make (once) a virtualenv with a requirements file installed (an old competition image's packages, e.g.
    numpy 1.x); return its interpreter. Cached under cache_root()/envs/ like the server environment; ready once
    its env.json exists."""
    req = Path(requirements)
    if not req.is_file():
        raise ServerEnvError(f"requirements file {req} does not exist", "give a pip requirements file")
    base = str(python or sys.executable)
    folder = requirements_env_dir(req, base)
    marker = folder / "env.json"
    py = _python_in(folder)
    if marker.exists() and not force:
        echo(f"environment exists: {folder}")
        echo(f"python: {py}")
        return py
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    echo(f"creating {folder.name} from {req} in {folder}")

    def run(cmd: list[str], what: str) -> str:
        echo(f"  $ {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(req.resolve().parent))
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise ServerEnvError(f"{what} failed (exit {proc.returncode}): {tail}",
                                 "check the requirements (old pins need an old Python: --python PATH) and pip access")
        return proc.stdout

    run([base, "-m", "venv", str(folder)], "creating the virtualenv")
    lines = [ln.strip() for ln in req.read_text(encoding="utf-8").splitlines()]
    if any(ln and not ln.startswith("#") for ln in lines):
        run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req.resolve())],
            f"installing {req.name}")
    freeze = run([str(py), "-m", "pip", "freeze", "--disable-pip-version-check"], "listing the packages")
    version = _python_version(str(py))
    write_text_atomic(marker, json.dumps({"requirements": str(req.resolve()), "python": version,
                                          "python_path": str(py), "packages": freeze.split()}, indent=1), force=True)
    echo(f"ready: Python {version}, {len(freeze.split())} packages")
    echo(f"python: {py}")
    return py
