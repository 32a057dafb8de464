"""VM templates (vms.md §4): every one.template.* call but instantiate, and
one.templatepool.info — documents (vmtemplate.xsd, validated by ``ok``), texts, filters,
paging, locks, the recursive image flags, and the references ``oneimage orphans`` uses."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.seed import (
    call,
    dummy_datastore,
    fails,
    fault,
    field,
    info,
    num,
    ok,
    parse,
    register,
    unique,
    user,
    wait_state,
)
from tests.support.xsd import xsd_dir

pytestmark = [pytest.mark.timeout(120)]

INTERNAL, NO_EXISTS, AUTHZ, ACTION, API, ALLOC = 8192, 1024, 512, 2048, 4096, 16384
T = "virtual machine template"
PERMS = ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
         "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
         "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>")


def owned(daemon, ds: int, uid: int, name: str | None = None) -> int:
    """An image registered by SOURCE (admins only) and given to ``uid``."""
    iid = register(daemon, ds, name=name or unique("img"))
    ok(daemon, "one.image.chown", iid, uid, -1)
    return iid


def tmpl_ids(xml: str) -> list[int]:
    return [int(e.text) for e in parse(xml).findall("VMTEMPLATE/ID")]


def regtime(doc: str) -> int:
    return num(doc, "REGTIME")


def test_allocate_and_info_give_oneds_document(daemon):
    pers = register(daemon, 1, name=unique("pers"))
    pname = field(info(daemon, pers), "NAME")
    name = unique("tmpl")
    text = (f'NAME="{name}"\nCPU="0.5"\nMEMORY="128"\nDESCRIPTION="sample"\n'
            f'DISK=[IMAGE_ID="0"]\nDISK=[IMAGE="{pname}"]\nCONTEXT=[NETWORK="YES"]')
    before = int(time.time())
    tid = ok(daemon, "one.template.allocate", text)
    doc = ok(daemon, "one.template.info", tid)
    assert before <= regtime(doc) <= int(time.time())
    sample = Path(xsd_dir().parent / "samples" / "one.template.info.body.xml").read_text().strip()
    expected = (sample.replace("<ID>0</ID>", f"<ID>{tid}</ID>", 1)
                .replace("<NAME>tmpl</NAME>", f"<NAME>{name}</NAME>")
                .replace("<REGTIME>1796032447</REGTIME>", f"<REGTIME>{regtime(doc)}</REGTIME>")
                .replace("<IMAGE><![CDATA[pers]]></IMAGE>", f"<IMAGE><![CDATA[{pname}]]></IMAGE>"))
    assert doc == expected
    assert ok(daemon, "one.template.info", tid, False) == doc
    assert ok(daemon, "one.template.info", tid, False, False) == doc
    # XML input too, and pyone reads it
    xml_tid = ok(daemon, "one.template.allocate",
                 f"<TEMPLATE><NAME>{unique('x')}</NAME><MEMORY>64</MEMORY></TEMPLATE>")
    assert daemon.client().template.info(xml_tid).TEMPLATE["MEMORY"] == "64"


def test_allocate_refusals(daemon):
    name = unique("t")
    tid = ok(daemon, "one.template.allocate", f'NAME="{name}"')
    m = "[one.template.allocate] "
    assert fails(daemon, "one.template.allocate", f'NAME="{name}"\nMEMORY=1') == (
        f"{m}NAME is already taken by TEMPLATE {tid}.", INTERNAL, -1)
    assert fails(daemon, "one.template.allocate", 'MEMORY="1"') == (
        f"{m}Invalid NAME, it cannot be empty", INTERNAL, -1)
    assert fails(daemon, "one.template.allocate", 'NAME="a/b"') == (
        f"{m}Invalid NAME, char '/' is not allowed", INTERNAL, -1)
    assert fails(daemon, "one.template.allocate", 'NAME="x"\nA=[')[1] == INTERNAL
    assert fault(daemon, "one.template.allocate") == (-501, "Not enough parameters")
    assert fault(daemon, "one.template.allocate", 5)[1] == (
        "Parameter that is supposed to be a string is not")
    uid, session = user(daemon)
    for text, attr in (('NAME="r1"\nDISK=[IMAGE_ID=0, READ_BYTES_SEC=1]', "READ_BYTES_SEC"),
                       ('NAME="r2"\nCONTEXT=[FILES="/etc/passwd"]', "FILES"),
                       ('NAME="r3"\nCPU_COST="1"', "CPU_COST")):
        assert fails(daemon, "one.template.allocate", text, session=session) == (
            f"{m}User [{uid}] : VM Template includes a restricted attribute {attr}.", AUTHZ, -1)
    # nothing was written by the refusals
    assert ok(daemon, "one.templatepool.info", uid, -1, -1) == (
        "<VMTEMPLATE_POOL></VMTEMPLATE_POOL>")
    # oneadmin may set them; a plain user gets um- --- --- (umask 177)
    ok(daemon, "one.template.allocate", 'NAME="r-adm"\nCPU_COST="1"')
    own = ok(daemon, "one.template.allocate", 'NAME="mine"\nMEMORY="1"', session=session)
    doc = ok(daemon, "one.template.info", own, session=session)
    assert PERMS in doc and field(doc, "UNAME") == field(doc, "UNAME")
    assert (num(doc, "UID"), num(doc, "GID")) == (uid, 1)
    # unknown ids
    assert fails(daemon, "one.template.info", 99999) == (
        f"[one.template.info] Error getting {T} [99999].", NO_EXISTS, 99999)
    for method, args in (("one.template.update", ("A=1", 0)), ("one.template.delete", ()),
                         ("one.template.rename", ("n",)), ("one.template.clone", ("n",)),
                         ("one.template.chown", (0, 0)), ("one.template.lock", (1,)),
                         ("one.template.unlock", ()),
                         ("one.template.chmod", (1, 1, 0, 0, 0, 0, 0, 0, 0))):
        assert fails(daemon, method, 99999, *args) == (
            f"[{method}] Error getting {T} [99999].", NO_EXISTS, 99999), method


def test_instantiate_is_declared(daemon):
    # instantiate itself is pinned in test_vms.py; here: it no longer answers -506
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("i")}"\nCPU="1"\nMEMORY="8"')
    vid = ok(daemon, "one.template.instantiate", tid, "", True, "", False)
    assert num(ok(daemon, "one.vm.info", vid), "TEMPLATE/TEMPLATE_ID") == tid


def test_big_template_is_stored_and_others_are_served(daemon):
    big = "X" * (1024 * 1024)
    result: dict = {}

    def allocate():
        result["id"] = ok(daemon, "one.template.allocate", f'NAME="big"\nBLOB="{big}"')

    worker = threading.Thread(target=allocate)
    worker.start()
    assert ok(daemon, "one.system.version") == call(daemon, "one.system.version")[1]
    worker.join(60)
    assert field(ok(daemon, "one.template.info", result["id"]), "TEMPLATE/BLOB") == big
    ok(daemon, "one.template.delete", result["id"])


def test_update_rename_chown_chmod(daemon):
    name = unique("u")
    tid = ok(daemon, "one.template.allocate", f'NAME="{name}"\nA="1"\nB="2"')
    assert ok(daemon, "one.template.update", tid, 'B="3"\nC="4"', 1) == tid
    doc = ok(daemon, "one.template.info", tid)
    assert [(e.tag, e.text) for e in parse(doc).find("TEMPLATE")] == [
        ("A", "1"), ("B", "3"), ("C", "4")]
    # replace; NAME in the text is a plain attribute, not a rename (QUIRK)
    assert ok(daemon, "one.template.update", tid, 'NAME="other"\nD="5"', 0) == tid
    doc = ok(daemon, "one.template.info", tid)
    assert field(doc, "NAME") == name
    assert [(e.tag, e.text) for e in parse(doc).find("TEMPLATE")] == [("D", "5"),
                                                                       ("NAME", "other")]
    assert fails(daemon, "one.template.update", tid, "A=1", 2) == (
        "[one.template.update] Wrong update type", API, -1)
    assert fails(daemon, "one.template.update", tid, "A=[", 0)[0].startswith(
        "[one.template.update] Cannot update template. ")
    assert ok(daemon, "one.template.info", tid) == doc

    other = ok(daemon, "one.template.allocate", f'NAME="{unique("o")}"')
    oname = field(ok(daemon, "one.template.info", other), "NAME")
    assert fails(daemon, "one.template.rename", tid, oname) == (
        f"[one.template.rename] {T} cannot be renamed to {oname} because it collides with "
        f"{T} {other}", ACTION, -1)
    assert fails(daemon, "one.template.rename", tid, "") == (
        "[one.template.rename] Invalid NAME, it cannot be empty", ACTION, -1)
    assert ok(daemon, "one.template.rename", tid, name + "-r") == tid
    assert field(ok(daemon, "one.template.info", tid), "NAME") == name + "-r"

    uid, session = user(daemon)
    ok(daemon, "one.template.allocate", f'NAME="{oname}"', session=session)
    assert fails(daemon, "one.template.chown", other, uid, -1) == (
        f"[one.template.chown] user [{uid}] already owns {T} "
        f"[{tmpl_ids(ok(daemon, 'one.templatepool.info', uid, -1, -1))[0]}] with NAME {oname}",
        INTERNAL, -1)
    assert ok(daemon, "one.template.chown", tid, uid, 1) == tid
    doc = ok(daemon, "one.template.info", tid, session=session)
    assert (num(doc, "UID"), num(doc, "GID"), field(doc, "GNAME")) == (uid, 1, "users")

    assert ok(daemon, "one.template.chmod", tid, 1, 1, 1, 1, 0, 0, 1, 0, 0) == tid
    bits = [int(e.text) for e in parse(ok(daemon, "one.template.info", tid))
            .find("PERMISSIONS")]
    assert bits == [1, 1, 1, 1, 0, 0, 1, 0, 0]
    assert fails(daemon, "one.template.chmod", tid, 2, -1, -1, -1, -1, -1, -1, -1, -1) == (
        "[one.template.chmod] New permission values must be -1, 0 or 1", INTERNAL, -1)


def test_permission_matrix(daemon):
    """Owner, group member, other user: each with the bits granting exactly USE, MANAGE
    or ADMIN to its class; every method allowed or refused with oned's text."""
    g = ok(daemon, "one.group.allocate", unique("g"))
    owner, osess = user(daemon, groups=[g, 1])  # templates get group g
    member, msess = user(daemon, groups=[1, g])  # g as a secondary group
    stranger, ssess = user(daemon)  # users only: CREATE TEMPLATE through rule #0
    methods = {
        "USE": [("one.template.info", ()), ("one.template.clone", (None,))],
        "MANAGE": [("one.template.update", ("A=1", 1)), ("one.template.rename", (None,)),
                   ("one.template.lock", (1,)), ("one.template.delete", ())],
        "ADMIN": [("one.template.chmod", "admin-bit")],
    }
    offsets = {"USE": 0, "MANAGE": 1, "ADMIN": 2}
    for cls, (who, sess) in {"OWNER": (owner, osess), "GROUP": (member, msess),
                             "OTHER": (stranger, ssess)}.items():
        for granted in ("USE", "MANAGE", "ADMIN"):
            for op, calls in methods.items():
                for method, args in calls:
                    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("m")}"',
                             session=osess)
                    bits = [0] * 9
                    base = {"OWNER": 0, "GROUP": 3, "OTHER": 6}[cls]
                    bits[base + offsets[granted]] = 1
                    ok(daemon, "one.template.chmod", tid, *bits)
                    if args == "admin-bit":  # change an ADMIN bit that is 0 now
                        flip = 2 if bits[8] else 8
                        args = tuple(1 if i == flip else -1 for i in range(9))
                    args = tuple(unique("n") if a is None else a for a in args)
                    reply = call(daemon, method, tid, *args, session=sess)
                    allowed = granted == op
                    if allowed:
                        assert reply[0] is True, (cls, granted, method, reply)
                    else:
                        assert reply[:3] == [False, f"[{method}] User [{who}] : Not authorized "
                                             f"to perform {op} TEMPLATE [{tid}].", AUTHZ], (
                            cls, granted, method, reply)


def test_locks(daemon):
    uid, session = user(daemon)
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("l")}"', session=session)
    assert ok(daemon, "one.template.lock", tid, 2, session=session) == tid
    doc = ok(daemon, "one.template.info", tid, session=session)
    lock = parse(doc).find("LOCK")
    assert [e.tag for e in lock] == ["LOCKED", "OWNER", "TIME", "REQ_ID"]
    assert (lock.findtext("LOCKED"), lock.findtext("OWNER")) == ("2", str(uid))
    assert doc.index("<LOCK>") < doc.index("<PERMISSIONS>")
    # MANAGE is blocked for the owner (a permission denial), and for oneadmin
    assert fails(daemon, "one.template.update", tid, "A=1", 1, session=session) == (
        f"[one.template.update] User [{uid}] : Not authorized to perform MANAGE TEMPLATE "
        f"[{tid}].", AUTHZ, -1)
    assert fails(daemon, "one.template.delete", tid) == (
        f"[one.template.delete] User [0] : TEMPLATE is locked. [{tid}].", AUTHZ, -1)
    assert fails(daemon, "one.template.lock", tid, 1, True, session=session) == (
        f"[one.template.lock] {lock.findtext('TIME')}", ACTION, -1)
    assert fails(daemon, "one.template.lock", tid, 7, session=session) == (
        "[one.template.lock] Wrong lock level specified", ACTION, -1)
    # USE still works at level 2; level 4 ("ALL") is stored as 1 and blocks USE too
    ok(daemon, "one.template.clone", tid, unique("c"), session=session)
    assert ok(daemon, "one.template.unlock", tid, session=session) == tid
    ok(daemon, "one.template.chmod", tid, 1, 1, 0, 1, 1, 0, 1, 1, 0)  # others may manage
    assert ok(daemon, "one.template.lock", tid, 4, session=session) == tid
    assert field(ok(daemon, "one.template.info", tid), "LOCK/LOCKED") == "1"
    assert fails(daemon, "one.template.clone", tid, unique("c"), session=session)[1] == AUTHZ
    other, osess = user(daemon)
    assert fails(daemon, "one.template.unlock", tid, session=osess) == (
        "[one.template.unlock] Cannot unlock: Lock is owned by another user", ACTION, -1)
    assert ok(daemon, "one.template.unlock", tid) == tid
    assert field(ok(daemon, "one.template.info", tid), "LOCK") is None


def test_pool_filters_paging_and_order(fresh_daemon):
    daemon = fresh_daemon()
    uid, session = user(daemon)
    mine = [ok(daemon, "one.template.allocate", f'NAME="{unique("p")}"', session=session)
            for _ in range(4)]
    adm = ok(daemon, "one.template.allocate", f'NAME="{unique("p")}"')
    pool = lambda *a, s=session: tmpl_ids(ok(daemon, "one.templatepool.info", *a, session=s))  # noqa: E731
    assert pool(-3, -1, -1) == mine[::-1]  # DESC by default
    assert pool(-2, -1, -1) == mine[::-1]  # the admin's template is not visible
    assert pool(-1, -1, -1) == mine[::-1]
    assert pool(-4, -1, -1) == mine[::-1]
    assert pool(uid, mine[1], mine[2]) == [mine[2], mine[1]]
    assert pool(-3, 1, -2) == [mine[2], mine[1]]  # page of 2 from offset 1
    assert adm in pool(-2, -1, -1, s=None)
    ok(daemon, "one.template.chmod", adm, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    assert adm in pool(-2, -1, -1)
    assert fails(daemon, "one.templatepool.info", -5, -1, -1) == (
        "[one.templatepool.info] Incorrect filter_flag", API, -1)
    assert fault(daemon, "one.templatepool.info", -2, -1) == (-501, "Not enough parameters")
    ok(daemon, "one.user.update", uid, 'OPENNEBULA=[API_LIST_ORDER="ASC"]', 1)
    assert pool(-3, -1, -1) == mine


def test_clone_and_recursive_flags(daemon):
    ds = dummy_datastore(daemon)
    uid, session = user(daemon)
    a = owned(daemon, ds, uid)
    b_name = unique("b")
    b = owned(daemon, ds, uid, b_name)
    uname = field(ok(daemon, "one.user.info", uid), "NAME")
    name = unique("src")
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{name}"\nDISK=[IMAGE_ID="{a}"]\nDISK=[TYPE="swap",SIZE="10"]\n'
             f'DISK=[IMAGE="{b_name}",IMAGE_UNAME="{uname}",OPENNEBULA_MANAGED="NO"]',
             session=session)
    assert fails(daemon, "one.template.clone", tid, name, session=session) == (
        f"[one.template.clone] Error allocating a new {T}. NAME is already taken by "
        f"TEMPLATE {tid}.", ALLOC, -1)
    plain = ok(daemon, "one.template.clone", tid, unique("plain"), session=session)
    assert (parse(ok(daemon, "one.template.info", plain)).find("TEMPLATE") is not None
            and re.search(r"<TEMPLATE>.*</TEMPLATE>", ok(daemon, "one.template.info", plain))
            .group(0) == re.search(r"<TEMPLATE>.*</TEMPLATE>",
                                   ok(daemon, "one.template.info", tid)).group(0))
    cname = unique("c")
    copy = ok(daemon, "one.template.clone", tid, cname, True, session=session)
    disks = parse(ok(daemon, "one.template.info", copy)).findall("TEMPLATE/DISK")
    new = [int(d.findtext("IMAGE_ID")) for d in disks if d.findtext("IMAGE_ID")]
    assert [[e.tag for e in d] for d in disks] == [["IMAGE_ID"], ["SIZE", "TYPE"], ["IMAGE_ID"]]
    assert [field(info(daemon, i), "NAME") for i in new] == [f"{cname}-disk-0",
                                                              f"{cname}-disk-2"]
    for i in new:
        wait_state(daemon, i, 1)
    # recursive chmod: the template, then each image
    ok(daemon, "one.template.chmod", copy, -1, -1, -1, -1, -1, -1, 1, -1, -1, True,
       session=session)
    assert [num(info(daemon, i), "PERMISSIONS/OTHER_U") for i in new] == [1, 1]
    # recursive delete removes the images the DISKs name
    assert ok(daemon, "one.template.delete", copy, True, session=session) == copy
    for i in new:
        deadline = time.monotonic() + 20
        while call(daemon, "one.image.info", i)[0]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert fails(daemon, "one.template.info", copy)[1] == NO_EXISTS
    # a plain delete keeps them
    ok(daemon, "one.template.delete", plain, False, session=session)
    assert num(info(daemon, a), "STATE") == 1 and num(info(daemon, b), "STATE") == 1


def test_failed_recursive_clone_leaves_nothing(daemon):
    ds = dummy_datastore(daemon)
    uid, session = user(daemon)
    mine = owned(daemon, ds, uid)
    secret = register(daemon, ds, name=unique("adm"))  # oneadmin's, no USE for the user
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("f")}"\nDISK=[IMAGE_ID="{mine}"]\nDISK=[IMAGE_ID="{secret}"]',
             session=session)
    images_before = ok(daemon, "one.imagepool.info", -2, -1, -1)
    cname = unique("fail")
    assert fails(daemon, "one.template.clone", tid, cname, True, session=session) == (
        "[one.template.clone] Failed to clone images: Not authorized to perform USE IMAGE "
        f"[{secret}]", ACTION, -1)
    deadline = time.monotonic() + 20
    while ok(daemon, "one.imagepool.info", -2, -1, -1) != images_before:
        assert time.monotonic() < deadline, "the clone of the first image is left"
        time.sleep(0.1)
    assert cname not in ok(daemon, "one.templatepool.info", -2, -1, -1)
    # the cleanup's delete and the first clone's driver reply lock the same rows: in
    # one order (claim, then image), or PostgreSQL aborts one of them
    assert "deadlock" not in daemon.log_text()


def test_referenced_images_for_orphans(daemon):
    """oneimage orphans' rule (vms.md §4.10) through the domain function the VM session
    wires: IMAGE_ID and IMAGE + IMAGE_UNAME count; IMAGE alone and IMAGE + IMAGE_UID
    do not."""
    from oned_images.domain.templates import orphan_check_refs

    uid, session = user(daemon)
    uname = field(ok(daemon, "one.user.info", uid), "NAME")
    by_id, by_uname, by_name, by_uid = (owned(daemon, 1, uid) for _ in range(4))
    names = {i: field(info(daemon, i), "NAME") for i in (by_uname, by_name, by_uid)}
    ok(daemon, "one.template.allocate",
       f'NAME="{unique("o")}"\nDISK=[IMAGE_ID="{by_id}"]\n'
       f'DISK=[IMAGE="{names[by_uname]}",IMAGE_UNAME="{uname}"]\n'
       f'DISK=[IMAGE="{names[by_name]}"]\nDISK=[IMAGE="{names[by_uid]}",IMAGE_UID="{uid}"]',
       session=session)
    bodies = re.findall(r"<VMTEMPLATE>.*?</VMTEMPLATE>",
                        ok(daemon, "one.templatepool.info", -2, -1, -1))
    ids, pairs = orphan_check_refs(bodies)
    assert by_id in ids and (names[by_uname], uname) in pairs
    assert (names[by_name], uname) not in pairs and by_uid not in ids


def test_extended_info_adds_image_and_datastore_attributes(daemon):
    """oned 7.0.2's reply (sample one.template.info.extended): DISKs get the image's and
    the datastore's attributes, DISK_ID and the image's current state; no acquire."""
    ds = ok(daemon, "one.datastore.allocate", 'NAME="vm_img"\nDS_MAD="fs"\nTM_MAD="dummy"', -1)
    wait_for(lambda: num(ok(daemon, "one.datastore.info", ds), "FREE_MB") > 10)
    os_id = register(daemon, ds, name="os", source="/var/tmp/vxs/os.qcow2", size=10,
                     fmt="qcow2")
    pers = register(daemon, ds, name="pers", source="/var/tmp/vxs/pers.raw", size=10,
                    extra='PERSISTENT="YES"')
    tid = ok(daemon, "one.template.allocate",
             f'NAME="tmpl"\nCPU="0.5"\nMEMORY="128"\nDESCRIPTION="sample"\n'
             f'DISK=[IMAGE_ID="{os_id}"]\nDISK=[IMAGE="pers"]\nCONTEXT=[NETWORK="YES"]')
    plain = ok(daemon, "one.template.info", tid)
    doc = ok(daemon, "one.template.info", tid, True)
    sample = (xsd_dir().parent / "samples" / "one.template.info.extended.body.xml").read_text()
    expected = (sample.strip().replace("<ID>0</ID>", f"<ID>{tid}</ID>", 1)
                .replace("<REGTIME>1796032447</REGTIME>", f"<REGTIME>{regtime(doc)}</REGTIME>")
                .replace("<DATASTORE_ID><![CDATA[101]]>", f"<DATASTORE_ID><![CDATA[{ds}]]>")
                .replace("<IMAGE_ID><![CDATA[0]]>", f"<IMAGE_ID><![CDATA[{os_id}]]>")
                .replace("<IMAGE_ID><![CDATA[1]]>", f"<IMAGE_ID><![CDATA[{pers}]]>"))
    assert doc == expected
    # the stored template is unchanged and the images are not acquired
    assert ok(daemon, "one.template.info", tid) == plain
    assert [num(info(daemon, i), "RUNNING_VMS") for i in (os_id, pers)] == [0, 0]
    # extended needs USE on the images too
    uid, session = user(daemon)
    ok(daemon, "one.template.chmod", tid, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    assert ok(daemon, "one.template.info", tid, False, session=session) == ok(
        daemon, "one.template.info", tid)
    # (IMAGE="pers" resolves among the caller's images, where there is none)
    assert fails(daemon, "one.template.info", tid, True, session=session) == (
        f"[one.template.info] User [{uid}] : Not authorized to perform USE IMAGE [{os_id}].",
        AUTHZ, -1)


def test_wrong_types_are_faults_and_write_nothing(daemon):
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("w")}"')
    before = ok(daemon, "one.template.info", tid)
    not_int = "Parameter that is supposed to be integer is not"
    not_str = "Parameter that is supposed to be a string is not"
    not_bool = "Parameter that is supposed to be boolean is not"
    for method, args, text in (
            ("one.template.info", ("0",), not_int),
            ("one.template.info", (tid, 1), not_bool),
            ("one.template.update", (tid, 5, 0), not_str),
            ("one.template.update", (tid, "A=1", "1"), not_int),
            ("one.template.delete", (tid, "yes"), not_bool),
            ("one.template.clone", (tid, 7), not_str),
            ("one.template.clone", (tid, "n", 1), not_bool),
            ("one.template.chmod", (tid, 1, 1, 1, 1, 1, 1, 1, 1, "1"), not_int),
            ("one.template.chmod", (tid, *[-1] * 9, "x"), not_bool),
            ("one.template.chown", (tid, "0", 0), not_int),
            ("one.template.rename", (tid, 3), not_str),
            ("one.template.lock", (tid, "1"), not_int),
            ("one.template.lock", (tid, 1, 0), not_bool),
            ("one.template.unlock", ("0",), not_int),
            ("one.templatepool.info", ("-2", -1, -1), not_int),
            ("one.host.allocate", (1, "dummy", "dummy", -1), not_str),
            ("one.host.status", (0, True), not_int),
            ("one.cluster.info", ("0",), not_int)):
        assert fault(daemon, method, *args) == (-501, text), (method, args)
    assert ok(daemon, "one.template.info", tid) == before


def test_concurrent_allocates_of_one_name_one_wins(daemon):
    name = unique("race")
    replies: list = []
    start = threading.Barrier(8)

    def allocate():
        start.wait()
        replies.append(call(daemon, "one.template.allocate", f'NAME="{name}"'))

    workers = [threading.Thread(target=allocate) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    won = [r[1] for r in replies if r[0]]
    assert len(won) == 1
    assert sorted(r[1] for r in replies if not r[0]) == [
        f"[one.template.allocate] NAME is already taken by TEMPLATE {won[0]}."] * 7
    assert len(re.findall(rf"<NAME>{name}</NAME>",
                          ok(daemon, "one.templatepool.info", -2, -1, -1))) == 1


def test_recursive_chmod_reports_the_images_it_could_not_change(daemon):
    uid, session = user(daemon)
    mine = owned(daemon, 1, uid)
    theirs = register(daemon, 1, name=unique("adm"))
    ok(daemon, "one.image.chmod", theirs, -1, -1, -1, -1, -1, -1, 1, -1, -1)  # USE for all
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("rc")}"\nDISK=[IMAGE_ID="{mine}"]\nDISK=[IMAGE_ID="{theirs}"]',
             session=session)
    assert fails(daemon, "one.template.chmod", tid, -1, -1, -1, 1, -1, -1, -1, -1, -1, True,
                 session=session) == (
        f"[one.template.chmod] Cannot chmod image: {theirs}", ACTION, -1)
    # the template and the caller's image changed all the same (as oned)
    assert num(ok(daemon, "one.template.info", tid), "PERMISSIONS/GROUP_U") == 1
    assert num(info(daemon, mine), "PERMISSIONS/GROUP_U") == 1
    assert num(info(daemon, theirs), "PERMISSIONS/GROUP_U") == 0


def test_pyone_template_calls(daemon):
    one = daemon.client()
    name = unique("py")
    tid = one.template.allocate(f'NAME="{name}"\nMEMORY="64"\nDISK=[IMAGE_ID="0"]')
    t = one.template.info(tid)
    assert (t.ID, t.NAME, t.TEMPLATE["MEMORY"], t.PERMISSIONS.OWNER_M) == (tid, name, "64", 1)
    assert one.template.update(tid, 'CPU="1"', 1) == tid
    copy = one.template.clone(tid, name + "-c")
    assert one.template.lock(tid, 1) == tid
    assert one.template.info(tid).LOCK.LOCKED == 1
    assert one.template.unlock(tid) == tid
    listed = {v.ID: v.NAME for v in one.templatepool.info(-2, -1, -1).VMTEMPLATE}
    assert (listed[tid], listed[copy]) == (name, name + "-c")
    assert one.template.delete(copy) == copy
