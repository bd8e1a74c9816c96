"""XLA settings of the test run, shared by conftest and the tests that start Python subprocesses.

The tests compile hundreds of tiny programs and run each a few times, so compile time dominates:
XLA's LLVM backend at optimisation level 0 compiles the tiny train steps about 1.5x faster (e.g.
the GAN VQVAE step's init 19 s -> 5 s). TITOK_VAR_TEST_OPTIMIZED_XLA=1 restores the default levels.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(device_count: int | None = None) -> str:
    flags = [] if os.environ.get("TITOK_VAR_TEST_OPTIMIZED_XLA") == "1" else [FAST_COMPILE_FLAGS]
    if device_count is not None:
        flags.append(f"--xla_force_host_platform_device_count={device_count}")
    return " ".join(flags)


def cpu_env(device_count: int | None = None, **extra) -> dict:
    """os.environ for a subprocess on CPU with `device_count` fake devices (None: one), the test
    run's compile settings and its persistent compilation cache when one is set."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(device_count), JAX_PLATFORMS="cpu", **extra)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return env
