"""What a bundle's programs see at /app/...: the worker's volumes, in a private mount namespace or rewritten.

Commands run against the local run folder. Where Linux allows it (`unshare --mount`, plus a user namespace when
not root), each program runs in a private mount namespace whose /app/... are the run folder's and whose /tmp is
its own, as in the worker's container (see _appns.py), so paths written inside the programs' code work too and
what they write to /tmp stays there; elsewhere the /app/... paths of the command are rewritten to the run
folder's and the result says so (`app_paths = "rewrite"`). `SUBBENCH_APP_PATHS=rewrite` forces the rewrite.
What a program writes elsewhere on this machine's file system (outside /app and /tmp) is not caught: the
namespace binds the host's folders, writable, so that a program's caches and the interpreter work as in a
container.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from subbench.local_bench.bundle_spec import BundleError

APP_MODE_VAR = "SUBBENCH_APP_PATHS"       # "rewrite" forces the rewrite, "namespace" refuses to fall back
APP_PATH = re.compile(r"/app/(ingested_program|ingestion_program|input_data|program|output|shared|input|data)"
                      r"(?![\w])")


class BundleRunError(BundleError):
    """The bundle cannot be run here (not a failure of the submission)."""


# ------------------------------------------------------------------------------------------------ /app paths
def _appns_script() -> Path:
    return Path(str(resources.files("subbench.local_bench") / "_appns.py"))


def _unshare_prefix() -> list[str] | None:
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        return None
    return [exe, "--mount"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[bool, str]:
    """(usable, why not): can a program here see the run folder at /app/... in a private mount namespace?
    Probed once per process: a real namespace, a bind, a chroot and a Python run inside it."""
    prefix = _unshare_prefix()
    if prefix is None:
        return False, "no `unshare` (util-linux) on this system" if sys.platform.startswith("linux") else \
            f"mount namespaces are Linux-only (this is {sys.platform})"
    with tempfile.TemporaryDirectory(prefix="subbench-appns-") as tmp:
        prog = Path(tmp) / "program"
        prog.mkdir()
        (prog / "probe").write_text("ok")
        cmd = prefix + [sys.executable, str(_appns_script()), "--root", str(Path(tmp) / "root"), "--bind",
                        f"/app/program={prog}", "--cwd", "/app/program", "--", sys.executable, "-c",
                        "import os,sys; sys.exit(0 if open('/app/program/probe').read() == 'ok' "
                        "and os.getcwd() == '/app/program' else 3)"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"unshare failed ({exc})"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return False, f"no private mount namespace here ({why})"
    return True, ""


def app_mode() -> tuple[str, str]:
    """("namespace", "") or ("rewrite", why); $SUBBENCH_APP_PATHS=rewrite|namespace forces one."""
    forced = os.environ.get(APP_MODE_VAR, "")
    if forced == "rewrite":
        return "rewrite", f"${APP_MODE_VAR}=rewrite"
    ok, why = namespace_support()
    if not ok and forced == "namespace":
        raise BundleRunError(f"${APP_MODE_VAR}=namespace but {why}", f"unset {APP_MODE_VAR} to allow the rewrite")
    return ("namespace", "") if ok else ("rewrite", why)


@dataclass
class AppView:
    """What one container sees at /app/...: the worker's volumes for it, mounted or rewritten."""
    mode: str                        # namespace | rewrite
    mounts: dict[str, Path]          # "/app/program" -> run folder path
    nsroot: Path                     # where the namespace's root is built (namespace mode)
    keep_in_tmp: tuple = ()          # host folders under /tmp the programs need (the run folder, the interpreter)

    def rewrite(self, text: str) -> str:
        def sub(m):
            target = f"/app/{m.group(1)}"
            return str(self.mounts[target]) if target in self.mounts else m.group(0)
        return APP_PATH.sub(sub, text)

    def unmounted(self, text: str) -> list[str]:
        """The /app/... paths a command names that the worker does not mount for this container."""
        return sorted({f"/app/{m.group(1)}" for m in APP_PATH.finditer(text)} - set(self.mounts))

    def argv(self, args: list[str]) -> list[str]:
        if self.mode == "rewrite":
            return [self.rewrite(a) for a in args]
        binds = []
        for target, host in self.mounts.items():
            binds += ["--bind", f"{target}={host}"]
        keep = os.pathsep.join(str(k) for k in self.keep_in_tmp)
        return (_unshare_prefix() + [sys.executable, str(_appns_script()), "--root", str(self.nsroot)] + binds
                + ["--cwd", "/app/program", "--private-tmp", keep, "--"] + args)


def under_tmp(paths) -> tuple[Path, ...]:
    """Those of `paths` that lie under /tmp (which the namespace replaces by a tmpfs of its own), resolved."""
    out = []
    for p in paths:
        p = Path(p).resolve()
        if p.is_relative_to("/tmp") and p != Path("/tmp") and p not in out:
            out.append(p)
    return tuple(out)
