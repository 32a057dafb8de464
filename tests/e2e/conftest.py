"""Module fixtures shared by the image tests: a dummy datastore on the module's
daemon, and a second daemon whose fake driver lets a test hold or fail actions."""

from __future__ import annotations

import pytest

from tests.support.seed import dummy_datastore, flaky_daemon, flaky_datastore


@pytest.fixture(scope="module")
def ds(daemon):
    return dummy_datastore(daemon, "dummy-ds")


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    d = flaky_daemon(tmp_path_factory.mktemp("flaky"))
    yield d
    d.drop()


@pytest.fixture(scope="module")
def fds(flaky):
    return flaky_datastore(flaky, "gated-ds")
