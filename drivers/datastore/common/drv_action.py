#!/usr/bin/env python3
"""Print values of a DS_DRIVER_ACTION_DATA document, NUL-separated.

Usage:
    drv_action.py [-f FILE | -b BASE64] [--] XPATH [XPATH ...]

The document is the base64 text OpenNebula 7.0 writes on a datastore
driver's stdin (read from stdin when neither -f nor -b is given).  Plain
XML (first non-blank character '<') is accepted too, which helps debugging.

For every XPATH argument one value is written to stdout, each followed by a
NUL byte, in argument order:

* ``/DS_DRIVER_ACTION_DATA/IMAGE/PATH`` - absolute: the first step must
  name the root element;
* ``IMAGE/PATH`` - relative to the root element;
* anything ``xml.etree.ElementTree`` ``find()`` understands after that,
  e.g. ``IMAGE/SNAPSHOTS/SNAPSHOT[ID='0']/NAME``.

The value is the text of the first matching element.  A missing element,
an empty element or an element that only holds child elements yields an
empty string; so does an invalid expression.  Exit status: 0 on success,
2 when the document can't be read or parsed (the reason goes to stderr as
one plain line, suitable as a driver error text).

Python 3 standard library only.
"""

from __future__ import annotations

import base64
import binascii
import sys
import xml.etree.ElementTree as ET

USAGE = "usage: drv_action.py [-f FILE | -b BASE64] [--] XPATH [XPATH ...]"


def _die(msg: str, code: int = 2) -> None:
    sys.stderr.write(msg.replace("\n", " ").strip() + "\n")
    sys.exit(code)


def _decode(raw: bytes) -> ET.Element:
    data = raw.strip()
    if not data:
        _die("Empty driver action data (nothing was received on stdin)")
    if not data.startswith(b"<"):
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            _die(f"Cannot decode driver action data (bad base64): {exc}")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        _die(f"Cannot parse driver action data (bad XML): {exc}")
    raise AssertionError("unreachable")


def lookup(root: ET.Element, xpath: str) -> str:
    path = xpath.strip()
    if path.startswith("/"):
        steps = path.lstrip("/").split("/", 1)
        if steps[0] != root.tag:
            return ""
        if len(steps) == 1 or not steps[1]:
            elem = root
        else:
            path = steps[1]
            elem = None
    else:
        elem = None
    if elem is None:
        try:
            elem = root.find(path)
        except (SyntaxError, KeyError, ValueError, TypeError):
            return ""
    if elem is None:
        return ""
    text = elem.text or ""
    if len(elem) and not text.strip():
        return ""
    return text


def main(argv: list[str]) -> int:
    args = list(argv)
    source: bytes | None = None
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args.pop(0)
        if opt == "--":
            break
        if opt in ("-f", "-b") and args:
            val = args.pop(0)
            if opt == "-b":
                source = val.encode()
            else:
                try:
                    with open(val, "rb") as fh:
                        source = fh.read()
                except OSError as exc:
                    _die(f"Cannot read driver action data from {val}: {exc.strerror}")
        elif opt in ("-h", "--help"):
            print(USAGE)
            return 0
        else:
            _die(USAGE)
    if not args:
        _die(USAGE)
    if source is None:
        source = sys.stdin.buffer.read()
    root = _decode(source)
    out = sys.stdout.buffer
    for xpath in args:
        out.write(lookup(root, xpath).encode("utf-8", "surrogateescape") + b"\0")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
