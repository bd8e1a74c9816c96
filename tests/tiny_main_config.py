"""The tests' tiny config as a config file, for main.py subprocess tests."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers import tiny_titok_config  # noqa: E402


def get_config(arg=None):
    del arg
    return tiny_titok_config(num_steps=4, checkpoint_every_steps=2, eval_every_steps=4)
