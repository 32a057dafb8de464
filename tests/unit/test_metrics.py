"""The pieces of /metrics and sd_notify that need no daemon: who may scrape, how a
reply payload is classified, image sizes from driver data, the watchdog interval."""

from __future__ import annotations

import base64
import os

import pytest

from oned_images.metrics import call_outcome, image_bytes
from oned_images.rpc import wire
from oned_images.rpc.metrics import refusal
from oned_images.systemd import watchdog_interval
from oned_images.xmldoc.served import Served


@pytest.mark.parametrize("mode, peer, expected", [
    ("loopback", "127.0.0.1", None),
    ("loopback", "127.45.6.7", None),
    ("loopback", "::1", None),
    ("loopback", "::ffff:127.0.0.1", None),
    ("loopback", "10.1.2.3", 403),
    ("loopback", "192.168.0.10", 403),
    ("loopback", "2001:db8::1", 403),
    ("loopback", "::ffff:10.1.2.3", 403),
    ("loopback", "-", 403),
    ("loopback", "", 403),
    ("on", "10.1.2.3", None),
    ("on", "127.0.0.1", None),
    ("off", "127.0.0.1", 404),
    ("off", "10.1.2.3", 404),
])
def test_who_may_scrape(mode, peer, expected):
    assert refusal(mode, peer) == expected


def test_call_outcome_of_every_reply_shape():
    assert call_outcome(wire.success(7)) == ("success", 0)
    assert call_outcome(wire.success("<IMAGE><ID>1</ID></IMAGE>")) == ("success", 0)
    assert call_outcome(wire.success(Served([b"&lt;IMAGE&gt;"]))) == ("success", 0)
    assert call_outcome(wire.failure("[one.image.info] User couldn't be authenticated, "
                                     "aborting call.", 256, -1)) == ("failure", 256)
    # a message holding what looks like a tag is escaped: the code is still found
    assert call_outcome(wire.failure("bad <i4>77</i4> name", 1024, 5)) == ("failure", 1024)
    assert call_outcome(wire.fault(-506, "Method 'x' not defined")) == ("fault", 0)
    assert call_outcome(wire.response_any(["one.image.info"])) == ("success", 0)


def _b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


def test_image_bytes_from_the_image_size():
    doc = ("<DS_DRIVER_ACTION_DATA><IMAGE><ID>3</ID><SIZE>42</SIZE><TEMPLATE><SIZE>"
           "<![CDATA[9]]></SIZE></TEMPLATE></IMAGE><DATASTORE><TOTAL_MB>10</TOTAL_MB>"
           "</DATASTORE></DS_DRIVER_ACTION_DATA>")
    assert image_bytes(_b64(doc)) == 42 * 1024 * 1024
    assert image_bytes(_b64("<DS_DRIVER_ACTION_DATA><IMAGE><PATH>x</PATH></IMAGE>"
                            "</DS_DRIVER_ACTION_DATA>")) == 0
    assert image_bytes("not base64!") == 0


@pytest.mark.parametrize("usec, pid, expected", [
    ("30000000", None, 15.0),
    ("200000", "self", 0.1),
    ("200000", "1", None),      # the watchdog is meant for another process
    ("0", None, None),
    ("", None, None),
    ("abc", None, None),
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert watchdog_interval() == expected


class _FakeDb:
    """db.run that hands back Deferreds the test fires itself."""

    is_postgres = False
    db = None

    def __init__(self) -> None:
        self.pending: list = []

    def run(self, fn, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.pending.append(d)
        return d


def _images(metrics) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.registry).decode()
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) if f.name == "oned_images_images"
            for s in f.samples}


def test_image_counts_are_shared_cached_and_survive_a_failed_count():
    from twisted.internet import defer

    from oned_images.metrics import COUNT_BUDGET, MIN_REFRESH_SECONDS, Metrics

    now = [100.0]
    metrics = Metrics(clock=lambda: now[0])
    db = _FakeDb()
    first = defer.ensureDeferred(metrics.refresh(db))
    second = defer.ensureDeferred(metrics.refresh(db))
    assert len(db.pending) == 1  # one count for both scrapes: the highest id first
    db.pending.pop().callback(1500)
    db.pending.pop().callback(({(1, 1): 3, (1, 4): 1}, 0.001))      # ids 0-999
    assert not first.called and not second.called
    db.pending.pop().callback(({(1, 1): 2, (100, 8): 2}, 0.001))    # ids 1000-1999
    assert first.called and second.called and not db.pending
    assert _images(metrics) == {(("datastore", "1"), ("state", "READY")): 5.0,
                                (("datastore", "1"), ("state", "LOCKED")): 1.0,
                                (("datastore", "100"), ("state", "USED_PERS")): 2.0}
    now[0] += MIN_REFRESH_SECONDS / 2
    assert defer.ensureDeferred(metrics.refresh(db)).called and not db.pending
    now[0] += MIN_REFRESH_SECONDS
    third = defer.ensureDeferred(metrics.refresh(db))
    db.pending.pop().errback(RuntimeError("database is locked"))
    assert third.called
    assert _images(metrics)[(("datastore", "1"), ("state", "READY"))] == 5.0
    # a count that kept the database busy for 1 s is reused for 1 s / COUNT_BUDGET
    fourth = defer.ensureDeferred(metrics.refresh(db))
    db.pending.pop().callback(10)
    db.pending.pop().callback(({(1, 1): 9}, 1.0))
    assert fourth.called
    now[0] += 1.0 / COUNT_BUDGET - 0.1
    assert defer.ensureDeferred(metrics.refresh(db)).called and not db.pending
    now[0] += 0.2
    defer.ensureDeferred(metrics.refresh(db))
    assert len(db.pending) == 1


def test_every_metric_is_documented_in_the_readme():
    from pathlib import Path

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from oned_images.metrics import Metrics

    metrics = Metrics()
    metrics.read_state(lambda: {"driver_queued_actions": 0, "driver_running_actions": 0,
                                "cached_sessions": 0, "cache_reloads": 0, "cache_checks": 0})
    metrics.name_daemon("d0", "host")
    metrics.snapshot()
    text = generate_latest(metrics.registry).decode()
    names = {f.name + ("_total" if f.type == "counter" else "")
             + ("_info" if f.type == "info" else "")
             for f in text_string_to_metric_families(text)}
    assert len(names) == 14, names
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines()
                  if line.startswith("| `oned_images_")}
    assert documented == names
