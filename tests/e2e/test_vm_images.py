"""Images used by VMs, end to end through the running daemon (vms.md §1-§5, issue 9):
the acquire/release matrix through one.vm.allocate and one.template.instantiate, the
DISK documents, ``$FILE[]``, oned's refusal texts and codes, rollback, release on
terminate, RUNNING_VMS/<VMS>/RVMS, concurrent instantiates of a persistent image, the
image API while a VM uses the image, ``oneimage orphans`` and the CLONING path.
``ok`` validates every document against ../shared/xsd."""

from __future__ import annotations

import threading
import xmlrpc.client

import pytest
from lxml import etree

from tests.support.daemon import wait_for
from tests.support.seed import (
    edit_body,
    fails,
    field,
    info,
    num,
    ok,
    open_gate,
    parse,
    read_body,
    register,
    section,
    unique,
    user,
    wait_state,
)

pytestmark = [pytest.mark.timeout(120)]

INTERNAL, NO_EXISTS, AUTHZ, ACTION, ALLOCATE = 8192, 1024, 512, 2048, 16384
SMALL = 'CPU="0.1"\nMEMORY="64"'
HOLD = True
READY, USED, DISABLED, LOCKED, ERROR, USED_PERS, LOCKED_USED, LOCKED_USED_PERS = (
    1, 2, 3, 4, 5, 8, 9, 10)
FILES = 2  # the bootstrap FILE_DS
VM_HOLD, VM_ACTIVE, VM_DONE, VM_CLONING, VM_CLONING_FAILURE, VM_PENDING = 2, 3, 6, 10, 11, 1


# ------------------------------------------------------------------ helpers
def disks(*ids: int) -> str:
    return "".join(f"\nDISK=[IMAGE_ID={i}]" for i in ids)


def vm(d, *ids: int, extra: str = "", hold: bool = HOLD, session: str | None = None) -> int:
    return ok(d, "one.vm.allocate", SMALL + disks(*ids) + extra, hold, session=session)


def image_use(d, iid: int) -> tuple[int, int, list[int]]:
    """(STATE, RUNNING_VMS, <VMS> ids) of an image."""
    doc = info(d, iid)
    return (num(doc, "STATE"), num(doc, "RUNNING_VMS"),
            [int(e.text) for e in parse(doc).findall("VMS/ID")])


def terminate(d, oid: int) -> None:
    ok(d, "one.vm.action", "terminate", oid)


def vm_state(d, oid: int) -> tuple[int, int]:
    doc = ok(d, "one.vm.info", oid)
    return num(doc, "STATE"), num(doc, "LCM_STATE")


def wait_vm(d, oid: int, state: int, lcm: int = 0, timeout: float = 20.0) -> str:
    wait_for(lambda: vm_state(d, oid) == (state, lcm), timeout=timeout)
    return ok(d, "one.vm.info", oid)


def vm_disks(doc: str) -> list[dict]:
    return [{c.tag: c.text or "" for c in e} for e in parse(doc).findall("TEMPLATE/DISK")]


def next_vm_id(d) -> int:
    oid = vm(d)
    ok(d, "one.vm.action", "terminate", oid)
    return oid


@pytest.fixture(scope="module")
def host(daemon):
    """A dummy host; VMs reach it by name only (other modules' hosts do not matter)."""
    name = unique("vih")
    hid = ok(daemon, "one.host.allocate", name, "dummy", "dummy", -1)
    wait_for(lambda: num(ok(daemon, "one.host.info", hid), "STATE") == 2)
    # The images live on dummy-TM datastores: as with oned, a VM deploys only on a
    # system datastore of a TM those disks support (vms.md §2.11), so this module's
    # system datastore 0 moves no files either.
    ok(daemon, "one.datastore.update", 0, 'TM_MAD="dummy"', 1)
    return hid, name


def pinned(name: str) -> str:
    return f'\nSCHED_REQUIREMENTS="NAME=\\"{name}\\""'


# ------------------------------------------------------------------ acquire/release
def test_non_persistent_image_one_vm_and_two(daemon, ds):
    iid = register(daemon, ds)
    assert image_use(daemon, iid) == (READY, 0, [])
    a = vm(daemon, iid)
    assert image_use(daemon, iid) == (USED, 1, [a])
    b = ok(daemon, "one.template.instantiate",
           ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{SMALL}{disks(iid)}'),
           "", HOLD, "", False)
    assert image_use(daemon, iid) == (USED, 2, [a, b])
    # one VM with two disks on the same non-persistent image counts once
    c = vm(daemon, iid, iid)
    assert image_use(daemon, iid) == (USED, 3, [a, b, c])
    for oid, left in ((b, [a, c]), (a, [c])):
        terminate(daemon, oid)
        assert vm_state(daemon, oid) == (VM_DONE, 0)
        assert image_use(daemon, iid) == (USED, len(left), left)
    terminate(daemon, c)
    assert image_use(daemon, iid) == (READY, 0, [])


def test_vms_ids_are_rows_spliced_into_served_documents(daemon, ds):
    """<VMS> is kept in image_vms rows, not in the stored body (an acquire writes one
    row, not a body listing every VM): the stored body keeps <VMS></VMS> while info and
    both listing forms serve the ids, byte for byte as the body would hold them."""
    a, b = register(daemon, ds), register(daemon, ds)
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{SMALL}{disks(a, b)}')
    vms = [ok(daemon, "one.template.instantiate", tid, "", HOLD, "", False) for _ in range(3)]
    listed = "<VMS>" + "".join(f"<ID>{v}</ID>" for v in vms) + "</VMS>"
    for iid in (a, b):
        stored = read_body(daemon, iid)
        assert (section(stored, "VMS"), num(stored, "RUNNING_VMS")) == ("<VMS></VMS>", 3)
        doc = info(daemon, iid)
        assert section(doc, "VMS") == listed
        assert doc == stored.replace("<VMS></VMS>", listed, 1)
    docs = [info(daemon, b), info(daemon, a)]  # API_LIST_ORDER DESC, as oned
    assert ok(daemon, "one.imagepool.info", -2, a, b) == (
        "<IMAGE_POOL>" + "".join(docs) + "</IMAGE_POOL>")
    page = parse(ok(daemon, "one.imagepool.info", -2, 0, -100000))
    assert [section(etree.tostring(e, encoding="unicode"), "VMS")
            for e in page.findall("IMAGE") if int(e.findtext("ID")) in (a, b)] == [listed] * 2
    terminate(daemon, vms[1])
    left = [vms[0], vms[2]]
    for iid in (a, b):
        assert image_use(daemon, iid) == (USED, 2, left)
        assert section(read_body(daemon, iid), "VMS") == "<VMS></VMS>"
    for oid in left:
        terminate(daemon, oid)
    assert image_use(daemon, a) == image_use(daemon, b) == (READY, 0, [])


def test_persistent_image_only_one_vm(daemon, ds):
    iid = register(daemon, ds, extra='PERSISTENT="YES"')
    a = vm(daemon, iid)
    assert image_use(daemon, iid) == (USED_PERS, 1, [a])
    msg = f"Cannot acquire image {iid}, it is persistent and already in use"
    assert fails(daemon, "one.vm.allocate", SMALL + disks(iid), HOLD) == (
        f"[one.vm.allocate] DISK 0: {msg}", INTERNAL, -1)
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("t")}"\n{SMALL}\nDISK=[TYPE="swap",SIZE="8"]{disks(iid)}')
    assert fails(daemon, "one.template.instantiate", tid, "", HOLD, "", False) == (
        "[one.template.instantiate] Error allocating a new virtual machine template. "
        f"DISK 1: {msg}", ALLOCATE, -1)
    assert image_use(daemon, iid) == (USED_PERS, 1, [a])
    terminate(daemon, a)
    assert image_use(daemon, iid) == (READY, 0, [])
    # the same persistent image twice in one VM fails on the second disk
    assert fails(daemon, "one.vm.allocate", SMALL + disks(iid, iid), HOLD)[0] == (
        f"[one.vm.allocate] DISK 1: {msg}")
    assert image_use(daemon, iid) == (READY, 0, [])


def test_shareable_persistent_image_takes_two_vms(daemon, ds):
    iid = register(daemon, ds, extra='PERSISTENT="YES"\nPERSISTENT_TYPE="shareable"')
    a, b = vm(daemon, iid), vm(daemon, iid)
    assert image_use(daemon, iid) == (USED_PERS, 2, [a, b])
    terminate(daemon, a)
    assert image_use(daemon, iid) == (USED_PERS, 1, [b])
    terminate(daemon, b)
    assert image_use(daemon, iid) == (READY, 0, [])


@pytest.mark.parametrize("kind", ["KERNEL", "RAMDISK", "CONTEXT"])
def test_file_types_cannot_be_disks(daemon, kind):
    iid = register(daemon, FILES, extra=f'TYPE="{kind}"')
    name = field(info(daemon, iid), "NAME")
    text = f"Image {iid} ({name}) of type {kind} cannot be used as DISK."
    assert fails(daemon, "one.vm.allocate", SMALL + disks(iid), HOLD) == (
        f"[one.vm.allocate] DISK 0: {text}", INTERNAL, -1)
    assert image_use(daemon, iid) == (READY, 0, [])


def test_disabled_image_is_refused(daemon, ds):
    iid = register(daemon, ds)
    ok(daemon, "one.image.enable", iid, False)
    assert fails(daemon, "one.vm.allocate", SMALL + disks(iid), HOLD)[0] == (
        f"[one.vm.allocate] DISK 0: Cannot acquire image {iid}, it is in state: DISABLED")
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{SMALL}{disks(iid)}')
    assert fails(daemon, "one.template.instantiate", tid, "", HOLD, "", False) == (
        "[one.template.instantiate] Error allocating a new virtual machine template. DISK 0: "
        f"Cannot acquire image {iid}, it is in state: DISABLED", ALLOCATE, -1)
    assert image_use(daemon, iid) == (DISABLED, 0, [])


def test_unknown_images_by_id_and_name(daemon, ds):
    assert fails(daemon, "one.vm.allocate", SMALL + disks(987654), HOLD)[0] == (
        "[one.vm.allocate] DISK 0: Image with ID: 987654 does not exist")
    assert fails(daemon, "one.vm.allocate", SMALL + '\nDISK=[IMAGE="nope"]', HOLD)[0] == (
        "[one.vm.allocate] DISK 0: User 0 does not own an image with name: nope . "
        "Set IMAGE_UNAME or IMAGE_UID of owner in DISK.")


def test_rollback_at_the_second_disk_leaves_nothing(daemon, ds):
    free = register(daemon, ds)
    held = register(daemon, ds, extra='PERSISTENT="YES"')
    holder = vm(daemon, held)
    before = info(daemon, free)
    expected_id = next_vm_id(daemon) + 1
    for method, args in (("one.vm.allocate", (SMALL + disks(free, held), HOLD)),
                         ("one.template.instantiate", (ok(
                             daemon, "one.template.allocate",
                             f'NAME="{unique("t")}"\n{SMALL}{disks(free, held)}'),
                             "", HOLD, "", False))):
        msg, code, _ = fails(daemon, method, *args)
        assert msg.endswith(f"DISK 1: Cannot acquire image {held}, it is persistent and "
                            "already in use"), msg
        assert info(daemon, free) == before
        assert image_use(daemon, held) == (USED_PERS, 1, [holder])
        assert fails(daemon, "one.vm.info", expected_id)[1] == NO_EXISTS
    # the id is given back: the next VM gets it
    assert vm(daemon) == expected_id


def test_release_at_once_from_pending_and_hold(daemon, ds):
    iid = register(daemon, ds, extra='PERSISTENT="YES"')
    oid = vm(daemon, iid, extra='\nSCHED_REQUIREMENTS="NAME=\\"nohost\\""', hold=False)
    assert vm_state(daemon, oid) == (VM_PENDING, 0)
    assert image_use(daemon, iid) == (USED_PERS, 1, [oid])
    terminate(daemon, oid)
    assert image_use(daemon, iid) == (READY, 0, [])
    doc = info(daemon, iid)
    assert "<SNAPSHOTS></SNAPSHOTS>" in doc  # vms.md §1.5 QUIRK of persistent images
    oid = vm(daemon, iid)
    ok(daemon, "one.vm.action", "terminate-hard", oid)
    assert image_use(daemon, iid) == (READY, 0, [])


def test_release_from_running_through_shutdown_and_epilog(daemon, ds, host):
    iid = register(daemon, ds, extra='PERSISTENT="YES"')
    other = register(daemon, ds)
    oid = vm(daemon, iid, other, extra=pinned(host[1]), hold=False)
    wait_vm(daemon, oid, VM_ACTIVE, 3)
    assert image_use(daemon, iid) == (USED_PERS, 1, [oid])
    terminate(daemon, oid)
    seen = set()

    def done():
        # the image first: a VM not DONE after it was not DONE before it either, so
        # the image must still have been in use then (released only at EPILOG's end)
        use = image_use(daemon, iid)
        st = vm_state(daemon, oid)
        seen.add(st)
        if st[0] != VM_DONE:
            assert use == (USED_PERS, 1, [oid]), (st, use)
        return st == (VM_DONE, 0)

    wait_for(done, timeout=20)
    assert image_use(daemon, iid) == (READY, 0, [])
    assert image_use(daemon, other) == (READY, 0, [])


def test_image_api_refusals_while_a_vm_uses_the_image(daemon, ds):
    iid = register(daemon, ds)
    oid = vm(daemon, iid)
    assert fails(daemon, "one.image.delete", iid, False) == (
        "[one.image.delete] Cannot delete image. There are 1 VMs using it.", ACTION, -1)
    assert fails(daemon, "one.image.persistent", iid, True)[:2] == (
        "[one.image.persistent] Could not make image persistent: Image cannot be in state "
        "USED.", INTERNAL)
    terminate(daemon, oid)
    ok(daemon, "one.image.persistent", iid, True)
    ok(daemon, "one.image.delete", iid, False)


def test_running_vms_and_rvms_in_the_pool(daemon, ds):
    iid = register(daemon, ds)
    a, b = vm(daemon, iid), vm(daemon, iid)
    doc = ok(daemon, "one.imagepool.info", -2, iid, iid)
    assert [(num(doc, "IMAGE/RUNNING_VMS"), [int(e.text) for e in parse(doc).findall(
        "IMAGE/VMS/ID")])] == [(2, [a, b])]
    one = daemon.client()
    img = one.imagepool.info(-2, iid, iid).IMAGE[0]
    assert (img.RUNNING_VMS, list(img.VMS.ID)) == (2, [a, b])
    terminate(daemon, a)
    terminate(daemon, b)


def test_concurrent_instantiates_of_one_persistent_image(daemon, ds):
    """Exactly one wins, every round."""
    for _ in range(8):
        iid = register(daemon, ds, extra='PERSISTENT="YES"')
        tid = ok(daemon, "one.template.allocate",
                 f'NAME="{unique("race")}"\n{SMALL}{disks(iid)}')
        got: list = []
        barrier = threading.Barrier(6)

        def work(tid=tid, got=got, barrier=barrier):
            proxy = xmlrpc.client.ServerProxy(daemon.url)
            barrier.wait()
            got.append(proxy.one.template.instantiate(daemon.session(), tid, "", HOLD, "",
                                                      False))

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = [r[1] for r in got if r[0]]
        lost = [r for r in got if not r[0]]
        assert len(won) == 1 and len(lost) == 5, got
        assert {r[1] for r in lost} == {
            "[one.template.instantiate] Error allocating a new virtual machine template. "
            f"DISK 0: Cannot acquire image {iid}, it is persistent and already in use"}
        assert image_use(daemon, iid) == (USED_PERS, 1, won)
        terminate(daemon, won[0])


# ------------------------------------------------------------------ documents
def test_seed_example_template_disks_field_by_field(daemon, ds):
    os_name, pers_name = unique("os"), unique("pers")
    os_id = register(daemon, ds, os_name, source="/var/tmp/vxs/os.qcow2", size=10,
                     fmt="qcow2")
    pers = register(daemon, ds, pers_name, source="/var/tmp/vxs/pers.raw", size=10,
                    extra='PERSISTENT="YES"')
    ds_doc = ok(daemon, "one.datastore.info", ds)
    ds_name = field(ds_doc, "NAME")
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("seed")}"\nCPU="0.5"\n'
             f'MEMORY="128"\nDESCRIPTION="sample"\nCONTEXT=[NETWORK="YES"]\n'
             f'DISK=[IMAGE_ID={os_id}]\nDISK=[IMAGE="{pers_name}",IMAGE_UNAME="oneadmin"]\n'
             'DISK=[TYPE="swap",SIZE="1024"]')
    oid = ok(daemon, "one.template.instantiate", tid, "", HOLD, "", False)
    doc = ok(daemon, "one.vm.info", oid)
    common = {"CLONE_TARGET": "SYSTEM", "CLUSTER_ID": "0", "DATASTORE": ds_name,
              "DATASTORE_ID": str(ds), "DEV_PREFIX": "sd", "DISK_SNAPSHOT_TOTAL_SIZE": "0",
              "LN_TARGET": "NONE", "ORIGINAL_SIZE": "10", "READONLY": "NO", "SIZE": "10",
              "TM_MAD": "dummy", "TYPE": "FILE"}
    for key in ("ALLOW_ORPHANS", "DISK_TYPE", "PERSISTENT_SNAPSHOTS"):
        value = field(ds_doc, f"TEMPLATE/{key}")
        if value is not None:
            common[key] = value
    assert vm_disks(doc) == [
        {**common, "CLONE": "YES", "DISK_ID": "0", "DRIVER": "qcow2", "FORMAT": "qcow2",
         "IMAGE": os_name, "IMAGE_ID": str(os_id), "IMAGE_STATE": "2", "SAVE": "NO",
         "SOURCE": "/var/tmp/vxs/os.qcow2", "TARGET": "sda"},
        {**common, "CLONE": "NO", "DISK_ID": "1", "DRIVER": "raw", "FORMAT": "raw",
         "IMAGE": pers_name, "IMAGE_ID": str(pers), "IMAGE_STATE": "8",
         "IMAGE_UNAME": "oneadmin", "PERSISTENT": "YES", "SAVE": "YES",
         "SOURCE": "/var/tmp/vxs/pers.raw", "TARGET": "sdb"},
        {"DEV_PREFIX": "sd", "DISK_ID": "2", "SIZE": "1024", "TARGET": "sdc", "TYPE": "swap"},
    ]
    ctx = {c.tag: c.text for c in parse(doc).find("TEMPLATE/CONTEXT")}
    assert ctx == {"DISK_ID": "3", "NETWORK": "YES", "TARGET": "hda"}
    assert field(doc, "TEMPLATE/AUTOMATIC_REQUIREMENTS") == (
        "(CLUSTER_ID = 0) & !(PIN_POLICY = PINNED)")
    assert field(doc, "USER_TEMPLATE/DESCRIPTION") == "sample"
    # the short pool form carries the DISKs' short fields
    short = ok(daemon, "one.vmpool.info", -2, oid, oid, -2)
    assert [{c.tag: c.text or "" for c in e} for e in parse(short).findall(
        "VM/TEMPLATE/DISK")][0] == {
        "DISK_ID": "0", "DATASTORE": ds_name, "DATASTORE_ID": str(ds), "IMAGE": os_name,
        "IMAGE_ID": str(os_id), "SIZE": "10", "TYPE": "FILE", "CLONE": "YES",
        "CLONE_TARGET": "SYSTEM", "LN_TARGET": "NONE", "DISK_SNAPSHOT_TOTAL_SIZE": "0"}
    # pyone reads it too
    pvm = daemon.client().vm.info(oid)
    assert [d["IMAGE_ID"] for d in pvm.TEMPLATE["DISK"][:2]] == [str(os_id), str(pers)]
    terminate(daemon, oid)
    assert image_use(daemon, pers) == (READY, 0, [])


def test_instantiate_keeps_image_id_allocate_lets_image_win(daemon, ds):
    """vms.md §2.1 QUIRK: allocate authorizes the real template (IMAGE overwrites
    IMAGE_ID), instantiate a copy (IMAGE_ID wins at acquire)."""
    a_name = unique("a")
    a = register(daemon, ds, a_name)
    b = register(daemon, ds)
    text = f'{SMALL}\nDISK=[IMAGE_ID={b},IMAGE="{a_name}"]'
    oid = ok(daemon, "one.vm.allocate", text, HOLD)
    assert field(ok(daemon, "one.vm.info", oid), "TEMPLATE/DISK/IMAGE_ID") == str(a)
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{text}')
    oid2 = ok(daemon, "one.template.instantiate", tid, "", HOLD, "", False)
    assert field(ok(daemon, "one.vm.info", oid2), "TEMPLATE/DISK/IMAGE_ID") == str(b)
    assert image_use(daemon, a)[2] == [oid] and image_use(daemon, b)[2] == [oid2]
    terminate(daemon, oid)
    terminate(daemon, oid2)


def test_file_vars_for_kernel_initrd_and_context(daemon):
    k = register(daemon, FILES, unique("vmlinuz"), source="/var/tmp/k", extra='TYPE="KERNEL"')
    r = register(daemon, FILES, unique("initrd"), source="/var/tmp/r", extra='TYPE="RAMDISK"')
    c = register(daemon, FILES, unique("ctx"), source="/var/tmp/c", extra='TYPE="CONTEXT"')
    tm = field(ok(daemon, "one.datastore.info", FILES), "TM_MAD")
    c_name = field(info(daemon, c), "NAME")
    text = (f'{SMALL}\nOS=[KERNEL="/k",KERNEL_DS="$FILE[IMAGE_ID={k}]",'
            f'INITRD_DS="$FILE[IMAGE_ID={r}]"]\n'
            f'CONTEXT=[FILES_DS="$FILE[IMAGE_ID={c}]",NETWORK="YES"]')
    oid = ok(daemon, "one.vm.allocate", text, HOLD)
    doc = ok(daemon, "one.vm.info", oid)
    os_el = {e.tag: e.text for e in parse(doc).find("TEMPLATE/OS")}
    assert {k2: v for k2, v in os_el.items() if k2 != "UUID"} == {
        "KERNEL_DS": f"$FILE[IMAGE_ID={k}]", "KERNEL_DS_ID": str(k),
        "KERNEL_DS_SOURCE": "/var/tmp/k", "KERNEL_DS_DSID": str(FILES),
        "KERNEL_DS_TM": tm, "KERNEL_DS_CLUSTER_ID": "0",
        "INITRD_DS": f"$FILE[IMAGE_ID={r}]", "INITRD_DS_ID": str(r),
        "INITRD_DS_SOURCE": "/var/tmp/r", "INITRD_DS_DSID": str(FILES),
        "INITRD_DS_TM": tm, "INITRD_DS_CLUSTER_ID": "0"}
    assert field(doc, "TEMPLATE/CONTEXT/FILES_DS") == f"/var/tmp/c:'{c_name}' "
    # $FILE references acquire nothing
    for iid in (k, r, c):
        assert image_use(daemon, iid) == (READY, 0, [])
    # the kernel datastore's cluster feeds AUTOMATIC_REQUIREMENTS
    assert field(doc, "TEMPLATE/AUTOMATIC_REQUIREMENTS") == (
        "(CLUSTER_ID = 0) & !(PIN_POLICY = PINNED)")
    # refusals
    assert fails(daemon, "one.vm.allocate",
                 f'{SMALL}\nOS=[KERNEL_DS="$FILE[IMAGE_ID={r}]"]', HOLD) == (
        "[one.vm.allocate] KERNEL needs an image of type KERNEL and not RAMDISK",
        INTERNAL, -1)
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("t")}"\n{SMALL}\nCONTEXT=[FILES_DS="$FILE[IMAGE_ID={k}]"]')
    assert fails(daemon, "one.template.instantiate", tid, "", HOLD, "", False) == (
        "[one.template.instantiate] Error allocating a new virtual machine template. "
        "Only images of type CONTEXT can be used in FILE_DS attribute.", ALLOCATE, -1)
    terminate(daemon, oid)


def cli_orphans(d) -> set[int]:
    """``oneimage orphans`` as the Ruby CLI computes it from the two pools (vms.md
    §4.10): every image but BACKUP ones, unless a template DISK has its IMAGE_ID
    (numeric compare) or both its IMAGE name and IMAGE_UNAME."""
    images = parse(ok(d, "one.imagepool.info", -2, -1, -1))
    disks_ = parse(ok(d, "one.templatepool.info", -2, -1, -1)).findall(
        "VMTEMPLATE/TEMPLATE/DISK")
    out = set()
    for img in images.findall("IMAGE"):
        if img.findtext("TYPE") == "6":
            continue
        oid, name, uname = int(img.findtext("ID")), img.findtext("NAME"), img.findtext("UNAME")
        used = any((dk.findtext("IMAGE_ID") or "").strip().lstrip("-").isdigit()
                   and int(dk.findtext("IMAGE_ID")) == oid
                   or (dk.findtext("IMAGE") == name and dk.findtext("IMAGE_UNAME") == uname)
                   for dk in disks_)
        if not used:
            out.add(oid)
    return out


def test_orphans_rule_with_vms_around(daemon, ds):
    """oneimage orphans reads templates only: an image only a VM uses is an orphan,
    one a template names by IMAGE + IMAGE_UNAME is not, by IMAGE alone it is."""
    used_by_vm = register(daemon, ds)
    by_id, by_uname, by_name = register(daemon, ds), register(daemon, ds), register(daemon, ds)
    uname_name = field(info(daemon, by_uname), "NAME")
    name_only = field(info(daemon, by_name), "NAME")
    oid = vm(daemon, used_by_vm)
    tid = ok(daemon, "one.template.allocate",
             f'NAME="{unique("t")}"\n{SMALL}{disks(by_id)}\n'
             f'DISK=[IMAGE="{uname_name}",IMAGE_UNAME="oneadmin"]\nDISK=[IMAGE="{name_only}"]')
    from_tpl = ok(daemon, "one.template.instantiate", tid, "", HOLD, "", False)
    orphans = cli_orphans(daemon)
    assert {used_by_vm, by_name} <= orphans and not {by_id, by_uname} & orphans
    # the VMs use all of them, which changes nothing for the rule
    assert image_use(daemon, by_name)[2] == [from_tpl]
    # a persistent instantiate clones the template and its images: the clones are
    # referenced by the new template, so they are not orphans either
    clone_vm = ok(daemon, "one.template.instantiate", tid, unique("pc"), HOLD, "", True)
    cloned = [int(x["IMAGE_ID"]) for x in vm_disks(ok(daemon, "one.vm.info", clone_vm))]
    assert not set(cloned) & cli_orphans(daemon)
    for v in (oid, from_tpl, clone_vm):
        terminate(daemon, v)


def test_clone_and_delete_states_refuse_acquire(flaky, fds):
    d = flaky
    src = ok(d, "one.image.allocate", f'NAME="{unique("cs")}"\nSOURCE="/var/tmp/s"\n'
             'SIZE="3"\nFORMAT="raw"\nPERSISTENT="YES"\nMODE="clone:gate rm:gate"', fds)
    clone = ok(d, "one.image.clone", src, unique("cc"), -1)
    assert image_use(d, src)[0] == 6  # CLONE
    assert fails(d, "one.vm.allocate", SMALL + disks(src), HOLD)[0] == (
        f"[one.vm.allocate] DISK 0: Cannot acquire image {src}, it is in state: CLONE")
    open_gate(d, "clone", clone)
    wait_state(d, src, READY)
    ok(d, "one.image.delete", src, False)
    assert image_use(d, src)[0] == 7  # DELETE, RM waiting
    assert fails(d, "one.vm.allocate", SMALL + disks(src), HOLD)[0] == (
        f"[one.vm.allocate] DISK 0: Cannot acquire image {src}, it is in state: DELETE")
    open_gate(d, "rm", src)


def test_non_admin_needs_use_on_the_image(daemon, ds):
    iid = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, "one.vm.allocate", SMALL + disks(iid), HOLD, session=session) == (
        f"[one.vm.allocate] User [{uid}] : Not authorized to perform USE IMAGE [{iid}].",
        AUTHZ, -1)
    tid = ok(daemon, "one.template.allocate", f'NAME="{unique("t")}"\n{SMALL}{disks(iid)}')
    ok(daemon, "one.template.chmod", tid, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    assert fails(daemon, "one.template.instantiate", tid, "", HOLD, "", False,
                 session=session)[:2] == (
        f"[one.template.instantiate] User [{uid}] : Not authorized to perform USE IMAGE "
        f"[{iid}].", AUTHZ)
    assert image_use(daemon, iid) == (READY, 0, [])


def test_image_lock_refuses_vm_creation_for_admin(daemon, ds):
    iid = register(daemon, ds)
    ok(daemon, "one.image.lock", iid, 1, False)
    assert fails(daemon, "one.vm.allocate", SMALL + disks(iid), HOLD)[:2] == (
        f"[one.vm.allocate] User [0] : IMAGE is locked. [{iid}].", AUTHZ)
    ok(daemon, "one.image.unlock", iid)
    oid = vm(daemon, iid)
    terminate(daemon, oid)


# ------------------------------------------------------------------ CLONING
def test_cloning_vm_becomes_pending_when_the_copy_ends(flaky, fds):
    d = flaky
    iid = ok(d, "one.image.allocate", f'NAME="{unique("cl")}"\nPATH="/var/tmp/w.img"\nSIZE="3"\n'
             'MODE="cp:gate"', fds)
    assert num(info(d, iid), "STATE") == LOCKED
    oid = ok(d, "one.vm.allocate", SMALL + disks(iid)
             + '\nSCHED_REQUIREMENTS="NAME=\\"nohost\\""', False)
    doc = ok(d, "one.vm.info", oid)
    assert (num(doc, "STATE"), num(doc, "PREV_STATE")) == (VM_CLONING, VM_CLONING)
    disk = vm_disks(doc)[0]
    assert (disk["CLONING"], disk["IMAGE_STATE"], disk["SOURCE"]) == ("YES", "9", "")
    assert "DRIVER" not in disk and "FORMAT" not in disk
    assert image_use(d, iid) == (LOCKED_USED, 1, [oid])
    # a second VM on hold waits too; then the copy ends
    held = ok(d, "one.vm.allocate", SMALL + disks(iid), True)
    assert vm_state(d, held) == (VM_CLONING, 0)
    open_gate(d, "cp", iid)
    wait_state(d, iid, USED)
    doc = wait_vm(d, oid, VM_PENDING)
    disk = vm_disks(doc)[0]
    assert "CLONING" not in disk
    assert (disk["SOURCE"], disk["DRIVER"], disk["FORMAT"], disk["IMAGE_STATE"]) == (
        f"flaky_src/{iid}", "qcow2", "qcow2", "9")
    doc = wait_vm(d, held, VM_HOLD)
    assert field(doc, "TEMPLATE/SUBMIT_ON_HOLD") == "YES"
    assert image_use(d, iid) == (USED, 2, [oid, held])
    terminate(d, oid)
    terminate(d, held)
    assert image_use(d, iid) == (READY, 0, [])


def test_cloning_failure_when_the_copy_fails(flaky, fds):
    d = flaky
    iid = ok(d, "one.image.allocate", f'NAME="{unique("cf")}"\nPATH="/var/tmp/w.img"\nSIZE="3"\n'
             'MODE="cp:gate-fail"\nPERSISTENT="YES"', fds)
    oid = ok(d, "one.vm.allocate", SMALL + disks(iid), True)
    assert vm_state(d, oid) == (VM_CLONING, 0)
    assert image_use(d, iid) == (LOCKED_USED_PERS, 1, [oid])
    open_gate(d, "cp", iid)
    wait_state(d, iid, ERROR)
    wait_vm(d, oid, VM_CLONING_FAILURE)
    assert fails(d, "one.vm.allocate", SMALL + disks(iid), True) == (
        f"[one.vm.allocate] DISK 0: Cannot acquire image {iid}, it is in state: ERROR",
        INTERNAL, -1)
    # recover success/failure of CLONING_FAILURE is the lock check again
    # (DispatchManager::recover -> disk_lock_success): the image is still ERROR, so the VM
    # stays; retry is an ACTIVE VM's only
    doc = ok(d, "one.vm.info", oid)
    for op in (1, 0):
        assert ok(d, "one.vm.recover", oid, op) == oid
        assert ok(d, "one.vm.info", oid) == doc
    assert fails(d, "one.vm.recover", oid, 2)[:2] == (
        f"[one.vm.recover] Could not perform a retry on VM {oid}, wrong state "
        "CLONING_FAILURE.", ACTION)
    # terminate releases nothing from an ERROR image (vms.md §1.4 QUIRK)
    terminate(d, oid)
    assert vm_state(d, oid) == (VM_DONE, 0)
    assert image_use(d, iid) == (ERROR, 1, [oid])


def test_image_lock_skipped_for_cloning_disks_on_instantiate_only(flaky, fds):
    """LOCKED non-persistent image taken by two VMs at allocate (LOCKED_USED), and the
    instantiate authorize skips the lock check of a CLONING disk."""
    d = flaky
    iid = ok(d, "one.image.allocate", f'NAME="{unique("lk")}"\nPATH="/var/tmp/w.img"\nSIZE="3"\n'
             'MODE="cp:gate"', fds)
    tid = ok(d, "one.template.allocate", f'NAME="{unique("t")}"\n{SMALL}{disks(iid)}')
    ok(d, "one.image.lock", iid, 1, False)
    # allocate authorizes the real template: the lock refuses
    assert fails(d, "one.vm.allocate", SMALL + disks(iid), True)[:2] == (
        f"[one.vm.allocate] User [0] : IMAGE is locked. [{iid}].", AUTHZ)
    # instantiate authorizes the extended copy: CLONING=YES skips the lock
    oid = ok(d, "one.template.instantiate", tid, "", True, "", False)
    assert vm_state(d, oid) == (VM_CLONING, 0)
    assert image_use(d, iid) == (LOCKED_USED, 1, [oid])
    open_gate(d, "cp", iid)
    wait_vm(d, oid, VM_HOLD)
    terminate(d, oid)


def test_cloning_vm_checked_again_after_a_restart(flaky, fds):
    """The copy's end was stored but the daemon stopped before the VMs' lock check
    (a transaction of its own): the check runs at start."""
    d = flaky
    iid = ok(d, "one.image.allocate", f'NAME="{unique("rs")}"\nPATH="/var/tmp/w.img"\n'
             'SIZE="3"\nMODE="cp:gate"', fds)
    oid = ok(d, "one.vm.allocate", SMALL + disks(iid), True)
    assert vm_state(d, oid) == (VM_CLONING, 0)
    d.stop()
    try:
        edit_body(d, iid, STATE="2", SOURCE="<![CDATA[flaky_src/done]]>",
                  FORMAT="<![CDATA[raw]]>")
    finally:
        d.start()
    doc = wait_vm(d, oid, VM_HOLD)
    assert vm_disks(doc)[0]["SOURCE"] == "flaky_src/done"
    terminate(d, oid)
    assert image_use(d, iid) == (READY, 0, [])
