"""Settings read from the configuration and handed to the layers that use them.

config.py builds them; store/ (the database) and rpc/ (HTTP limits) consume them.
Keeping them here lets config.py depend only on this package, not on store/ or rpc/.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DbSettings:
    backend: str = "sqlite"
    path: str = ""
    server: str = "localhost"
    port: int = 5432
    user: str = "oneadmin"
    passwd: str = ""
    db_name: str = "opennebula"
    connections: int = 4
    timeout_ms: int = 2500


def serves_several_daemons(settings: DbSettings) -> bool:
    """Whether several daemons (on several hosts, or WORKERS > 1 on one) may serve this
    database: the one place that answers it.  An SQLite file does, for daemons of one
    host (store/lock.py, store/database.py WriteLock); an in-memory one is a daemon's
    own."""
    return settings.backend != "sqlite" or not is_memory_sqlite(settings.path)


def is_memory_sqlite(path: str) -> bool:
    """An SQLite database that lives in one process (``:memory:``, ``file:…mode=memory``
    URIs).  An empty path is the daemon's default file (DaemonConfig.db_path)."""
    return path == ":memory:" or (path.startswith("file:") and "memory" in path)


def default_daemon_name(port: int) -> str:
    """DAEMON_NAME when the configuration gives none: host name:port."""
    return f"{socket.gethostname()}:{port}"


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 65536
    max_per_peer: int = 64
    max_total: int = 512
