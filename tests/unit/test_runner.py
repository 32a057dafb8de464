"""DriverRunner on the real reactor with real (tiny) scripts: the contract, the
limits, timeouts and cancellation; parse.py on its own."""

from __future__ import annotations

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
