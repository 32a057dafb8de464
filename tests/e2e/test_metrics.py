"""GET /metrics against the real daemon: exact counter deltas for the calls and
driver actions a test makes, gauges equal to what the API shows, and the METRICS
access modes (on, off, loopback) over real HTTP."""

from __future__ import annotations

import collections
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, wait_for
from tests.support.seed import (
    call,
    driver_config,
    dummy_datastore,
    fails,
    fault,
    flaky_datastore,
    ok,
    open_gate,
    parse,
    register,
    unique,
    user,
    wait_settled,
    wait_state,
    write_driver,
)

MiB = 1024 * 1024
STATE_NAMES = {0: "INIT", 1: "READY", 2: "USED", 3: "DISABLED", 4: "LOCKED", 5: "ERROR",
               6: "CLONE", 7: "DELETE", 8: "USED_PERS", 9: "LOCKED_USED",
               10: "LOCKED_USED_PERS"}


def get(d: Daemon, host: str = "127.0.0.1", path: str = "/metrics") -> tuple[int, str, str]:
    """(status, Content-Type, body) of one GET over a new connection."""
    try:
        with urllib.request.urlopen(f"http://{host}:{d.port}{path}", timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(d: Daemon) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics: (sample name, labels) -> value."""
    status, ctype, text = get(d)
    assert status == 200, text
    assert ctype.startswith("text/plain; version="), ctype
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def family(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def images_by_state(d: Daemon) -> dict[frozenset, float]:
    """What one.imagepool.info shows, in the images gauge's labels."""
    counts: collections.Counter = collections.Counter()
    for img in parse(ok(d, "one.imagepool.info", -2, -1, -1)).findall("IMAGE"):
        counts[(STATE_NAMES[int(img.findtext("STATE"))], img.findtext("DATASTORE_ID"))] += 1
    return {frozenset({"state": s, "datastore": ds}.items()): float(n)
            for (s, ds), n in counts.items()}


# ------------------------------------------------------------------ calls
def test_calls_are_counted_by_method_and_result(daemon, ds):
    image = register(daemon, ds)
    before = scrape(daemon)
    for _ in range(3):
        ok(daemon, "one.image.info", image)
    fails(daemon, "one.image.info", 999999)
    fails(daemon, "one.image.info", image, session="oneadmin:wrong")
    fails(daemon, "one.image.info", image, session="nosuchuser:pw")
    assert fault(daemon, "one.image.nosuchmethod")[0] == -506
    after = scrape(daemon)
    calls = "oned_images_xmlrpc_calls_total"
    assert delta(before, after, calls, method="one.image.info", result="success") == 3
    assert delta(before, after, calls, method="one.image.info", result="failure") == 3
    assert delta(before, after, calls, method="unknown", result="fault") == 1
    assert delta(before, after, "oned_images_login_failures_total") == 2
    # exactly these 7 calls happened between the scrapes, and nothing else
    changed = {labels: v - value(before, calls, **dict(labels))
               for labels, v in family(after, calls).items()
               if v != value(before, calls, **dict(labels))}
    assert changed == {
        frozenset({"method": "one.image.info", "result": "success"}.items()): 3,
        frozenset({"method": "one.image.info", "result": "failure"}.items()): 3,
        frozenset({"method": "unknown", "result": "fault"}.items()): 1,
    }
    hist = "oned_images_xmlrpc_call_duration_seconds"
    assert delta(before, after, hist + "_count", method="one.image.info") == 6
    assert delta(before, after, hist + "_bucket", method="one.image.info", le="+Inf") == 6
    assert delta(before, after, hist + "_sum", method="one.image.info") > 0
    # four calls reached the database (the 3 infos and the missing image), one
    # transaction each; refused sessions and faults never do (a daemon alone on its
    # database does not read the cache counters: README "Several daemons")
    assert delta(before, after, "oned_images_db_transaction_duration_seconds_count") == 4


def test_sessions_gauge_counts_cached_secrets(daemon):
    _, session = user(daemon)  # a user change empties the session cache
    ok(daemon, "one.user.info", -1)
    ok(daemon, "one.user.info", -1, session=session)
    ok(daemon, "one.user.info", -1, session=session)
    assert value(scrape(daemon), "oned_images_cached_sessions") == 2


def test_metrics_only_answer_get(daemon):
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/metrics", data=b"x",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 405
    assert err.value.headers["Allow"] == "GET, HEAD"


# ------------------------------------------------------------------ drivers
def test_driver_actions_by_action_ds_mad_and_result(flaky, fds):
    before = scrape(flaky)
    good = ok(flaky, "one.image.allocate",
              f'NAME="{unique()}"\nPATH="/var/tmp/m.img"\nMODE="cp:ok"', fds)
    bad = ok(flaky, "one.image.allocate",
             f'NAME="{unique()}"\nPATH="/var/tmp/m.img"\nMODE="cp:fail"', fds)
    wait_state(flaky, good, 1)
    wait_state(flaky, bad, 5)
    after = scrape(flaky)
    actions = "oned_images_driver_actions_total"
    assert delta(before, after, actions, action="stat", ds_mad="flaky", result="success") == 2
    assert delta(before, after, actions, action="cp", ds_mad="flaky", result="success") == 1
    assert delta(before, after, actions, action="cp", ds_mad="flaky", result="failure") == 1
    hist = "oned_images_driver_action_duration_seconds"
    assert delta(before, after, hist + "_count", action="cp", ds_mad="flaky") == 2
    # the fake stat reports 7 MB: only the successful copy counts
    assert delta(before, after, "oned_images_driver_copied_bytes_total", action="cp",
                 ds_mad="flaky") == 7 * MiB


def test_running_and_queued_driver_actions(tmp_path):
    """-t 1: one gated copy runs, a datablock's mkfs waits for the slot."""
    remotes = tmp_path / "remotes"
    write_driver(remotes)
    d = Daemon(tmp_path / "d", extra_config=driver_config(remotes).replace("-t 15", "-t 1"))
    d.gates = remotes / "gates"  # type: ignore[attr-defined]
    d.start()
    try:
        fds = flaky_datastore(d)
        first = ok(d, "one.image.allocate",
                   f'NAME="{unique()}"\nPATH="/var/tmp/m.img"\nMODE="cp:gate"', fds)
        wait_for(lambda: value(scrape(d), "oned_images_driver_running_actions") == 1)
        # a datablock needs no STAT (which would itself wait for the slot)
        second = ok(d, "one.image.allocate",
                    f'NAME="{unique()}"\nTYPE="DATABLOCK"\nSIZE="2"\nMODE="mkfs:gate"', fds)
        samples = wait_for(lambda: (lambda s: s if value(
            s, "oned_images_driver_queued_actions") == 1 else None)(scrape(d)))
        assert value(samples, "oned_images_driver_running_actions") == 1
        open_gate(d, "cp", first)
        open_gate(d, "mkfs", second)
        wait_settled(d, first)
        wait_settled(d, second)
        # then the datastore monitor each action asks for runs, and all is idle
        wait_for(lambda: (lambda s: value(s, "oned_images_driver_running_actions") == 0
                          and value(s, "oned_images_driver_queued_actions") == 0)(scrape(d)))
    finally:
        d.drop()


# ------------------------------------------------------------------ images
def test_image_gauge_equals_the_pool(flaky, fds, flaky_dummy):
    # a template attribute named STATE must not be taken for the image's state
    register(flaky, flaky_dummy, extra='STATE="5"\n')
    disabled = register(flaky, flaky_dummy)
    ok(flaky, "one.image.enable", disabled, False)
    failed = ok(flaky, "one.image.allocate",
                f'NAME="{unique()}"\nPATH="/var/tmp/m.img"\nMODE="cp:fail"', fds)
    wait_state(flaky, failed, 5)
    locked = ok(flaky, "one.image.allocate",
                f'NAME="{unique()}"\nPATH="/var/tmp/m.img"\nMODE="cp:gate"', fds)
    wait_state(flaky, locked, 4)
    expected = images_by_state(flaky)
    assert {dict(k)["state"] for k in expected} >= {"READY", "DISABLED", "ERROR", "LOCKED"}
    # counts are at most a second old: poll until a fresh one is served
    wait_for(lambda: family(scrape(flaky), "oned_images_images") == expected)
    open_gate(flaky, "cp", locked)
    wait_state(flaky, locked, 1)
    expected = images_by_state(flaky)
    wait_for(lambda: family(scrape(flaky), "oned_images_images") == expected)


@pytest.fixture(scope="module")
def flaky_dummy(flaky):
    """A dummy datastore on the flaky daemon, beside its fake-driver one."""
    return dummy_datastore(flaky, "metrics-dummy")


# ------------------------------------------------------------------ access modes
def test_metrics_off_is_404_and_rpc_still_serves(fresh_daemon):
    d = fresh_daemon('METRICS = "off"\n')
    status, _, body = get(d)
    assert (status, body) == (404, "No such resource")
    assert call(d, "one.system.version")[0] is True


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the route to a TEST-NET)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize("mode, status", [("loopback", 403), ("on", 200)])
def test_peer_outside_loopback(fresh_daemon, mode, status):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    d = fresh_daemon(f'LISTEN_ADDRESS = "0.0.0.0"\nMETRICS = "{mode}"\n')
    got, _, body = get(d, host=address)
    assert got == status, body
    if status == 403:
        assert body == '/metrics is served to loopback peers only (METRICS = "loopback")'
    else:
        assert "oned_images_xmlrpc_calls_total" in body
    assert get(d)[0] == 200  # loopback peers are served in both modes
