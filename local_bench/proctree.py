"""Run a command as a container would hold it: its whole process tree, one clock, one memory limit, one kill.

`run_tree` starts the command in a new session (so it leads its own process group), polls it until it exits,
and meanwhile sums the resident memory of every process in its tree from /proc. At the time limit, or when the
tree's resident memory passes the memory limit, it SIGKILLs the whole tree; when the command ends by itself, it
kills what it left running in the background too (a container ends with everything in it). The tree is the
process group, every descendant found through parent links or the session, and every process whose environment
carries this run's token (descendants that double-forked and called setsid() escape the other two).

Memory: a container's memory limit is a cgroup charging resident pages, and its OOM killer sends SIGKILL; that
is what is emulated here (RLIMIT_AS is useless with TensorFlow, which maps several times what it touches).
Without /proc (macOS) the tree cannot be watched: the time limit still holds (the process group is killed),
the memory limit cannot be enforced, and the peak comes from getrusage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import IO, Callable, Mapping, Sequence

POLL_S = 0.05           # how often the child is checked (exit, time, resident memory of known processes)
TREE_SCAN_S = 0.5       # how often /proc is scanned for new processes in the tree (costlier than a poll)
TOKEN_VAR = "SUBBENCH_RUN_TOKEN"  # inherited by every descendant: finds double-forked orphans at clean-up


class StartError(OSError):
    """The command could not be started (no such interpreter, not executable, no such working directory)."""


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session) of a live, non-zombie process, from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # after "pid (comm) "
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[3])


class ProcessTree:
    """A root process and its descendants (by parent link, session or token), their resident memory, killing all."""

    def __init__(self, root: int, token: str | None = None):
        self.root = root
        self.token = token
        self.pids = {root}
        self.has_proc = os.path.isdir(f"/proc/{os.getpid()}")
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20

    def scan(self) -> None:
        """Add the processes now in the tree: the root's session and everything descending from it."""
        if not self.has_proc:
            return
        links: dict[int, tuple[int, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = proc_stat(int(name))
                if st:
                    links[int(name)] = st
        found = {p for p, (_, sid) in links.items() if sid == self.root}
        frontier = set(found | {self.root})
        while frontier:
            frontier = {p for p, (ppid, _) in links.items() if ppid in frontier and p not in found}
            found |= frontier
        self.pids |= found

    def rss_mb(self) -> float | None:
        """Resident memory of the known processes, in MB (None without /proc); forgets the ones that ended."""
        if not self.has_proc:
            return None
        total, alive = 0, set()
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1])
                alive.add(pid)
            except (OSError, IndexError, ValueError):
                pass
        self.pids = alive | {self.root}
        return total * self.page_mb

    def token_pids(self) -> set[int]:
        """Processes whose environment carries this run's token: descendants that double-forked or setsid()."""
        found: set[int] = set()
        if not self.has_proc or not self.token:
            return found
        needle = f"{TOKEN_VAR}={self.token}".encode()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.add(int(name))
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL the process group, every known descendant and every process holding the token."""
        try:
            os.killpg(self.root, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self.has_proc:
            return
        for _ in range(20):
            self.scan()
            victims = {p for p in (self.pids | self.token_pids()) if p != os.getpid() and proc_stat(p)}
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)

    def survivors(self) -> set[int]:
        """Live processes still holding the token (none after kill_all)."""
        return {p for p in self.token_pids() if proc_stat(p)}


@dataclass(frozen=True)
class TreeExit:
    """How a supervised command ended."""
    returncode: int                 # as subprocess reports it: negative = killed by that signal
    killed_for: str | None          # "time" or "memory" when run_tree killed it at that limit
    started: float                  # time.time() just before the process was started
    ended: float                    # when its exit was seen, or when it was killed
    peak_rss_mb: float              # peak resident memory of the whole tree, polled (0.0 without /proc)
    rusage_maxrss_mb: float | None  # the root's getrusage maxrss (includes the caller's own peak on Linux)
    pid: int

    @property
    def elapsed_s(self) -> float:
        return self.ended - self.started


def _rusage_mb(usage) -> float:
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def run_tree(cmd: Sequence[str], *, cwd=None, env: Mapping[str, str] | None = None, stdout: IO | int | None = None,
             stderr: IO | int | None = None, time_limit_s: float | None = None,
             memory_limit_mb: float | None = None, on_start: Callable[[], None] | None = None,
             on_poll: Callable[[float], None] | None = None, poll_s: float = POLL_S,
             scan_s: float = TREE_SCAN_S) -> TreeExit:
    """Run `cmd` to its end, or kill its whole tree at the time or memory limit; nothing of it is left running.

    The clock starts just before the process does. `on_start()` runs once the process is started, `on_poll(now)`
    after every poll. A command that cannot be started raises StartError; any exception while waiting (Ctrl-C, a
    callback raising) kills the tree, reaps it and propagates.
    """
    token = uuid.uuid4().hex
    child_env = dict(os.environ if env is None else env)
    child_env[TOKEN_VAR] = token
    started = time.time()
    try:
        proc = subprocess.Popen(list(cmd), cwd=None if cwd is None else str(cwd), env=child_env,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True)
    except OSError as exc:
        raise StartError(exc.errno, f"cannot start {cmd[0]}: {exc.strerror or exc}") from exc
    tree = ProcessTree(proc.pid, token)
    killed_for: str | None = None
    peak, rusage_mb, status = 0.0, None, None
    ended = started
    try:
        if on_start:
            on_start()
        last_scan = 0.0
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.time()
            if pid:
                status, ended, rusage_mb = wait_status, now, _rusage_mb(usage)
                break
            if now - last_scan >= scan_s:
                tree.scan()
                last_scan = now
            rss = tree.rss_mb()
            if rss is not None:
                peak = max(peak, rss)
            if time_limit_s is not None and now - started >= time_limit_s:
                killed_for = "time"
            elif memory_limit_mb is not None and rss is not None and rss > memory_limit_mb:
                killed_for = "memory"
            if killed_for:
                ended = now
                tree.kill_all()
                _, status, usage = os.wait4(proc.pid, 0)
                rusage_mb = _rusage_mb(usage)
                break
            if on_poll:
                on_poll(now)
            time.sleep(poll_s)
    finally:
        # Killed at a limit, ended by itself with children left in the background, or interrupted: nothing stays.
        tree.kill_all()
        if status is None:
            try:
                _, status, _ = os.wait4(proc.pid, 0)
            except ChildProcessError:
                pass
        proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    return TreeExit(proc.returncode, killed_for, started, ended, peak, rusage_mb, proc.pid)
