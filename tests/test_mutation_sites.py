"""The planted-bug list of tests/mutation_check.py stays in step with the code: each original text
occurs exactly once in its file, and each mutated file still parses (a mutant that no longer
applies, or breaks the syntax, would be reported as caught for the wrong reason)."""

import ast
import os

import pytest

from tests.conftest import REPO_ROOT
from tests.mutation_check import MUTANTS, mutate_source


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_once_and_parses(mutant):
    with open(os.path.join(REPO_ROOT, mutant.path)) as f:
        source = f.read()
    mutated = mutate_source(source, mutant)
    assert mutated != source
    ast.parse(mutated)
    for test in mutant.tests:
        test_file, _, test_name = test.partition("::")
        with open(os.path.join(REPO_ROOT, test_file)) as f:
            assert not test_name or f"def {test_name}(" in f.read(), test
