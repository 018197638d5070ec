"""``databus web``: the live view in the browser. Serves one page (``static/``, shipped in
the package) and one websocket per page, fed by one follower per session.

    databus web [--port 8000] [--bind 127.0.0.1] [--session S ...] [--max-fps 10]
                [--allow-set] [--token T]

Safe by default: binds loopback, read-only (``--allow-set`` lets pages set shared
channels), and refuses a non-loopback ``--bind`` unless pages must show ``--token`` or
the bus URL names an ACL user (pages then log in with that user's name and password).
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
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aiohttp import WSCloseCode, web

import databus

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


def make_app(
    bus: databus.Bus,
    sessions: list[str] | None = None,
    *,
    max_fps: float = 10.0,
    allow_set: bool = False,
    token: str | None = None,
    login: tuple[str, str] | None = None,
) -> web.Application:
    """The application: ``/`` the page, ``/static/`` its files, ``/ws`` its websocket."""
    if not max_fps > 0:
        raise ValueError(f"--max-fps must be > 0 images per second, got {max_fps!r}")
    hub = Hub(bus, sessions)
    app = web.Application(middlewares=[_guard(token, login)])

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    sockets: set[web.WebSocketResponse] = set()

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

    app.router.add_get("/", index)
    app.router.add_get("/ws", socket_handler)
    app.router.add_static("/static/", STATIC)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(app: web.Application, bind: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    site = web.SockSite(runner, sock)
    await site.start()
    host, actual = sock.getsockname()[:2]
    print(f"databus web: serving http://{host}:{actual}/ (Ctrl-C to quit)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
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
        )
        asyncio.run(serve(app, args.bind, args.port))
    except (databus.DatabusError, ValueError, OSError) as exc:
        print(f"databus web: {exc}", file=sys.stderr)
        return 2
    return 0
