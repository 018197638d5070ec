"""blissdata 2.x's ``DataStore`` over a databus ``Bus``.

The feed of new scans across sessions is the bus's (``Bus.next_scan``): its tags are
blissdata's timetags, resumable the same way. A search matches identity fields against
the scan info (see ``identities``), the session against the databus session.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..._bus import Bus, connect, default_bus
from ..._errors import ReadTimeout
from ..exceptions import NoScanAvailable
from .identities import INFO_KEYS
from .scan import Scan

__all__ = ["DataStore"]


class DataStore:
    """The bus at ``url``: None for the default one (``DATABUS_URL`` or the embedded
    server), a ``redis://`` (``rediss://``, ``unix://``) URL, or a ``databus.Bus``.
    ``bus`` is the databus ``Bus`` below; a bus this store connected closes with it."""

    def __init__(self, url: str | Bus | None = None) -> None:
        if isinstance(url, Bus):
            self.bus = url
        elif url is None:
            self.bus = default_bus()
        else:
            self.bus = connect(url)
            weakref.finalize(self, self.bus.close)

    def __repr__(self) -> str:
        return f"<DataStore {self.bus!r}>"

    def load_scan(self, key: str) -> Scan:
        """The scan stored under ``key``, for reading: ``ScanNotFoundError`` if there is
        none, ``ScanValidationError`` if its record does not decode."""
        return Scan._load(self, key)

    def create_scan(self, identity: dict[str, Any], info: dict[str, Any] | None = None) -> Scan:
        """A new scan to publish, in session ``identity["session"]`` (none: the runner's
        current session); ``identity`` needs ``name``, ``number`` and ``data_policy`` and
        is kept in the scan info (``identities.INFO_KEYS``)."""
        return Scan._create(self, identity, dict(info or {}))

    def get_last_scan_timetag(self) -> str:
        """The timetag of the last scan created ("0-0" when there is none)."""
        return self.bus.last_scan_tag()

    def get_last_scan(self) -> tuple[str, str]:
        """(timetag, key) of the newest scan still there; ``NoScanAvailable`` if none.
        The timetag is the feed's last (that of a newer scan already gone, if any)."""
        tag, found = self.bus.find_scans()
        if not found:
            raise NoScanAvailable("no scan is kept on this bus")
        return tag, found[-1]

    def get_next_scan(
        self, since: str | int | None = None, block: bool = True, timeout: float = 0
    ) -> tuple[str, str]:
        """(timetag, key) of the first scan created after timetag ``since`` (None: from
        now) in any session; pass the timetag back as ``since`` to miss none. Waits
        (``block``) up to ``timeout`` seconds (0: for ever); ``NoScanAvailable`` if none
        came. Scans already gone are skipped."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds (0: wait for ever), not {timeout}")
        wait = 0 if not block else (None if timeout == 0 else timeout)
        tag = since if since is None or isinstance(since, str) else str(since)
        try:
            found, node = self.bus.next_scan(tag, timeout=wait)
        except ReadTimeout as exc:
            raise NoScanAvailable(str(exc)) from exc
        return found, node.key

    def search_existing_scans(self, **fields: Any) -> tuple[str, list[str]]:
        """(timetag, keys) of the scans kept whose identity fields match ``fields``
        (``session``, ``name``, ``number``, ``dataset``...; text with ``*`` is a wildcard
        pattern), oldest first; the timetag, read with the result, resumes
        ``get_next_scan`` after the search."""
        unknown = sorted(set(fields) - set(INFO_KEYS))
        if unknown:
            raise ValueError(
                f"search_existing_scans: unknown field(s) {', '.join(unknown)}; "
                f"search by {', '.join(INFO_KEYS)}"
            )
        session = fields.pop("session", None)
        info = {INFO_KEYS[name]: value for name, value in fields.items()}
        return self.bus.find_scans(session=session, **info)
