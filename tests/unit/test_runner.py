"""DriverRunner on the real reactor with real (tiny) scripts: the contract, the
limits, timeouts and cancellation; parse.py on its own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import pytest_twisted

from oned_images.config import DaemonConfig, DriverSettings
from oned_images.driver.parse import failure_text, parse_monitor, split_stderr
from oned_images.driver.runner import DriverRunner

pytestmark = pytest.mark.timeout(60)


def make_runner(tmp_path: Path, scripts: dict[str, str], **settings) -> DriverRunner:
    from twisted.internet import reactor

    remotes = tmp_path / "remotes"
    d = remotes / "datastore" / "t"
    d.mkdir(parents=True)
    for name, text in scripts.items():
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    var = tmp_path / "var"
    var.mkdir()
    opts = dict(concurrency=15, allowed=("t",), timeouts={}, remotes=str(remotes),
                kill_grace=1)
    opts.update(settings)
    return DriverRunner(reactor, DriverSettings(**opts), DaemonConfig(var_location=str(var)))


@pytest_twisted.ensureDeferred
async def test_contract_argv_stdin_env_cwd(tmp_path):
    script = """#!/bin/sh
data=$(cat -)
echo "$0|$1|$#|$data|$(pwd)|$HOME|$LANG|${FOO:-unset}|$(nice)|$(ps -o pgid= -p $$)|$$"
"""
    runner = make_runner(tmp_path, {"cp": script})
    result = await runner.run("cp", "t", 42, "QkFTRTY0", key=("image", 42))
    assert result.ok
    argv0, arg1, argc, data, cwd, home, lang, foo, niceness, pgid, pid = \
        result.first_line.split("|")
    assert int(niceness) == 19  # oned's PRIORITY
    assert pgid.strip() == pid  # a process group of its own
    assert (argv0, arg1, argc, data) == (str(tmp_path / "remotes/datastore/t/cp"), "42", "1",
                                         "QkFTRTY0")
    assert (cwd, lang, foo) == (str(tmp_path / "var"), "C", "unset")
    assert home


@pytest_twisted.ensureDeferred
async def test_legacy_argv_mode(tmp_path):
    runner = make_runner(tmp_path, {"cp": '#!/bin/sh\necho "$1 $2 $#"\n'})
    result = await runner.run("cp", "t", 7, "QUJD", mode="argv")
    assert result.first_line == "QUJD 7 2"


@pytest_twisted.ensureDeferred
async def test_failure_text_and_logs(tmp_path):
    script = """#!/bin/sh
cat >/dev/null
echo "INFO: starting" >&2
echo "ERROR: cp: it broke" >&2
echo "first problem" >&2
echo "-second problem" >&2
exit 4
"""
    runner = make_runner(tmp_path, {"cp": script})
    result = await runner.run("cp", "t", 1, "")
    assert (result.ok, result.exit_code) == (False, 4)
    assert result.error == "first problem; -second problem"
    assert result.logs == [("INFO", "starting"), ("ERROR", "cp: it broke")]


@pytest_twisted.ensureDeferred
async def test_missing_or_disallowed_driver(tmp_path):
    runner = make_runner(tmp_path, {"cp": "#!/bin/sh\n"})
    for mad, action in (("t", "mkfs"), ("other", "cp"), ("../t", "cp")):
        result = await runner.run(action, mad, 1, "")
        assert not result.ok
        assert result.error == f"Datastore driver '{mad}' not available"


@pytest_twisted.ensureDeferred
async def test_one_action_per_key_and_global_limit(tmp_path):
    from twisted.internet import defer

    log = tmp_path / "log"
    script = f"""#!/bin/sh
cat >/dev/null
echo "start $1 $(date +%s%N)" >> {log}
sleep 0.3
echo "end $1 $(date +%s%N)" >> {log}
"""
    runner = make_runner(tmp_path, {"cp": script}, concurrency=2)
    same = [runner.run("cp", "t", 1, "", key=("image", 1)) for _ in range(2)]
    others = [runner.run("cp", "t", i, "", key=("image", i)) for i in range(2, 6)]
    results = await defer.gatherResults([defer.ensureDeferred(c) for c in same + others])
    assert all(r.ok for r in results)
    events = sorted((int(t), kind, oid) for kind, oid, t in
                    (line.split() for line in log.read_text().splitlines()))
    running, peak, per_key = 0, 0, 0
    for _, kind, oid in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
        if oid == "1":
            per_key += 1 if kind == "start" else -1
            assert per_key <= 1
    assert peak == 2


@pytest_twisted.ensureDeferred
async def test_timeout_escalates_to_kill_of_the_group(tmp_path):
    marker = tmp_path / "child-alive"
    script = f"""#!/bin/sh
trap '' TERM
(trap '' TERM; while true; do touch {marker}; sleep 0.1; done) &
while true; do sleep 0.1; done
"""
    runner = make_runner(tmp_path, {"stat": script}, timeouts={"stat": 1})
    t0 = time.monotonic()
    result = await runner.run("stat", "t", 9, "", key=("stat", 9))
    elapsed = time.monotonic() - t0
    assert result.timed_out and not result.ok
    assert result.error == f"Timeout executing {tmp_path}/remotes/datastore/t/stat 9"
    assert 1.5 < elapsed < 10
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists()  # the grandchild died with its group


@pytest_twisted.ensureDeferred
async def test_cancel(tmp_path):
    from twisted.internet import defer, reactor, task

    runner = make_runner(tmp_path, {"cp": "#!/bin/sh\nsleep 30\n"})
    d = defer.ensureDeferred(runner.run("cp", "t", 3, "", key=("image", 3)))
    await task.deferLater(reactor, 0.3, lambda: None)
    assert runner.running_keys() == [("image", 3)]
    await runner.cancel(("image", 3))
    result = await d
    assert result.cancelled and result.error == "Action cancelled"
    assert runner.cancel(("image", 3)) is None


def test_parse_helpers():
    logs, plain = split_stderr("INFO: 12 hello\nplain one\nWARN: w\n\n  two  \n")
    assert logs == [("INFO", "hello"), ("WARN", "w")]
    assert plain == ["plain one", "two"]
    assert failure_text("ERROR: only a log\n", 2) == "only a log"
    assert failure_text("", 7) == "exit code 7"
    assert failure_text("--bad start\n", 1) == "bad start"
    assert parse_monitor("USED_MB=1.5\nFREE_MB=10\nTOTAL_MB=\"12\"\nJUNK\nX=1\n") == {
        "USED_MB": 1, "FREE_MB": 10, "TOTAL_MB": 12}


@pytest_twisted.ensureDeferred
async def test_pid_records_are_forgotten(tmp_path):
    """Every run writes <VAR>/run/drivers/<pid>; a finished one leaves nothing behind."""
    from twisted.internet import defer

    runner = make_runner(tmp_path, {"cp": "#!/bin/sh\ncat >/dev/null\necho ok raw\n",
                                    "rm": "#!/bin/sh\nexit 3\n"})
    runs = [runner.run("cp" if i % 2 else "rm", "t", i, "", key=("image", i))
            for i in range(6)]
    results = await defer.gatherResults([defer.ensureDeferred(r) for r in runs])
    assert [r.exit_code for r in results] == [3, 0, 3, 0, 3, 0]
    assert os.listdir(tmp_path / "var" / "run" / "drivers") == []


@pytest_twisted.ensureDeferred
async def test_ruby_and_gem_paths_pass_through(tmp_path, monkeypatch):
    """OpenNebula's Ruby drivers need RUBYLIB/GEM_* of a self-contained layout."""
    monkeypatch.setenv("RUBYLIB", "/opt/one/lib/ruby")
    monkeypatch.setenv("GEM_PATH", "/opt/one/gems:/usr/lib/gems")
    monkeypatch.setenv("GEM_HOME", "/opt/one/gems")
    monkeypatch.setenv("SOME_SECRET", "no")
    runner = make_runner(tmp_path, {"cp": '#!/bin/sh\necho "$RUBYLIB|$GEM_PATH|$GEM_HOME|'
                                          '${SOME_SECRET:-unset}"\n'})
    result = await runner.run("cp", "t", 1, "")
    assert result.first_line == "/opt/one/lib/ruby|/opt/one/gems:/usr/lib/gems|/opt/one/gems|unset"


@pytest_twisted.ensureDeferred
async def test_log_lines_are_logged_while_the_script_runs(tmp_path):
    from twisted.internet import defer, reactor, task
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        script = f"""#!/bin/sh
cat >/dev/null
echo "INFO: step one" >&2
printf 'ERROR: %s' "$(head -c 10000 /dev/zero | tr '\\0' x)" >&2
echo >&2
echo "plain text" >&2
printf 'WARN: no newline' >&2
sleep 4
touch {tmp_path}/ended
"""
        runner = make_runner(tmp_path, {"cp": script})
        d = defer.ensureDeferred(runner.run("cp", "t", 5, "", key=("image", 5)))

        def lines() -> list[tuple[str, str]]:
            return [(e["log_level"].name, e["msg"]) for e in events
                    if e.get("log_namespace") == "ImM" and e.get("action") == "cp"
                    and "msg" in e]

        for _ in range(200):
            if len(lines()) >= 2:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        assert not (tmp_path / "ended").exists()
        first = lines()
        assert first[0] == ("info", "step one")
        assert first[1][0] == "error" and len(first[1][1]) <= 4096
        assert set(first[1][1]) == {"x"}
        assert all(e["kind"] == "image" and e["oid"] == 5 for e in events
                   if e.get("action") == "cp" and "msg" in e)
        result = await d
        assert lines() == [("info", "step one"), first[1], ("warn", "no newline")]
        assert result.logs[0] == ("INFO", "step one")
        assert result.logs[-1] == ("WARN", "no newline")
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_one_user_cannot_hold_every_slot(tmp_path):
    """-t 4 with a share of 2: user 5's six slow copies take two slots at a time, user
    6's copy and oneadmin's start at once, and the limit of 4 still holds."""
    from twisted.internet import defer, reactor, task

    log = tmp_path / "log"
    script = f"""#!/bin/sh
cat >/dev/null
echo "start $1 $(date +%s%N)" >> {log}
sleep 1.5
echo "end $1 $(date +%s%N)" >> {log}
"""
    runner = make_runner(tmp_path, {"cp": script}, concurrency=4, user_share=2)
    greedy = [defer.ensureDeferred(runner.run("cp", "t", i, "", key=("image", i), owner=5))
              for i in range(10, 16)]
    await task.deferLater(reactor, 0.2, lambda: None)
    assert (runner.slots.running, runner.slots.queued) == ({("user", 5): 2}, 4)
    others = [defer.ensureDeferred(runner.run("cp", "t", 20, "", key=("image", 20), owner=6)),
              defer.ensureDeferred(runner.run("cp", "t", 30, "", key=("image", 30), owner=0))]
    results = await defer.gatherResults(greedy + others)
    assert all(r.ok for r in results)
    events = sorted((int(t), kind, int(oid)) for kind, oid, t in
                    (line.split() for line in log.read_text().splitlines()))
    first_end = min(t for t, kind, _ in events if kind == "end")
    assert all(t < first_end for t, kind, oid in events if kind == "start" and oid in (20, 30))
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    for _, kind, oid in events:
        who = "greedy" if oid < 20 else "all"
        for k in {who, "all"}:
            running[k] = running.get(k, 0) + (1 if kind == "start" else -1)
            peak[k] = max(peak.get(k, 0), running[k])
    assert (peak["greedy"], peak["all"]) == (2, 4)
    assert (runner.slots.running, runner.slots.queued) == ({}, 0)


def test_slots_wake_the_owner_with_fewest_running_first():
    from oned_images.driver.runner import Slots

    slots = Slots(limit=3, shares={"user": 2, "stat": 1})
    order: list[str] = []
    a, b = ("user", 1), ("user", 2)
    for bucket, name in ((a, "a1"), (a, "a2"), (None, "sys"), (a, "a3"), (a, "a4"),
                         (b, "b1"), (None, "sys2")):
        slots.acquire(bucket).addCallback(lambda _, n=name: order.append(n))
    assert order == ["a1", "a2", "sys"]
    slots.release(a)   # a: 1 running, b: 0 -> b goes first although a3 came earlier
    assert order[-1] == "b1"
    slots.release(None)  # sys2 (no share) or a3: a has 1, sys 0 -> sys2
    assert order[-1] == "sys2"
    slots.release(b)
    assert order[-1] == "a3"
    slots.acquire(("stat", 1)).addCallback(lambda _: order.append("a-stat"))
    assert order[-1] == "a3"  # all 3 slots taken (a1 a3 sys2)
    slots.release(None)  # a is at its share (a1 a3): its STAT has a share of its own
    assert order[-1] == "a-stat"
    slots.release(("stat", 1))
    assert order[-1] == "a-stat"  # a4 still waits for a's share
    slots.release(a)
    assert order[-1] == "a4"
    assert Slots(limit=1, shares={"user": 5}).shares == {"user": 1}


def test_user_share_configuration():
    from oned_images.config import ConfigError, parse
    from oned_images.driver.runner import shares

    cfg = parse('DATASTORE_MAD = [ ARGUMENTS = "-t 9", USER_SHARE = 3 ]\n'
                'DRIVER_TIMEOUT = [ CP = 10 ]\n')
    assert (cfg.driver.user_share, cfg.driver.timeouts["cp"]) == (3, 10)
    assert shares(cfg.driver) == {"user": 3, "stat": 2}
    assert shares(parse('DATASTORE_MAD = [ ARGUMENTS = "-t 15" ]\n').driver) == {
        "user": 7, "stat": 3}
    assert shares(parse('DATASTORE_MAD = [ ARGUMENTS = "-t 1" ]\n').driver) == {
        "user": 1, "stat": 1}
    with pytest.raises(ConfigError, match="USER_SHARE expects a number of actions"):
        parse('DATASTORE_MAD = [ USER_SHARE = "many" ]\n', "x.conf")


@pytest_twisted.ensureDeferred
async def test_cancel_of_a_queued_action(tmp_path):
    """A forced delete of an image whose copy still waits for a slot: it never runs."""
    from twisted.internet import defer

    ran = tmp_path / "ran"
    runner = make_runner(tmp_path, {"cp": f"#!/bin/sh\ncat >/dev/null\nsleep 0.5\n"
                                          f"echo $1 >> {ran}\necho src raw\n"},
                         user_share=1)  # user 5 may run one action: image 2 waits
    first = defer.ensureDeferred(runner.run("cp", "t", 1, "", key=("image", 1), owner=5))
    queued = defer.ensureDeferred(runner.run("cp", "t", 2, "", key=("image", 2), owner=5))
    assert runner.slots.queued == 1
    await runner.cancel(("image", 2))
    result = await queued
    assert (result.cancelled, result.error) == (True, "Action cancelled")
    assert (await first).ok
    assert ran.read_text() == "1\n"
    assert runner.cancel(("image", 2)) is None
    again = await runner.run("cp", "t", 2, "", key=("image", 2), owner=5)
    assert again.ok and ran.read_text() == "1\n2\n"
