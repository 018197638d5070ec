"""Where a bus channel goes in a bluesky run: its stream, its data key and the data key's
description; pure (the rules are in ``_documents``' docstring)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from databus import Descriptor

_JSON_TYPES = {"b": "boolean", "i": "integer", "u": "integer", "f": "number", "c": "number"}
#: ``attrs["event_field"]`` of the channels that hold a stream's event ``time`` and
#: ``timestamps`` (a run that came from bluesky) rather than a data key.
EVENT_FIELDS = ("time", "timestamps")


def clean(value: Any) -> Any:
    """``value`` with every nested mapping key fit for event-model (no ``.`` or ``/``)."""
    if isinstance(value, Mapping):
        return {str(k).replace(".", "_").replace("/", "_"): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def chain_streams(info: Mapping[str, Any]) -> dict[str, str]:
    """Channel name -> stream, from an ``acquisition_chain`` with several top masters: the
    first one's channels are ``primary``, each other's a stream named after it."""
    chain = info.get("acquisition_chain")
    members: dict[str, str] = {}
    if isinstance(chain, Mapping) and len(chain) > 1:
        for position, (master, entry) in enumerate(chain.items()):
            stream = "primary" if position == 0 else str(master)
            for name in _chain_channels(entry):
                members.setdefault(name, stream)
    return members


def _chain_channels(entry: Any) -> list[str]:
    """The channel names one top master's ``acquisition_chain`` entry lists."""
    if not isinstance(entry, Mapping):
        return []
    lists = [entry.get(k) for k in ("scalars", "spectra", "images")]
    master = entry.get("master")
    if isinstance(master, Mapping):
        lists += [master.get(k) for k in ("scalars", "spectra", "images")]
    return [n for names in lists if isinstance(names, list) for n in names if isinstance(n, str)]


def stream_of(desc: Descriptor, chain: Mapping[str, str]) -> str:
    """The stream of a channel: its ``attrs["stream"]``, else its top master's, else
    ``primary``."""
    wanted = desc.attrs.get("stream")
    return wanted if isinstance(wanted, str) and wanted else chain.get(desc.name, "primary")


def event_field(desc: Descriptor) -> str | None:
    """``time`` or ``timestamps`` for a channel holding a stream's event field."""
    field = desc.attrs.get("event_field")
    return field if field in EVENT_FIELDS else None


def data_keys_of(descs: Sequence[Descriptor]) -> dict[str, str]:
    """Channel name -> data key, for the channels of one stream: ``attrs["data_key"]``
    (a run that came from bluesky) when the stream has no other, else the short name
    (after the last ``:``) when unique in the stream, else the name with ``:`` as ``_``."""
    wanted = {d.name: d.attrs.get("data_key") for d in descs}
    taken = Counter(k for k in wanted.values() if isinstance(k, str) and k)
    keys = {n: k for n, k in wanted.items() if isinstance(k, str) and taken[k] == 1}
    rest = [d.name for d in descs if d.name not in keys]
    shorts = {name: name.rsplit(":", 1)[-1] for name in rest}
    count = Counter([*shorts.values(), *keys.values()])
    for name, short in shorts.items():
        keys[name] = short if count[short] == 1 else name.replace(":", "_")
    return keys


def object_of(desc: Descriptor) -> str:
    """The object (device) a channel belongs to: ``attrs["object_name"]``, else the part
    of its name before the first ``:``."""
    name = desc.attrs.get("object_name")
    return name if isinstance(name, str) and name else desc.name.split(":", 1)[0]


def data_key(desc: Descriptor, source: str, external: str | None) -> dict[str, Any]:
    """The descriptor's ``data_keys`` entry of a channel."""
    out: dict[str, Any] = {"source": source, "units": desc.unit}
    if desc.kind == "json" or desc.dtype is None:
        out.update(dtype="string", shape=[])
        return out
    kind = "array" if desc.shape or desc.kind == "ref" else _JSON_TYPES[desc.dtype.kind]
    out.update(dtype=kind, dtype_numpy=desc.dtype.str, shape=list(desc.shape))
    if external is not None:
        out["external"] = external
    return out
