"""Helpers for the image end-to-end tests (tests/e2e/test_images_*.py).

* exact reply checks through plain xmlrpc.client (``call``/``ok``/``fails``), every
  XML document validated against OpenNebula's XSDs on the way;
* datastores with the dummy driver, images registered by SOURCE (no driver);
* fake driver trees (``write_driver``) whose per-image behaviour is chosen by the
  image TEMPLATE attribute ``MODE`` (e.g. ``MODE="cp:gate rm:fail"``), with gates
  the test opens to finish an action exactly when it wants;
* direct edits of stored image bodies (``edit_body``), for what the API cannot
  create, such as snapshots, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
import sqlite3
import stat
import textwrap
import xmlrpc.client
from pathlib import Path
from urllib.parse import urlparse

from lxml import etree

from tests.support.daemon import REPO, Daemon, backend, wait_for
from tests.support.remotes import ds_mad_confs
from tests.support.xsd import validate

DUMMY_DS = 'NAME="{name}"\nDS_MAD="dummy"\nTM_MAD="dummy"\n'
IMAGE_STATES = {"INIT": 0, "READY": 1, "USED": 2, "DISABLED": 3, "LOCKED": 4, "ERROR": 5,
                "CLONE": 6, "DELETE": 7}
CTIME = r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d \d{4}"

_counter = iter(range(1, 10**9))


def unique(prefix: str = "img") -> str:
    return f"{prefix}-{next(_counter)}"


# ------------------------------------------------------------------ raw XML-RPC
def call(daemon: Daemon, method: str, *args, session: str | None = None):
    """The whole reply array of one call (faults raise xmlrpc.client.Fault)."""
    proxy = daemon.raw()
    return getattr(proxy, method)(session or daemon.session(), *args)


def check_document(xml: str) -> str:
    """validate() every document, allowing only where oned 7.0.2's own output and its
    XSD disagree (api.md §4.2, §4.3): an image SNAPSHOT lists ACTIVE before CHILDREN
    (image.xsd wants CHILDREN first; vm.xsd has oned's order), and a flattened image has an empty ``<SNAPSHOTS></SNAPSHOTS>``
    (the XSD requires the three header elements).  Those two spots are rewritten in a
    copy used for validation only."""
    copy = xml
    if not xml.startswith(("<VM>", "<VM_POOL>")):  # vm.xsd has oned's order (ACTIVE first)
        copy = re.sub(r"(<ACTIVE>(?:(?!</ACTIVE>).)*</ACTIVE>)(<CHILDREN>(?:(?!</CHILDREN>)"
                      r".)*</CHILDREN>)", r"\2\1", xml)
    copy = copy.replace("<SNAPSHOTS></SNAPSHOTS>", EMPTY_SNAPSHOTS_FOR_XSD)
    if copy.startswith("<VM"):
        copy = _vm_for_xsd(copy)
        # VirtualMachine::to_xml_short writes LOCK/LOCKED, which vm_pool.xsd lacks
        copy = re.sub(r"<LOCK><LOCKED>\d+</LOCKED></LOCK>(?=<TEMPLATE>)", "", copy)
        if copy.startswith("<VM_POOL><VM><ID>") and "<PERMISSIONS>" in copy:
            # infoextended: full VM documents, which vm_pool.xsd (short form) does not
            # describe; each VM is checked against vm.xsd instead
            for vm in parse(copy).findall("VM"):
                validate(etree.tostring(vm, encoding="unicode"))
            return xml
    validate(copy)
    return xml


def _vm_for_xsd(xml: str) -> str:
    """vm.xsd requires TEMPLATE/TM_MAD_SYSTEM, which oned 7.0.2 itself only writes at the
    first deploy (sample one.vm.info.hold.body.xml lacks it): add an empty one to the
    copy that is validated."""
    def fix(m: re.Match) -> str:
        body = m.group(0)
        if "<TM_MAD_SYSTEM>" in body:
            return body
        return re.sub(r"(<TOPOLOGY>|<TPM>|<VCPU>|<VCPU_MAX>|<VMGROUP>|<VMID>)",
                      r"<TM_MAD_SYSTEM></TM_MAD_SYSTEM>\1", body, count=1)
    return re.sub(r"<TEMPLATE>.*?</TEMPLATE>(?=<USER_TEMPLATE)", fix, xml, flags=re.S)


EMPTY_SNAPSHOTS_FOR_XSD = ("<SNAPSHOTS><ALLOW_ORPHANS>NO</ALLOW_ORPHANS>"
                           "<CURRENT_BASE>-1</CURRENT_BASE><NEXT_SNAPSHOT>0</NEXT_SNAPSHOT>"
                           "</SNAPSHOTS>")


def ok(daemon: Daemon, method: str, *args, session: str | None = None):
    """Call, require ``[true, value, 0]``, validate documents, return the value."""
    reply = call(daemon, method, *args, session=session)
    assert len(reply) == 3 and reply[0] is True and reply[2] == 0, reply
    value = reply[1]
    if isinstance(value, str) and value.startswith("<"):
        check_document(value)
    return value


def fails(daemon: Daemon, method: str, *args, session: str | None = None):
    """Call, require oned's 5-element failure array, return (message, code, resp_id)."""
    reply = call(daemon, method, *args, session=session)
    assert len(reply) == 5 and reply[0] is False and reply[4] == -1, reply
    return reply[1], reply[2], reply[3]


def fault(daemon: Daemon, method: str, *args, session: str | None = None):
    """Call, require an XML-RPC fault, return (faultCode, faultString)."""
    try:
        reply = call(daemon, method, *args, session=session)
    except xmlrpc.client.Fault as exc:
        return exc.faultCode, exc.faultString
    raise AssertionError(f"expected a fault, got {reply!r}")


# ------------------------------------------------------------------ documents
def info(daemon: Daemon, oid: int, session: str | None = None) -> str:
    return ok(daemon, "one.image.info", oid, session=session)


def parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode("utf-8"))


def field(xml: str, path: str) -> str | None:
    el = parse(xml).find(path)
    return None if el is None else (el.text or "")


def num(xml: str, path: str) -> int:
    value = field(xml, path)
    assert value is not None, f"{path} missing in {xml}"
    return int(value)


def section(xml: str, name: str) -> str:
    """The serialized <NAME>…</NAME> element (first one), as the daemon wrote it."""
    m = re.search(rf"<{name}>.*?</{name}>|<{name}/>", xml, re.S)
    assert m, f"no {name} in {xml}"
    return m.group(0)


def template_dict(xml: str, root: str = "TEMPLATE") -> dict:
    el = parse(xml).find(root)
    out: dict = {}
    for child in el:
        if len(child):
            out[child.tag] = {c.tag: c.text or "" for c in child}
        else:
            out[child.tag] = child.text or ""
    return out


def pool_ids(xml: str) -> list[int]:
    return [int(e.text) for e in parse(xml).findall("IMAGE/ID")]


def pool(daemon: Daemon, flag: int = -2, start: int = -1, end: int = -1, *extra,
         session: str | None = None) -> list[int]:
    return pool_ids(ok(daemon, "one.imagepool.info", flag, start, end, *extra,
                       session=session))


def normalise_times(xml: str) -> str:
    xml = re.sub(r"<REGTIME>\d+</REGTIME>", "<REGTIME>T</REGTIME>", xml)
    return re.sub(r"<MODTIME>\d+</MODTIME>", "<MODTIME>T</MODTIME>", xml)


def state(daemon: Daemon, oid: int) -> int:
    return num(info(daemon, oid), "STATE")


def wait_state(daemon: Daemon, oid: int, wanted: int, timeout: float = 20.0) -> str:
    """Poll until the image has STATE ``wanted``; return that document."""
    last: list[str] = []

    def check():
        xml = info(daemon, oid)
        last[:] = [xml]
        return xml if num(xml, "STATE") == wanted else None

    try:
        return wait_for(check, timeout=timeout)
    except AssertionError as exc:
        if not str(exc).startswith("condition not met"):
            raise
        raise AssertionError(f"image {oid} never reached state {wanted}: {last}") from None


def wait_settled(daemon: Daemon, oid: int, timeout: float = 20.0) -> str:
    """Poll until the image's driver action is over (STATE no longer LOCKED)."""
    return wait_for(lambda: (lambda x: x if num(x, "STATE") != 4 else None)(info(daemon, oid)),
                    timeout=timeout)


def wait_gone(daemon: Daemon, oid: int, timeout: float = 20.0) -> None:
    def gone():
        reply = call(daemon, "one.image.info", oid)
        return reply[0] is False and reply[2] == 1024

    wait_for(gone, timeout=timeout)


# ------------------------------------------------------------------ objects
def dummy_datastore(daemon: Daemon, name: str | None = None, extra: str = "") -> int:
    """A dummy-driver IMAGE_DS, monitored (FREE_MB 20480) before it is returned."""
    name = name or unique("ds")
    ds = ok(daemon, "one.datastore.allocate", DUMMY_DS.format(name=name) + extra, -1)
    wait_for(lambda: num(ok(daemon, "one.datastore.info", ds), "FREE_MB") == 20480)
    return ds


def datastore(daemon: Daemon, text: str) -> int:
    """Any datastore, monitored once if its driver answers (FREE_MB 20480)."""
    ds = ok(daemon, "one.datastore.allocate", text, -1)
    wait_for(lambda: num(ok(daemon, "one.datastore.info", ds), "FREE_MB") == 20480)
    return ds


def register(daemon: Daemon, ds: int, name: str | None = None, extra: str = "",
             source: str = "/var/tmp/src.img", size: int = 1, fmt: str = "raw",
             session: str | None = None) -> int:
    """An image registered by SOURCE: READY at once, no driver involved."""
    name = name or unique()
    text = f'NAME="{name}"\nSOURCE="{source}"\nFORMAT="{fmt}"\nSIZE="{size}"\n' + extra
    return ok(daemon, "one.image.allocate", text, ds, session=session)


def user(daemon: Daemon, name: str | None = None, groups: list[int] | None = None,
         password: str = "pw") -> tuple[int, str]:
    """A core user (default group users); returns (uid, session string)."""
    name = name or unique("user")
    uid = ok(daemon, "one.user.allocate", name, password, "", groups or [])
    return uid, f"{name}:{password}"


def group(daemon: Daemon, name: str | None = None) -> int:
    return ok(daemon, "one.group.allocate", name or unique("group"))


# ------------------------------------------------------------------ stored bodies
def connect_db(daemon: Daemon):
    url = backend()
    if url == "sqlite":
        return sqlite3.connect(str(daemon.var / "one.db"), timeout=30), "?"
    import psycopg2

    u = urlparse(url)
    conn = psycopg2.connect(host=u.hostname or "localhost", port=u.port or 5432,
                            user=u.username or "postgres", password=u.password or None,
                            dbname=daemon.pg_db)
    return conn, "%s"


def read_body(daemon: Daemon, oid: int) -> str:
    conn, mark = connect_db(daemon)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT body FROM image_pool WHERE oid = {mark}", (oid,))
        row = cur.fetchone()
        assert row is not None, f"image {oid} has no row"
        return row[0]
    finally:
        conn.close()


def write_body(daemon: Daemon, oid: int, body: str) -> None:
    """Overwrite an image's stored document while the daemon runs (it keeps no cache)."""
    etree.fromstring(body.encode("utf-8"))  # never store a broken document
    conn, mark = connect_db(daemon)
    try:
        cur = conn.cursor()
        # body_rpc NULL: the daemon then serves the escaped form of this new body.
        cur.execute(f"UPDATE image_pool SET body = {mark}, body_rpc = NULL WHERE oid = {mark}",
                    (body, oid))
        assert cur.rowcount == 1
        conn.commit()
    finally:
        conn.close()


def edit_body(daemon: Daemon, oid: int, **elements: str) -> str:
    """Replace top-level elements (``SNAPSHOTS=…`` whole XML, scalars by value)."""
    body = read_body(daemon, oid)
    for name, value in elements.items():
        pattern = re.compile(rf"<{name}>.*?</{name}>|<{name}/>", re.S)
        assert pattern.search(body), f"no {name} in image {oid}"
        new = value if value.startswith(f"<{name}>") else f"<{name}>{value}</{name}>"
        body = pattern.sub(lambda _m, new=new: new, body, count=1)
    write_body(daemon, oid, body)
    return body


def cdata(value: object) -> str:
    return f"<![CDATA[{value}]]>"


def snapshot(sid: int, parent: int = -1, children: str = "", active: bool = False,
             name: str = "", size: int = 10, date: int = 1733335000) -> str:
    """One <SNAPSHOT> as oned writes it (children sorted by name)."""
    parts = []
    if active:
        parts.append(f"<ACTIVE>{cdata('YES')}</ACTIVE>")
    if children:
        parts.append(f"<CHILDREN>{cdata(children)}</CHILDREN>")
    parts.append(f"<DATE>{cdata(date + sid)}</DATE><ID>{cdata(sid)}</ID>")
    if name:
        parts.append(f"<NAME>{cdata(name)}</NAME>")
    parts.append(f"<PARENT>{cdata(parent)}</PARENT><SIZE>{cdata(size)}</SIZE>")
    return "<SNAPSHOT>" + "".join(parts) + "</SNAPSHOT>"


def snapshots(*snaps: str, mode: str = "NO", current_base: int = -1,
              next_id: int | None = None) -> str:
    next_id = len(snaps) if next_id is None else next_id
    return (f"<SNAPSHOTS><ALLOW_ORPHANS>{cdata(mode)}</ALLOW_ORPHANS>"
            f"<CURRENT_BASE>{cdata(current_base)}</CURRENT_BASE>"
            f"<NEXT_SNAPSHOT>{cdata(next_id)}</NEXT_SNAPSHOT>" + "".join(snaps)
            + "</SNAPSHOTS>")


# ------------------------------------------------------------------ fake drivers
FAKE_DRIVER = '''\
#!{python}
"""Fake datastore driver for the image tests: MODE="<action>:<behaviour> …"."""
import base64, os, sys, time
import xml.etree.ElementTree as ET

GATES = {gates!r}
action = os.path.basename(sys.argv[0])
oid = sys.argv[-1]
raw = sys.stdin.read()
try:
    doc = ET.fromstring(base64.b64decode(raw))
except Exception:
    doc = None


def text(path):
    el = doc.find(path) if doc is not None else None
    return (el.text or "") if el is not None else ""


def done(out="", code=0, err=""):
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.stdout.flush()
    sys.exit(code)


if action == "monitor":
    done("USED_MB=9720\\nTOTAL_MB=20480\\nFREE_MB=20480\\n")
if action == "stat":
    path = text("IMAGE/PATH")
    kind = os.path.basename(path)
    if kind == "stat-fail":
        done(code=1, err="INFO: looking\\ncannot access '%s' (No such file or directory)\\n"
             % path)
    if kind == "stat-garbage":
        done("lots of garbage\\n")
    if kind == "stat-hang":
        time.sleep(120)
    done("7\\n")

modes = dict(w.split(":", 1) for w in text("IMAGE/TEMPLATE/MODE").split() if ":" in w)
how = modes.get(action, "ok")
if how.startswith("gate"):  # "gate" or "gate-<behaviour>": wait, then behave
    gate = os.path.join(GATES, "%s.%s" % (action, oid))
    for _ in range(2400):
        if os.path.exists(gate):
            break
        time.sleep(0.05)
    else:
        done(code=9, err="gate %s never opened\\n" % gate)
    how = how[5:] or "ok"
if how == "fail":
    done(code=3, err="INFO: about to fail\\nthe disk is on fire\\nand smoking\\n")
if how == "silent":
    done(code=4)
if how == "hang":
    time.sleep(120)
if how == "empty":
    done()
if how == "garbage":
    done("garbage\\n")
if how == "weird":
    done("]]>&<src>\\\\$(x) qcow2\\nsecond line\\n")
outputs = {{
    "cp": "flaky_src/%s qcow2\\n" % oid,
    "mkfs": "flaky_src/%s\\n" % oid,
    "clone": "flaky_clone/%s qcow2\\n" % oid,
}}
done(outputs.get(action, ""))
'''

ACTIONS = ("cp", "mkfs", "clone", "rm", "stat", "monitor", "snap_delete", "snap_revert",
           "snap_flatten")


def write_scripts(directory: Path, scripts: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for action, body in scripts.items():
        path = directory / action
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def write_driver(remotes: Path, name: str = "flaky") -> Path:
    """remotes/datastore/{dummy,fs} -> the shipped drivers, remotes/datastore/<name> fake."""
    import sys

    gates = remotes / "gates"
    gates.mkdir(parents=True, exist_ok=True)
    ds_dir = remotes / "datastore"
    ds_dir.mkdir(parents=True, exist_ok=True)
    for shipped in ("dummy", "fs"):
        link = ds_dir / shipped
        if not link.exists():
            link.symlink_to(REPO / "drivers" / "datastore" / shipped)
    if not (ds_dir / "common").exists():
        (ds_dir / "common").symlink_to(REPO / "drivers" / "datastore" / "common")
    body = FAKE_DRIVER.format(python=sys.executable, gates=str(gates))
    write_scripts(ds_dir / name, {a: body for a in ACTIONS})
    return gates


def driver_config(remotes: Path, names: str = "dummy,fs,flaky", timeouts: str = "") -> str:
    conf = (f'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d {names}", '
            f'REMOTES = "{remotes}", KILL_GRACE = 1 ]\n' + ds_mad_confs(f"-d {names}"))
    if timeouts:
        conf += f"DRIVER_TIMEOUT = [ {timeouts} ]\n"
    return conf


def start_daemon(tmp: Path, extra_config: str = "") -> Daemon:
    return Daemon(tmp, extra_config=extra_config).start()


def flaky_daemon(tmp: Path, timeouts: str = "", extra_config: str = "") -> Daemon:
    remotes = tmp / "remotes"
    write_driver(remotes)
    d = Daemon(tmp / "daemon", extra_config=driver_config(remotes, timeouts=timeouts)
               + extra_config)
    d.gates = remotes / "gates"  # type: ignore[attr-defined]
    d.remotes = remotes  # type: ignore[attr-defined]
    return d.start()


def flaky_datastore(daemon: Daemon, name: str | None = None, extra: str = "") -> int:
    name = name or unique("flaky")
    return datastore(daemon, f'NAME="{name}"\nDS_MAD="flaky"\nTM_MAD="dummy"\n' + extra)


def open_gate(daemon: Daemon, action: str, oid: int) -> None:
    (daemon.gates / f"{action}.{oid}").touch()  # type: ignore[attr-defined]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")
