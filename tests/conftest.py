"""Fixtures: a real oned-images process per test module, pyone clients, users."""

from __future__ import annotations

import itertools

import pytest

from tests.support.daemon import Daemon

_names = itertools.count(1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    d.start()
    yield d
    d.drop()


@pytest.fixture
def fresh_daemon(tmp_path):
    """A daemon of this test's own (restarts, kill -9, special configs)."""
    created: list[Daemon] = []

    def make(extra_config: str = "", env: dict | None = None, start: bool = True) -> Daemon:
        d = Daemon(tmp_path / f"d{len(created)}", extra_config=extra_config, env=env or {})
        created.append(d)
        return d.start() if start else d

    yield make
    for d in created:
        d.drop()


@pytest.fixture
def one(daemon):
    return daemon.client()


def unique(prefix: str = "x") -> str:
    return f"{prefix}{next(_names)}"


@pytest.fixture
def make_user(daemon, one):
    """Create a user (default group users) and return (uid, pyone client)."""

    def make(name: str | None = None, password: str = "pw", groups: list[int] | None = None):
        name = name or unique("user")
        uid = one.user.allocate(name, password, "", groups or [])
        return uid, daemon.client(name, password)

    return make
