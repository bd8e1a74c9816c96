"""One training run per work dir: process 0 holds `<workdir>/train.lock` (host, pid, start time).

A second run refuses, naming the holder; a lock left by a dead process on this host (kill -9, a
crash) is taken over with a warning. Locks on another host cannot be checked for liveness and are
respected: delete the file after making sure that run is gone. Object-store work dirs (gs://...)
have no atomic create, so they are not locked.
"""

import contextlib
import datetime
import json
import os
import socket

import jax
from absl import logging

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


@contextlib.contextmanager
def hold(workdir: str):
    """Holds the work dir's training lock for the `with` block (process 0 of local work dirs)."""
    if jax.process_index() != 0 or "://" in workdir:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if not _try_create(path, record):
        holder = _read(path)
        same_host = holder.get("host") == record["host"]
        if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            logging.warning("taking over the stale lock %s of pid %s (started %s), which is no longer running",
                            path, holder.get("pid"), holder.get("started"))
            os.remove(path)
            if not _try_create(path, record):
                raise WorkdirLockedError(f"{workdir} was locked again while taking over a stale lock: {_read(path)}")
        else:
            raise WorkdirLockedError(
                f"{workdir} is in use by another training run (host {holder.get('host')}, pid {holder.get('pid')}, "
                f"started {holder.get('started')}; {path}). Use another --workdir, or delete the lock file once "
                "that run is gone.")
    try:
        yield
    finally:
        if _read(path).get("pid") == record["pid"]:
            os.remove(path)
