"""Start-up as an operator meets it (issue 8): a port in use, a database that is
not there yet, a broken driver tree and missing driver tools each give one clear
line, and nothing is bootstrapped by a start that cannot serve."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import uuid
import xmlrpc.client
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support.daemon import REPO, Daemon, _pg_admin, backend, wait_for
from tests.support.remotes import driver_config, make_remotes

pg_only = pytest.mark.skipif(backend() == "sqlite", reason="needs ONED_TEST_DB=postgresql://...")


def run_cli(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m oned_images ARGS --config <d's config>`` with the test daemon's environment;
    ONE_AUTH names a file that does not exist, so a bootstrap would write it."""
    d.tmp.mkdir(parents=True, exist_ok=True)
    (d.tmp / "home").mkdir(exist_ok=True)
    conf = d.write_config()
    env = dict(os.environ, ONE_AUTH=str(d.tmp / "one_auth"), HOME=str(d.tmp / "home"),
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "oned_images", *args, "--config", str(conf)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(d.tmp))


def nothing_bootstrapped(d: Daemon) -> None:
    assert not (d.tmp / "one_auth").exists()
    assert not (d.var / ".one").exists()
    assert not (d.var / "one.db").exists()


def test_port_in_use_stops_before_bootstrap(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Daemon(tmp_path / "d", extra_config=f"PORT = {port}\n")
        done = run_cli(d, "serve")
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1:]) == (
        1, "", [f"oned-images: cannot listen on 127.0.0.1:{port}: Address already in use"])
    nothing_bootstrapped(d)
    d.drop()


@pytest.mark.parametrize("action", ["status", "upgrade"])
def test_db_commands_before_first_start(tmp_path, action):
    d = Daemon(tmp_path / "d", extra_config='DB = [ BACKEND = "sqlite" ]\n')
    done = run_cli(d, "db", action)
    d.drop()
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", f"oned-images: no database yet ({d.var}/one.db): the first "
               "`oned-images serve` creates it\n")
    nothing_bootstrapped(d)


def _pg_config(url: str, db_name: str, user: str | None = None, password: str | None = None,
               ) -> str:
    u = urlparse(url)
    return (f'DB = [ BACKEND = "postgresql", SERVER = "{u.hostname}", PORT = {u.port or 5432}, '
            f'USER = "{user or u.username}", PASSWD = "{password or u.password}", '
            f'DB_NAME = "{db_name}", CONNECTIONS = 2 ]\n')


def _pg_databases(url: str, name: str) -> list[str]:
    import psycopg2

    u = urlparse(url)
    conn = psycopg2.connect(host=u.hostname, port=u.port or 5432, user=u.username,
                            password=u.password, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = %s", (name,))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


@pg_only
def test_db_status_before_first_start_postgresql(tmp_path):
    url = backend()
    name = "oned_absent_" + uuid.uuid4().hex[:10]
    u = urlparse(url)
    d = Daemon(tmp_path / "d", extra_config=_pg_config(url, name))
    done = run_cli(d, "db", "status")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", f'oned-images: no database yet (PostgreSQL database "{name}" on '
               f"{u.hostname}:{u.port or 5432}): the first `oned-images serve` creates it\n")
    assert _pg_databases(url, name) == []


@pg_only
def test_serve_creates_missing_postgresql_database(tmp_path):
    url = backend()
    name = "oned_created_" + uuid.uuid4().hex[:10]
    d = Daemon(tmp_path / "d", extra_config=_pg_config(url, name))
    try:
        d.start()
        assert d.client().system.version() == "7.0.2"
        assert _pg_databases(url, name) == [name]
        assert f"Created PostgreSQL database {name}" in d.log_text()
        d.stop()
        status = run_cli(d, "db", "status")
        from oned_images.store.schema import CURRENT

        assert (status.returncode, status.stdout) == (
            0, f"schema version: {CURRENT}; this release: {CURRENT}\n")
    finally:
        d.stop()
        _pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pg_only
def test_serve_without_createdb_says_what_to_do(tmp_path):
    url = backend()
    u = urlparse(url)
    role = "oned_nocreate_" + uuid.uuid4().hex[:8]
    name = "oned_absent_" + uuid.uuid4().hex[:10]
    _pg_admin(url, f"CREATE ROLE \"{role}\" LOGIN NOCREATEDB PASSWORD 'pw'")
    try:
        d = Daemon(tmp_path / "d", extra_config=_pg_config(url, name, role, "pw"))
        done = run_cli(d, "serve")
    finally:
        _pg_admin(url, f'DROP ROLE IF EXISTS "{role}"')
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1:]) == (1, "", [
        f'oned-images: PostgreSQL database "{name}" does not exist on '
        f'{u.hostname}:{u.port or 5432} and role "{role}" may not create it: as a superuser '
        f'run CREATE DATABASE "{name}" OWNER "{role}"; (or ALTER ROLE "{role}" CREATEDB)'])
    assert "Traceback" not in done.stderr
    assert _pg_databases(url, name) == []
    nothing_bootstrapped(d)


def test_missing_remotes_is_a_startup_error(tmp_path):
    missing = tmp_path / "no-such-remotes"
    d = Daemon(tmp_path / "d", extra_config=driver_config(missing, "-t 15 -d dummy,fs"))
    done = run_cli(d, "serve")
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1:]) == (2, "", [
        f"oned-images: configuration error: DATASTORE_MAD REMOTES {missing} does not exist"])
    nothing_bootstrapped(d)
    d.drop()


def test_allowed_driver_without_scripts_is_a_startup_error(tmp_path):
    remotes = make_remotes(tmp_path / "remotes", {})
    d = Daemon(tmp_path / "d", extra_config=driver_config(remotes, "-t 15 -d dummy,fs,ghost"))
    done = run_cli(d, "serve")
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1:]) == (2, "", [
        "oned-images: configuration error: DATASTORE_MAD -d allows 'ghost' but "
        f"{remotes}/datastore/ghost holds no driver scripts"])
    nothing_bootstrapped(d)
    d.drop()


def test_missing_driver_tools_are_warned_at_start(fresh_daemon, tmp_path):
    """A driver of someone else's declares its commands in a tools file; each missing one
    is one WARN line saying what will fail, and the daemon still starts."""
    remotes = make_remotes(tmp_path / "remotes", {"ext": {
        "cp": "#!/bin/sh\necho ext_path raw\n",
        "tools": ("# command package what\n"
                  "sh        dash           everything\n"
                  "oned-test-absent-tool  oned-test-pkg  cp of ext images\n"
                  "oned-test-absent-two   other-pkg      mkfs\n"),
    }})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,ext"))
    warnings = re.findall(r"\[W\]: (.*not found in the drivers' PATH.*)", d.log_text())
    assert warnings == [
        "oned-test-absent-tool not found in the drivers' PATH: ext cp of ext images will "
        "fail; install Debian package oned-test-pkg",
        "oned-test-absent-two not found in the drivers' PATH: ext mkfs will fail; install "
        "Debian package other-pkg",
    ]
    assert d.client().system.version() == "7.0.2"


def test_startup_line_names_the_config_and_why(fresh_daemon):
    d = fresh_daemon()
    assert re.search(rf"oned-images starting: config {re.escape(str(d.tmp))}/oned-images.conf "
                     r"\(--config\), database ", d.log_text()), d.log_text()


def test_repo_driver_tools_files_parse():
    from oned_images.driver.checks import read_tools

    for path in (REPO / "drivers" / "datastore").glob("*/tools"):
        assert read_tools(Path(path)), path


FAKE_APT = """#!/bin/sh
echo "$*" >> {log}
"""


@pytest.mark.parametrize("how", ["no-apt", "apt-as-root"])
def test_dev_serve_on_a_machine_without_qemu_img(tmp_path, how):
    """README's first command: missing tools are installed with apt-get as root (a fake
    apt-get here records its calls), or said exactly; either way the daemon starts."""
    if how == "apt-as-root" and os.geteuid() != 0:
        pytest.skip("needs root")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for entry in Path(directory).iterdir() if Path(directory).is_dir() else ():
            target = bindir / entry.name
            if entry.name not in ("qemu-img", "apt-get") and not target.exists():
                target.symlink_to(entry)
    (bindir / "python3").unlink(missing_ok=True)
    (bindir / "python3").symlink_to(sys.executable)
    apt_log = tmp_path / "apt.log"
    (bindir / "apt-get").write_text(FAKE_APT.format(log=apt_log))
    (bindir / "apt-get").chmod(0o755)
    d = Daemon(tmp_path / "d", extra_config='DB = [ BACKEND = "sqlite" ]\n')
    d.tmp.mkdir(parents=True)
    (d.tmp / "home").mkdir()
    conf = d.write_config()
    port_file = d.tmp / "port"
    env = dict(os.environ, PATH=str(bindir), HOME=str(d.tmp / "home"),
               ONE_AUTH=str(d.tmp / "one_auth"), PYTHONPATH=str(REPO))
    env.pop("DEV_SERVE_APT", None)
    if how == "no-apt":
        env["DEV_SERVE_APT"] = "no"
    with open(d.log_path, "wb") as out:
        proc = subprocess.Popen([str(REPO / "scripts" / "dev-serve"), "--config", str(conf),
                                 "--port-file", str(port_file)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    try:
        wait_for(lambda: port_file.exists() or proc.poll() is not None, timeout=60)
        assert port_file.exists(), d.log_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        d.drop()
    if how == "no-apt":
        assert d.log_text().splitlines()[:3] == [
            "dev-serve: missing: qemu-img (qemu-utils)",
            "dev-serve: install them with: sudo apt-get install -y --no-install-recommends "
            "qemu-utils",
            "dev-serve: starting anyway; the daemon logs which actions will fail",
        ]
        assert not apt_log.exists()
    else:
        assert d.log_text().splitlines()[:1] == ["dev-serve: installing qemu-utils (apt-get)"]
        assert apt_log.read_text().splitlines() == [
            "update -qq", "install -y -qq --no-install-recommends qemu-utils"]


def test_calls_wait_until_reconciliation_ran(fresh_daemon, tmp_path):
    """The port is bound first, but a call made while start-up still runs (here a
    datastore monitor that waits on a gate) is answered only once the daemon is ready."""
    gate = tmp_path / "gate"
    monitor = ("#!/bin/sh\ncat >/dev/null\n"
               f"while [ -e {gate} ]; do sleep 0.05; done\n"
               "printf 'USED_MB=10\\nFREE_MB=100\\nTOTAL_MB=110\\n'\n")
    remotes = make_remotes(tmp_path / "remotes", {"gated": {"monitor": monitor}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,gated"))
    d.client().datastore.allocate('NAME="g"\nDS_MAD="gated"\nTM_MAD="dummy"', -1)
    d.stop()
    gate.touch()
    before = len(d.log_text())
    starter = threading.Thread(target=d.start)
    starter.start()
    try:
        bound = wait_for(lambda: re.search(r"accepting after reconciliation\) starting on (\d+)",
                                           d.log_text()[before:]))
        port = int(bound.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            body = xmlrpc.client.dumps((d.session(),), "one.system.version").encode()
            conn.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.settimeout(1.0)
            with pytest.raises(socket.timeout):
                conn.recv(1)  # connected (backlog) but not answered: start-up still runs
            assert not (d.tmp / "port").exists()
            gate.unlink()
            conn.settimeout(20)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200 OK"), reply
        assert b"<string>7.0.2</string>" in reply, reply
    finally:
        gate.unlink(missing_ok=True)
        starter.join(timeout=60)
    assert d.port == port
