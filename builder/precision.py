"""Which reduced-precision Keras policy `--mixed-precision` trains with on this machine.

float16 on a GPU; bfloat16 on a CPU with Intel AMX, whose oneDNN kernels run it natively. On a 2-core Xeon with AMX,
the cpu recipe's custom_cnn (fused BatchNorm, 64 px) trains 2.0x the images a second of float32 on in-memory batches
(bench/bench_custom_cnn.py and bench/bench_cpu_recipe.py time both side by side); in the recipe's hour, 71 epochs
instead of ~53 in float32 on a quiet host, simulated hidden accuracy 0.880 vs 0.851. AVX-512 BF16 without AMX is
not enough: on a 2-core Xeon with avx512_bf16 and no AMX the same step ran at 0.72x float32 (bench/bench_throughput.py
--precision float32,bfloat16: 185 against 258 images a second; its bfloat16 matmul peak 160 GFLOP/s against 286 in
float32). On a CPU, float16 is emulated and slower than float32: elsewhere the build trains in float32 and says why.
ONEDNN_MAX_CPU_ISA below AMX (e.g. AVX2, used to emulate older hosts) also means float32.
Master weights stay float32 under both policies, and export writes a float32 model (builder/export.py).
"""

from __future__ import annotations

import os
from pathlib import Path

# /proc/cpuinfo flags of the instructions oneDNN uses for bfloat16 convolutions and matrix products
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 instruction sets the CPU announces (Linux /proc/cpuinfo; [] where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [f for f in CPU_BF16_FLAGS if f in flags]


def onednn_enabled() -> bool:
    """TensorFlow's x86 Linux builds use oneDNN unless TF_ENABLE_ONEDNN_OPTS=0 turns it off."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() not in ("0", "false", "False")


def amx_allowed(max_isa: str | None = None) -> bool:
    """Whether oneDNN may use AMX: ONEDNN_MAX_CPU_ISA unset, ALL, or an AMX level."""
    value = (os.environ.get("ONEDNN_MAX_CPU_ISA", "") if max_isa is None else max_isa).strip().upper()
    return value in ("", "ALL") or "AMX" in value


def choose_policy(has_gpu: bool, cpu_flags: list[str], onednn: bool = True,
                  amx_ok: bool = True) -> tuple[str, str]:
    """(policy name, one-line reason) for a build that asked for mixed precision."""
    if has_gpu:
        return "mixed_float16", "float16 compute on the GPU"
    if "amx_bf16" in cpu_flags and onednn and amx_ok:
        return "mixed_bfloat16", f"bfloat16 compute on the CPU ({', '.join(cpu_flags)})"
    if "amx_bf16" in cpu_flags and not onednn:
        return "float32", "float32: the CPU has AMX but TF_ENABLE_ONEDNN_OPTS=0 disables oneDNN"
    if "amx_bf16" in cpu_flags:
        return "float32", "float32: ONEDNN_MAX_CPU_ISA keeps oneDNN below AMX"
    if cpu_flags:
        return "float32", ("float32: AVX-512 BF16 without AMX trains slower in bfloat16 than in float32 "
                           "(0.72x measured)")
    return "float32", ("float32: no GPU and no AMX on this CPU; reduced precision would be emulated, slower than "
                       "float32")


def mixed_precision_policy() -> tuple[str, str]:
    """choose_policy for this machine (imports TensorFlow to list GPUs)."""
    import tensorflow as tf

    return choose_policy(bool(tf.config.list_physical_devices("GPU")), cpu_bf16_flags(), onednn_enabled(),
                         amx_allowed())
