"""Test set-up: 8 fake CPU devices (for sharding tests) and the repo root on sys.path (configs/)."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.subprocess_env import xla_flags  # noqa: E402

# Must happen before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", xla_flags(device_count=8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import json  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
    """A compilation cache shared by the run's workers: the tests build the same tiny train and
    eval programs many times over (fresh jit closures per run), and each compile costs seconds."""
    import tempfile

    import jax

    cache_dir = os.environ.get("TITOK_VAR_TEST_COMPILATION_CACHE") or os.path.join(
        tempfile.gettempdir(), f"titok_var_test_xla_cache_{os.getuid()}")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # Subprocesses (main.py runs, multi-process workers) share it through the environment.
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="session")
def tiny_var_run(tmp_path_factory):
    """A tiny VQVAE -> export -> token maps -> VAR pipeline trained once per test run for every
    VAR test module: dict(config, result (with .losses), workdir, vq_config, export_dir).

    Under pytest-xdist the first worker trains it in the run's shared temp folder while the others
    wait for its marker file, so parallel workers do not train it twice.
    """
    from tests.helpers import tiny_var_config, tiny_var_vqvae_config, train_tiny_var_pipeline

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train_tiny_var_pipeline(tmp_path_factory.mktemp("tiny_var"))
    root = tmp_path_factory.getbasetemp().parent / "tiny_var_shared"
    marker, lock = root / "done.json", root.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        fd = None
    if fd is not None:
        os.close(fd)
        root.mkdir(parents=True, exist_ok=True)
        run = train_tiny_var_pipeline(root)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"export_dir": run["export_dir"], "workdir": run["workdir"],
                                   "losses": {str(k): v for k, v in run["result"].losses.items()}}))
        os.replace(tmp, marker)
        return run
    deadline = time.monotonic() + 1800
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"another test worker did not finish training {root}")
        time.sleep(2)
    saved = json.loads(marker.read_text())
    vq_config = tiny_var_vqvae_config(num_steps=300)
    vq_config.data.update(shapes_num_train=512, shapes_num_eval=32)
    config = tiny_var_config(saved["export_dir"], vq_config.data, str(root / "tokens"))
    result = types.SimpleNamespace(losses={int(k): v for k, v in saved["losses"].items()})
    return dict(config=config, result=result, workdir=saved["workdir"], vq_config=vq_config,
                export_dir=saved["export_dir"])
