"""SIGTERM (preemption) turns into a stop step that every process agrees on, so they checkpoint
the same step and exit cleanly.

One process: a Python SIGTERM handler sets a flag that the loop polls after each step.
Several processes: JAX's preemption sync service, started by `jax.distributed.initialize`, owns
SIGTERM (a C++ handler of the coordination agent; installing a Python handler would replace it).
When any process gets the signal, the service picks the step after the highest one any process
has reported, and `reached_preemption_sync_point(step)` turns True on every process at that step,
without a collective per step.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


def _preemption_service_running() -> bool:
    # jax keeps the sync manager in its private distributed state; there is no public query.
    from jax._src import distributed

    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None


class PreemptionWatcher:
    """Watches for preemption during a `with` block; `requested(step)` is polled after each step."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        self._use_sync_service = False

    def __enter__(self):
        if jax.process_count() > 1:
            self._use_sync_service = _preemption_service_running()
            if not self._use_sync_service:
                logging.warning("jax_enable_preemption_service is off: SIGTERM ends this multi-process run "
                                "without a checkpoint; a restart resumes from the last periodic one")
        elif threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _handle(self, signum, frame):
        del signum, frame
        self._event.set()

    def requested(self, step: int) -> bool:
        """True when the run should checkpoint `step` and stop, the same step on every process.

        Multi-process runs must call this at every step, on every process, with the same steps.
        """
        if self._use_sync_service:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()
