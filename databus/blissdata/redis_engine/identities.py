"""A scan's identity (blissdata's ``ESRFIdentityModel`` fields) kept in its scan info.

A databus scan is identified by its session and number on the bus; blissdata 2.x writers
give more (name, data policy, proposal, collection, dataset, path). The writer side stores
them in the scan info under the keys BLISS's own scan info uses for them, and the reader
side reads them back from there, so scans published by BLISS-style code and by our runner
(which sets ``scan_nb``, ``session_name``, ``filename``...) answer the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Identity field -> the scan-info key that carries it.
INFO_KEYS = {
    "name": "name",
    "number": "scan_nb",
    "data_policy": "data_policy",
    "session": "session_name",
    "proposal": "proposal",
    "collection": "collection",
    "dataset": "dataset",
    "path": "filename",
}
REQUIRED = ("name", "number", "data_policy")


def identity_info(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The scan-info entries that carry ``identity``; ValueError names a missing required
    field or an unknown one, TypeError a number that is not an int."""
    if not isinstance(identity, Mapping):
        raise TypeError(f"identity must be a dict of {', '.join(INFO_KEYS)}; got {identity!r}")
    missing = [f for f in REQUIRED if identity.get(f) is None]
    unknown = sorted(set(identity) - set(INFO_KEYS))
    if missing or unknown:
        raise ValueError(
            f"scan identity {dict(identity)!r}: "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown field(s) {', '.join(unknown)}" if unknown else "")
            + f" (fields: {', '.join(INFO_KEYS)}; {', '.join(REQUIRED)} are required)"
        )
    number = identity["number"]
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"scan identity: number must be an int, not {number!r}")
    return {INFO_KEYS[f]: v for f, v in identity.items() if v is not None}


def identity_field(info: Mapping[str, Any], field: str) -> Any:
    """Identity ``field`` as the scan info holds it (None if absent)."""
    return info.get(INFO_KEYS[field])
