"""VM and image quotas (vms.md §5.13, api.md §6.7): VM_QUOTA (VMS, CPU, MEMORY,
SYSTEM_DISK_SIZE, RUNNING_*) and IMAGE_QUOTA (RVMS) of users and groups, charged by
allocate/instantiate, following the VM through its states, released at DONE, moved by
chown; oned's refusal texts and codes; rollback of a refused call.  ``ok`` validates
every USER / GROUP document against user.xsd / group.xsd."""

from __future__ import annotations

import threading
import xmlrpc.client

import pytest

from tests.support.daemon import quota_drift, wait_for
from tests.support.seed import (
    call,
    datastore,
    fails,
    group,
    info,
    num,
    ok,
    register,
    section,
    unique,
    user,
)

pytestmark = [pytest.mark.timeout(120)]

AUTHZ, ACTION, INTERNAL = 512, 2048, 8192
EMPTY = "<VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"
VM_METRICS = ("CPU", "MEMORY", "RUNNING_CPU", "RUNNING_MEMORY", "RUNNING_VMS",
              "SYSTEM_DISK_SIZE", "VMS")


def c(value) -> str:
    return f"<![CDATA[{value}]]>"


def vm_vector(limits: dict | None = None, **used) -> str:
    """One <VM> vector: children sorted by name, limits -1 unless given."""
    limits = limits or {}
    return "<VM>" + "".join(
        f"<{m}>{c(limits.get(m, -1))}</{m}><{m}_USED>{c(used.get(m, 0))}</{m}_USED>"
        for m in VM_METRICS) + "</VM>"


def image_vector(iid: int, used: int, limit: int = -1) -> str:
    return (f"<IMAGE><ID>{c(iid)}</ID><RVMS>{c(limit)}</RVMS>"
            f"<RVMS_USED>{c(used)}</RVMS_USED></IMAGE>")


def vm_quota(*vectors: str) -> str:
    return "<VM_QUOTA>" + "".join(vectors) + "</VM_QUOTA>"


def image_quota(*vectors: str) -> str:
    return "<IMAGE_QUOTA>" + "".join(vectors) + "</IMAGE_QUOTA>"


def quotas_of(d, method: str, oid: int) -> str:
    """VM_QUOTA + IMAGE_QUOTA of a user's or group's info (the object's own sections,
    not the defaults that follow)."""
    doc = ok(d, method, oid)
    return section(doc, "VM_QUOTA") + section(doc, "IMAGE_QUOTA")


def user_q(d, uid: int) -> str:
    return quotas_of(d, "one.user.info", uid)


def group_q(d, gid: int) -> str:
    return quotas_of(d, "one.group.info", gid)


def member(d) -> tuple[int, str, int]:
    """A user whose primary group is a new one of its own: (uid, session, gid).  It is
    in users (1) too, whose ACL lets it create VMs and templates."""
    gid = group(d)
    uid, s = user(d, groups=[gid, 1])
    return uid, s, gid


def image_of(d, ds: int, uid: int, gid: int, size: int = 1, extra: str = "") -> int:
    """An image registered by oneadmin (SOURCE is restricted) and given to ``uid``."""
    iid = register(d, ds, size=size, extra=extra)
    ok(d, "one.image.chown", iid, uid, gid)
    return iid


def defaults(d, method: str, *args) -> str:
    """A DEFAULT_*_QUOTAS reply (no XSD has it as a root)."""
    reply = call(d, method, *args)
    assert len(reply) == 3 and reply[0] is True and reply[2] == 0, reply
    return reply[1]


def vm_state(d, oid: int) -> tuple[int, int]:
    doc = ok(d, "one.vm.info", oid)
    return num(doc, "STATE"), num(doc, "LCM_STATE")


def wait_vm(d, oid: int, state: int, lcm: int = 0) -> None:
    wait_for(lambda: vm_state(d, oid) == (state, lcm), timeout=20)


SMALL = 'CPU="0.25"\nMEMORY="32"'
NOWHERE = '\nSCHED_REQUIREMENTS="NAME=\\"nohost\\""'


@pytest.fixture(scope="module")
def host(daemon):
    hid = ok(daemon, "one.host.allocate", unique("qh"), "dummy", "dummy", -1)
    wait_for(lambda: num(ok(daemon, "one.host.info", hid), "STATE") == 2)
    return hid


# ------------------------------------------------------------------ documents
def test_a_vm_on_hold_shows_as_in_oned_and_terminate_empties_the_sections(daemon):
    """The tail of one.user.info is the sample's (oned 7.0.2, one VM of CPU 0.25 and
    MEMORY 32 allocated on hold by a plain user): RUNNING_* count from allocate."""
    uid, s = user(daemon)
    oid = ok(daemon, "one.vm.allocate", SMALL, True, session=s)
    doc = ok(daemon, "one.user.info", uid)
    assert doc[doc.index("<DATASTORE_QUOTA>"):] == (
        "<DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA></NETWORK_QUOTA><VM_QUOTA><VM>"
        "<CPU><![CDATA[-1]]></CPU><CPU_USED><![CDATA[0.25]]></CPU_USED><MEMORY><![CDATA[-1]]>"
        "</MEMORY><MEMORY_USED><![CDATA[32]]></MEMORY_USED><RUNNING_CPU><![CDATA[-1]]>"
        "</RUNNING_CPU><RUNNING_CPU_USED><![CDATA[0.25]]></RUNNING_CPU_USED><RUNNING_MEMORY>"
        "<![CDATA[-1]]></RUNNING_MEMORY><RUNNING_MEMORY_USED><![CDATA[32]]>"
        "</RUNNING_MEMORY_USED><RUNNING_VMS><![CDATA[-1]]></RUNNING_VMS><RUNNING_VMS_USED>"
        "<![CDATA[1]]></RUNNING_VMS_USED><SYSTEM_DISK_SIZE><![CDATA[-1]]></SYSTEM_DISK_SIZE>"
        "<SYSTEM_DISK_SIZE_USED><![CDATA[0]]></SYSTEM_DISK_SIZE_USED><VMS><![CDATA[-1]]>"
        "</VMS><VMS_USED><![CDATA[1]]></VMS_USED></VM></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"
        "<DEFAULT_USER_QUOTAS><DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA>"
        "</NETWORK_QUOTA><VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"
        "</DEFAULT_USER_QUOTAS></USER>")
    # the pools list the same sections in each object's QUOTAS (user_pool.xsd,
    # group_pool.xsd validate them)
    mine = doc[doc.index("<DATASTORE_QUOTA>"):doc.index("<DEFAULT_USER_QUOTAS>")]
    assert f"<QUOTAS><ID>{uid}</ID>{mine}</QUOTAS>" in ok(daemon, "one.userpool.info")
    assert "<QUOTAS><ID>1</ID><DATASTORE_QUOTA>" in ok(daemon, "one.grouppool.info")
    assert section(ok(daemon, "one.group.info", 1), "VM_QUOTA") == section(doc, "VM_QUOTA")
    ok(daemon, "one.vm.action", "terminate", oid, session=s)
    assert user_q(daemon, uid) == EMPTY
    assert group_q(daemon, 1) == EMPTY
    # the group users (1) was charged and released the same way; oneadmin never is
    assert "<VM_QUOTA></VM_QUOTA>" in ok(daemon, "one.user.info", 0)


def test_instantiate_with_images_and_volatile_disks(daemon, ds):
    """SYSTEM_DISK_SIZE: volatile disks and image disks copied to the system datastore
    (the dummy TM's CLONE_TARGET is SYSTEM; a persistent one is used in place, LN_TARGET
    NONE); RVMS 1 per image DISK, so two DISKs of one image count 2; the group the same."""
    uid, s, gid = member(daemon)
    a = image_of(daemon, ds, uid, gid, size=10)
    b = image_of(daemon, ds, uid, gid, size=7, extra='PERSISTENT="YES"')
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("t")}"\n{SMALL}\nDISK=[IMAGE_ID={a}]\nDISK=[IMAGE_ID={b}]\n'
             f'DISK=[IMAGE_ID={a}]\nDISK=[TYPE="fs",SIZE="100"]', session=s)
    oid = ok(daemon, "one.template.instantiate", tid, "", True, "", False, session=s)
    want = (vm_quota(vm_vector(CPU="0.25", MEMORY=32, RUNNING_CPU="0.25", RUNNING_MEMORY=32,
                               RUNNING_VMS=1, SYSTEM_DISK_SIZE=120, VMS=1))
            + image_quota(image_vector(a, 2), image_vector(b, 1)))
    assert user_q(daemon, uid) == want
    assert group_q(daemon, gid) == want
    second = ok(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={a}]", True, session=s)
    assert section(ok(daemon, "one.user.info", uid), "IMAGE_QUOTA") == image_quota(
        image_vector(a, 3), image_vector(b, 1))
    for vm in (oid, second):
        ok(daemon, "one.vm.action", "terminate", vm, session=s)
    assert user_q(daemon, uid) == EMPTY
    assert group_q(daemon, gid) == EMPTY


# ------------------------------------------------------------------ limits
def test_user_limits_refuse_with_oneds_texts_and_change_nothing(daemon, ds):
    uid, s, gid = member(daemon)
    ok(daemon, "one.user.quota", uid, "VM=[VMS=2,MEMORY=64,SYSTEM_DISK_SIZE=50]")
    limits = {"VMS": 2, "MEMORY": 64, "SYSTEM_DISK_SIZE": 50}
    assert user_q(daemon, uid) == vm_quota(vm_vector(limits)) + image_quota()
    first = ok(daemon, "one.vm.allocate", SMALL, True, session=s)
    m, u = "[one.vm.allocate]", f"User [{uid}] : user [{uid}]"
    # MEMORY 32+40 > 64 (VMS is checked first, and passes)
    assert fails(daemon, "one.vm.allocate", 'CPU="1"\nMEMORY="40"', True, session=s) == (
        f"{m} {u} limit of 64 reached for MEMORY quota in VM.", AUTHZ, -1)
    assert fails(daemon, "one.vm.allocate", f'{SMALL}\nDISK=[TYPE="swap",SIZE="51"]', True,
                 session=s) == (
        f"{m} {u} limit of 50 reached for SYSTEM_DISK_SIZE quota in VM.", AUTHZ, -1)
    second = ok(daemon, "one.vm.allocate", SMALL, True, session=s)
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{SMALL}', session=s)
    assert fails(daemon, "one.template.instantiate", tid, "", True, "", False, session=s) == (
        f"[one.template.instantiate] {u} limit of 2 reached for VMS quota in VM.", AUTHZ, -1)
    used = vm_vector(limits, CPU="0.50", MEMORY=64, RUNNING_CPU="0.50", RUNNING_MEMORY=64,
                     RUNNING_VMS=2, VMS=2)
    assert user_q(daemon, uid) == vm_quota(used) + image_quota()
    # a refused VM gives its id back, as any failed allocate (vms.md §1.7)
    ok(daemon, "one.vm.action", "terminate", second, session=s)
    third = ok(daemon, "one.vm.allocate", SMALL, True, session=s)
    assert third == second + 1
    for vm in (first, third):
        ok(daemon, "one.vm.action", "terminate", vm, session=s)
    # the limits stay, the usage is gone
    assert user_q(daemon, uid) == vm_quota(vm_vector(limits)) + image_quota()
    assert group_q(daemon, gid) == EMPTY


def test_quotas_are_checked_before_the_insert_refuses(daemon, ds):
    """vms.md §5.3: the quotas are checked (on the extended copy) before the VM is
    inserted, so a VM over a limit gets the quota's refusal, not the insert's: an image
    that does not exist or is in use, a MEMORY that is not a number.  With room, the
    same templates get the insert's refusals; nothing is charged either way."""
    uid, s, gid = member(daemon)
    pers = image_of(daemon, ds, uid, gid, extra='PERSISTENT="YES"')
    holder = ok(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={pers}]", True, session=s)
    ok(daemon, "one.user.quota", uid, "VM=[VMS=1]")
    held = user_q(daemon, uid)
    m, u = "[one.vm.allocate]", f"User [{uid}] : user [{uid}]"
    over = (f"{m} {u} limit of 1 reached for VMS quota in VM.", AUTHZ, -1)
    missing = f"{SMALL}\nDISK=[IMAGE_ID=99999]"
    in_use = f"{SMALL}\nDISK=[IMAGE_ID={pers}]"
    bad_memory = 'CPU="0.25"\nMEMORY="lots"'
    for tmpl in (missing, in_use, bad_memory):
        assert fails(daemon, "one.vm.allocate", tmpl, True, session=s) == over, tmpl
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{in_use}', session=s)
    assert fails(daemon, "one.template.instantiate", tid, "", True, "", False, session=s) == (
        f"[one.template.instantiate] {u} limit of 1 reached for VMS quota in VM.", AUTHZ, -1)
    assert user_q(daemon, uid) == held
    ok(daemon, "one.user.quota", uid, "VM=[VMS=5]")
    assert fails(daemon, "one.vm.allocate", missing, True, session=s) == (
        f"{m} DISK 0: Image with ID: 99999 does not exist", INTERNAL, -1)
    assert fails(daemon, "one.vm.allocate", in_use, True, session=s) == (
        f"{m} DISK 0: Cannot acquire image {pers}, it is persistent and already in use",
        INTERNAL, -1)
    assert fails(daemon, "one.vm.allocate", bad_memory, True, session=s) == (
        f"{m} MEMORY attribute must be a positive integer value.", INTERNAL, -1)
    ok(daemon, "one.vm.action", "terminate", holder, session=s)


def test_image_rvms_limit_and_the_image_is_left_as_it_was(daemon, ds):
    uid, s, gid = member(daemon)
    iid = image_of(daemon, ds, uid, gid)
    ok(daemon, "one.user.quota", uid, f"IMAGE=[ID={iid},RVMS=1]")
    first = ok(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True, session=s)
    before = info(daemon, iid)
    assert fails(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True,
                 session=s) == (
        f"[one.vm.allocate] User [{uid}] : user [{uid}] limit of 1 reached for RVMS quota in "
        f"IMAGE with ID: {iid}.", AUTHZ, -1)
    assert info(daemon, iid) == before  # the acquire of the refused VM was rolled back
    assert (num(before, "RUNNING_VMS"), section(before, "VMS")) == (1, f"<VMS><ID>{first}</ID></VMS>")
    assert section(ok(daemon, "one.user.info", uid), "IMAGE_QUOTA") == image_quota(
        image_vector(iid, 1, 1))
    ok(daemon, "one.vm.action", "terminate", first, session=s)
    assert section(ok(daemon, "one.user.info", uid), "IMAGE_QUOTA") == image_quota(
        image_vector(iid, 0, 1))


def test_group_limit_and_the_users_charge_is_rolled_back(daemon):
    uid, s, gid = member(daemon)
    ok(daemon, "one.group.quota", gid, "VM=[RUNNING_CPU=0.3]")
    first = ok(daemon, "one.vm.allocate", SMALL, True, session=s)
    mine = user_q(daemon, uid)
    assert fails(daemon, "one.vm.allocate", SMALL, True, session=s) == (
        f"[one.vm.allocate] User [{uid}] : group [{gid}] limit of 0.3 reached for "
        "RUNNING_CPU quota in VM.", AUTHZ, -1)
    assert user_q(daemon, uid) == mine
    assert group_q(daemon, gid) == vm_quota(vm_vector(
        {"RUNNING_CPU": "0.30"}, CPU="0.25", MEMORY=32, RUNNING_CPU="0.25", RUNNING_MEMORY=32,
        RUNNING_VMS=1, VMS=1)) + image_quota()
    ok(daemon, "one.vm.action", "terminate", first, session=s)


def test_default_quotas_apply_to_users_without_their_own_limit(fresh_daemon):
    d = fresh_daemon()
    uid, s = user(d)
    defaults(d, "one.userquota.update", "VM=[VMS=1]")
    assert defaults(d, "one.userquota.info") == (
        "<DEFAULT_USER_QUOTAS><DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA>"
        "</NETWORK_QUOTA>" + vm_quota(
            vm_vector({m: -2 for m in VM_METRICS} | {"VMS": 1}))
        + "<IMAGE_QUOTA></IMAGE_QUOTA></DEFAULT_USER_QUOTAS>")
    ok(d, "one.vm.allocate", SMALL, True, session=s)
    assert fails(d, "one.vm.allocate", SMALL, True, session=s)[0] == (
        f"[one.vm.allocate] User [{uid}] : user [{uid}] limit of 1 reached for VMS quota in VM.")
    # the user's own limit wins over the default
    ok(d, "one.user.quota", uid, "VM=[VMS=2]")
    ok(d, "one.vm.allocate", SMALL, True, session=s)
    # oneadmin is never limited
    ok(d, "one.vm.allocate", SMALL, True)
    ok(d, "one.vm.allocate", SMALL, True)


# ------------------------------------------------------------------ the life cycle
def test_running_quotas_follow_the_states_and_resume_is_checked(daemon, host):
    uid, s, gid = member(daemon)
    oid = ok(daemon, "one.vm.allocate", SMALL + NOWHERE, True, session=s)
    ok(daemon, "one.vm.deploy", oid, host, False, -1, "")
    wait_vm(daemon, oid, 3, 3)
    running = vm_vector(CPU="0.25", MEMORY=32, RUNNING_CPU="0.25", RUNNING_MEMORY=32,
                        RUNNING_VMS=1, VMS=1)
    stopped = vm_vector(CPU="0.25", MEMORY=32, VMS=1)
    assert user_q(daemon, uid) == vm_quota(running) + image_quota()
    for action, state in (("poweroff", 8), ("suspend", 5), ("undeploy", 9), ("stop", 4)):
        ok(daemon, "one.vm.action", action, oid, session=s)
        wait_vm(daemon, oid, state)
        assert user_q(daemon, uid) == vm_quota(stopped) + image_quota(), action
        assert group_q(daemon, gid) == vm_quota(stopped) + image_quota(), action
        if action == "poweroff":
            # RUNNING_VMS full: resume is refused as an ACTION, before the state check
            ok(daemon, "one.user.quota", uid, "VM=[RUNNING_VMS=0]")
            assert fails(daemon, "one.vm.action", "resume", oid, session=s) == (
                f"[one.vm.action] user [{uid}] limit of 0 reached for RUNNING_VMS quota in "
                "VM", ACTION, -1)
            assert vm_state(daemon, oid) == (8, 0)
            ok(daemon, "one.user.quota", uid, "VM=[RUNNING_VMS=-1]")
        ok(daemon, "one.vm.action", "resume", oid, session=s)
        if state in (9, 4):  # back to PENDING, then deployed again
            assert user_q(daemon, uid) == vm_quota(running) + image_quota()
            wait_vm(daemon, oid, 1)
            ok(daemon, "one.vm.deploy", oid, host, False, -1, "")
        wait_vm(daemon, oid, 3, 3)
        assert user_q(daemon, uid) == vm_quota(running) + image_quota(), action
    # terminate from POWEROFF takes the RUNNING_* usage again until DONE frees all
    ok(daemon, "one.vm.action", "poweroff", oid, session=s)
    wait_vm(daemon, oid, 8)
    ok(daemon, "one.vm.action", "terminate", oid, session=s)
    wait_vm(daemon, oid, 6)
    assert user_q(daemon, uid) == EMPTY
    assert group_q(daemon, gid) == EMPTY


def test_resume_of_a_running_vm_over_the_limit_says_quota_first(daemon, host):
    uid, s, _gid = member(daemon)
    oid = ok(daemon, "one.vm.allocate", SMALL + NOWHERE, True, session=s)
    ok(daemon, "one.user.quota", uid, "VM=[RUNNING_MEMORY=32]")
    assert fails(daemon, "one.vm.action", "resume", oid, session=s) == (
        f"[one.vm.action] user [{uid}] limit of 32 reached for RUNNING_MEMORY quota in VM",
        ACTION, -1)
    ok(daemon, "one.user.quota", uid, "VM=[RUNNING_MEMORY=-1]")
    assert fails(daemon, "one.vm.action", "resume", oid, session=s) == (
        '[one.vm.action] Error performing action "resume": This action is not available '
        "for state HOLD", ACTION, -1)
    ok(daemon, "one.vm.action", "terminate", oid, session=s)
    assert user_q(daemon, uid) == EMPTY


def test_recover_delete_and_hold_release_keep_the_counters_exact(daemon):
    uid, s, gid = member(daemon)
    oid = ok(daemon, "one.vm.allocate", SMALL + NOWHERE, True, session=s)
    other = ok(daemon, "one.vm.allocate", SMALL + NOWHERE, False, session=s)
    both = vm_quota(vm_vector(CPU="0.50", MEMORY=64, RUNNING_CPU="0.50", RUNNING_MEMORY=64,
                              RUNNING_VMS=2, VMS=2)) + image_quota()
    assert user_q(daemon, uid) == both
    # HOLD and PENDING are both running states: release and hold change nothing
    ok(daemon, "one.vm.action", "release", oid, session=s)
    ok(daemon, "one.vm.action", "hold", other, session=s)
    assert user_q(daemon, uid) == both
    ok(daemon, "one.vm.recover", oid, 3)
    assert vm_state(daemon, oid) == (6, 0)
    assert user_q(daemon, uid) == vm_quota(vm_vector(
        CPU="0.25", MEMORY=32, RUNNING_CPU="0.25", RUNNING_MEMORY=32, RUNNING_VMS=1,
        VMS=1)) + image_quota()
    ok(daemon, "one.vm.action", "terminate-hard", other, session=s)
    assert (user_q(daemon, uid), group_q(daemon, gid)) == (EMPTY, EMPTY)


def test_chown_moves_the_vm_and_its_images(daemon, ds):
    uid, s, gid = member(daemon)
    other, _s2, ogid = member(daemon)
    iid = image_of(daemon, ds, uid, gid, size=5)
    oid = ok(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True, session=s)
    held = (vm_quota(vm_vector(CPU="0.25", MEMORY=32, RUNNING_CPU="0.25", RUNNING_MEMORY=32,
                               RUNNING_VMS=1, SYSTEM_DISK_SIZE=5, VMS=1))
            + image_quota(image_vector(iid, 1)))
    ok(daemon, "one.user.quota", other, "VM=[VMS=0]")
    assert fails(daemon, "one.vm.chown", oid, other, -1) == (
        f"[one.vm.chown] User [0] : user [{other}] limit of 0 reached for VMS quota in VM.",
        AUTHZ, -1)
    assert user_q(daemon, uid) == held
    ok(daemon, "one.user.quota", other, "VM=[VMS=-1]")
    ok(daemon, "one.vm.chown", oid, other, ogid)
    assert (user_q(daemon, uid), group_q(daemon, gid)) == (EMPTY, EMPTY)
    assert (user_q(daemon, other), group_q(daemon, ogid)) == (held, held)
    # only the group changes: the user keeps the VM
    ok(daemon, "one.vm.chown", oid, -1, gid)
    assert (user_q(daemon, other), group_q(daemon, ogid), group_q(daemon, gid)) == (
        held, EMPTY, held)
    ok(daemon, "one.vm.action", "terminate", oid)
    assert (user_q(daemon, other), group_q(daemon, gid)) == (EMPTY, EMPTY)


def test_setting_vm_and_image_limits(daemon):
    uid, _s, gid = member(daemon)
    m = "[one.user.quota]"
    assert fails(daemon, "one.user.quota", uid, "VM=[VMS=-3]") == (
        f"{m} Negative limits or bad format in quota VM = [ VMS=-3 ]", ACTION, -1)
    assert fails(daemon, "one.user.quota", uid, "IMAGE=[RVMS=2]") == (
        f"{m} Negative limits or bad format in quota IMAGE = [ RVMS=2 ]", ACTION, -1)
    ok(daemon, "one.user.quota", uid, "VM=[CPU=1.5,RUNNING_VMS=3]\nIMAGE=[ID=9,RVMS=2]")
    assert user_q(daemon, uid) == (vm_quota(vm_vector({"CPU": "1.50", "RUNNING_VMS": 3}))
                                   + image_quota(image_vector(9, 0, 2)))
    # pyone's dict form, and a limit back to the default drops what holds nothing
    daemon.client().user.quota(uid, {"TEMPLATE": {"VM": {"CPU": -1, "RUNNING_VMS": -1}}})
    assert user_q(daemon, uid) == vm_quota() + image_quota(image_vector(9, 0, 2))
    daemon.client().group.quota(gid, {"TEMPLATE": {"IMAGE": {"ID": 9, "RVMS": 4}}})
    assert group_q(daemon, gid) == vm_quota() + image_quota(image_vector(9, 0, 4))
    defaults(daemon, "one.groupquota.update", "IMAGE=[ID=9,RVMS=3]")
    try:
        assert section(defaults(daemon, "one.groupquota.info"), "IMAGE_QUOTA") == image_quota(
            image_vector(9, 0, 3))
    finally:
        defaults(daemon, "one.groupquota.update", "IMAGE=[ID=9,RVMS=-2]")
    assert section(defaults(daemon, "one.groupquota.info"), "IMAGE_QUOTA") == image_quota()


# ------------------------------------------------------------------ disks
def test_attach_detach_and_disk_snapshots_move_system_disk_size_and_rvms(daemon, ds, host):
    sys_ds = ok(daemon, "one.datastore.allocate",
                f'NAME="{unique("qsys")}"\nTYPE="SYSTEM_DS"\nTM_MAD="dummy"', -1)
    uid, s, gid = member(daemon)
    a = image_of(daemon, ds, uid, gid, size=10)
    b = image_of(daemon, ds, uid, gid, size=4)
    oid = ok(daemon, "one.vm.allocate", f"{SMALL}{NOWHERE}\nDISK=[IMAGE_ID={a}]", True,
             session=s)
    ok(daemon, "one.vm.deploy", oid, host, False, sys_ds, "")
    wait_vm(daemon, oid, 3, 3)

    def held(size: int, *images: tuple[int, int], limits: dict | None = None) -> str:
        return (vm_quota(vm_vector(CPU="0.25", MEMORY=32, RUNNING_CPU="0.25",
                                   RUNNING_MEMORY=32, RUNNING_VMS=1, SYSTEM_DISK_SIZE=size,
                                   VMS=1))
                + image_quota(*(image_vector(i, n, (limits or {}).get(i, -1))
                                for i, n in images)))

    assert user_q(daemon, uid) == held(10, (a, 1))
    ok(daemon, "one.user.quota", uid, f"IMAGE=[ID={b},RVMS=0]")
    assert fails(daemon, "one.vm.attach", oid, f"DISK=[IMAGE_ID={b}]", session=s) == (
        f"[one.vm.attach] User [{uid}] : user [{uid}] limit of 0 reached for RVMS quota in "
        f"IMAGE with ID: {b}.", AUTHZ, -1)
    assert vm_state(daemon, oid) == (3, 3)
    assert num(info(daemon, b), "STATE") == 1  # not acquired
    ok(daemon, "one.user.quota", uid, f"IMAGE=[ID={b},RVMS=-1]")
    ok(daemon, "one.vm.attach", oid, f"DISK=[IMAGE_ID={b}]", session=s)
    wait_vm(daemon, oid, 3, 3)
    assert user_q(daemon, uid) == held(14, (a, 1), (b, 1))
    # a snapshot of the disk copied into the system datastore takes its size there too
    ok(daemon, "one.vm.disksnapshotcreate", oid, 0, "s0", session=s)
    wait_for(lambda: "DISK_SNAPSHOT_TOTAL_SIZE><![CDATA[10" in ok(daemon, "one.vm.info", oid)
             and vm_state(daemon, oid) == (3, 3), timeout=20)
    assert user_q(daemon, uid) == held(24, (a, 1), (b, 1))
    assert group_q(daemon, gid) == held(24, (a, 1), (b, 1))
    ok(daemon, "one.vm.detach", oid, 1, session=s)
    wait_for(lambda: vm_state(daemon, oid) == (3, 3)
             and f"<IMAGE_ID><![CDATA[{b}]]>" not in ok(daemon, "one.vm.info", oid), timeout=20)
    assert user_q(daemon, uid) == held(20, (a, 1))
    ok(daemon, "one.vm.action", "terminate", oid, session=s)
    wait_vm(daemon, oid, 6)
    assert (user_q(daemon, uid), group_q(daemon, gid)) == (EMPTY, EMPTY)


def test_disks_kept_in_their_image_datastore_charge_its_datastore_quota(fresh_daemon):
    """A TM whose CLONE_TARGET is SELF keeps the VM's copy in the image datastore: its
    SIZE (IMAGES 0) is charged to the VM owner's DATASTORE_QUOTA (checked at allocate,
    after the VM quotas) and released at DONE."""
    d = fresh_daemon('TM_MAD_CONF = [ NAME = "selftm", LN_TARGET = "NONE", '
                     'CLONE_TARGET = "SELF", SHARED = "YES" ]')
    ds = datastore(d, 'NAME="selfds"\nDS_MAD="dummy"\nTM_MAD="selftm"')
    uid, s, gid = member(d)
    iid = image_of(d, ds, uid, gid, size=30)
    ds_entry = (f"<DATASTORE><ID>{c(ds)}</ID><IMAGES>{c(-1)}</IMAGES><IMAGES_USED>{c(1)}"
                f"</IMAGES_USED><SIZE>{c(-1)}</SIZE><SIZE_USED>{c(30)}</SIZE_USED></DATASTORE>")
    assert section(ok(d, "one.user.info", uid), "DATASTORE_QUOTA") == (
        f"<DATASTORE_QUOTA>{ds_entry}</DATASTORE_QUOTA>")
    oid = ok(d, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True, session=s)
    doc = ok(d, "one.user.info", uid)
    assert section(doc, "DATASTORE_QUOTA") == "<DATASTORE_QUOTA>" + ds_entry.replace(
        f"<SIZE_USED>{c(30)}", f"<SIZE_USED>{c(60)}") + "</DATASTORE_QUOTA>"
    assert section(doc, "VM_QUOTA") == vm_quota(vm_vector(
        CPU="0.25", MEMORY=32, RUNNING_CPU="0.25", RUNNING_MEMORY=32, RUNNING_VMS=1, VMS=1))
    ok(d, "one.user.quota", uid, f"DATASTORE=[ID={ds},SIZE=89]")
    assert fails(d, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True, session=s) == (
        f"[one.vm.allocate] User [{uid}] : user [{uid}] limit of 89 reached for SIZE quota in "
        f"DATASTORE with ID: {ds}.", AUTHZ, -1)
    ok(d, "one.vm.action", "terminate", oid, session=s)
    assert section(ok(d, "one.user.info", uid), "DATASTORE_QUOTA") == (
        "<DATASTORE_QUOTA>" + ds_entry.replace(f"<SIZE>{c(-1)}", f"<SIZE>{c(89)}")
        + "</DATASTORE_QUOTA>")
    assert user_q(d, uid) == EMPTY


# ------------------------------------------------------------------ races
def test_concurrent_instantiates_and_terminates_against_a_limit(daemon, ds):
    """Many VMs of one user and group at once (same images: image rows, then quota
    rows, locked in one order): exactly the limit wins, and the counters end exact."""
    uid, s, gid = member(daemon)
    iid = image_of(daemon, ds, uid, gid)
    k, n = 3, 10
    ok(daemon, "one.user.quota", uid, f"VM=[VMS={k}]")
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("t")}"\n{SMALL}\nDISK=[IMAGE_ID={iid}]', session=s)
    replies: list = []
    start = threading.Barrier(n)

    def one_instantiate() -> None:
        proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
        start.wait()
        replies.append(proxy.one.template.instantiate(s, tid, "", True, "", False))

    threads = [threading.Thread(target=one_instantiate) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [r[1] for r in replies if r[0] is True]
    lost = {r[1] for r in replies if r[0] is False}
    assert (len(replies), len(won)) == (n, k)
    assert lost == {f"[one.template.instantiate] User [{uid}] : user [{uid}] limit of {k} "
                    "reached for VMS quota in VM."}
    used = vm_vector({"VMS": k}, CPU="0.75", MEMORY=32 * k, RUNNING_CPU="0.75",
                     RUNNING_MEMORY=32 * k, RUNNING_VMS=k, SYSTEM_DISK_SIZE=k, VMS=k)
    assert user_q(daemon, uid) == vm_quota(used) + image_quota(image_vector(iid, k))
    assert num(info(daemon, iid), "RUNNING_VMS") == k

    def one_terminate(oid: int) -> None:
        proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
        replies.append(proxy.one.vm.action(s, "terminate", oid))

    replies.clear()
    threads = [threading.Thread(target=one_terminate, args=(oid,)) for oid in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in replies] == [True] * k
    assert user_q(daemon, uid) == vm_quota(vm_vector({"VMS": k})) + image_quota()
    assert group_q(daemon, gid) == EMPTY


def test_the_counters_this_module_left_are_what_a_recount_finds(daemon):
    """Every charge and release above (allocate, instantiate, states, chown, attach,
    detach, snapshots, refusals rolled back, concurrent instantiates) left the counters
    exactly where db fsck's recount of the images and VMs puts them.  Last in the
    module: it sees what all the tests before it did."""
    assert quota_drift(daemon) == []
