"""One training run per work dir: process 0 holds `<workdir>/train.lock` (host, pid, start time).

A second run refuses, naming the holder; a lock left by a dead process on this host (kill -9, a
crash), or by an earlier run of the same SLURM job (a requeue onto another node), is taken over
with a warning. Other locks on another host cannot be checked for liveness and are respected:
delete the file after making sure that run is gone. Two runs starting at the same moment on one
stale lock may both take it over (the file is not an OS lock, so that it works on shared storage). Object-store work dirs (gs://...)
have no atomic create, so they are not locked.
"""

import contextlib
import datetime
import json
import os
import socket

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _try_create(path: str, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


def _acquire(workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if _try_create(path, record):
        return path
    holder = _read(path)
    dead_here = (holder.get("host") == record["host"] and isinstance(holder.get("pid"), int)
                 and not _alive(holder["pid"]))
    # A requeued SLURM job may land on another node: its own earlier lock is stale too.
    same_job = record["slurm_job_id"] is not None and holder.get("slurm_job_id") == record["slurm_job_id"]
    if not (dead_here or same_job):
        raise WorkdirLockedError(
            f"{workdir} is in use by another training run (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"started {holder.get('started')}; {path}). Use another --workdir, or delete the lock file once "
            "that run is gone.")
    logging.warning("taking over the stale lock %s of pid %s on %s (started %s)", path, holder.get("pid"),
                    holder.get("host"), holder.get("started"))
    os.remove(path)
    if not _try_create(path, record):
        raise WorkdirLockedError(f"{workdir} was locked again while taking over a stale lock: {_read(path)}")
    return path


@contextlib.contextmanager
def hold(workdir: str):
    """Holds the work dir's training lock for the `with` block (process 0 of local work dirs; every
    process refuses together when it is taken)."""
    path, error = None, None
    if jax.process_index() == 0 and "://" not in workdir:
        try:
            path = _acquire(workdir)
        except WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok:
            raise error or WorkdirLockedError(f"{workdir} is in use by another training run (see process 0's log)")
    elif error is not None:
        raise error
    try:
        yield
    finally:
        if path is not None and _read(path).get("pid") == os.getpid():
            os.remove(path)
