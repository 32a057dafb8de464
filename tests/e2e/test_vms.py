"""Virtual machines on dummy hosts (vms.md §4.7, §5, §6): allocate, instantiate, info,
the pool forms, rename/chmod/chown, deploy, every one.vm.action with the dummy drivers'
transient states, the built-in scheduler and the host capacity that follows the VMs.
``ok`` validates every document against vm.xsd / vm_pool.xsd / host.xsd."""

from __future__ import annotations

import re
import threading
import time
import xmlrpc.client

import pytest

from tests.support.seed import fails, fault, field, group, num, ok, parse, unique, user

pytestmark = [pytest.mark.timeout(120)]

INTERNAL, NO_EXISTS, AUTHZ, ACTION, API, ALLOCATE = 8192, 1024, 512, 2048, 4096, 16384
SMALL = 'CPU="0.1"\nMEMORY="64"'


def wait_vm(d, oid: int, state: int, lcm: int = 0, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        doc = ok(d, "one.vm.info", oid)
        if (num(doc, "STATE"), num(doc, "LCM_STATE")) == (state, lcm):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)


def wait_host(d, hid: int, state: int = 2) -> str:
    deadline = time.monotonic() + 10
    while True:
        doc = ok(d, "one.host.info", hid)
        if num(doc, "STATE") == state:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)


@pytest.fixture(scope="module")
def host(daemon):
    """A MONITORED dummy host of this module; VMs reach it only by name (SCHED_REQUIREMENTS)
    or by deploy, so other modules' hosts do not matter."""
    name = unique("vmh")
    hid = ok(daemon, "one.host.allocate", name, "dummy", "dummy", -1)
    wait_host(daemon, hid)
    return hid, name


def pinned(name: str) -> str:
    return f'{SMALL}\nSCHED_REQUIREMENTS="NAME=\\"{name}\\""'


def nowhere(small: str = SMALL) -> str:
    return f'{small}\nSCHED_REQUIREMENTS="NAME=\\"nohost\\""'


def share(d, hid: int) -> dict:
    el = parse(ok(d, "one.host.info", hid)).find("HOST_SHARE")
    return {k: int(el.findtext(k)) for k in ("CPU_USAGE", "MEM_USAGE", "RUNNING_VMS")}


def host_vms(d, hid: int) -> list[int]:
    return [int(e.text) for e in parse(ok(d, "one.host.info", hid)).findall("VMS/ID")]


def history(doc: str) -> list[dict]:
    return [{c.tag: c.text or "" for c in h} for h in parse(doc).findall("HISTORY_RECORDS/HISTORY")]


def normal(doc: str) -> str:
    doc = re.sub(r"<STIME>\d+</STIME>", "<STIME>T</STIME>", doc)
    return re.sub(r"<UUID><!\[CDATA\[[0-9a-f-]{36}\]\]></UUID>", "<UUID>U</UUID>", doc)


# ------------------------------------------------------------------ allocate and documents
def test_allocate_on_hold_documents_in_every_form(daemon):
    oid = ok(daemon, "one.vm.allocate", f'NAME="doc"\n{SMALL}\nDESCRIPTION="d"\nVCPU="2"', True)
    full = ok(daemon, "one.vm.info", oid)
    perms = ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
             "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
             "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>")
    assert normal(full) == (
        f"<VM><ID>{oid}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
        f"<GNAME>oneadmin</GNAME><NAME>doc</NAME>{perms}<LAST_POLL>0</LAST_POLL>"
        "<STATE>2</STATE><LCM_STATE>0</LCM_STATE><PREV_STATE>2</PREV_STATE>"
        "<PREV_LCM_STATE>0</PREV_LCM_STATE><RESCHED>0</RESCHED><STIME>T</STIME>"
        "<ETIME>0</ETIME><DEPLOY_ID></DEPLOY_ID><MONITORING></MONITORING>"
        "<SCHED_ACTIONS></SCHED_ACTIONS><TEMPLATE><AUTOMATIC_REQUIREMENTS><![CDATA[!(PIN_POLICY"
        " = PINNED)]]></AUTOMATIC_REQUIREMENTS><CPU><![CDATA[0.1]]></CPU><MEMORY><![CDATA[64]]>"
        "</MEMORY><OS><UUID>U</UUID></OS><SUBMIT_ON_HOLD><![CDATA[YES]]></SUBMIT_ON_HOLD>"
        f"<VCPU><![CDATA[2]]></VCPU><VMID><![CDATA[{oid}]]></VMID></TEMPLATE><USER_TEMPLATE>"
        "<DESCRIPTION><![CDATA[d]]></DESCRIPTION></USER_TEMPLATE><HISTORY_RECORDS/>"
        "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS></BACKUP_IDS></BACKUPS></VM>")
    short = ok(daemon, "one.vmpool.info", -2, oid, oid, -2)
    assert normal(short) == (
        f"<VM_POOL><VM><ID>{oid}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
        "<GNAME>oneadmin</GNAME><NAME>doc</NAME><LAST_POLL>0</LAST_POLL><STATE>2</STATE>"
        "<LCM_STATE>0</LCM_STATE><RESCHED>0</RESCHED><STIME>T</STIME><ETIME>0</ETIME>"
        "<DEPLOY_ID></DEPLOY_ID><TEMPLATE><CPU>0.1</CPU><MEMORY>64</MEMORY><VCPU>2</VCPU>"
        "</TEMPLATE><MONITORING/><USER_TEMPLATE></USER_TEMPLATE><HISTORY_RECORDS/></VM>"
        "</VM_POOL>")
    assert ok(daemon, "one.vmpool.infoextended", -2, oid, oid, -2) == f"<VM_POOL>{full}</VM_POOL>"
    one = daemon.client()
    vm = one.vm.info(oid)
    assert (vm.NAME, vm.STATE, vm.TEMPLATE["MEMORY"]) == ("doc", 2, "64")
    listed = {v.ID: v for v in one.vmpool.info(-2, -1, -1, -1).VM}
    assert (listed[oid].NAME, listed[oid].STATE) == ("doc", 2)
    assert oid in {v.ID for v in one.vmpool.infoextended(-2, -1, -1, -1).VM}


def test_allocate_defaults_and_short_form_of_an_empty_user_template(daemon):
    oid = ok(daemon, "one.vm.allocate", nowhere().replace("SCHED_REQUIREMENTS", "X"), True)
    doc = ok(daemon, "one.vm.info", oid)
    assert field(doc, "NAME") == f"one-{oid}"
    # without hold on the call there is no SUBMIT_ON_HOLD; 2 params are accepted too
    oid2 = ok(daemon, "one.vm.allocate", f"{SMALL}\nSCHED_REQUIREMENTS=\"NAME=nohost\"")
    doc2 = ok(daemon, "one.vm.info", oid2)
    assert num(doc2, "STATE") == 1 and field(doc2, "TEMPLATE/SUBMIT_ON_HOLD") is None
    oid3 = ok(daemon, "one.vm.allocate", SMALL, True)
    assert "<MONITORING/><USER_TEMPLATE/><HISTORY_RECORDS/>" in ok(
        daemon, "one.vmpool.info", -2, oid3, oid3, -2)


@pytest.mark.parametrize("text, detail", [
    ('CPU="1"', "MEMORY attribute must be a positive integer value."),
    ('CPU="1"\nMEMORY="0"', "MEMORY attribute must be a positive integer value."),
    ('MEMORY="64"', "CPU attribute must be a positive float or integer value."),
    ('MEMORY="64"\nCPU="x"', "CPU attribute must be a positive float or integer value."),
    ('MEMORY="64"\nCPU="1"\nVCPU="-1"', "VCPU attribute must be a positive integer value."),
    ('MEMORY="64"\nCPU="1"\nNAME="a/b"', "Invalid NAME, char '/' is not allowed"),
    ('MEMORY="64"\nCPU="1"\nDEPLOY_ID="one-12"', "Trying to import an OpenNebula VM: 'one-12'."),
])
def test_allocate_refusals_and_the_id_is_given_back(daemon, text, detail):
    assert fails(daemon, "one.vm.allocate", text, True) == (
        f"[one.vm.allocate] {detail}", INTERNAL, -1)
    a = ok(daemon, "one.vm.allocate", SMALL, True)
    b = ok(daemon, "one.vm.allocate", SMALL, True)
    assert fails(daemon, "one.vm.allocate", text, True)[1] == INTERNAL
    assert ok(daemon, "one.vm.allocate", SMALL, True) == b + 1 == a + 2


def test_allocate_parse_error_types_and_rights(daemon):
    msg, code, _ = fails(daemon, "one.vm.allocate", "CPU=[", True)
    assert code == INTERNAL and msg.startswith("[one.vm.allocate] Parse error: syntax error")
    assert fault(daemon, "one.vm.allocate", 5, True)[0] == -501
    _, session = user(daemon)
    assert fails(daemon, "one.vm.allocate", f'{SMALL}\nCPU_COST="1"', True,
                 session=session) == (
        f"[one.vm.allocate] User [{_}] : VM Template includes a restricted attribute "
        "CPU_COST.", AUTHZ, -1)
    gid = group(daemon)
    uid2, s2 = user(daemon, groups=[gid])
    assert fails(daemon, "one.vm.allocate", SMALL, True, session=s2) == (
        f"[one.vm.allocate] User [{uid2}] : Not authorized to perform CREATE VM.", AUTHZ, -1)


# ------------------------------------------------------------------ info, pool, owner verbs
def test_info_of_missing_and_other_users_vms(daemon):
    assert fails(daemon, "one.vm.info", 99999) == (
        "[one.vm.info] Error getting virtual machine [99999].", NO_EXISTS, 99999)
    uid, session = user(daemon)
    mine = ok(daemon, "one.vm.allocate", SMALL, True, session=session)
    theirs = ok(daemon, "one.vm.allocate", SMALL, True)
    assert num(ok(daemon, "one.vm.info", mine, session=session), "UID") == uid
    assert fails(daemon, "one.vm.info", theirs, session=session) == (
        f"[one.vm.info] User [{uid}] : Not authorized to perform USE VM [{theirs}].", AUTHZ,
        -1)
    for verb, args in (("one.vm.rename", ("x",)), ("one.vm.action", ())):
        call_args = ("hold", theirs) if verb == "one.vm.action" else (theirs, *args)
        assert fails(daemon, verb, *call_args, session=session) == (
            f"[{verb}] User [{uid}] : Not authorized to perform MANAGE VM [{theirs}].", AUTHZ,
            -1)
    ids = [int(e.text) for e in parse(ok(daemon, "one.vmpool.info", -2, -1, -1, -2,
                                         session=session)).findall("VM/ID")]
    assert ids == [mine]


def test_pool_state_filter_paging_and_refusals(daemon):
    a = ok(daemon, "one.vm.allocate", SMALL, True)
    b = ok(daemon, "one.vm.allocate", SMALL, True)
    c = ok(daemon, "one.vm.allocate", SMALL, True)
    ok(daemon, "one.vm.action", "terminate", b)
    assert num(ok(daemon, "one.vm.info", b), "STATE") == 6  # DONE at once from HOLD

    def ids(*args) -> list[int]:
        return [int(e.text) for e in parse(ok(daemon, "one.vmpool.info", *args)).findall(
            "VM/ID")]

    assert ids(-2, a, c, -2) == [c, b, a]
    assert ids(-2, a, c, -1) == [c, a]
    assert ids(-2, a, c, 6) == [b]
    assert ids(-2, a, c, 7) == []
    assert ids(-2, a, c, 2) == [c, a]
    every = ids(-2, -1, -1, -2)
    assert ids(-2, 1, -2, -2) == every[1:3]
    assert fails(daemon, "one.vmpool.info", -2, -1, -1, 12) == (
        "[one.vmpool.info] Incorrect filter_flag, state", API, -1)
    assert fails(daemon, "one.vmpool.info", -5, -1, -1, -3)[0] == (
        "[one.vmpool.info] Incorrect filter_flag, state")
    assert fails(daemon, "one.vmpool.info", -5, -1, -1, -2) == (
        "[one.vmpool.info] Incorrect filter_flag", API, -1)
    assert fails(daemon, "one.vmpool.infoextended", -2, -1, -1, -2, "x") == (
        "[one.vmpool.infoextended] JSON query search is not supported by the SQL backend",
        INTERNAL, -1)
    assert fault(daemon, "one.vmpool.info", -2, -1, -1)[1] == "Not enough parameters"


def test_rename_chmod_chown(daemon):
    oid = ok(daemon, "one.vm.allocate", SMALL, True)
    assert ok(daemon, "one.vm.rename", oid, "renamed") == oid
    assert field(ok(daemon, "one.vm.info", oid), "NAME") == "renamed"
    assert fails(daemon, "one.vm.rename", oid, "a/b") == (
        "[one.vm.rename] Invalid NAME, char '/' is not allowed", ACTION, -1)
    assert fails(daemon, "one.vm.rename", oid, "") == (
        "[one.vm.rename] Invalid NAME, it cannot be empty", ACTION, -1)
    ok(daemon, "one.vm.chmod", oid, 1, 1, 1, 1, 0, 0, 1, 0, 0)
    perms = parse(ok(daemon, "one.vm.info", oid)).find("PERMISSIONS")
    assert [int(e.text) for e in perms] == [1, 1, 1, 1, 0, 0, 1, 0, 0]
    uid, session = user(daemon)
    ok(daemon, "one.vm.chown", oid, uid, 1)
    doc = ok(daemon, "one.vm.info", oid, session=session)
    assert (num(doc, "UID"), num(doc, "GID"), field(doc, "GNAME")) == (uid, 1, "users")
    assert "<UID>" in ok(daemon, "one.vmpool.info", -3, -1, -1, -2, session=session)
    # a DONE VM can still be renamed
    ok(daemon, "one.vm.action", "terminate", oid)
    ok(daemon, "one.vm.rename", oid, "gone", session=session)
    assert fails(daemon, "one.vm.chown", 99999, 0, 0)[1] == NO_EXISTS


def test_locked_vm_refuses_manage_operations(daemon):
    uid, session = user(daemon)
    oid = ok(daemon, "one.vm.allocate", SMALL, True, session=session)
    ok(daemon, "one.vm.lock", oid, 2, False, session=session)
    doc = ok(daemon, "one.vm.info", oid, session=session)
    assert num(doc, "LOCK/LOCKED") == 2
    assert "<LOCK><LOCKED>2</LOCKED></LOCK><TEMPLATE>" in ok(
        daemon, "one.vmpool.info", -2, oid, oid, -2)
    assert fails(daemon, "one.vm.rename", oid, "x", session=session) == (
        f"[one.vm.rename] User [{uid}] : Not authorized to perform MANAGE VM [{oid}].",
        AUTHZ, -1)
    assert fails(daemon, "one.vm.action", "terminate", oid)[0] == (
        f"[one.vm.action] User [0] : VM is locked. [{oid}].")
    ok(daemon, "one.vm.unlock", oid, session=session)
    ok(daemon, "one.vm.action", "terminate", oid, session=session)
    assert num(ok(daemon, "one.vm.info", oid), "STATE") == 6


# ------------------------------------------------------------------ actions
def test_action_refusals(daemon):
    oid = ok(daemon, "one.vm.allocate", SMALL, True)
    assert fails(daemon, "one.vm.action", "migrate", oid) == (
        '[one.vm.action] Action "migrate" is not supported', ACTION, -1)
    assert fails(daemon, "one.vm.action", "hold", oid) == (
        '[one.vm.action] Error performing action "hold": This action is not available for '
        "state HOLD", ACTION, -1)
    for act in ("poweroff", "suspend", "stop", "undeploy", "resume", "poweroff-hard"):
        assert fails(daemon, "one.vm.action", act, oid)[0] == (
            f'[one.vm.action] Error performing action "{act}": This action is not available '
            "for state HOLD")
    assert fails(daemon, "one.vm.action", "hold", 99999) == (
        "[one.vm.action] Error getting virtual machine [99999].", NO_EXISTS, 99999)
    assert fault(daemon, "one.vm.action", oid, "hold")[0] == -501
    # release/hold round trip (the VM cannot be placed anywhere)
    ok(daemon, "one.vm.update" if False else "one.vm.rename", oid, "rh")
    oid2 = ok(daemon, "one.vm.allocate", nowhere(), True)
    ok(daemon, "one.vm.action", "release", oid2)
    assert num(ok(daemon, "one.vm.info", oid2), "STATE") == 1
    ok(daemon, "one.vm.action", "hold", oid2)
    assert num(ok(daemon, "one.vm.info", oid2), "STATE") == 2
    # terminate of a DONE VM succeeds and changes nothing
    ok(daemon, "one.vm.action", "terminate", oid2)
    done = ok(daemon, "one.vm.info", oid2)
    assert ok(daemon, "one.vm.action", "terminate", oid2) == oid2
    assert ok(daemon, "one.vm.info", oid2) == done


def test_life_cycle_on_a_dummy_host_through_deploy(daemon, host):
    hid, hname = host
    before = share(daemon, hid)
    half = nowhere('CPU="0.5"\nMEMORY="64"')
    oid = ok(daemon, "one.vm.allocate", f'NAME="lc"\n{half}', True)
    assert ok(daemon, "one.vm.deploy", oid, hid, True, -1, "") == oid
    doc = wait_vm(daemon, oid, 3, 3)
    assert field(doc, "DEPLOY_ID") == f"{hname}:lc:dummy"
    assert field(doc, "TEMPLATE/TM_MAD_SYSTEM") == "local"
    [h0] = history(doc)
    assert {k: h0[k] for k in ("OID", "SEQ", "HOSTNAME", "HID", "CID", "VM_MAD", "TM_MAD",
                               "DS_ID", "PLAN_ID", "ACTION_ID", "ACTION", "UID", "GID",
                               "REQUEST_ID", "ETIME")} == {
        "OID": str(oid), "SEQ": "0", "HOSTNAME": hname, "HID": str(hid), "CID": "0",
        "VM_MAD": "dummy", "TM_MAD": "local", "DS_ID": "0", "PLAN_ID": "-2",
        "ACTION_ID": "-1", "ACTION": "0", "UID": "-1", "GID": "-1", "REQUEST_ID": "-1",
        "ETIME": "0"}
    assert h0["PSTIME"] != "0" and h0["RSTIME"] != "0"
    assert share(daemon, hid) == {"CPU_USAGE": before["CPU_USAGE"] + 50,
                                  "MEM_USAGE": before["MEM_USAGE"] + 64 * 1024,
                                  "RUNNING_VMS": before["RUNNING_VMS"] + 1}
    assert oid in host_vms(daemon, hid)
    assert fails(daemon, "one.vm.deploy", oid, hid, False, -1, "") == (
        "[one.vm.deploy] Deploy action is not available for state RUNNING", ACTION, -1)
    assert fails(daemon, "one.vm.action", "hold", oid)[0].endswith(
        "This action is not available for state RUNNING")
    assert fails(daemon, "one.host.delete", hid) == (
        "[one.host.delete] Cannot delete host. Can not remove a host with running VMs",
        ACTION, -1)

    ok(daemon, "one.vm.action", "poweroff", oid)
    doc = wait_vm(daemon, oid, 8)
    assert history(doc)[-1]["ACTION"] == "19" and history(doc)[-1]["ETIME"] == "0"
    assert oid in host_vms(daemon, hid)  # POWEROFF keeps the host's capacity
    ok(daemon, "one.vm.action", "resume", oid)
    doc = wait_vm(daemon, oid, 3, 3)
    records = history(doc)
    assert [r["SEQ"] for r in records] == ["0", "1"] and records[0]["ETIME"] != "0"
    assert (records[1]["ACTION"], records[1]["PLAN_ID"], records[1]["PSTIME"]) == ("0", "-2", "0")
    # the extended pool form carries only the current record, info all of them
    ext = ok(daemon, "one.vmpool.infoextended", -2, oid, oid, -2)
    assert [r.findtext("SEQ") for r in parse(ext).findall("VM/HISTORY_RECORDS/HISTORY")] == ["1"]
    short = ok(daemon, "one.vmpool.info", -2, oid, oid, -2)
    assert (f"<HISTORY_RECORDS><HISTORY><OID>{oid}</OID><SEQ>1</SEQ><HOSTNAME><![CDATA["
            f"{hname}]]></HOSTNAME><HID>{hid}</HID><CID>0</CID><DS_ID>0</DS_ID><VM_MAD>"
            "<![CDATA[dummy]]></VM_MAD><TM_MAD><![CDATA[local]]></TM_MAD><ACTION><![CDATA[0]]>"
            "</ACTION></HISTORY></HISTORY_RECORDS>") in short

    ok(daemon, "one.vm.action", "suspend", oid)
    wait_vm(daemon, oid, 5)
    ok(daemon, "one.vm.action", "resume", oid)
    wait_vm(daemon, oid, 3, 3)
    ok(daemon, "one.vm.action", "stop", oid)
    doc = wait_vm(daemon, oid, 4)
    assert history(doc)[-1]["ACTION"] == "9" and history(doc)[-1]["ETIME"] != "0"
    assert oid not in host_vms(daemon, hid)  # STOPPED left the host
    assert share(daemon, hid) == before
    ok(daemon, "one.vm.deploy", oid, hid, False, -1, "")
    wait_vm(daemon, oid, 3, 3)
    assert [r["SEQ"] for r in history(ok(daemon, "one.vm.info", oid))] == ["0", "1", "2", "3"]
    ok(daemon, "one.vm.action", "undeploy", oid)
    doc = wait_vm(daemon, oid, 9)
    assert history(doc)[-1]["ACTION"] == "5"
    assert share(daemon, hid) == before
    ok(daemon, "one.vm.action", "terminate", oid)
    doc = wait_vm(daemon, oid, 6)
    assert num(doc, "ETIME") > 0
    assert share(daemon, hid) == before


def test_terminate_of_a_running_vm_passes_shutdown_and_epilog(daemon, host):
    hid, _ = host
    oid = ok(daemon, "one.vm.allocate", nowhere(), True)
    ok(daemon, "one.vm.deploy", oid, hid)
    wait_vm(daemon, oid, 3, 3)
    ok(daemon, "one.vm.action", "terminate-hard", oid)
    seen = set()
    deadline = time.monotonic() + 10
    while True:
        doc = ok(daemon, "one.vm.info", oid)
        seen.add((num(doc, "STATE"), num(doc, "LCM_STATE")))
        if num(doc, "STATE") == 6:
            break
        assert time.monotonic() < deadline
    assert seen <= {(3, 12), (3, 11), (6, 0)}
    h = history(doc)[-1]
    assert h["ACTION"] == "28" and h["UID"] == "0" and "0" not in (
        h["RETIME"], h["ESTIME"], h["EETIME"], h["ETIME"])
    assert oid not in host_vms(daemon, hid)


def test_deploy_refusals(daemon, host):
    hid, _ = host
    oid = ok(daemon, "one.vm.allocate", nowhere(), True)
    assert fails(daemon, "one.vm.deploy", oid, 9999, False, -1, "") == (
        "[one.vm.deploy] Error getting host [9999].", NO_EXISTS, 9999)
    assert fails(daemon, "one.vm.deploy", 99999, hid, False, -1, "") == (
        "[one.vm.deploy] Error getting virtual machine [99999].", NO_EXISTS, 99999)
    assert fails(daemon, "one.vm.deploy", oid, hid, False, 1, "") == (
        "[one.vm.deploy] Trying to use datastore [1] to deploy the VM, but it is not of type "
        "system datastore.", INTERNAL, -1)
    assert fails(daemon, "one.vm.deploy", oid, hid, False, 555, "") == (
        "[one.vm.deploy] Error getting datastore [555].", NO_EXISTS, 555)
    big = ok(daemon, "one.vm.allocate", 'CPU="100"\nMEMORY="64"', True)
    assert fails(daemon, "one.vm.deploy", big, hid, True, -1, "")[0].startswith(
        f"[one.vm.deploy] virtual machine [{big}] does not fit in host [{hid}]. Not enough "
        "CPU: 10000/")
    kvm = ok(daemon, "one.host.allocate", unique("kvm"), "kvm", "kvm", -1)
    assert fails(daemon, "one.vm.deploy", oid, kvm, False, -1, "") == (
        "[one.vm.deploy] Cannot find vmm driver: kvm", ACTION, -1)
    off = ok(daemon, "one.host.allocate", unique("off"), "dummy", "dummy", -1)
    ok(daemon, "one.host.status", off, 2)
    assert fails(daemon, "one.vm.deploy", oid, off, False, -1, "") == (
        "[one.vm.deploy] Host is offline, cannot use it to deploy VM", ACTION, -1)
    uid, session = user(daemon)
    mine = ok(daemon, "one.vm.allocate", SMALL, True, session=session)
    assert fails(daemon, "one.vm.deploy", mine, hid, False, -1, "", session=session)[0] == (
        f"[one.vm.deploy] User [{uid}] : Not authorized to perform ADMIN VM [{mine}].")
    assert num(ok(daemon, "one.vm.info", oid), "STATE") == 2


# ------------------------------------------------------------------ the scheduler
def test_scheduler_places_a_pending_vm_on_its_own(daemon, host):
    hid, hname = host
    started = time.monotonic()
    oid = ok(daemon, "one.vm.allocate", f'NAME="sched"\n{pinned(hname)}', False)
    doc = wait_vm(daemon, oid, 3, 3, timeout=15)
    assert time.monotonic() - started < 10
    [h] = history(doc)
    assert (h["HID"], h["PLAN_ID"], h["ACTION_ID"]) == (str(hid), "-1", "0")
    assert oid in host_vms(daemon, hid)
    # an unplaceable VM gets SCHED_MESSAGE, also in the short form
    lost = ok(daemon, "one.vm.allocate", nowhere(), False)
    deadline = time.monotonic() + 15
    while "SCHED_MESSAGE" not in (doc := ok(daemon, "one.vm.info", lost)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}: Cannot dispatch VM: No host "
                        r"meets SCHED_REQUIREMENTS", field(doc, "USER_TEMPLATE/SCHED_MESSAGE"))
    assert "<SCHED_MESSAGE><![CDATA[" in ok(daemon, "one.vmpool.info", -2, lost, lost, -2)
    assert num(doc, "STATE") == 1
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)


def test_resume_of_a_stopped_vm_goes_pending_and_is_placed_again(daemon, host):
    hid, hname = host
    oid = ok(daemon, "one.vm.allocate", pinned(hname), True)
    ok(daemon, "one.vm.deploy", oid, hid)
    wait_vm(daemon, oid, 3, 3)
    ok(daemon, "one.vm.action", "stop", oid)
    wait_vm(daemon, oid, 4)
    ok(daemon, "one.vm.action", "resume", oid)
    doc = wait_vm(daemon, oid, 3, 3, timeout=15)
    assert [(r["SEQ"], r["PLAN_ID"]) for r in history(doc)] == [("0", "-2"), ("1", "-1")]
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)


# ------------------------------------------------------------------ instantiate
def test_instantiate_name_hold_extra_and_documents(daemon):
    tname = unique("tpl")
    tid = ok(daemon, "one.template.allocate", f'NAME="{tname}"\n{SMALL}\nDESCRIPTION="x"')
    oid = ok(daemon, "one.template.instantiate", tid, "", True, 'MEMORY="200"', False)
    doc = ok(daemon, "one.vm.info", oid)
    assert field(doc, "NAME") == f"{tname}-{oid}"
    assert (field(doc, "TEMPLATE/MEMORY"), field(doc, "TEMPLATE/TEMPLATE_ID")) == ("200", str(tid))
    assert "TEMPLATE_NAME" not in doc
    assert field(doc, "USER_TEMPLATE/DESCRIPTION") == "x"
    assert (num(doc, "STATE"), field(doc, "TEMPLATE/SUBMIT_ON_HOLD")) == (2, "YES")
    named = ok(daemon, "one.template.instantiate", tid, "given", True, "", False)
    assert field(ok(daemon, "one.vm.info", named), "NAME") == "given"
    assert fault(daemon, "one.template.instantiate", tid, "", False)[1] == (
        "Not enough parameters")
    assert fails(daemon, "one.template.instantiate", 99999, "", True, "", False) == (
        "[one.template.instantiate] Error getting virtual machine template [99999].",
        NO_EXISTS, 99999)
    msg, code, _ = fails(daemon, "one.template.instantiate", tid, "", True, "A=[", False)
    assert code == INTERNAL and msg.startswith("[one.template.instantiate] Parse error")
    # insert errors are ALLOCATE errors naming the template
    bad = ok(daemon, "one.template.allocate", f'NAME="{unique("bad")}"\nCPU="1"')
    assert fails(daemon, "one.template.instantiate", bad, "", True, "", False) == (
        "[one.template.instantiate] Error allocating a new virtual machine template. MEMORY "
        "attribute must be a positive integer value.", ALLOCATE, -1)


def test_instantiate_rights_extra_needs_create_template_and_locks(daemon):
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("pub")}"\n{SMALL}')
    ok(daemon, "one.template.chmod", tid, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    gid = group(daemon)
    uid, session = user(daemon, groups=[gid])
    assert fails(daemon, "one.template.instantiate", tid, "", True, "", False,
                 session=session)[0] == (
        f"[one.template.instantiate] User [{uid}] : Not authorized to perform CREATE VM.")
    assert fails(daemon, "one.template.instantiate", tid, "", True, 'MEMORY="1"', False,
                 session=session)[0] == (
        f"[one.template.instantiate] User [{uid}] : Not authorized to perform CREATE "
        "TEMPLATE; Not authorized to perform CREATE VM.")
    u2, s2 = user(daemon)
    assert fails(daemon, "one.template.instantiate", tid, "", True, 'CONTEXT=[FILES="a"]',
                 False, session=s2) == (
        f"[one.template.instantiate] User [{u2}] : User Template includes a restricted "
        "attribute CONTEXT.", AUTHZ, -1)
    assert num(ok(daemon, "one.vm.info", ok(daemon, "one.template.instantiate", tid, "", True,
                                           "", False, session=s2), session=s2), "UID") == u2
    ok(daemon, "one.template.lock", tid, 1, False)
    assert fails(daemon, "one.template.instantiate", tid, "", True, "", False,
                 session=s2)[0] == (
        f"[one.template.instantiate] User [{u2}] : Not authorized to perform USE TEMPLATE "
        f"[{tid}].")
    ok(daemon, "one.template.unlock", tid)


# ------------------------------------------------------------------ bad input, concurrency
def test_huge_template_and_many_disks_do_not_stall_the_daemon(daemon):
    big = f'{SMALL}\nDESCRIPTION="{"x" * (1024 * 1024)}"'
    result: dict = {}

    def slow():
        proxy = xmlrpc.client.ServerProxy(daemon.url)
        result["big"] = proxy.one.vm.allocate(daemon.session(), big, True)

    t = threading.Thread(target=slow)
    t.start()
    started = time.monotonic()
    while t.is_alive() and time.monotonic() - started < 0.3:
        t0 = time.monotonic()
        ok(daemon, "one.system.version")
        assert time.monotonic() - t0 < 1.0
    t.join(60)
    assert result["big"][0] is True
    disks = "\n".join('DISK=[TYPE="fs",SIZE="1"]' for _ in range(300))
    reply = xmlrpc.client.ServerProxy(daemon.url).one.vm.allocate(daemon.session(),
                                                                  f"{SMALL}\n{disks}", True)
    assert reply[0] is True or reply[2] in (INTERNAL, ACTION)


def test_concurrent_actions_on_one_vm_leave_it_whole(daemon, host):
    hid, _ = host
    before = share(daemon, hid)
    oid = ok(daemon, "one.vm.allocate", nowhere(), True)
    ok(daemon, "one.vm.deploy", oid, hid)
    wait_vm(daemon, oid, 3, 3)
    replies = []

    def hammer(act: str) -> None:
        proxy = xmlrpc.client.ServerProxy(daemon.url)
        for _ in range(5):
            replies.append(proxy.one.vm.action(daemon.session(), act, oid)[0])
            proxy.one.vm.rename(daemon.session(), oid, unique("c"))

    threads = [threading.Thread(target=hammer, args=(a,)) for a in
               ("poweroff", "resume", "suspend", "terminate")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert True in replies
    deadline = time.monotonic() + 10
    while True:
        doc = ok(daemon, "one.vm.info", oid)
        if num(doc, "STATE") != 3 or num(doc, "LCM_STATE") == 3:
            if num(doc, "STATE") in (3, 5, 6, 8):
                break
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    if num(doc, "STATE") != 6:
        ok(daemon, "one.vm.action", "terminate-hard", oid)
        doc = wait_vm(daemon, oid, 6)
    assert share(daemon, hid) == before


def test_persistent_instantiate_clones_the_template_first(daemon):
    tname = unique("ptpl")
    tid = ok(daemon, "one.template.allocate", f'NAME="{tname}"\n{SMALL}')
    oid = ok(daemon, "one.template.instantiate", tid, "", True, 'DESCRIPTION="e"', True)
    doc = ok(daemon, "one.vm.info", oid)
    clone = num(doc, "TEMPLATE/TEMPLATE_ID")
    assert clone != tid and num(doc, "TEMPLATE/CLONING_TEMPLATE_ID") == tid
    copy = ok(daemon, "one.template.info", clone)
    assert field(copy, "NAME") == f"{tname}-copy"
    assert field(copy, "TEMPLATE/DESCRIPTION") == "e"  # the extra went into the clone
    assert field(doc, "NAME") == f"{tname}-copy-{oid}"


def test_a_vm_caught_between_driver_answers_goes_on_after_a_restart(fresh_daemon):
    d = fresh_daemon()
    hid = ok(d, "one.host.allocate", "rh", "dummy", "dummy", -1)
    wait_host(d, hid)
    oid = ok(d, "one.vm.allocate", nowhere(), True)
    ok(d, "one.vm.deploy", oid, hid)
    d.kill9()  # at once: the VM is in PROLOG or BOOT, its driver answer never came
    d.start()
    doc = wait_vm(d, oid, 3, 3)
    assert field(doc, "DEPLOY_ID") == f"rh:one-{oid}:dummy"
    assert host_vms(d, hid) == [oid]
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, 6)
    assert host_vms(d, hid) == []


def test_a_vm_waiting_for_a_host_is_placed_when_one_appears(daemon):
    name = unique("late")
    oid = ok(daemon, "one.vm.allocate", pinned(name), False)
    deadline = time.monotonic() + 15
    while "SCHED_MESSAGE" not in (doc := ok(daemon, "one.vm.info", oid)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert num(doc, "STATE") == 1
    hid = ok(daemon, "one.host.allocate", name, "dummy", "dummy", -1)
    doc = wait_vm(daemon, oid, 3, 3, timeout=20)
    assert history(doc)[-1]["HID"] == str(hid)
    # SCHED_MESSAGE stays after a successful placement (as oned)
    assert "Cannot dispatch VM" in field(doc, "USER_TEMPLATE/SCHED_MESSAGE")
    ok(daemon, "one.vm.action", "terminate-hard", oid)
    wait_vm(daemon, oid, 6)


def test_concurrent_instantiates_get_distinct_ids(daemon):
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("cc")}"\n{SMALL}')
    got: list = []

    def work():
        proxy = xmlrpc.client.ServerProxy(daemon.url)
        for _ in range(10):
            got.append(proxy.one.template.instantiate(daemon.session(), tid, "", True, "",
                                                      False))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r[0] for r in got) and len({r[1] for r in got}) == 60
    for oid in (r[1] for r in got):
        assert num(ok(daemon, "one.vm.info", oid), "TEMPLATE/TEMPLATE_ID") == tid


def test_wrong_parameter_types_are_faults_and_change_nothing(daemon):
    from oned_images.errors import Fault

    oid = ok(daemon, "one.vm.allocate", SMALL, True)
    before = ok(daemon, "one.vm.info", oid)
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("ty")}"\n{SMALL}')
    for method, args, text in (
            ("one.vm.allocate", (SMALL, "yes"), Fault.NOT_BOOL),
            ("one.vm.info", ("0",), Fault.NOT_INT),
            ("one.vm.rename", (oid, 5), Fault.NOT_STRING),
            ("one.vm.chmod", (oid, 1, 1, 1, 1, 1, 1, 1, 1, "1"), Fault.NOT_INT),
            ("one.vm.chown", (oid, "0", 0), Fault.NOT_INT),
            ("one.vm.action", (7, oid), Fault.NOT_STRING),
            ("one.vm.action", ("hold", "x"), Fault.NOT_INT),
            ("one.vm.deploy", (oid, "0"), Fault.NOT_INT),
            ("one.vm.deploy", (oid, 0, "no"), Fault.NOT_BOOL),
            ("one.vm.deploy", (oid, 0, False, -1, 4), Fault.NOT_STRING),
            ("one.vmpool.info", (-2, -1, -1, "x"), Fault.NOT_INT),
            ("one.vmpool.infoextended", (-2, -1, -1, -2, 3), Fault.NOT_STRING),
            ("one.template.instantiate", (tid, "", "no", "", False), Fault.NOT_BOOL),
            ("one.template.instantiate", (tid, 3, False, "", False), Fault.NOT_STRING)):
        assert fault(daemon, method, *args) == (-501, text), (method, args)
    assert ok(daemon, "one.vm.info", oid) == before
