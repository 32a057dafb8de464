"""Clusters and hosts (vms.md §6): one.host.* and one.hostpool.info for dummy hosts, the
dummy monitor taking a new host to MONITORED, cluster 0 ``default``.  Every document is
validated against host.xsd / host_pool.xsd / cluster.xsd (``ok`` does it)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.seed import fails, fault, field, num, ok, parse, unique, user
from tests.support.xsd import xsd_dir

pytestmark = [pytest.mark.timeout(120)]

SAMPLES = xsd_dir().parent / "samples"
INTERNAL, NO_EXISTS, AUTHZ, ACTION, API = 8192, 1024, 512, 2048, 4096


def wait_host_state(d, hid: int, wanted: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        doc = ok(d, "one.host.info", hid)
        if num(doc, "STATE") == wanted:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def test_new_dummy_host_is_init_then_monitored_on_its_own(daemon):
    name = unique("h")
    hid = ok(daemon, "one.host.allocate", name, "dummy", "dummy", -1)
    fresh = ok(daemon, "one.host.info", hid)
    if num(fresh, "STATE") == 0:  # the first probe may already have run
        sample = Path(SAMPLES, "one.host.info.init.body.xml").read_text().strip()
        expected = sample.replace("<ID>0</ID>", f"<ID>{hid}</ID>", 1).replace(
            "<NAME>h1</NAME>", f"<NAME>{name}</NAME>")
        assert fresh == expected
    started = time.monotonic()
    doc = wait_host_state(daemon, hid, 2)
    assert time.monotonic() - started < 5  # oned: 0.9-2.7 s
    share = parse(doc).find("HOST_SHARE")
    # known difference: the dummy probe's 3 fake PCI devices are not reported
    assert "<PCI_DEVICES></PCI_DEVICES>" in doc
    assert {e.tag: e.text for e in share if len(e) == 0 and e.tag != "PCI_DEVICES"} == {
        "MEM_USAGE": "0", "CPU_USAGE": "0", "TOTAL_MEM": "16777216", "TOTAL_CPU": "800",
        "MAX_MEM": "16777216", "MAX_CPU": "800", "RUNNING_VMS": "0", "VMS_THREAD": "1"}
    assert re.search(r"<DATASTORES><DISK_USAGE><!\[CDATA\[0\]\]></DISK_USAGE><FREE_DISK>"
                     r"<!\[CDATA\[20480\]\]></FREE_DISK><MAX_DISK><!\[CDATA\[20480\]\]>"
                     r"</MAX_DISK><USED_DISK><!\[CDATA\[9720\]\]></USED_DISK></DATASTORES>",
                     doc)
    assert len(share.findall("NUMA_NODES/NODE")) == 2
    assert len(share.findall("NUMA_NODES/NODE/CORE")) == 16
    tmpl = {e.tag: e.text for e in parse(doc).find("TEMPLATE")}
    assert tmpl == {"ARCH": "x86_64", "CPUSPEED": "3200", "HOSTNAME": name,
                    "HYPERVISOR": "dummy", "IM_MAD": "dummy", "MODELNAME": "Dummy(R) Core @ 3.2GHz",
                    "RESERVED_CPU": "", "RESERVED_MEM": "", "TOTALCPU": "800",
                    "TOTALMEMORY": "16777216", "VM_MAD": "dummy"}
    mon = parse(doc).find("MONITORING")
    assert [e.tag for e in mon] == ["TIMESTAMP", "ID", "CAPACITY", "SYSTEM", "NUMA_NODE",
                                    "NUMA_NODE"]
    assert mon.findtext("ID") == str(hid) and "<TIMESTAMP><![CDATA[" not in doc
    cap = {e.tag: int(e.text) for e in mon.find("CAPACITY")}
    assert cap["FREE_CPU"] + cap["USED_CPU"] == 800
    assert cap["FREE_MEMORY"] + cap["USED_MEMORY"] == 16777216
    listed = ok(daemon, "one.hostpool.info")
    assert f"<HOST>{doc[len('<HOST>'):]}" in listed or doc in listed
    one = daemon.client()
    assert one.host.info(hid).STATE == 2


def test_host_with_other_drivers_is_accepted_and_stays_init(daemon):
    # oned checks no driver at allocate; monitord without such a driver never reports
    hid = ok(daemon, "one.host.allocate", unique("kvm"), "kvm", "kvm", 0)
    time.sleep(1.5)
    doc = ok(daemon, "one.host.info", hid)
    assert (num(doc, "STATE"), field(doc, "IM_MAD")) == (0, "kvm")
    assert doc.endswith("<MONITORING/></HOST>")


def test_host_allocate_refusals(daemon):
    name = unique("h")
    hid = ok(daemon, "one.host.allocate", name, "dummy", "dummy", -1)
    assert fault(daemon, "one.host.allocate", unique("h"), "dummy", "dummy") == (
        -501, "Not enough parameters")
    assert fault(daemon, "one.host.allocate", unique("h"), "dummy", "dummy", "0")[1] == (
        "Parameter that is supposed to be integer is not")
    m = "[one.host.allocate] "
    assert fails(daemon, "one.host.allocate", name, "dummy", "dummy", -1) == (
        f"{m}NAME is already taken by HOST {hid}.", INTERNAL, -1)
    assert fails(daemon, "one.host.allocate", "", "dummy", "dummy", -1) == (
        f"{m}Invalid NAME, it cannot be empty", INTERNAL, -1)
    assert fails(daemon, "one.host.allocate", unique("h"), "", "dummy", -1) == (
        f"{m}IM_MAD_NAME cannot be empty.", INTERNAL, -1)
    assert fails(daemon, "one.host.allocate", unique("h"), "dummy", "", -1) == (
        f"{m}VMM_MAD_NAME cannot be empty.", INTERNAL, -1)
    assert fails(daemon, "one.host.allocate", unique("h"), "dummy", "dummy", 5) == (
        f"{m}Error getting cluster [5].", NO_EXISTS, 5)
    uid, session = user(daemon)
    assert fails(daemon, "one.host.allocate", unique("h"), "dummy", "dummy", -1,
                 session=session) == (
        f"{m}User [{uid}] : Not authorized to perform CREATE HOST; Not authorized to perform "
        "ADMIN CLUSTER [0].", AUTHZ, -1)


def test_plain_user_sees_no_host(daemon):
    hid = ok(daemon, "one.host.allocate", unique("h"), "dummy", "dummy", -1)
    uid, session = user(daemon)
    assert fails(daemon, "one.host.info", hid, session=session) == (
        f"[one.host.info] User [{uid}] : Not authorized to perform USE HOST [{hid}].", AUTHZ, -1)
    assert ok(daemon, "one.hostpool.info", session=session) == "<HOST_POOL></HOST_POOL>"
    assert fails(daemon, "one.host.info", 9999) == (
        "[one.host.info] Error getting host [9999].", NO_EXISTS, 9999)
    for method, args in (("one.host.delete", ()), ("one.host.status", (1,)),
                         ("one.host.update", ("A=1", 1)), ("one.host.rename", ("x",))):
        assert fails(daemon, method, hid, *args, session=session) == (
            f"[{method}] User [{uid}] : Not authorized to perform ADMIN HOST [{hid}].", AUTHZ, -1)
        assert fails(daemon, method, 9999, *args)[1:] == (NO_EXISTS, 9999)


def test_status_update_rename_delete(daemon):
    name = unique("h")
    hid = ok(daemon, "one.host.allocate", name, "dummy", "dummy", -1)
    wait_host_state(daemon, hid, 2)
    assert ok(daemon, "one.host.status", hid, 1) == hid
    time.sleep(1.2)  # a disabled host is not taken back to MONITORED
    doc = ok(daemon, "one.host.info", hid)
    assert (num(doc, "STATE"), num(doc, "PREV_STATE")) == (4, 2)
    assert ok(daemon, "one.host.status", hid, 2) == hid
    assert num(ok(daemon, "one.host.info", hid), "STATE") == 8
    assert fails(daemon, "one.host.status", hid, 7) == (
        "[one.host.status] Wrong status code", INTERNAL, -1)
    assert ok(daemon, "one.host.status", hid, 0) == hid
    wait_host_state(daemon, hid, 2)

    assert ok(daemon, "one.host.update", hid, 'NOTE="a"\nRESERVED_CPU="100"', 1) == hid
    doc = ok(daemon, "one.host.info", hid)
    assert (field(doc, "TEMPLATE/NOTE"), field(doc, "TEMPLATE/ARCH")) == ("a", "x86_64")
    assert ok(daemon, "one.host.update", hid, 'ONLY="b"', 0) == hid
    tmpl = {e.tag: e.text for e in parse(ok(daemon, "one.host.info", hid)).find("TEMPLATE")}
    assert tmpl == {"IM_MAD": "dummy", "ONLY": "b", "VM_MAD": "dummy"}
    assert fails(daemon, "one.host.update", hid, "A=1", 2) == (
        "[one.host.update] Wrong update type", API, -1)
    assert fails(daemon, "one.host.update", hid, "A=[", 0)[0].startswith(
        "[one.host.update] Cannot update template. ")

    other = ok(daemon, "one.host.allocate", unique("h"), "dummy", "dummy", -1)
    other_name = field(ok(daemon, "one.host.info", other), "NAME")
    assert fails(daemon, "one.host.rename", hid, other_name) == (
        f"[one.host.rename] host cannot be renamed to {other_name} because it collides "
        f"with host {other}", ACTION, -1)
    assert fails(daemon, "one.host.rename", hid, "a/b") == (
        "[one.host.rename] Invalid NAME, char '/' is not allowed", ACTION, -1)
    new = unique("renamed")
    assert ok(daemon, "one.host.rename", hid, new) == hid
    assert field(ok(daemon, "one.host.info", hid), "NAME") == new

    assert f"<ID>{hid}</ID>" in re.search(r"<HOSTS>.*?</HOSTS>",
                                          ok(daemon, "one.cluster.info", 0)).group(0)
    assert ok(daemon, "one.host.delete", hid) == hid
    assert fails(daemon, "one.host.info", hid)[1] == NO_EXISTS
    assert f"<ID>{hid}</ID>" not in re.search(r"<HOSTS>.*?</HOSTS>",
                                              ok(daemon, "one.cluster.info", 0)).group(0)


def test_cluster_default(daemon):
    hosts = [int(i) for i in re.findall(r"<HOST><ID>(\d+)</ID>", ok(daemon, "one.hostpool.info"))]
    ds = sorted(int(i) for i in re.findall(r"<DATASTORE><ID>(\d+)</ID>",
                                           ok(daemon, "one.datastorepool.info")))
    doc = ok(daemon, "one.cluster.info", 0)
    assert doc == ("<CLUSTER><ID>0</ID><NAME>default</NAME><HOSTS>"
                   + "".join(f"<ID>{i}</ID>" for i in sorted(hosts)) + "</HOSTS><DATASTORES>"
                   + "".join(f"<ID>{i}</ID>" for i in ds) + "</DATASTORES><VNETS></VNETS>"
                   "<TEMPLATE><RESERVED_CPU><![CDATA[]]></RESERVED_CPU><RESERVED_MEM>"
                   "<![CDATA[]]></RESERVED_MEM></TEMPLATE></CLUSTER>")
    assert ok(daemon, "one.clusterpool.info") == f"<CLUSTER_POOL>{doc}</CLUSTER_POOL>"
    assert fails(daemon, "one.cluster.info", 3) == (
        "[one.cluster.info] Error getting cluster [3].", NO_EXISTS, 3)
    uid, session = user(daemon)
    assert fails(daemon, "one.cluster.info", 0, session=session) == (
        f"[one.cluster.info] User [{uid}] : Not authorized to perform USE CLUSTER [0].",
        AUTHZ, -1)


def test_hosts_report_again_after_a_restart(fresh_daemon):
    d = fresh_daemon()
    hid = ok(d, "one.host.allocate", "r1", "dummy", "dummy", -1)
    first = wait_host_state(d, hid, 2)
    assert num(first, "PREV_STATE") == 0
    off = ok(d, "one.host.allocate", "r2", "dummy", "dummy", -1)
    ok(d, "one.host.status", off, 1)
    d.stop()
    time.sleep(1.1)
    d.start()
    again = ok(d, "one.host.info", hid)
    assert (num(again, "STATE"), num(again, "PREV_STATE")) == (2, 2)
    assert num(again, "MONITORING/TIMESTAMP") > num(first, "MONITORING/TIMESTAMP")
    assert num(ok(d, "one.host.info", off), "STATE") == 4


def test_pyone_reads_hosts_and_clusters(daemon):
    one = daemon.client()
    hid = one.host.allocate(unique("py"), "dummy", "dummy", -1)
    wait_host_state(daemon, hid, 2)
    host = [h for h in one.hostpool.info().HOST if h.ID == hid][0]
    assert (host.STATE, host.HOST_SHARE.TOTAL_CPU, host.HOST_SHARE.MAX_MEM,
            host.CLUSTER) == (2, 800, 16777216, "default")
    assert len(host.HOST_SHARE.NUMA_NODES.NODE) == 2
    assert host.TEMPLATE["HYPERVISOR"] == "dummy"
    assert hid in one.cluster.info(0).HOSTS.ID
    assert one.clusterpool.info().CLUSTER[0].NAME == "default"
    assert one.host.rename(hid, unique("py2")) == hid
    assert one.host.delete(hid) == hid


def test_driver_names_are_text_not_template(daemon):
    """A driver name with quotes and a newline is the caller's text: never parsed as
    template syntax (it once was: an internal error and a traceback)."""
    odd = 'PATH="http://x"\nA=1'
    hid = ok(daemon, "one.host.allocate", unique("h"), odd, "dummy", -1)
    doc = ok(daemon, "one.host.info", hid)
    assert (field(doc, "IM_MAD"), field(doc, "TEMPLATE/IM_MAD")) == (odd, odd)
    assert field(doc, "TEMPLATE/A") is None
    ok(daemon, "one.host.delete", hid)
