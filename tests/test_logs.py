"""Quiet logs: library INFO lines are dropped, this package's lines, clu's progress line and every
warning are kept; TITOK_VAR_VERBOSE_LOGS=1 keeps everything."""

import logging

import pytest
from absl import logging as absl_logging

from titok_var import logs

SITE = "/usr/lib/python3.11/site-packages"


def record(path, level=logging.INFO):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)


@pytest.mark.parametrize("path, level, kept", [
    (f"{SITE}/orbax/checkpoint/checkpoint_manager.py", logging.INFO, False),
    (f"{SITE}/jax/_src/xla_bridge.py", logging.INFO, False),
    (f"{SITE}/tensorflow/python/data/ops/dataset_ops.py", logging.DEBUG, False),
    (f"{SITE}/orbax/checkpoint/checkpoint_manager.py", logging.WARNING, True),
    (f"{SITE}/jax/_src/xla_bridge.py", logging.ERROR, True),
    (f"{SITE}/clu/periodic_actions.py", logging.INFO, True),
    (f"{SITE}/titok_var/training/trainer.py", logging.INFO, True),
    ("/home/me/titok_var/titok_var/training/trainer.py", logging.INFO, True),
    ("/home/me/titok_var/main.py", logging.INFO, True),
])
def test_filter_keeps_our_lines_progress_and_warnings(path, level, kept):
    assert logs.LibraryInfoFilter().filter(record(path, level)) is kept


def test_configure_installs_the_filter_once_and_verbose_installs_none(monkeypatch):
    handler = absl_logging.get_absl_handler()
    monkeypatch.setattr(handler, "filters", [])
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    logs.configure(verbose=True)
    assert handler.filters == []
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    logs.configure()
    assert handler.filters == []
    monkeypatch.delenv(logs.VERBOSE_ENV)
    logs.configure()
    logs.configure()
    assert len(handler.filters) == 1 and isinstance(handler.filters[0], logs.LibraryInfoFilter)
