"""The embedded server, connect() and the CLI, against real server processes."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

import databus
from databus._server import EmbeddedServer, _free_port


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
        [sys.executable, "-m", "databus", *args],
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
    assert bus1.url == bus2.url and bus1.url.startswith("redis://databus:")
    state = json.loads((run_dir / "server.json").read_text())
    admin = redis.Redis.from_url(bus1.server.status().admin_url)
    config = {_text(k): _text(v) for k, v in admin.config_get("*").items()}
    admin.close()
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
    bus.close()
    admin = redis.Redis.from_url(f"{valkey_server.admin_url}?db=2")
    admin.flushdb()
    admin.close()


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
    first = server.start()
    bus = databus.connect(first.url)
    os.kill(first.pid, signal.SIGKILL)
    second = server.ensure()
    assert second.pid != first.pid and second.url == first.url
    assert second.admin_url == first.admin_url
    assert bus.redis.ping()  # the old URL, password included, works again
    bus.close()
    server.stop()


def test_concurrent_connects_from_processes_share_one_server(run_dir):
    code = "import databus, sys; b = databus.connect(); print(b.server.status().pid, b.url)"
    env = {**os.environ, "DATABUS_RUN_DIR": str(run_dir)}
    env.pop("DATABUS_URL", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(3)
    ]
    servers = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(servers) == 1


def test_cli_start_status_stop(run_dir):
    out = cli(run_dir, "server", "start").stdout
    assert "started: redis://databus:***@127.0.0.1:" in out
    assert str(run_dir / "server.json") in out
    bus = databus.connect(run_dir=run_dir)
    scan = bus.session("cli").create_scan()
    scan.channel("x", "float64").send(1.0)
    scan.end()
    status = cli(run_dir, "server", "status").stdout
    assert "url:       redis://databus:***@127.0.0.1:" in status
    assert "socket:    unix://databus:***@" in status
    assert "MB used of 1000 MB cap" in status
    assert "sessions:  1" in status and "scans:     1" in status
    bus.close()
    assert "stopped" in cli(run_dir, "server", "stop").stdout
    assert cli(run_dir, "server", "status", check=False).returncode == 1
    assert "no server was running" in cli(run_dir, "server", "stop").stdout


def test_status_of_a_stopped_server_is_a_databus_error(run_dir):
    server = EmbeddedServer(run_dir)
    url = server.start().url
    server.stop()
    proc = cli(run_dir, "--url", url, "status", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("databus: cannot reach the server at ")
    assert "Traceback" not in proc.stderr


def test_the_default_server_has_users_and_secrets_that_are_never_printed(run_dir):
    out = cli(run_dir, "server", "start", "--password").stdout  # the default, asked for
    state = EmbeddedServer(run_dir).status()
    assert state is not None and state.auth == "acl"
    assert state.password not in out and state.admin_password not in out
    address = f"127.0.0.1:{state.port}"
    with pytest.raises(databus.ServerUnavailable, match=f"redis://{address}"):
        databus.connect(f"redis://{address}")  # no anonymous user
    with pytest.raises(databus.ServerUnavailable) as info:
        databus.connect(f"redis://databus:wrong@{address}")
    assert "wrong" not in str(info.value)  # passwords never appear in messages
    bus = databus.connect(run_dir=run_dir)  # reads the secret from the state folder
    assert bus.redis.ping() and state.password not in repr(bus) and "***" in repr(bus)
    assert state.password not in cli(run_dir, "server", "status").stdout
    bus.close()


def test_asking_for_another_auth_mode_on_a_running_server_is_an_error(run_dir):
    cli(run_dir, "server", "start", "--no-auth")
    proc = cli(run_dir, "server", "start", "--password", check=False)
    assert proc.returncode == 2
    assert "already runs with auth 'none' (asked: 'acl')" in proc.stderr
    assert "databus server stop" in proc.stderr
    proc = cli(run_dir, "server", "start", "--no-auth")
    assert "already running: redis://127.0.0.1:" in proc.stdout
    assert "users:     none" in cli(run_dir, "server", "status").stdout
    cli(run_dir, "server", "stop")
    cli(run_dir, "server", "start")
    proc = cli(run_dir, "server", "start", "--no-auth", check=False)
    assert proc.returncode == 2 and "auth 'acl' (asked: 'none')" in proc.stderr


def test_a_stopped_server_is_waited_for_and_never_replaced(run_dir):
    bus = databus.connect(run_dir=run_dir)
    with bus.session("alive").create_scan(title="kept") as scan:
        scan.channel("x", "float64").send(1.0)
    state = bus.server.status()
    os.kill(state.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", "import databus; databus.connect()"],
            capture_output=True,
            text=True,
            env={**os.environ, "DATABUS_RUN_DIR": str(run_dir), "DATABUS_CONNECT_TIMEOUT": "1"},
            timeout=60,
        )
        waited = time.monotonic() - start
    finally:
        os.kill(state.pid, signal.SIGCONT)
    assert proc.returncode != 0 and waited < 30
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("databus.ServerUnavailable: the embedded server")
    assert f"pid {state.pid}, port {state.port}" in message
    assert f"kill -CONT {state.pid}" in message and "never replaces a live server" in message
    assert EmbeddedServer(run_dir).status().pid == state.pid
    again = databus.connect(run_dir=run_dir)
    assert again.url == bus.url and again.scan(scan.key).channels["x"].get(0) == 1.0
    again.close()
    bus.close()


def test_a_pid_now_used_by_another_program_is_left_alone(run_dir):
    run_dir.mkdir(exist_ok=True)
    other = subprocess.Popen(["sleep", "60"])
    port = _free_port()
    (run_dir / "server.json").write_text(
        json.dumps(
            {"pid": other.pid, "port": port, "socket": str(run_dir / "server.sock"), "log": "x"}
        )
    )
    try:
        bus = databus.connect(run_dir=run_dir)
        assert bus.redis.ping() and bus.server.status().pid != other.pid
        assert other.poll() is None  # not killed
        assert EmbeddedServer(run_dir).stop() and other.poll() is None
        bus.close()
    finally:
        other.kill()
        other.wait()


def test_a_run_directory_of_another_user_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    squatted = tmp_path / "squatted"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, 65534, 65534)
    with pytest.raises(databus.ServerUnavailable, match="not a directory owned by you"):
        databus.connect(run_dir=squatted)


def test_status_and_memory_guard_name_a_refused_command_and_the_user(valkey_server, run_dir):
    admin = redis.Redis.from_url(valkey_server.admin_url)
    admin.acl_setuser(
        "peek", enabled=True, passwords=["+p33k"], keys=["~*"], commands=["+@read", "+@connection"]
    )
    url = f"redis://peek:p33k@127.0.0.1:{valkey_server.port}/5"
    try:
        for args in (["--url", url, "status"], ["memory-guard", "--url", url]):
            proc = cli(run_dir, *args, check=False)
            assert proc.returncode == 2, proc.stderr
            (line,) = proc.stderr.strip().splitlines()[-1:]
            assert "Traceback" not in proc.stderr
            assert "user 'peek'" in line and "'info' command" in line
            assert "p33k" not in proc.stderr
    finally:
        admin.acl_deluser("peek")
        admin.close()


def test_tcp_url_with_acl_user(valkey_server):
    admin = redis.Redis.from_url(valkey_server.admin_url)
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
    monkeypatch.setenv("DATABUS_RECONNECT_TIMEOUT", "120")
    monkeypatch.setenv("DATABUS_MEMORY_GUARD", "off")
    monkeypatch.setenv("DATABUS_CONNECT_TIMEOUT", "2.5")
    settings = databus.Settings.from_env()
    assert (settings.reconnect_timeout, settings.memory_guard) == (120.0, False)
    assert settings.connect_timeout == 2.5
    samples = {"float": ("7", 7.0), "int": ("7", 7), "bool": ("no", False)}
    named = {
        "concurrency": ("thread", "thread"),
        "run_dir": ("/x", Path("/x")),
        "durability": ("replicated", "replicated"),
    }
    for field in dataclasses.fields(databus.Settings):  # every setting has its variable
        raw, value = named.get(field.name) or samples.get(field.type) or ("abc", "abc")
        monkeypatch.setenv(f"DATABUS_{field.name.upper()}", raw)
        assert getattr(databus.Settings.from_env(), field.name) == value, field.name
        monkeypatch.delenv(f"DATABUS_{field.name.upper()}")
    monkeypatch.setenv("DATABUS_MEMORY_GUARD", "maybe")
    with pytest.raises(ValueError, match="DATABUS_MEMORY_GUARD='maybe' is not a valid bool"):
        databus.Settings.from_env()
    monkeypatch.delenv("DATABUS_MEMORY_GUARD")
    monkeypatch.setenv("DATABUS_RUNNING_TTL", "soon")
    with pytest.raises(ValueError, match="DATABUS_RUNNING_TTL='soon'"):
        databus.Settings.from_env()
    with pytest.raises(ValueError, match="prefix"):
        databus.Settings(prefix="a{b")


def test_a_server_stopped_on_purpose_is_not_brought_back_by_its_clients(run_dir):
    bus = databus.connect(run_dir=run_dir)
    assert EmbeddedServer(run_dir).stop()
    bus.revive_server()  # what a publisher or a walk calls when it loses the server
    assert EmbeddedServer(run_dir).status() is None
    assert not (run_dir / "server.json").exists()
    bus.close()
