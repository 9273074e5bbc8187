"""The package's docstring examples run, against the installed package."""

import doctest
import importlib

import pytest

MODULES = ["switchboard_bus", "switchboard_bus.event", "switchboard_bus.event_bus", "switchboard_bus.plugin"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no examples"
