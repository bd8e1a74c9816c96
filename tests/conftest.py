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


def _claim(lock) -> bool:
    """Takes the lock file (holding this pid) if it is free or its holder process is gone."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(lock.read_text() or "0")
        except (OSError, ValueError):
            return False  # being written: ask again later
        if holder <= 0 or _alive(holder):
            return False
        stale = lock.with_suffix(f".stale{os.getpid()}")
        try:
            os.replace(lock, stale)  # only one claimant wins the rename of the dead holder's lock
        except FileNotFoundError:
            return False
        os.unlink(stale)
        return _claim(lock)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    """False for a gone process and for a zombie (a crashed xdist worker is not reaped at once)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill(0)


@pytest.fixture(scope="session")
def tiny_var_run(tmp_path_factory):
    """A tiny VQVAE -> export -> token maps -> VAR pipeline trained once per test run for every
    VAR test module: dict(config, result (with .losses), workdir, vq_config, export_dir).

    Under pytest-xdist the first worker trains it in the run's shared temp folder while the others
    wait for its marker file, so parallel workers do not train it twice; if that worker dies (xdist
    replaces a crashed worker), a waiting or new worker takes the lock over and trains it.
    """
    from tests.helpers import tiny_var_config, tiny_var_vqvae_config, train_tiny_var_pipeline

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train_tiny_var_pipeline(tmp_path_factory.mktemp("tiny_var"))
    root = tmp_path_factory.getbasetemp().parent / "tiny_var_shared"
    marker, lock = root / "done.json", root.with_suffix(".lock")
    failure = root.with_suffix(".failed")
    deadline = time.monotonic() + 1800
    while not marker.exists():
        if failure.exists():
            raise RuntimeError(f"another test worker failed to train {root}: {failure.read_text()}")
        if _claim(lock):
            if root.exists():  # left by a worker that died while training
                import shutil

                shutil.rmtree(root)
            root.mkdir(parents=True)
            try:
                run = train_tiny_var_pipeline(root)
            except Exception as e:
                failure.write_text(f"{type(e).__name__}: {e}")
                raise
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"export_dir": run["export_dir"], "workdir": run["workdir"],
                                       "losses": {str(k): v for k, v in run["result"].losses.items()}}))
            os.replace(tmp, marker)
            return run
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
