"""What every bench number needs beside it: the CPU, its vector/matrix instruction sets, and the load while it ran.

Used by bench_throughput.py, bench_tta_cost.py and bench_aug_cost.py (`from hostinfo import ...`; the bench
scripts run as `python bench/NAME.py`, which puts bench/ on sys.path). Run alone it wraps any command:

    python bench/hostinfo.py -- python bench/bench_cpu_recipe.py --aug-only --rounds 2 --steps 5

prints the CPU line before, and after the command the load it ran under: the machine's busy share of all cores
(from /proc/stat) split into the command's own CPU time (its process tree, from getrusage) and everyone else's,
the steal the hypervisor took, and /proc/loadavg before and after. Linux only; elsewhere it prints n/a.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# /proc/cpuinfo flags that decide which oneDNN kernels run: fp32 width (AVX2 = 8 lanes, AVX-512 = 16),
# bfloat16 (AVX-512 BF16 dot products, AMX tiles), int8 (VNNI).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")


def cpuinfo() -> dict:
    """{'model': str, 'cpus': int, 'mhz': float | None, 'flags': set} from /proc/cpuinfo (Linux)."""
    info = {"model": platform.processor() or platform.machine(), "cpus": os.cpu_count() or 1, "mhz": None,
            "flags": set()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = value.strip()
        elif key == "cpu MHz" and info["mhz"] is None:
            info["mhz"] = float(value)
        elif key == "flags" and not info["flags"]:
            info["flags"] = set(value.split())
    try:
        info["cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return info


def cpu_line() -> str:
    """One line: model, usable CPUs, clock, the ISA flags present and absent, the load average now."""
    c = cpuinfo()
    have = [f for f in ISA_FLAGS if f in c["flags"]]
    lack = [f for f in ISA_FLAGS if f not in c["flags"]]
    mhz = f", {c['mhz']:.0f} MHz" if c["mhz"] else ""
    return (f"CPU: {c['model']}, {c['cpus']} usable CPUs{mhz}; flags: {' '.join(have) or 'none'}"
            f" (no {' '.join(lack) or '-'}); loadavg {loadavg()}")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _stat_ticks() -> list[int] | None:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None


def _own_cpu_s() -> float:
    """CPU seconds (user + sys) of this process and its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class LoadMeter:
    """Machine load over an interval: start() ... stop(own_cpu_s=None) -> dict.

    busy: share of all CPUs' time that was busy (user+nice+system+irq+softirq+steal over the total);
    own: the part of it that the measured work used (own_cpu_s if given, e.g. a child's /proc CPU time, else this
    process and its finished children); others: busy - own, what the rest of the machine took meanwhile;
    steal: the hypervisor's share. All as fractions of (wall x CPUs)."""

    def start(self) -> "LoadMeter":
        self.t0, self.ticks0, self.own0, self.load0 = time.perf_counter(), _stat_ticks(), _own_cpu_s(), loadavg()
        return self

    def stop(self, own_cpu_s: float | None = None) -> dict:
        wall = time.perf_counter() - self.t0
        ticks = _stat_ticks()
        own = own_cpu_s if own_cpu_s is not None else _own_cpu_s() - self.own0
        out = {"wall_s": wall, "own_cpu_s": own, "loadavg_before": self.load0, "loadavg_after": loadavg()}
        if ticks and self.ticks0:
            d = [a - b for a, b in zip(ticks, self.ticks0)]
            total = sum(d)
            if total > 0:
                idle = d[3] + d[4]
                out["busy"] = 1 - idle / total
                out["steal"] = d[7] / total
                ncpu = cpuinfo()["cpus"]
                out["own"] = min(1.0, own / (wall * ncpu)) if wall > 0 else 0.0
                out["others"] = max(0.0, out["busy"] - out["own"])
        return out


def load_text(m: dict) -> str:
    if "busy" not in m:
        return f"load: loadavg {m['loadavg_before']} -> {m['loadavg_after']} (no /proc/stat)"
    return (f"load over {m['wall_s']:.0f} s: machine busy {100 * m['busy']:.0f}% of all CPUs = this work "
            f"{100 * m['own']:.0f}% + others {100 * m['others']:.0f}%, steal {100 * m['steal']:.1f}%; "
            f"loadavg {m['loadavg_before']} -> {m['loadavg_after']}")


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (utime + stime) a running process has used so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(cpu_line())
        return
    print(cpu_line(), flush=True)
    meter = LoadMeter().start()
    rc = subprocess.call(argv)
    print(load_text(meter.stop()), flush=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
