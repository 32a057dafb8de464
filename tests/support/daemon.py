"""Run the real daemon as a process on a free port, in a temp dir.

The backend comes from ONED_TEST_DB: unset or "sqlite" for the embedded
default, or a PostgreSQL URL (postgresql://user:pass@host:port/ignored); each
daemon then gets a fresh database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyone

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "opennebula-test"
START_TIMEOUT = 30


def backend() -> str:
    value = os.environ.get("ONED_TEST_DB", "sqlite")
    return "sqlite" if value in ("", "sqlite") else value


@dataclass
class Daemon:
    tmp: Path
    extra_config: str = ""
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    port: int = 0
    pg_db: str | None = None
    #: the PostgreSQL database is another daemon's (several daemons on one database):
    #: drop() leaves it to that daemon.
    shares_db: bool = False
    #: SQLite: another daemon's database file (several daemons on one file)
    sqlite_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/RPC2"

    @property
    def var(self) -> Path:
        return self.tmp / "var"

    @property
    def log_path(self) -> Path:
        return self.tmp / "daemon.log"

    def db_config(self) -> str:
        url = backend()
        if url == "sqlite":
            if self.sqlite_path is not None:
                return f'DB = [ BACKEND = "sqlite", PATH = "{self.sqlite_path}" ]\n'
            return 'DB = [ BACKEND = "sqlite" ]\n'
        if self.pg_db is None:
            self.pg_db = "oned_test_" + uuid.uuid4().hex[:12]
            _pg_admin(url, f'CREATE DATABASE "{self.pg_db}"')
        u = urlparse(url)
        return (f'DB = [ BACKEND = "postgresql", SERVER = "{u.hostname or "localhost"}", '
                f'PORT = {u.port or 5432}, USER = "{u.username or "postgres"}", '
                f'PASSWD = "{u.password or ""}", DB_NAME = "{self.pg_db}", CONNECTIONS = 4 ]\n')

    def write_config(self) -> Path:
        base = (REPO / "etc" / "oned-images.conf").read_text()
        conf = self.tmp / "oned-images.conf"
        conf.write_text(
            base
            + "\n# --- test overrides ---\n"
            + 'PORT = 0\nLISTEN_ADDRESS = "127.0.0.1"\n'
            + f'VAR_LOCATION = "{self.var}"\n'
            + 'LOG = [ SYSTEM = "std", DEBUG_LEVEL = 3 ]\n'
            + self.db_config()
            + self.extra_config
        )
        return conf

    def start(self) -> Daemon:
        self.tmp.mkdir(parents=True, exist_ok=True)
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        auth = self.tmp / "one_auth"
        auth.write_text(f"oneadmin:{ADMIN_PASSWORD}\n")
        conf = self.write_config()
        port_file = self.tmp / "port"
        port_file.unlink(missing_ok=True)
        # PYTHONPATH: run this checkout's code even if another one is pip-installed.
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, ONE_AUTH=str(auth), HOME=str(home), PYTHONUNBUFFERED="1",
                   PYTHONPATH=pythonpath)
        env.update(self.env)
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oned_images", "serve", "--config", str(conf),
             "--port-file", str(port_file)],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=str(self.tmp))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if port_file.exists():
                self.port = int(port_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-4000:])
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("daemon did not start in time:\n" + self.log_path.read_text()[-4000:])

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        self.log_file.close()
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def drop(self) -> None:
        self.stop()
        if self.pg_db is not None and not self.shares_db:
            _pg_admin(backend(), f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            self.pg_db = None

    # ------------------------------------------------------------ clients
    def client(self, user: str = "oneadmin", password: str = ADMIN_PASSWORD) -> pyone.OneServer:
        return pyone.OneServer(self.url, session=f"{user}:{password}", timeout=30)

    def raw(self) -> xmlrpc.client.ServerProxy:
        """A plain XML-RPC proxy: full reply arrays (resp_id, the i8) for exact checks."""
        return xmlrpc.client.ServerProxy(self.url, allow_none=False)

    def session(self, user: str = "oneadmin", password: str = ADMIN_PASSWORD) -> str:
        return f"{user}:{password}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_several(tmp: Path, count: int, extra_config: str = "") -> list[Daemon]:
    """``count`` daemons on one database (README "Several daemons": PostgreSQL, or the
    first one's SQLite file), each with its own VAR_LOCATION and port and a name of its
    own (DAEMON_NAME = d0, d1, ...); the datastores live under the first one's
    DATASTORE_LOCATION, which all of them see.  Drop them in reverse order (the first
    owns the database)."""
    first = Daemon(tmp / "d0", extra_config=extra_config + 'DAEMON_NAME = "d0"\n').start()
    shared = f'DATASTORE_LOCATION = "{first.var / "datastores"}"\n'
    first.extra_config += shared
    daemons = [first]
    for n in range(1, count):
        daemons.append(joining(first, tmp / f"d{n}", extra_config + shared
                               + f'DAEMON_NAME = "d{n}"\n').start())
    return daemons


def joining(first: Daemon, tmp: Path, extra_config: str = "") -> Daemon:
    """A daemon (not started) on ``first``'s database."""
    return Daemon(tmp, extra_config=extra_config, pg_db=first.pg_db, shares_db=True,
                  sqlite_path=first.var / "one.db" if first.pg_db is None else None)


def _pg_admin(url: str, sql: str) -> None:
    import psycopg2

    u = urlparse(url)
    conn = psycopg2.connect(host=u.hostname or "localhost", port=u.port or 5432,
                            user=u.username or "postgres", password=u.password or None,
                            dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def db_tool(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    """This checkout's `oned-images db ...` on the daemon's configuration."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "oned_images", "db", *args, "--config",
                           str(d.tmp / "oned-images.conf")],
                          capture_output=True, text=True, timeout=90, cwd=str(d.tmp), env=env)


def quota_drift(d: Daemon) -> list[str]:
    """`db fsck`'s quota findings on a daemon's database (it may be serving): the
    counters its charges made that a recount of what exists disagrees with."""
    out = db_tool(d, "fsck")
    assert out.returncode in (0, 1), out.stderr
    return [line for line in out.stdout.splitlines() if " quotas: " in line]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")
