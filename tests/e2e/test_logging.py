"""oned.log lines: one per call invoked and one per result, passwords never written."""

from __future__ import annotations

import re

import pytest

from tests.support.daemon import ADMIN_PASSWORD, wait_for

pytestmark = pytest.mark.timeout(120)

LINE = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} "
                  r"\[Z0\]\[(ReM|ImM|OnM|AuM|DBM|DsM)\]\[[EWID]\]: ")


def test_call_and_result_lines_without_secrets(fresh_daemon):
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 3 ]\n')
    one = d.client()
    secret = "s3cr3t-pass-word"
    uid = one.user.allocate("logme", secret, "", [])
    one.user.passwd(uid, secret + "2")
    token = d.client("logme", secret + "2").user.login("logme", "", 60, -1)
    reply = d.raw().one.image.info(d.session(), 12345)
    assert reply[1] == "[one.image.info] Error getting image [12345]."
    log_file = d.var / "oned.log"
    text = wait_for(lambda: (t := log_file.read_text()) and "12345" in t and t, timeout=5)
    assert ADMIN_PASSWORD not in text
    assert secret not in text
    assert token not in text
    lines = [ln for ln in text.splitlines() if "one.image.info" in ln]
    assert len(lines) == 2
    assert LINE.match(lines[0]) and LINE.match(lines[1])
    assert re.search(r"\[ReM\]\[D\]: Req:\d+ UID:0 IP:127\.0\.0\.1 one\.image\.info invoked "
                     r", 12345$", lines[0])
    assert re.search(r"\[ReM\]\[D\]: Req:\d+ UID:0 one\.image\.info result FAILURE "
                     r"\[one\.image\.info\] Error getting image \[12345\]\.$", lines[1])
    allocate = [ln for ln in text.splitlines() if "one.user.allocate invoked" in ln]
    assert allocate and allocate[0].endswith(", logme, ****, , []")


def test_debug_level_filters_call_lines(fresh_daemon):
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 2 ]\n')
    d.client().system.version()
    d.stop()
    text = (d.var / "oned.log").read_text()
    assert "Listening on http://127.0.0.1:" in text
    assert "one.system.version" not in text
    assert all(LINE.match(ln) for ln in text.splitlines() if ln and not ln.startswith(" "))
