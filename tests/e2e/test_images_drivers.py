"""The datastore driver round trip as oned's ImageManagerProtocol (api.md §5.2,
drivers.md §3): LOCKED -> READY/ERROR with the TEMPLATE/ERROR texts, and drivers that
fail, print garbage, hang or time out, while the daemon keeps serving."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.seed import (
    CTIME,
    edit_body,
    fails,
    field,
    flaky_daemon,
    flaky_datastore,
    info,
    num,
    ok,
    open_gate,
    register,
    section,
    snapshot,
    snapshots,
    template_dict,
    unique,
    wait_gone,
    wait_state,
)

M = "one.image.allocate"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = flaky_daemon(tmp_path_factory.mktemp("drivers"))
    yield d
    d.drop()


@pytest.fixture(scope="module")
def ds(daemon):
    return flaky_datastore(daemon, "drv-ds")


def path_image(daemon, ds, mode: str, path: str = "/var/tmp/drv.img") -> int:
    return ok(daemon, M, f'NAME="{unique()}"\nPATH="{path}"\nMODE="{mode}"', ds)


def mkfs_image(daemon, ds, mode: str) -> int:
    return ok(daemon, M, f'NAME="{unique()}"\nTYPE="DATABLOCK"\nSIZE="2"\nMODE="{mode}"', ds)


def error_text(xml: str) -> str:
    value = template_dict(xml)["ERROR"]
    m = re.fullmatch(rf"({CTIME}) : (.*)", value, re.S)
    assert m, value
    return m.group(2)


def test_cp_success(daemon, ds):
    oid = path_image(daemon, ds, "cp:gate")
    xml = info(daemon, oid)
    assert [num(xml, t) for t in ("STATE", "PREV_STATE", "SIZE")] == [4, 0, 7]
    assert [field(xml, t) for t in ("SOURCE", "PATH", "FORMAT")] == ["", "/var/tmp/drv.img", ""]
    open_gate(daemon, "cp", oid)
    xml = wait_state(daemon, oid, 1)
    assert [field(xml, t) for t in ("SOURCE", "FORMAT")] == [f"flaky_src/{oid}", "qcow2"]
    assert (num(xml, "PREV_STATE"), "ERROR" in template_dict(xml)) == (1, False)


def test_mkfs_success(daemon, ds):
    oid = mkfs_image(daemon, ds, "mkfs:gate")
    xml = info(daemon, oid)
    assert [num(xml, t) for t in ("STATE", "PREV_STATE", "SIZE")] == [4, 0, 2]
    assert (field(xml, "SOURCE"), field(xml, "FORMAT")) == ("", "raw")
    open_gate(daemon, "mkfs", oid)
    xml = wait_state(daemon, oid, 1)
    assert (field(xml, "SOURCE"), field(xml, "FORMAT")) == (f"flaky_src/{oid}", "raw")


@pytest.mark.parametrize("how,text", [
    ("fail", "Error copying image in the datastore: the disk is on fire; and smoking"),
    ("silent", "Error copying image in the datastore: exit code 4"),
    ("garbage", "CP operation succeeded but image FORMAT was not returned."),
    ("empty", "CP operation succeeded but image FORMAT was not returned."),
])
def test_cp_failures(daemon, ds, how, text):
    oid = path_image(daemon, ds, f"cp:{how}")
    xml = wait_state(daemon, oid, 5)
    assert error_text(xml) == text
    assert (num(xml, "PREV_STATE"), field(xml, "SOURCE"), field(xml, "FORMAT")) == (5, "", "")


@pytest.mark.parametrize("how,text", [
    ("fail", "Error creating datablock: the disk is on fire; and smoking"),
    ("empty", "Error creating datablock: MKFS returned no SOURCE"),
])
def test_mkfs_failures(daemon, ds, how, text):
    oid = mkfs_image(daemon, ds, f"mkfs:{how}")
    assert error_text(wait_state(daemon, oid, 5)) == text


def test_weird_driver_output_is_stored_safely(daemon, ds):
    oid = path_image(daemon, ds, "cp:weird")
    xml = wait_state(daemon, oid, 1)
    assert (field(xml, "SOURCE"), field(xml, "FORMAT")) == ("]]>&<src>\\$(x)", "qcow2")
    assert ok(daemon, "one.imagepool.info", -2, oid, oid).count("<IMAGE>") == 1


def test_stat_errors(daemon, ds):
    assert fails(daemon, M, 'NAME="s"\nPATH="/var/tmp/stat-fail"', ds) == (
        "[one.image.allocate] Cannot parse image SIZE: cannot access '/var/tmp/stat-fail' "
        "(No such file or directory)", 8192, -1)
    assert fails(daemon, M, 'NAME="s"\nPATH="/var/tmp/stat-garbage"', ds) == (
        "[one.image.allocate] Cannot parse image SIZE: lots of garbage", 8192, -1)


def test_hanging_cp_does_not_block_the_daemon(daemon, ds):
    oid = path_image(daemon, ds, "cp:hang")
    started = time.monotonic()
    for _ in range(5):
        assert num(info(daemon, oid), "STATE") == 4
        ok(daemon, "one.imagepool.info", -2, -1, -1)
        assert ok(daemon, "one.system.version")
    other = path_image(daemon, ds, "")
    wait_state(daemon, other, 1)
    assert time.monotonic() - started < 10
    # the stuck copy can be cancelled with a forced delete
    assert ok(daemon, "one.image.delete", oid, True) == oid
    assert fails(daemon, "one.image.info", oid)[1:] == (1024, oid)


def test_driver_timeouts(tmp_path):
    d = flaky_daemon(tmp_path, timeouts="CP = 2, STAT = 2")
    try:
        ds = flaky_datastore(d, "timeouts")
        started = time.monotonic()
        assert fails(d, M, 'NAME="s"\nPATH="/var/tmp/stat-hang"', ds) == (
            "[one.image.allocate] Cannot parse image SIZE: Request timeout", 8192, -1)
        assert time.monotonic() - started < 15
        oid = path_image(d, ds, "cp:hang")
        xml = wait_state(d, oid, 5, timeout=30)
        script = d.remotes / "datastore" / "flaky" / "cp"
        assert error_text(xml) == (
            f"Error copying image in the datastore: Timeout executing {script} {oid}")
        # and it still serves
        good = path_image(d, ds, "")
        wait_state(d, good, 1)
    finally:
        d.drop()


def test_missing_driver_script(tmp_path):
    # a DS_MAD_CONF (oned refuses a datastore without one) but no scripts
    d = flaky_daemon(tmp_path, extra_config='DS_MAD_CONF = [ NAME = "nosuch" ]\n')
    try:
        ds = ok(d, "one.datastore.allocate", 'NAME="nodrv"\nDS_MAD="nosuch"\nTM_MAD="dummy"\n'
                'DATASTORE_CAPACITY_CHECK="NO"', -1)
        oid = ok(d, M, 'NAME="m"\nTYPE="DATABLOCK"\nSIZE="1"', ds)
        xml = wait_state(d, oid, 5)
        assert error_text(xml) == (
            "Error creating datablock: Datastore driver 'nosuch' not available")
    finally:
        d.drop()


# ------------------------------------------------------------------ restarts
@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_restart_runs_interrupted_actions_again(tmp_path, how):
    d = flaky_daemon(tmp_path)
    try:
        ds = flaky_datastore(d, "restart")
        cp = path_image(d, ds, "cp:gate")
        src = register(d, ds, extra='MODE="clone:gate"\n')
        clone = ok(d, "one.image.clone", src, "restarted-clone")
        snap = register(d, ds, extra='TYPE="DATABLOCK"\nMODE="snap_delete:gate"\n')
        listing = snapshots(snapshot(0), snapshot(1, active=True), mode="YES")
        edit_body(d, snap, SNAPSHOTS=listing)
        ok(d, "one.image.snapshotdelete", snap, 0)
        rm = register(d, ds, extra='MODE="rm:gate"\n')
        ok(d, "one.image.delete", rm)
        if how == "stop":
            d.restart()
        else:
            d.kill9()
            d.start()
        # nothing was recorded as a failure: the actions run again
        docs = [info(d, i) for i in (cp, clone, rm)]
        assert [num(x, "STATE") for x in docs] == [4, 4, 7]
        assert ["ERROR" in template_dict(x) for x in docs] == [False] * 3
        xml = info(d, src)
        assert (num(xml, "STATE"), num(xml, "CLONING_OPS"), section(xml, "CLONES")) == (
            2, 1, f"<CLONES><ID>{clone}</ID></CLONES>")
        # a half-done snapshot operation is not repeated
        xml = info(d, snap)
        assert (num(xml, "STATE"), num(xml, "TARGET_SNAPSHOT")) == (1, -1)
        assert section(xml, "SNAPSHOTS") == listing
        assert error_text(xml) == ("Snapshot operation on snapshot 0 was interrupted by a "
                                   "restart of oned-images; check the image files before "
                                   "using it")
        for action, oid in (("cp", cp), ("clone", clone), ("rm", rm)):
            open_gate(d, action, oid)
        assert field(wait_state(d, cp, 1), "SOURCE") == f"flaky_src/{cp}"
        assert field(wait_state(d, clone, 1), "SOURCE") == f"flaky_clone/{clone}"
        assert num(wait_state(d, src, 1), "CLONING_OPS") == 0
        wait_gone(d, rm)
    finally:
        d.drop()


def test_restart_recounts_clone_operations(tmp_path):
    d = flaky_daemon(tmp_path)
    try:
        ds = flaky_datastore(d, "recount")
        src = register(d, ds, extra='MODE="clone:gate"\n')
        clone = ok(d, "one.image.clone", src, "live-clone")
        # a clone the source still counts but that no longer exists
        edit_body(d, src, CLONING_OPS="2",
                  CLONES=f"<CLONES><ID>{clone}</ID><ID>999</ID></CLONES>")
        d.restart()
        xml = info(d, src)
        assert (num(xml, "STATE"), num(xml, "CLONING_OPS"), section(xml, "CLONES")) == (
            2, 1, f"<CLONES><ID>{clone}</ID></CLONES>")
        open_gate(d, "clone", clone)
        wait_state(d, clone, 1)
        xml = wait_state(d, src, 1)
        assert (num(xml, "CLONING_OPS"), section(xml, "CLONES")) == (0, "<CLONES></CLONES>")
    finally:
        d.drop()


@pytest.mark.parametrize("state,persistent,after", [(9, "NO", 2), (10, "YES", 8)])
def test_copy_that_vms_wait_for(daemon, ds, state, persistent, after):
    oid = ok(daemon, M, f'NAME="{unique()}"\nPATH="/var/tmp/w.img"\nMODE="cp:gate"\n'
             f'PERSISTENT="{persistent}"', ds)
    edit_body(daemon, oid, STATE=str(state), RUNNING_VMS="1", VMS="<VMS><ID>5</ID></VMS>")
    assert fails(daemon, "one.image.delete", oid) == (
        "[one.image.delete] Image locked, use --force flag to remove the image. Force delete "
        "may leave some files on Datastore", 8192, oid)
    assert fails(daemon, "one.image.delete", oid, True) == (
        "[one.image.delete] Cannot delete image. There are 1 VMs using it.", 2048, -1)
    open_gate(daemon, "cp", oid)
    xml = wait_state(daemon, oid, after)
    assert (num(xml, "PREV_STATE"), field(xml, "SOURCE"), section(xml, "VMS")) == (
        after, f"flaky_src/{oid}", "<VMS><ID>5</ID></VMS>")


def test_failed_copy_that_vms_wait_for(daemon, ds):
    oid = path_image(daemon, ds, "cp:gate-fail")
    edit_body(daemon, oid, STATE="10", RUNNING_VMS="1")
    open_gate(daemon, "cp", oid)
    xml = wait_state(daemon, oid, 5)
    assert error_text(xml) == (
        "Error copying image in the datastore: the disk is on fire; and smoking")
    assert num(xml, "RUNNING_VMS") == 1
