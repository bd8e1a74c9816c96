"""XLA settings of the test run, shared by conftest and the tests that start Python subprocesses.

The tests compile hundreds of tiny programs and run each a few times, so compile time dominates:
skipping LLVM's expensive passes makes the tiny programs compile faster.
`--xla_backend_optimization_level=0` would be faster still, but with jax 0.10.2 it hangs the tiny
VAR train step on 8 CPU devices (one device never reaches the first all-reduce; XLA aborts the
process after 40 s), so it is not used. TITOK_VAR_TEST_OPTIMIZED_XLA=1 restores the defaults.
"""

import os

FAST_COMPILE_FLAGS = "--xla_llvm_disable_expensive_passes=true"


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
