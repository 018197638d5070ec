"""blissdata 2.x's exceptions (``blissdata.exceptions``), raised where blissdata raises them.

The three index errors and ``ScanNotFoundError`` also derive from the databus error of the
same meaning, so ``except databus.DataExpired`` keeps working and its detail (channel,
points, the file a writer saved them to, a ``DataLost`` reason) stays on the exception::

    EndOfStream                  a cursor has read its stream(s) to the seal
    IndexNoMoreThereError        (databus.DataExpired)      the point was written, is gone
    IndexNotYetThereError        (databus.NotYetPublished)  not written yet; may come
    IndexWontBeThereError        (databus.EndOfData)        past the seal: never will be
    NoScanAvailable              get_next_scan/get_last_scan found no scan (in time)
    NoWritePermission            a writer call on a scan or stream loaded for reading
    ScanLoadError                load_scan failed
    ├── ScanNotFoundError        (databus.UnknownScan)      no scan under that key
    └── ScanValidationError      the scan's record does not decode
    UnauthorizeStateTransition   (databus.ScanStateError)   prepare/start/stop out of order

blissdata's ``UnknownEncodingError``, ``EmptyViewException`` and ``MissingPluginException``
are left out: every databus channel kind has a stream class, so nothing would raise them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .._errors import DataExpired, EndOfData, NotYetPublished, ScanStateError, UnknownScan

__all__ = [
    "EndOfStream",
    "IndexNoMoreThereError",
    "IndexNotYetThereError",
    "IndexWontBeThereError",
    "NoScanAvailable",
    "NoWritePermission",
    "ScanLoadError",
    "ScanNotFoundError",
    "ScanValidationError",
    "UnauthorizeStateTransition",
]


class EndOfStream(Exception):
    """A cursor (or every cursor of a group) has read its stream up to the seal."""


class IndexNoMoreThereError(DataExpired):
    """The point was published but is no longer in Redis (``DataExpired``'s detail says
    where a file writer saved it)."""


class IndexNotYetThereError(NotYetPublished):
    """The point is not published yet (or a negative index on a stream not sealed)."""


class IndexWontBeThereError(EndOfData):
    """The point lies past the end of a sealed stream."""


class NoScanAvailable(Exception):
    """No scan came (``get_next_scan``) or exists (``get_last_scan``)."""


class NoWritePermission(Exception):
    """A writer's call (``create_stream``, ``prepare``, ``send``...) on a scan or stream
    that was loaded for reading."""


class ScanLoadError(Exception):
    """``DataStore.load_scan`` could not load the scan."""


class ScanNotFoundError(ScanLoadError, UnknownScan):
    """No scan is stored under the key (never was, expired or deleted)."""


class ScanValidationError(ScanLoadError):
    """The scan's record exists but does not decode (``__cause__`` says why)."""


class UnauthorizeStateTransition(ScanStateError):
    """A writer moved a scan out of order (``stop()`` before ``start()``...); blissdata's
    spelling, kept so that ``except`` clauses port."""

    def __init__(self, orig_state: Any, dest_state: Any) -> None:
        super().__init__(
            f"Unauthorize scan transition from {orig_state.name} to {dest_state.name} "
            f"(a scan moves CREATED -> PREPARED -> STARTED -> STOPPED -> CLOSED; close() "
            f"is allowed from any state)"
        )
        self.orig_state, self.dest_state = orig_state, dest_state


E = TypeVar("E", bound=BaseException)


def blissdata_error(exc: BaseException) -> BaseException:
    """The blissdata index error for databus's ``exc`` (same message and attributes,
    ``exc`` as its cause); ``exc`` itself when none maps."""
    for ours, theirs in _INDEX_ERRORS:
        if isinstance(exc, ours):
            return _copy(exc, theirs)
    return exc


_INDEX_ERRORS: tuple[tuple[type[BaseException], type[BaseException]], ...] = (
    (DataExpired, IndexNoMoreThereError),
    (NotYetPublished, IndexNotYetThereError),
    (EndOfData, IndexWontBeThereError),
)


def _copy(exc: BaseException, cls: type[E]) -> E:
    new = cls.__new__(cls)
    new.args = exc.args
    new.__dict__.update(exc.__dict__)
    new.__cause__ = exc
    return new
