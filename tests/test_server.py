"""The embedded server, connect() and the CLI, against real server processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import redis

import databus
from databus.server import EmbeddedServer, _free_port


@pytest.fixture
def run_dir(tmp_path):
    yield tmp_path
    EmbeddedServer(tmp_path).stop()


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def cli(run_dir, *args, check=True):
    env = {**os.environ, "DATABUS_RUN_DIR": str(run_dir)}
    env.pop("DATABUS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "databus.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


def test_connect_starts_the_embedded_server_once_and_reuses_it(run_dir):
    bus1 = databus.connect(run_dir=run_dir)
    bus2 = databus.connect(run_dir=run_dir)
    assert bus1.url == bus2.url and bus1.url.startswith("redis://127.0.0.1:")
    state = json.loads((run_dir / "server.json").read_text())
    config = {_text(k): _text(v) for k, v in bus1.redis.config_get("*").items()}
    assert config["bind"] == "127.0.0.1" and int(config["port"]) == state["port"]
    assert config["save"] == "" and config["appendonly"] == "no"
    assert config["maxmemory"] == "1000000000" and config["maxmemory-policy"] == "noeviction"
    assert config["unixsocketperm"] == "700"
    bus1.close()
    bus2.close()


def test_the_unix_socket_url_works_too(valkey_server):
    bus = databus.connect(f"{valkey_server.socket_url}?db=2", prefix="sock")
    scan = bus.session("sock").create_scan()
    scan.channel("x", "float64").send(np.arange(3.0))
    scan.end()
    assert bus.redis.xlen(scan.channels["x"].key) == 2  # one block and the seal
    bus.redis.flushdb()
    bus.close()


def test_a_stale_state_file_is_recovered_from(run_dir):
    run_dir.mkdir(exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    port = _free_port()
    (run_dir / "server.json").write_text(
        json.dumps(
            {"pid": dead.pid, "port": port, "socket": str(run_dir / "server.sock"), "log": "x"}
        )
    )
    bus = databus.connect(run_dir=run_dir)
    assert bus.redis.ping()
    state = json.loads((run_dir / "server.json").read_text())
    assert state["pid"] != dead.pid
    assert state["port"] == port  # where the dead server's clients look for it
    bus.close()


def test_a_crashed_server_comes_back_where_its_clients_look(run_dir):
    server = EmbeddedServer(run_dir)
    first = server.start(password="secret")
    bus = databus.connect(first.url)
    os.kill(first.pid, signal.SIGKILL)
    second = server.ensure()
    assert second.pid != first.pid and second.url == first.url
    assert bus.redis.ping()  # the old URL, password included, works again
    bus.close()
    server.stop()


def test_concurrent_connects_from_processes_share_one_server(run_dir):
    code = (
        "import databus, sys; b = databus.connect(); "
        "print(b.redis.execute_command('CONFIG', 'GET', 'port'))"
    )
    env = {**os.environ, "DATABUS_RUN_DIR": str(run_dir)}
    env.pop("DATABUS_URL", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(3)
    ]
    ports = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ports) == 1


def test_cli_start_status_stop(run_dir):
    out = cli(run_dir, "server", "start").stdout
    assert "started: redis://127.0.0.1:" in out
    bus = databus.connect(run_dir=run_dir)
    scan = bus.session("cli").create_scan()
    scan.channel("x", "float64").send(1.0)
    scan.end()
    status = cli(run_dir, "server", "status").stdout
    assert "url:       redis://127.0.0.1:" in status and "socket:    unix://" in status
    assert "MB used of 1000 MB cap" in status
    assert "sessions:  1" in status and "scans:     1" in status
    bus.close()
    assert "stopped" in cli(run_dir, "server", "stop").stdout
    assert cli(run_dir, "server", "status", check=False).returncode == 1
    assert "no server was running" in cli(run_dir, "server", "stop").stdout


def test_cli_password_makes_an_authenticated_server(run_dir):
    out = cli(run_dir, "server", "start", "--password").stdout
    url = out.split()[1]
    assert url.startswith("redis://:") and "@127.0.0.1:" in url
    address = url.rsplit("@", 1)[1]
    with pytest.raises(databus.ServerUnavailable, match=f"redis://{address}"):
        databus.connect(f"redis://{address}")
    with pytest.raises(databus.ServerUnavailable) as info:
        databus.connect(f"redis://:wrong@{address}")
    assert "wrong" not in str(info.value)  # passwords never appear in messages
    bus = databus.connect(url)
    assert bus.redis.ping() and "***" in repr(bus)
    bus.close()


def test_tcp_url_with_acl_user(valkey_server):
    admin = redis.Redis(unix_socket_path=valkey_server.socket)
    admin.acl_setuser(
        "writer",
        enabled=True,
        passwords=["+s3cret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    try:
        bus = databus.connect(
            f"redis://writer:s3cret@127.0.0.1:{valkey_server.port}/3", prefix="acl"
        )
        scan = bus.session("acl").create_scan()
        scan.channel("x", "float64").send(2.0)
        scan.end()
        assert _text(bus.redis.acl_whoami()) == "writer"
        bus.redis.flushdb()
        bus.close()
    finally:
        admin.acl_deluser("writer")
        admin.close()


@pytest.mark.parametrize("url", ["http://localhost", "localhost:6379", "redis+tls://x"])
def test_unknown_url_scheme_is_refused_with_the_valid_ones(url):
    with pytest.raises(databus.InvalidURL, match=r"redis://, rediss://, unix://"):
        databus.connect(url)


def test_unreachable_server_fails_within_5_s_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(databus.ServerUnavailable, match=f"redis://127.0.0.1:{port}"):
        databus.connect(f"redis://127.0.0.1:{port}")
    assert time.monotonic() - start < 5


def test_a_server_that_never_answers_fails_after_connect_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection, never replies
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(databus.ServerUnavailable, match=f"127.0.0.1:{port}"):
            databus.connect(f"redis://127.0.0.1:{port}", connect_timeout=1.0)
        assert time.monotonic() - start < 3


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATABUS_PREFIX", "bl01")
    monkeypatch.setenv("DATABUS_RETENTION_TTL", "60")
    settings = databus.Settings.from_env(running_ttl=5)
    assert (settings.prefix, settings.retention_ttl, settings.running_ttl) == ("bl01", 60.0, 5)
    monkeypatch.setenv("DATABUS_RUNNING_TTL", "soon")
    with pytest.raises(ValueError, match="DATABUS_RUNNING_TTL='soon'"):
        databus.Settings.from_env()
    with pytest.raises(ValueError, match="prefix"):
        databus.Settings(prefix="a{b")
