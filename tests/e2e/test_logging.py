"""oned.log: one line per event, never a secret, private files, reopened on SIGHUP.

One line per call invoked and one per result; no password, token or session secret in
any of them; control characters escaped so that no value can start a line; one.db and
oned.log private whatever the umask; failed logins at WARN with name and peer.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
import urllib.request
import xmlrpc.client

import pytest

from oned_images.domain.identity import server_cipher_token
from tests.support.daemon import ADMIN_PASSWORD, backend, wait_for
from tests.support.remotes import driver_config, make_remotes
from tests.support.seed import call, fails, ok

pytestmark = pytest.mark.timeout(120)

LINE = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} "
                  r"(\[[^\]]+\] )?\[Z0\]\[(ReM|ImM|OnM|AuM|DBM|DsM)\]\[[EWID]\]: ")


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


# ----------------------------------------------------------------- secrets (issue 7)
def _log(d) -> str:
    """oned.log once the 1 s buffer has been flushed (a stop flushes it)."""
    d.stop()
    return (d.var / "oned.log").read_text(encoding="utf-8")


def test_no_password_or_token_is_ever_logged(fresh_daemon):
    """Every call whose parameters, session or result carry a secret, with recognisable
    secrets: none of them (nor a 12-character piece of one) reaches the log."""
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 3 ]\n')
    proxy = d.raw()
    admin = d.session()
    pw1, pw2, pw3 = "Secret-Alloc-4417", "Secret-Passwd-5528", "Secret-Srv-6639"
    chosen = "Secret-Chosen-Token-7740"
    missing = "Secret-Missing-Token-8851"
    wrong = "Secret-Wrong-Pass-9962"
    tpl_pw, url_pw, ds_pw = "Secret-Tpl-1073", "Secret-Url-2184", "Secret-Restic-3295"
    uid = ok(d, "one.user.allocate", "logme", pw1, "", [])
    ok(d, "one.user.allocate", "srv", pw3, "server_cipher", [])
    ok(d, "one.user.passwd", uid, pw2)
    user = d.session("logme", pw2)
    generated = ok(d, "one.user.login", "logme", "", 600, -1, session=user)
    assert ok(d, "one.user.login", "logme", chosen, 600, -1, session=user) == chosen
    message, _, _ = fails(d, "one.user.login", "logme", missing, 0, -1, session=user)
    assert message == f"[one.user.login] Could not find token: {missing}"
    ok(d, "one.user.info", -1, session=f"logme:{generated}")
    ok(d, "one.user.info", -1, session=f"logme:{chosen}")
    assert ok(d, "one.user.login", "logme", chosen, 0, -1, session=user) == chosen
    fails(d, "one.system.version", session=f"logme:{wrong}")
    ok(d, "one.user.update", uid, f'SSH_PASSWORD="{tpl_pw}"', 1)
    ok(d, "one.userpool.info")
    ok(d, "one.system.config")
    # serveradmin (server_cipher) sessions: neither its secret nor the cipher token
    key = re.search(r"<PASSWORD><!\[CDATA\[([0-9a-f]{64})\]\]>", ok(d, "one.user.info", 1))[1]
    server_secret = (d.var / ".one" / "sunstone_auth").read_text().strip().split(":", 1)[1]
    cipher = server_cipher_token("serveradmin", key, "logme", int(time.time()) + 300)
    ok(d, "one.user.info", -1, session=f"serveradmin:logme:{cipher}")
    call(d, "one.system.version", session=f"serveradmin:{server_secret}")  # refused
    # passwords inside templates: a password-named attribute, URL credentials
    ds = ok(d, "one.datastore.allocate",
            f'NAME="bk"\nDS_MAD="dummy"\nTM_MAD="dummy"\nRESTIC_PASSWORD="{ds_pw}"', -1)
    ok(d, "one.datastore.update", ds, f'RESTIC_PASSWORD="{ds_pw}"', 1)
    proxy.one.image.allocate(admin, f'PATH="https://bob:{url_pw}@example.invalid/a.img"\n'
                             f'NAME="u"\nPASSWORD="{tpl_pw}"', ds)
    text = _log(d)
    secrets_ = {"pw1": pw1, "pw2": pw2, "pw3": pw3, "chosen": chosen, "missing": missing,
                "wrong": wrong, "generated": generated, "tpl": tpl_pw, "url": url_pw,
                "ds": ds_pw, "admin": ADMIN_PASSWORD, "server": server_secret,
                "cipher": cipher, "hash": key}
    leaked = {what: s for what, s in secrets_.items()
              if any(s[i:i + 12] in text for i in range(0, len(s) - 11))}
    assert leaked == {}
    # the calls were logged, with the secrets masked
    assert re.search(r"one\.user\.login invoked , logme, \*\*\*\*, 600, -1$", text, re.M)
    assert re.search(r"one\.user\.login result SUCCESS, \*\*\*\*$", text, re.M)
    assert re.search(r"one\.user\.login result FAILURE \[one\.user\.login\] Could not find "
                     r"token: \*\*\*\*$", text, re.M)
    assert re.search(r"one\.user\.passwd invoked , \d+, \*\*\*\*$", text, re.M)
    assert re.search(r'one\.datastore\.update invoked , \d+, RESTIC_PASSWORD=\*\*\*\*, 1$',
                     text, re.M)


# ----------------------------------------------------------- log injection (issue 7, 8)
def _post(d, method: str, *params) -> None:
    """A call whose XML keeps a CR as ``&#13;`` (a raw CR would be read as a LF)."""
    body = xmlrpc.client.dumps(params, method).replace("\r", "&#13;").encode()
    req = urllib.request.Request(d.url, body, {"Content-Type": "text/xml"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        reply.read()


def test_control_characters_cannot_forge_log_lines(fresh_daemon):
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 3 ]\n')
    forged = "Sat Jan 01 00:00:00 2000 [Z0][ReM][E]: FORGED"
    ds = ok(d, "one.datastore.allocate", 'NAME="inj"\nDS_MAD="dummy"\nTM_MAD="dummy"', -1)
    call(d, "one.image.allocate", f'PATH="x\n{forged}"', ds)
    _post(d, "one.image.allocate", d.session(),
          'PATH="y\rA\u2028B\u0085C\tD"', ds)
    fails(d, "one.image.info", 999, session="bad\nname\u2028Sat Jan 01 FORGED:pw")
    text = _log(d)
    lines = text.split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert LINE.match(line), line
        assert not line.startswith(forged[:24]), line
    assert "FORGED" in text
    for sep in ("\r", "\u2028", "\u0085", "\t"):
        assert sep not in text
    assert len(text.splitlines()) == len(lines) - 1
    # one event, one line: the template with its newline is one escaped value
    assert f'invoked , PATH="x\\n{forged}"' in text
    assert 'invoked , PATH="y\\rA\\u2028B\\x85C\\tD", ' in text
    assert 'user "bad\\nname\\u2028Sat Jan 01 FORGED" from 127.0.0.1' in text


NOISY_CP = r"""#!/usr/bin/env python3
import sys
sys.stdin.read()
forged = "Sat Jan 01 00:00:00 2000 [Z0][ImM][E]: FORGED"
sys.stderr.write("INFO: ansi \x1b[31mred\x1b[0m bell\x07 cr\r" + forged + "\n")
sys.stderr.write("INFO: sep\u2028" + forged + " nel\x85" + forged + "\n")
sys.stderr.write("ERROR: gone\x1b]0;title\x07 \u202eevil\n")
sys.exit(1)
"""
MONITOR = "#!/bin/sh\ncat >/dev/null\nprintf 'USED_MB=1\\nFREE_MB=100000\\nTOTAL_MB=100001\\n'\n"


def test_driver_output_cannot_forge_log_lines(tmp_path, fresh_daemon):
    """Driver stderr reaches the log through the same escaping as everything else."""
    remotes = make_remotes(tmp_path / "remotes", {"noisy": {
        "cp": NOISY_CP, "monitor": MONITOR, "stat": "#!/bin/sh\ncat >/dev/null\necho 1\n"}})
    d = fresh_daemon(driver_config(remotes, "-t 15 -d dummy,fs,noisy")
                     + 'LOG = [ SYSTEM = "file", DEBUG_LEVEL = 3 ]\n')
    ds = ok(d, "one.datastore.allocate", 'NAME="n"\nDS_MAD="noisy"\nTM_MAD="dummy"', -1)
    wait_for(lambda: "<FREE_MB>100000</FREE_MB>" in ok(d, "one.datastore.info", ds))
    image = ok(d, "one.image.allocate", 'NAME="i"\nPATH="/var/tmp/n"', ds)
    wait_for(lambda: "<STATE>5</STATE>" in ok(d, "one.image.info", image))
    text = _log(d)
    for ch in "\x1b\x07\r\u2028\x85\u202e":
        assert ch not in text
    for line in text.split("\n")[:-1]:
        assert LINE.match(line), line
        assert not line.startswith("Sat Jan 01"), line
    # (the driver output parser splits at CR, U+2028 and NEL: the pieces stay behind headers)
    assert "image 0 cp: ansi \\x1b[31mred\\x1b[0m bell\\x07 cr" in text
    assert "image 0 cp: gone\\x1b]0;title\\x07 \\u202eevil" in text


# ------------------------------------------------------------- file modes (issue 7)
def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _modes(d) -> dict[str, int]:
    var = d.var
    names = ["", "run", "run/drivers", ".one", "datastores", "oned.log", "one.db",
             "one.db-wal", "one.db-shm", "one.db-journal"]
    return {n or ".": _mode(var / n) for n in names if (var / n).exists()}


def test_state_files_are_private_whatever_the_umask(fresh_daemon):
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 3 ]\n', start=False)
    old = os.umask(0o022)
    try:
        d.start()
        ds = ok(d, "one.datastore.allocate", 'NAME="m"\nDS_MAD="dummy"\nTM_MAD="dummy"', -1)
        wait_for(lambda: (d.var / "oned.log").exists())
        private = {".": 0o750, "run": 0o750, "run/drivers": 0o750, ".one": 0o750,
                   "datastores": 0o750, "oned.log": 0o640}
        if backend() == "sqlite":
            private.update({"one.db": 0o600, "one.db-wal": 0o600, "one.db-shm": 0o600})
        assert _modes(d) == private
        assert _mode(d.var / ".one" / "sunstone_auth") == 0o600
        d.stop()
        # a tree made loose by hand (or by an older release) is tightened at start
        for name in [n for n in private if (d.var / n).exists()]:
            os.chmod(d.var / name, 0o755 if (d.var / name).is_dir() else 0o644)
        if backend() == "sqlite":
            (d.var / "one.db-journal").touch(mode=0o644)
            private["one.db-journal"] = 0o600
        d.start()
        assert f"<ID>{ds}</ID>" in ok(d, "one.datastorepool.info")
        assert _modes(d) == private
    finally:
        os.umask(old)


# ------------------------------------------------------------ failed logins (issue 8)
def test_failed_logins_are_warnings_with_name_and_peer(fresh_daemon):
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 1 ]\n')
    ok(d, "one.user.allocate", "alice", "Alice-Pass-1234", "", [])
    wrong = "Wrong-Pass-5678"
    for session in (f"alice:{wrong}", f"nobody:{wrong}", f"ev\nil:{wrong}", wrong):
        message, _, _ = fails(d, "one.system.version", session=session)
        assert message == "[one.system.version] User couldn't be authenticated, aborting call."
    ok(d, "one.system.version", session="alice:Alice-Pass-1234")
    text = _log(d)
    assert wrong not in text
    failed = [ln.split("]: ", 1)[1] for ln in text.splitlines() if "[AuM]" in ln]
    assert failed == [
        'Authentication failed for user "alice" from 127.0.0.1: wrong password',
        'Authentication failed for user "nobody" from 127.0.0.1: no such user',
        'Authentication failed for user "ev\\nil" from 127.0.0.1: no such user',
        "Authentication failed from 127.0.0.1: session without a user name",
    ]
    assert all(LINE.match(ln) and "[Z0][AuM][W]: " in ln
               for ln in text.splitlines() if "[AuM]" in ln)


# -------------------------------------------------------- SIGHUP reopens (issue 8)
def test_sighup_reopens_the_log_for_logrotate(fresh_daemon):
    d = fresh_daemon('LOG = [ SYSTEM = "file", DEBUG_LEVEL = 3 ]\n', start=False)
    old = os.umask(0o022)
    try:
        d.start()
    finally:
        os.umask(old)
    log_path = d.var / "oned.log"
    ok(d, "one.system.version")
    rotated = d.var / "oned.log.1"
    os.rename(log_path, rotated)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log_path.exists(), timeout=5)
    assert _mode(log_path) == 0o640
    ok(d, "one.datastore.info", 0)
    text = wait_for(lambda: (t := log_path.read_text()) and "one.datastore.info result" in t
                    and t, timeout=5)
    assert all(LINE.match(ln) for ln in text.splitlines())
    assert text.splitlines()[0].endswith(f"[OnM][I]: Log file {log_path} reopened")
    assert d.proc.poll() is None
    old_text = rotated.read_text()
    assert "one.system.version result SUCCESS" in old_text
    assert "one.datastore.info" not in old_text
