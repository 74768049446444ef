"""Run a command with the local run folder mounted at /app/..., as the compute worker's container sees it.

Started as `unshare --mount [--user --map-root-user] python _appns.py --root DIR --bind /app/x=HOST ... --cwd
/app/program [--private-tmp KEEP1:KEEP2] -- command...` (see bundle_mounts.AppView). Inside the new mount namespace, private to this process
and its children: a tmpfs at DIR receives a recursive bind of every top-level folder of `/` (so the interpreter,
its libraries, /tmp, /proc and /dev are all there), the `/app/...` folders are created in it and bound to the run
folder's, with --private-tmp, /tmp is a tmpfs of its own (as in a container: what the programs write there goes with
the namespace) with the KEEP folders (under the host's /tmp) bound back at their paths; then the process
chroots into DIR and execs the command. Nothing outside the namespace changes: the
host has no /app, and the mounts vanish with the last process.

Standard library only; Linux only. Exits 125 with "appns: ..." on stderr when the namespace cannot be set up
(before the command starts), so the caller can tell that apart from the command's own failure.
"""

import ctypes
import os
import sys

MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 1, 4096, 16384, 1 << 18
SETUP_FAILED = 125


def _mount(libc, source, target, fstype, flags):
    if libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                  flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))


def private_tmp(libc, root, keep):
    """A tmpfs of its own at /tmp, as a container has (what a program writes there goes with the namespace),
    with the host folders in `keep` (the run folder, the interpreter where it lies under /tmp) bound back at
    their own paths."""
    tmp = os.path.join(root, "tmp")
    os.makedirs(tmp, exist_ok=True)
    _mount(libc, "tmpfs", tmp, "tmpfs", 0)
    os.chmod(tmp, 0o1777)
    for host in keep:
        inside = os.path.join(root, host.lstrip("/"))
        os.makedirs(inside, exist_ok=True)
        _mount(libc, host, inside, None, MS_BIND | MS_REC)


def setup(root, binds, keep=None):
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(root, exist_ok=True)
    _mount(libc, "tmpfs", root, "tmpfs", 0)
    for name in sorted(os.listdir("/")):
        src, dst = "/" + name, os.path.join(root, name)
        if name == "app":
            continue  # a host /app (the worker's own image, say) is replaced by the run folder's
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            try:
                _mount(libc, src, dst, None, MS_BIND | MS_REC)
            except OSError:
                if name in ("usr", "bin", "lib", "lib64", "tmp", "proc", "dev", "etc"):
                    raise
    app = os.path.join(root, "app")
    os.makedirs(app, exist_ok=True)
    for target, host in binds:
        inside = os.path.join(root, target.lstrip("/"))
        os.makedirs(inside, exist_ok=True)
        _mount(libc, host, inside, None, MS_BIND | MS_REC)
    if keep is not None:
        private_tmp(libc, root, keep)


def main(argv):
    root, binds, cwd, keep, i = None, [], "/", None, 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--root":
            root, i = argv[i + 1], i + 2
        elif argv[i] == "--bind":
            target, _, host = argv[i + 1].partition("=")
            binds.append((target, host))
            i += 2
        elif argv[i] == "--cwd":
            cwd, i = argv[i + 1], i + 2
        elif argv[i] == "--private-tmp":
            keep, i = [k for k in argv[i + 1].split(os.pathsep) if k], i + 2
        else:
            sys.stderr.write("appns: unknown argument %r\n" % argv[i])
            return SETUP_FAILED
    command = argv[i + 1:]
    if root is None or not command:
        sys.stderr.write("appns: usage: _appns.py --root DIR [--bind /app/x=HOST]... [--cwd DIR] -- command...\n")
        return SETUP_FAILED
    try:
        setup(root, binds, keep)
        os.chroot(root)
        os.chdir(cwd)
    except OSError as exc:
        sys.stderr.write("appns: %s\n" % exc)
        return SETUP_FAILED
    env = dict(os.environ)
    env["PWD"] = cwd
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        # Like a container whose command does not exist: the runtime's exit code for "not found" / "cannot run".
        sys.stderr.write("exec %s: %s\n" % (command[0], exc.strerror))
        return 127 if isinstance(exc, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
