"""SIGTERM (preemption) turns into a flag the loop polls, so it can checkpoint and exit cleanly."""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Installs a SIGTERM handler for the duration of a `with` block."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _handle(self, signum, frame):
        del signum, frame
        self._event.set()

    def request(self):
        self._event.set()

    def requested(self) -> bool:
        """True on every process once any process got SIGTERM (all must save together)."""
        local = self._event.is_set()
        if jax.process_count() == 1:
            return local
        flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
        return bool(np.max(flags))
