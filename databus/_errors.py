"""Every exception databus raises (Redis errors become these in ``_store/wire.py``).

The tree::

    DatabusError
    ├── ServerUnavailable (ConnectionError)  the server cannot be reached; names the URL
    ├── ServerConflict (RuntimeError)        the embedded server runs with other settings
    ├── InvalidURL (ValueError)              a URL databus cannot use
    ├── InvalidName (ValueError)             a session or channel name databus cannot use
    ├── ReadTimeout (TimeoutError)           a read or wait gave up after its timeout
    ├── DataExpired (IndexError)             the points were written but are gone from Redis
    │   └── DataLost                         ... and were never kept: dropped by a lossy
    │                                        channel, or lost by a server restarted empty
    ├── NotYetPublished (IndexError)         the points have not been written (yet)
    ├── EndOfData (IndexError)               past the end of an ended scan: never will be
    ├── CorruptEntry (ValueError)            a stored entry cannot be decoded
    ├── UnknownScan (LookupError)            no scan or session under that name
    ├── PointError                           a point sent to a channel is not what it takes
    │   ├── DtypeError (TypeError)           wrong or lossy dtype
    │   ├── ShapeError (ValueError)          wrong point or block shape
    │   └── FileRefError (ValueError)        a file reference out of bounds or not absolute
    ├── ChannelExists (ValueError)           a second channel with the same name
    ├── MetadataError (TypeError)            scan info or a value msgpack cannot carry,
    │                                        or larger than its limit
    ├── ScanStateError (RuntimeError)        an action the scan's state does not allow
    ├── ClosedError (RuntimeError)           you closed it (sent after end(), used a closed bus)
    ├── FlushFailed                          the server refused a flush; see __cause__
    ├── BusFull                              the server's memory cap left no room in time
    ├── PermissionDenied (PermissionError)   the server's ACL forbids this user the command
    └── ServerError                          any other error the server answered with

Names ending in the builtin's meaning also derive from that builtin, so ``except
ConnectionError`` or ``except IndexError`` keeps working.
"""

from __future__ import annotations

from typing import Any


class DatabusError(Exception):
    """Base of every databus error."""


class ServerUnavailable(DatabusError, ConnectionError):
    """The Redis/Valkey server at ``url`` cannot be reached or went away."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ServerConflict(DatabusError, RuntimeError):
    """The embedded server already runs with another auth mode or append-only setting
    than the one asked for; stop it first."""


class InvalidURL(DatabusError, ValueError):
    """A connection URL with an unknown scheme or a malformed part."""


class InvalidName(DatabusError, ValueError):
    """A session or channel name that is empty, too long, not UTF-8 or has a control
    character (or a session name with ':'); see ``keys.check_name``."""


class ReadTimeout(DatabusError, TimeoutError):
    """A read or a wait gave up after its timeout."""


class DataExpired(DatabusError, IndexError):
    """Points that were published are no longer in Redis (expired, trimmed or evicted).

    ``file``/``dataset`` say where the file writer saved them, when one did.
    """

    def __init__(
        self,
        message: str,
        *,
        channel: str | None = None,
        scan: str | None = None,
        first: int | None = None,
        last: int | None = None,
        file: str | None = None,
        dataset: str | None = None,
    ) -> None:
        super().__init__(message)
        self.channel, self.scan = channel, scan
        self.first, self.last = first, last
        self.file, self.dataset = file, dataset


class DataLost(DataExpired):
    """Points that will never be readable: a gap marker says why (``reason``: ``dropped``
    by a lossy channel, or ``server lost``)."""

    def __init__(self, message: str, *, reason: str, **where: Any) -> None:
        super().__init__(message, **where)
        self.reason = reason


class NotYetPublished(DatabusError, IndexError):
    """The points asked for have not been published (yet); waiting may help."""


class EndOfData(DatabusError, IndexError):
    """The points asked for lie past the end of a channel whose scan has ended."""


class CorruptEntry(DatabusError, ValueError):
    """A stored entry cannot be decoded; names the key and the entry ID."""

    def __init__(self, message: str, *, key: str | None = None, entry_id: str | None = None):
        super().__init__(message)
        self.key, self.entry_id = key, entry_id


class UnknownScan(DatabusError, LookupError):
    """No scan (or session) is stored under that name or key."""


class PointError(DatabusError):
    """A value sent to a channel is not something the channel takes."""


class DtypeError(PointError, TypeError):
    """The value's dtype cannot be stored in the channel without loss."""


class ShapeError(PointError, ValueError):
    """The value is neither one point nor a block of points of the channel's shape."""


class FileRefError(PointError, ValueError):
    """A ``FileRef`` sent to a ref channel that readers could not trust: a relative path,
    an empty dataset, a NUL, or frames past ``encoding.MAX_REF_INDEX`` or more than
    ``encoding.MAX_REF_FRAMES`` in one reference."""


class ChannelExists(DatabusError, ValueError):
    """A scan already has a channel with this name."""


class MetadataError(DatabusError, TypeError):
    """Scan info, a descriptor or a shared value holds something msgpack cannot carry, or
    scan info or a json record is larger than its limit (``Settings.max_info_bytes``,
    ``Settings.max_record_bytes``)."""


class ScanStateError(DatabusError, RuntimeError):
    """The scan's state does not allow this action; names the state and the one needed."""


class ClosedError(DatabusError, RuntimeError):
    """You closed it: a send after ``end()``, a call on a closed bus or sink."""


class FlushFailed(DatabusError):
    """The server refused part of a flush; ``__cause__`` is its error. Accepted points
    that were not acknowledged are listed in the message."""


class BusFull(DatabusError):
    """The server's memory cap left no room for the data within the timeout."""


class PermissionDenied(DatabusError, PermissionError):
    """The server's ACL does not let this connection's user run the command (a read-only
    user publishing a scan or setting a shared channel)."""


class ServerError(DatabusError):
    """The server answered with an error databus has no finer class for."""


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


# Tracebacks and reprs name the errors where users import them from: databus.DataExpired.
for _error in list(globals().values()):
    if isinstance(_error, type) and issubclass(_error, DatabusError):
        _error.__module__ = "databus"
del _error
