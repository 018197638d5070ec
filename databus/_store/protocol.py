"""The Redis protocol at its lowest, shared by ``wire`` (one server) and ``cluster``: one
MULTI/EXEC or one XREAD exchanged on a redis-py connection and parsed without redis-py's
per-reply callbacks, and redis-py's errors translated to databus errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis.exceptions as rex

from .._encoding import Entries, text
from .._errors import (
    PermissionDenied,
    ServerError,
    ServerUnavailable,
    redact,
)
from .commands import Command


class OutOfMemory(ServerError):
    """The server is at its memory cap and refused a write; a refused MULTI/EXEC applied
    nothing (the publisher waits for room, then sends it all again)."""


class CredentialsRefused(ServerUnavailable):
    """The server answers but refuses the user name or password."""


def _user(url: str) -> str:
    """The ACL user named in ``url`` ("default" when none is)."""
    _, sep, rest = url.partition("://")
    creds = rest.rpartition("@")[0] if sep and "@" in rest else ""
    return creds.partition(":")[0] or "default"


def translate(exc: BaseException, url: str) -> BaseException:
    """The databus error for redis-py's ``exc`` (other exceptions are returned as they are)."""
    where = redact(url)
    if isinstance(exc, rex.NoPermissionError):
        return PermissionDenied(
            f"the server at {where} refuses this to user {_user(url)!r}: {exc} "
            f"(a read-only user can follow and read sessions, not publish or set channels)"
        )
    if isinstance(exc, rex.AuthenticationError):
        return CredentialsRefused(f"the server at {where} refuses the credentials: {exc}", url)
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError)):
        return ServerUnavailable(f"cannot reach the server at {where}: {exc}", url)
    if isinstance(exc, rex.OutOfMemoryError):
        return OutOfMemory(f"the server at {where} is at its memory cap: {exc}")
    if isinstance(exc, rex.RedisError):
        return ServerError(f"the server at {where} answered: {exc}")
    return exc


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    """Raise redis-py exceptions raised inside the block as databus ones (``from exc``)."""
    try:
        yield
    except rex.RedisError as exc:
        raise translate(exc, url) from exc


class NotReplicated(ServerUnavailable):
    """A transaction the primary applied that no replica confirmed within ``WAIT_MS``
    (``durability="replicated"``): not acknowledged, so its publisher sends it again."""


#: How long (ms) a transaction waits for its replicas (``WAIT``) before ``NotReplicated``.
WAIT_MS = 2000


def exchange(
    conn: Any,
    commands: Sequence[Command],
    *,
    resent: bool = False,
    asking: bool = False,
    replicas: int = 0,
) -> tuple[list[Any], BaseException | None]:
    """Send ``commands`` on ``conn`` as one packed MULTI/EXEC (after ASKING if ``asking``:
    a cluster slot being imported; followed by a WAIT for ``replicas``); (EXEC's replies,
    the error of the first one refused, the connection in step). A refused transaction
    applied nothing; one no replica confirmed is ``NotReplicated``. ``resent``: see
    ``Link.transact``."""
    first: BaseException | None = None
    replies: list[Any] = []
    head = [("ASKING",), ("MULTI",)] if asking else [("MULTI",)]
    tail = [("EXEC",), ("WAIT", replicas, WAIT_MS)] if replicas else [("EXEC",)]
    conn.send_packed_command(conn.pack_commands([*head, *commands, *tail]), check_health=False)
    for _ in range(len(commands) + len(head) + 1):  # +OK(s), QUEUED..., then EXEC's array
        try:
            reply = conn.read_response()
        except rex.ResponseError as exc:
            first = first or exc
            continue
        if isinstance(reply, list):
            replies = reply
            errors = [r for r in reply if isinstance(r, Exception)]
            if resent:
                errors = [e for e in errors if "equal or smaller" not in str(e)]
            first = first or (errors[0] if errors else None)
    if replicas:
        confirmed = conn.read_response()
        if first is None and int(confirmed) < replicas:
            first = NotReplicated(
                f"{conn.host}:{conn.port} applied a transaction that {confirmed} of "
                f"{replicas} replicas confirmed within {WAIT_MS} ms"
            )
    return replies, first


def read_command(
    streams: dict[str, str], count: int, block_ms: int | None, group: tuple[str, str] | None
) -> list[Any]:
    """The XREAD (XREADGROUP with ``group``) of ``streams``; see ``Link.read``."""
    args: list[Any] = ["XREAD", "COUNT", count]
    if group is not None:
        args = ["XREADGROUP", "GROUP", *group, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return [*args, "STREAMS", *streams.keys(), *streams.values()]


def send_read(
    conn: Any, args: list[Any], before: Sequence[Command] = ()
) -> tuple[Any, BaseException | None]:
    """Send the read ``args`` on ``conn`` (``before`` ahead of it, in the same write);
    (its raw reply, the first error ``before`` got, the connection in step)."""
    first: BaseException | None = None
    if before:
        conn.send_packed_command(conn.pack_commands([*before, args]), check_health=False)
        for _ in before:
            try:
                conn.read_response()
            except rex.ResponseError as exc:
                first = first or exc
    else:
        conn.send_command(*args, check_health=False)
    return conn.read_response(), first


def parse_read(reply: Any, grouped: bool) -> list[tuple[str, Entries]]:
    """An XREAD reply (RESP2 array or RESP3 map) as [(key, [(id, fields dict)])]; a pending
    entry deleted since (XREADGROUP, ``grouped``) comes back without fields."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    if grouped:
        pairs = [(key, [(eid, f or []) for eid, f in entries]) for key, entries in pairs]
    return [
        (text(key), [(eid, dict(zip(f[::2], f[1::2], strict=True))) for eid, f in entries])
        for key, entries in pairs
    ]
