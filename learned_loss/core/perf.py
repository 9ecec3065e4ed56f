"""Peak FLOP/s of the devices, for model FLOPs utilisation (MFU, Chowdhery et al. 2022).

MFU = (model FLOPs per token x tokens per second) / (peak FLOP/s of the devices used).
Accelerators use their datasheet dense peak; a CPU has no datasheet figure, so its peak is
measured: the float32 FLOP/s of a square `jnp.dot`, which is what the matmuls of a step can get.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets.
DATASHEET_PEAK = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """Median float32 FLOP/s of a [size, size] x [size, size] jnp.dot on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.median(times))


def peak_flops_per_device(measure_size: int = 1024) -> float:
    """The datasheet peak of the first device, or a measured matmul peak where there is none."""
    kind = jax.devices()[0].device_kind
    for name, peak in DATASHEET_PEAK.items():
        if kind.startswith(name):
            return peak
    return matmul_flops_per_second(measure_size)
