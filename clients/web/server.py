"""``databus web``: the live view in the browser. Serves one page (``static/``, shipped in
the package) and one websocket per page, fed by one follower per session.

    databus web [--port 8000] [--bind 127.0.0.1] [--session S ...] [--max-fps 10]
                [--allow-set] [--token T] [--files DIR]

Safe by default: binds loopback, read-only (``--allow-set`` lets pages set shared
channels), and refuses a non-loopback ``--bind`` unless pages must show ``--token`` or
the bus URL names an ACL user (pages then log in with that user's name and password).
It serves no file but its own, except the files a writer wrote under ``--files DIR``
(the writer's ``--root``: pages get a download link for each scan's file there).
The server never publishes scan data nor deletes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from aiohttp import WSCloseCode, web

import databus

from ._files import PREFIX, FileRoot
from ._hub import Hub
from ._page import Page

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_COOKIE = "databus_web_token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def acl_login(url: str) -> tuple[str, str] | None:
    """The (user, password) the bus URL names, if it names both."""
    parts = urlsplit(url)
    if parts.username and parts.password:
        return unquote(parts.username), unquote(parts.password)
    return None


def check_exposure(bind: str, token: str | None, login: tuple[str, str] | None) -> None:
    """ValueError unless ``bind`` is loopback or the pages must show a token or log in."""
    if not is_loopback(bind) and token is None and login is None:
        raise ValueError(
            f"--bind {bind} makes the page reachable from other hosts: give --token SECRET "
            f"(pages open http://HOST:PORT/?token=SECRET) or a bus URL with an ACL user "
            f"(redis://user:password@...), or bind 127.0.0.1"
        )


def _guard(token: str | None, login: tuple[str, str] | None):
    """Middleware letting in requests with the token (query or cookie) or the login."""

    @web.middleware
    async def guard(request: web.Request, handler):
        if token is None and login is None:
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(_COOKIE) or ""
        if token is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = await handler(request)
            if request.query.get("token") and isinstance(response, web.StreamResponse):
                response.set_cookie(_COOKIE, token, httponly=True, samesite="Strict")
            return response
        if login is not None and _basic_ok(request.headers.get("Authorization", ""), login):
            return await handler(request)
        headers = {"WWW-Authenticate": 'Basic realm="databus"'} if login is not None else {}
        raise web.HTTPUnauthorized(text="databus web: token or login required", headers=headers)

    return guard


def _basic_ok(header: str, login: tuple[str, str]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    wanted = f"{login[0]}:{login[1]}".encode()
    return hmac.compare_digest(f"{user}:{password}".encode(), wanted)


#: The websockets of the pages open now (``ServerThread.pages`` counts them).
PAGES = web.AppKey("pages", set)


def make_app(
    bus: databus.Bus,
    sessions: list[str] | None = None,
    *,
    max_fps: float = 10.0,
    allow_set: bool = False,
    token: str | None = None,
    login: tuple[str, str] | None = None,
    files: str | Path | None = None,
) -> web.Application:
    """The application: ``/`` the page, ``/static/`` its files, ``/ws`` its websocket, and
    ``/files/`` the files under ``files`` (None: no file), for the scans' download links."""
    if not max_fps > 0:
        raise ValueError(f"--max-fps must be > 0 images per second, got {max_fps!r}")
    root = None if files is None else FileRoot(files)
    hub = Hub(bus, sessions, root)
    app = web.Application(middlewares=[_guard(token, login)])

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    sockets: set[web.WebSocketResponse] = set()
    app[PAGES] = sockets

    async def socket_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        sockets.add(ws)
        try:
            await Page(ws, hub, max_fps=max_fps, allow_set=allow_set).run()
        finally:
            sockets.discard(ws)
        return ws

    async def on_shutdown(app: web.Application) -> None:
        for ws in list(sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def on_startup(app: web.Application) -> None:
        await hub.start()

    async def on_cleanup(app: web.Application) -> None:
        await hub.close()

    async def download(request: web.Request) -> web.FileResponse:
        if root is None:
            raise web.HTTPNotFound(text="databus web: no files served (start it with --files)")
        try:
            path = await asyncio.to_thread(root.find, request.match_info["path"])
        except PermissionError as exc:
            raise web.HTTPForbidden(text=f"databus web: {exc}") from None
        except FileNotFoundError as exc:
            raise web.HTTPNotFound(text=f"databus web: {exc}") from None
        disposition = f"attachment; filename*=UTF-8''{quote(path.name)}"  # (RFC 6266)
        return web.FileResponse(path, headers={"Content-Disposition": disposition})

    app.router.add_get("/", index)
    app.router.add_get("/ws", socket_handler)
    app.router.add_get(f"/{PREFIX}{{path:.+}}", download)
    app.router.add_static("/static/", STATIC)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def listen(bind: str, port: int) -> socket.socket:
    """A socket bound to ``bind``:``port`` (0: a free port); OSError if it is taken."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
    except OSError:
        sock.close()
        raise
    return sock


def page_url(sock: socket.socket) -> str:
    """The URL of the page served on ``sock``."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _started(app: web.Application, sock: socket.socket) -> web.AppRunner:
    """``app`` served on ``sock``; ``runner.cleanup()`` stops it and closes the socket."""
    runner = web.AppRunner(app, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return runner


async def serve(app: web.Application, bind: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT."""
    sock = listen(bind, port)
    runner = await _started(app, sock)
    print(f"databus web: serving {page_url(sock)} (Ctrl-C to quit)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


class ServerThread:
    """``app`` served by a thread with an asyncio loop of its own, for a program busy with
    something else meanwhile (``databus demo``). The port is bound at once (OSError if it
    is taken), so ``url`` is known; ``start`` returns once pages can connect, ``stop``
    ends the thread and frees the port. A context manager (start, then stop)."""

    def __init__(self, app: web.Application, bind: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._sock = listen(bind, port)
        self.url = page_url(self._sock)
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="databus-web", daemon=True)

    def start(self, timeout: float = 20.0) -> ServerThread:
        """Serve; raises what the application's start raised (a bus it cannot read...)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"databus web did not start within {timeout} s")
        if self._failed is not None:
            self._thread.join()
            raise self._failed
        return self

    @property
    def pages(self) -> int:
        """How many pages are open on it now."""
        return len(self._app[PAGES])

    def wait_for_page(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a page to open; True if one is open."""
        deadline = time.monotonic() + timeout
        while not self.pages and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.pages > 0

    def stop(self, timeout: float = 20.0) -> None:
        """Close the pages and stop serving; returns once the thread has ended."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._sock.close()  # (closed already once served: a no-op then)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            runner = await _started(self._app, self._sock)
        except BaseException as exc:
            self._failed = exc
            return
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``databus web``: serve the live view until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="databus web",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--session",
        action="append",
        default=None,
        help="a session to show (repeat for several; default: every session on the bus)",
    )
    parser.add_argument("--max-fps", type=float, default=10.0, help="images per second per page")
    parser.add_argument("--allow-set", action="store_true", help="let pages set shared channels")
    parser.add_argument("--token", default=None, help="secret the pages must show (?token=)")
    parser.add_argument("--url", default=None, help="bus URL (default: $DATABUS_URL or embedded)")
    parser.add_argument(
        "--files",
        default=None,
        metavar="DIR",
        help="let pages download the scans' files a writer wrote under DIR (its --root)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        given = args.url or databus.Settings.from_env().url
        if given:  # refuse before connecting; the embedded server's URL is known after
            check_exposure(args.bind, args.token, acl_login(given))
        bus = databus.connect(args.url)
        login = acl_login(bus.url) if args.token is None and not is_loopback(args.bind) else None
        check_exposure(args.bind, args.token, login)
        app = make_app(
            bus,
            args.session,
            max_fps=args.max_fps,
            allow_set=args.allow_set,
            token=args.token,
            login=login,
            files=args.files,
        )
        asyncio.run(serve(app, args.bind, args.port))
    except (databus.DatabusError, ValueError, OSError) as exc:
        print(f"databus web: {exc}", file=sys.stderr)
        return 2
    return 0
