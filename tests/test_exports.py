"""The public surface: a sorted __all__ naming only what exists."""

import ast
from pathlib import Path

import databus


def test_all_is_sorted_and_complete():
    assert databus.__all__ == sorted(databus.__all__)
    for name in databus.__all__:
        assert hasattr(databus, name), name


def test_every_error_derives_from_databus_error_and_its_builtin():
    assert issubclass(databus.ServerUnavailable, ConnectionError)
    assert issubclass(databus.ReadTimeout, TimeoutError)
    assert issubclass(databus.DataExpired, IndexError)
    assert issubclass(databus.DtypeError, TypeError) and issubclass(databus.ShapeError, ValueError)
    for name in databus.__all__:
        obj = getattr(databus, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, databus.DatabusError), name


def test_every_exported_error_is_raised_somewhere():
    """No phantom exceptions: each leaf error class is used by the package's code (raised,
    or chosen to be raised), not only defined and exported; bases (DatabusError,
    PointError...) are for catching."""
    root = Path(databus.__file__).parent
    used = set()
    for path in [*root.rglob("*.py"), *root.parent.glob("clients/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
    errors = [
        getattr(databus, n)
        for n in databus.__all__
        if isinstance(getattr(databus, n), type) and issubclass(getattr(databus, n), Exception)
    ]
    for cls in errors:
        if not any(other is not cls and issubclass(other, cls) for other in errors):
            assert cls.__name__ in used, f"{cls.__name__} is exported but nothing raises it"
