"""--mixed-precision's policy choice (builder/precision.py) and the bfloat16 training path it picks on CPUs."""

from __future__ import annotations

import numpy as np

from subbench.builder.precision import amx_allowed, choose_policy, cpu_bf16_flags

SAPPHIRE_RAPIDS = """processor\t: 0
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512vl\n"


def test_cpu_bf16_flags_read_from_cpuinfo():
    assert cpu_bf16_flags(SAPPHIRE_RAPIDS) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(SKYLAKE) == []
    assert cpu_bf16_flags("") == []
    # "amx_bf16" must be a whole flag, not a substring of another one
    assert cpu_bf16_flags("flags\t: amx_bf16x avx512_bf16_extra\n") == []


def test_policy_float16_on_gpu_bfloat16_with_amx_float32_elsewhere():
    assert choose_policy(True, [])[0] == "mixed_float16"
    assert choose_policy(True, ["amx_bf16"])[0] == "mixed_float16"
    policy, why = choose_policy(False, ["amx_bf16", "avx512_bf16"])
    assert policy == "mixed_bfloat16" and "amx_bf16" in why
    policy, why = choose_policy(False, [])
    assert policy == "float32" and "emulated" in why
    # AVX-512 BF16 without AMX measured slower in bfloat16 than in float32
    policy, why = choose_policy(False, ["avx512_bf16"])
    assert policy == "float32" and "without AMX" in why
    policy, why = choose_policy(False, ["amx_bf16", "avx512_bf16"], onednn=False)
    assert policy == "float32" and "TF_ENABLE_ONEDNN_OPTS" in why
    policy, why = choose_policy(False, ["amx_bf16", "avx512_bf16"], amx_ok=False)
    assert policy == "float32" and "ONEDNN_MAX_CPU_ISA" in why


def test_onednn_isa_cap_below_amx_rules_out_bfloat16():
    assert amx_allowed("") and amx_allowed("ALL") and amx_allowed("avx512_core_amx")
    assert not amx_allowed("AVX2") and not amx_allowed("AVX512_CORE_BF16")


import keras  # noqa: E402  (a required dependency: a missing one fails, it is not skipped)


def test_fused_batchnorm_under_bfloat16_matches_keras_batchnorm(keras_policy):
    """The fused kernel takes bfloat16 activations with float32 scale/offset; outputs agree with the Keras layer
    to bfloat16's precision, and the moving statistics stay float32 and move the same way."""
    from subbench.builder.custom_cnn import fused_batch_normalization

    keras_policy("mixed_bfloat16")
    x = np.random.default_rng(0).normal(3.0, 2.0, (16, 8, 8, 24)).astype("float32")
    fused = fused_batch_normalization(momentum=0.9)
    plain = keras.layers.BatchNormalization(momentum=0.9)
    for layer in (fused, plain):
        layer.build(x.shape)
    outs = [np.asarray(layer(x, training=True), np.float32) for layer in (fused, plain)]
    assert str(outs[0].dtype) == "float32" and fused.compute_dtype == "bfloat16"
    assert abs(outs[0].mean()) < 0.05 and abs(outs[0].std() - 1) < 0.05     # normalised, not passed through
    np.testing.assert_allclose(outs[0], outs[1], atol=0.05)                 # bfloat16 has 8 bits of mantissa
    assert fused.moving_mean.dtype == "float32" and fused.moving_variance.dtype == "float32"
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=0.02, atol=0.02)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=0.03)
    assert np.all(fused.moving_mean.numpy() > 0.2)                          # 0.1 * ~3 of the data's mean
