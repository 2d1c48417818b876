"""Every docstring example runs, and every public class and function has one (numpydoc)."""

import doctest
import importlib
import inspect
import pkgutil

import pytest
from helpers import PUBLIC_MODULES

import skretrieval

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(skretrieval.__path__, "skretrieval.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def _public_objects():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj


def _takes_arguments(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    if target is object.__init__:
        return False
    return any(p not in ("self", "args", "kwargs") for p in inspect.signature(target).parameters)


@pytest.mark.parametrize("name, obj", list(_public_objects()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_docstring_has_an_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------\n>>>" in doc, f"{name} has no Examples section"
    if _takes_arguments(obj):
        assert "Parameters\n----------\n" in doc, f"{name} documents no Parameters"
