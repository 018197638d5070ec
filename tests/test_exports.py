"""The public surface: a sorted __all__ naming only what exists."""

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
