"""Quiet logs for the command-line programs: Python INFO lines of the libraries (orbax, jax,
TensorFlow, tensorstore, etils) are hidden; this package's own lines and clu's progress line
(steps/s, ETA) stay, and every warning and error stays. TensorFlow's C++ start-up notice (oneDNN)
is printed before any setting can reach it and stays.

`main.py --verbose_logs` or TITOK_VAR_VERBOSE_LOGS=1 (any command) shows everything.
"""

import logging as py_logging
import os

from absl import logging

VERBOSE_ENV = "TITOK_VAR_VERBOSE_LOGS"
# Packages whose INFO lines a user reads: ours, and clu's ReportProgress (rate and ETA).
_INFO_FROM = ("titok_var", "clu")


class LibraryInfoFilter(py_logging.Filter):
    """Drops INFO (and DEBUG) records emitted outside `_INFO_FROM` and the entry-point scripts."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno >= py_logging.WARNING:
            return True
        path = record.pathname.replace(os.sep, "/")
        if any(f"/{package}/" in path for package in _INFO_FROM):
            return True
        return "/site-packages/" not in path and "/dist-packages/" not in path


def configure(verbose: bool = False) -> None:
    """Installs the filter on absl's handler (which app.run attaches to the root logger)."""
    if verbose or os.environ.get(VERBOSE_ENV) == "1":
        return
    handler = logging.get_absl_handler()
    if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(LibraryInfoFilter())
