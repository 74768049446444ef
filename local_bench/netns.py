"""Runs without network access: a network namespace of its own (loopback only) for a program's whole process tree.

Codabench's worker leaves the network on unless its queue sets COMPETITION_CONTAINER_NETWORK_DISABLED=true; the
local default is the same (network on). `--no-network` (the profile's run and bundle runs alike) prefixes the
command with `unshare --net` (util-linux; `--user --map-root-user` when not root), where Linux allows it, and a
named error says where it does not. A submission that downloads something at `Model()` (ImageNet weights, say)
then fails as on a server without internet, and `network_failure` names why from its stderr.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys

from subbench.errors import SubbenchError

NETWORK_ERROR = re.compile(r"URLError|gaierror|Temporary failure in name resolution|Network is unreachable|"
                           r"Name or service not known|Failed to establish a new connection|No route to host")


class NetworkIsolationError(SubbenchError):
    """--no-network asked for where this system cannot run a program without network access."""


def net_prefix() -> list[str]:
    """The argv prefix that runs a command in a network namespace of its own."""
    return [shutil.which("unshare") or "unshare", "--net"] + ([] if os.geteuid() == 0 else
                                                             ["--user", "--map-root-user"])


@functools.lru_cache(maxsize=1)
def network_isolation() -> tuple[bool, str]:
    """(usable, why not): can a program run in a network namespace of its own (loopback only)? Probed once."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        return False, f"network namespaces need Linux and util-linux's `unshare` (this is {sys.platform})"
    try:
        proc = subprocess.run(net_prefix() + [sys.executable, "-c", "pass"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"unshare --net failed ({exc})"
    if proc.returncode != 0:
        return False, "no network namespace here (" + ((proc.stderr.strip().splitlines() or ["?"])[-1]) + ")"
    return True, ""


def require_network_isolation() -> None:
    """NetworkIsolationError, with why, unless network_isolation() holds."""
    ok, why = network_isolation()
    if not ok:
        raise NetworkIsolationError(f"--no-network cannot be applied: {why}",
                                    "run without --no-network (the programs then have this machine's network)")


def cut_off_note(who: str, found: str) -> str:
    """What to tell the user when `who` (e.g. "the submission") failed on the network error `found`."""
    return (f"{who} tried to reach the network ({found}) and --no-network cut it off: on a server without "
            "internet (a queue with COMPETITION_CONTAINER_NETWORK_DISABLED=true) it fails the same way; ship what it "
            "downloads (e.g. weights fetched at Model()) inside the submission")


def network_failure(stderr: str) -> str | None:
    """The network error a program's stderr shows (e.g. 'Temporary failure in name resolution'), or None."""
    found = NETWORK_ERROR.search(stderr or "")
    return found.group(0) if found else None
