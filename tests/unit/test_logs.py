"""logs.format_line: one event is one line (or a marked block for a traceback), every
control character escaped, whatever part of the event it comes from."""

from __future__ import annotations

import re

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from oned_images.logs import escape, format_line, redact
from oned_images.rpc.registry import TABLE
from oned_images.rpc.resource import CallLog

HEAD = r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} \[Z0\]\[ReM\]\[E\]: "


def event(fmt: str, **fields) -> dict:
    return {"log_format": fmt, "log_level": LogLevel.error, "log_namespace": "ReM",
            "log_time": 0.0, **fields}


def test_escape_every_line_breaking_or_terminal_character():
    assert escape("a\nb\rc\td") == r"a\nb\rc\td"
    assert escape("\x00\x07\x1b[31m\x7f") == r"\x00\x07\x1b[31m\x7f"
    assert escape("\x0b\x0c\x1c\x1d\x1e\x1f") == r"\x0b\x0c\x1c\x1d\x1e\x1f"
    assert escape("\x80\x85\x9b\x9f") == r"\x80\x85\x9b\x9f"
    assert escape("\u2028\u2029") == r"\u2028\u2029"
    assert escape("\u202e\u2066") == r"\u202e\u2066"  # bidi overrides reorder a terminal line
    assert escape("bytes \udcff") == r"bytes \udcff"  # surrogateescape'd: UTF-8 can't write it
    assert escape("back\\slash") == r"back\\slash"    # so that \n above is unambiguous
    assert escape("plain ÄÖ 日本 /var/tmp \"q\"") == "plain ÄÖ 日本 /var/tmp \"q\""
    for text in ("a\nb", "x\u2028y", "\x85", "\r\n"):
        assert len(escape(text).splitlines()) == 1


def test_every_field_and_the_format_itself_are_escaped():
    line = format_line(event("driver says {text} for {image}\nFORGED", text="ok\nFORGED",
                             image="1\r\u2029"))
    assert line is not None and line.endswith("\n") and line.count("\n") == 1
    assert re.fullmatch(HEAD + r"driver says ok\\nFORGED for 1\\r\\u2029\\nFORGED\n", line)


def test_traceback_is_a_block_of_marked_escaped_lines():
    try:
        raise ValueError("bad\nSat Jan 01 00:00:00 2000 [Z0][ReM][E]: FORGED")
    except ValueError:
        failure = Failure()
    line = format_line(event("Req:{req} failed unexpectedly", req=7, log_failure=failure))
    lines = line.splitlines()
    assert re.fullmatch(HEAD + "Req:7 failed unexpectedly", lines[0])
    assert all(re.match(HEAD + r"\| ", ln) for ln in lines[1:])
    assert lines[1].endswith("| Traceback (most recent call last):")
    assert re.search(r'\|   File ".*test_logs\.py", line \d+, in '
                     r"test_traceback_is_a_block_of_marked_escaped_lines$", lines[2])
    # the source line's own backslash is doubled: the log's \\n is always an escape
    assert lines[3].endswith(r'|     raise ValueError("bad\\nSat Jan 01 00:00:00 2000 [Z0][ReM]'
                             r'[E]: FORGED")')
    assert lines[-1].endswith(r"| builtins.ValueError: bad\nSat Jan 01 00:00:00 2000 [Z0]"
                              r"[ReM][E]: FORGED")
    assert len(lines) == 5


def test_redact_masks_secret_attributes_and_url_passwords():
    assert redact('NAME="a"\nRESTIC_PASSWORD="p \\" w"\nSIZE=10') == \
        'NAME="a"\nRESTIC_PASSWORD=****\nSIZE=10'
    assert redact("ceph_key = abc, secret_access_key=xyz ]") == \
        "ceph_key = ****, secret_access_key=**** ]"
    assert redact('PASSWORD="cut before the en') == "PASSWORD=****"
    assert redact("<TEMPLATE><PASSWORD><![CDATA[p<w]]></PASSWORD><A>1</A></TEMPLATE>") == \
        "<TEMPLATE><PASSWORD>****</PASSWORD><A>1</A></TEMPLATE>"
    assert redact("<SSH_KEY><![CDATA[line 1\nline 2]]></SSH_KEY>") == "<SSH_KEY>****</SSH_KEY>"
    assert redact('PATH="https://bob:pa:ss@host/x" S3=s3://k:v@b/o') == \
        'PATH="https://bob:****@host/x" S3=s3://k:****@b/o'
    same = ('NAME="x" PATH="https://host:8080/a@b" postgresql://oneadmin@db:5432/one '
            "Listening on http://127.0.0.1:2633/RPC2 PERSISTENT=YES")
    assert redact(same) == same


def test_call_log_masks_declared_secrets_everywhere():
    login = TABLE["one.user.login"]
    call = CallLog(login, ["bob:Pass-Word-1", "bob", "Chosen-Tok", 60, -1], "bob:Pass-Word-1")
    assert call.params(["s", "bob", "Chosen-Tok", 60, -1]) == "bob, ****, 60, -1"
    assert call.result("Chosen-Tok") == "****"
    assert call.mask("Could not find token: Chosen-Tok (Pass-Word-1)") == \
        "Could not find token: **** (****)"
    info = TABLE["one.image.info"]
    short = CallLog(info, ["al:pw", 7], "al:pw")  # too short to mask as a substring
    assert short.params(["al:pw", 7]) == "7"
    assert short.mask("pw in passwd") == "pw in passwd"
    assert CallLog(TABLE["one.user.info"], [], "a:b").result("<USER>…") == "****"
    assert CallLog(TABLE["one.user.passwd"], [], "a:b").params(["a:b", 3, "x"]) == "3, ****"
