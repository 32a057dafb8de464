"""The pure parts of domain/quotas and domain/vm_quotas: oned's number printing,
Quota::set's limit rules, cleanup, the documents, and the arithmetic of VM_QUOTA and
IMAGE_QUOTA on in-memory documents (the accounting against the database is pinned by
tests/e2e/test_quotas.py and tests/e2e/test_vm_quotas.py)."""

from __future__ import annotations

import pytest

from oned_images import errors
from oned_images.domain import quotas, vm_quotas
from oned_images.template import Template


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (7, "7"), (-1, "-1"), (-2, "-2"), (0.25, "0.25"), (2.5, "2.50"),
    (1024000, "1024000"),
])
def test_float_str_is_one_util_float_to_str(value, text):
    assert quotas.float_str(value) == text


def limits(text: str, entries=None, is_default=False, section="DATASTORE"):
    doc = quotas.empty()
    if entries is not None:
        doc[section] = entries
    quotas.set_limits(doc, Template.parse(text, replace_mode=False), is_default)
    return doc[section]


def test_omitted_limits_are_the_implicit_ones_and_counters_are_kept():
    assert limits("DATASTORE=[ID=1,IMAGES=3]") == [
        {"ID": "1", "IMAGES": "3", "IMAGES_USED": "0", "SIZE": "-1", "SIZE_USED": "0"}]
    assert limits("DATASTORE=[ID=1,SIZE=5]", is_default=True) == [
        {"ID": "1", "IMAGES": "-2", "IMAGES_USED": "0", "SIZE": "5", "SIZE_USED": "0"}]
    used = [{"ID": "4", "IMAGES": "9", "IMAGES_USED": "2", "SIZE": "9", "SIZE_USED": "40"}]
    assert limits("DATASTORE=[ID=4,IMAGES=-1,SIZE=-1]", used) == [
        {"ID": "4", "IMAGES": "-1", "IMAGES_USED": "2", "SIZE": "-1", "SIZE_USED": "40"}]


def test_entries_with_nothing_left_go_away_in_order():
    entries = limits("DATASTORE=[ID=1,IMAGES=1]\nDATASTORE=[ID=2,SIZE=2]")
    assert [e["ID"] for e in entries] == ["1", "2"]
    limits("DATASTORE=[ID=1]", entries)
    assert [e["ID"] for e in entries] == ["2"]
    limits("DATASTORE=[ID=2,SIZE=-2]\nDATASTORE=[ID=1,IMAGES=1]", entries)
    assert [e["ID"] for e in entries] == ["2", "1"]


@pytest.mark.parametrize(("text", "is_default", "shown"), [
    ("DATASTORE=[ID=1,IMAGES=-3]", False, "ID=1,IMAGES=-3"),
    ("DATASTORE=[ID=1,IMAGES=-1]", True, "ID=1,IMAGES=-1"),
    ("DATASTORE=[ID=a1,SIZE=1]", False, "ID=a1,SIZE=1"),
    ("DATASTORE=[SIZE=1]", False, "SIZE=1"),
    ("DATASTORE=[ID=1,SIZE=nan]", False, "ID=1,SIZE=nan"),
])
def test_bad_limits(text, is_default, shown):
    with pytest.raises(errors.OneError) as exc:
        limits(text, is_default=is_default)
    assert (exc.value.code, exc.value.detail) == (
        errors.ErrorCode.ACTION, f"Negative limits or bad format in quota DATASTORE = [ {shown} ]")


def test_documents_round_trip():
    entries = limits("DATASTORE=[ID=3,IMAGES=2,SIZE=2.5]")
    xml = quotas.quotas_xml(9, {**quotas.empty(), "DATASTORE": entries})
    assert xml == (
        "<QUOTAS><ID>9</ID><DATASTORE_QUOTA><DATASTORE><ID><![CDATA[3]]></ID><IMAGES><![CDATA["
        "2]]></IMAGES><IMAGES_USED><![CDATA[0]]></IMAGES_USED><SIZE><![CDATA[2.50]]></SIZE>"
        "<SIZE_USED><![CDATA[0]]></SIZE_USED></DATASTORE></DATASTORE_QUOTA><NETWORK_QUOTA>"
        "</NETWORK_QUOTA><VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA></QUOTAS>")
    assert quotas.parse_entries(xml) == entries
    assert quotas.parse_entries(quotas.defaults_xml(
        quotas.USER, {**quotas.empty(), "DATASTORE": entries})) == entries


# ------------------------------------------------------------------ VM and IMAGE
def vm_entry(**used):
    out = {}
    for metric in quotas.VM_METRICS:
        out[metric] = "-1"
        out[f"{metric}_USED"] = used.get(metric, "0")
    return out


def test_vm_and_image_limits_are_set_without_and_with_an_id():
    doc = quotas.empty()
    quotas.set_limits(doc, Template.parse("VM=[VMS=2,RUNNING_CPU=1.5]\nIMAGE=[ID=4,RVMS=1]",
                                          replace_mode=False), False)
    assert doc["VM"] == [{**vm_entry(), "VMS": "2", "RUNNING_CPU": "1.50"}]
    assert doc["IMAGE"] == [{"ID": "4", "RVMS": "1", "RVMS_USED": "0"}]
    # back to the implicit limits with nothing used: both vectors go
    quotas.set_limits(doc, Template.parse("VM=[VMS=-1]\nIMAGE=[ID=4]", replace_mode=False),
                      False)
    assert (doc["VM"], doc["IMAGE"]) == ([], [])


@pytest.mark.parametrize(("text", "shown"), [
    ("IMAGE=[RVMS=1]", "IMAGE = [ RVMS=1 ]"),
    ("IMAGE=[ID=x,RVMS=1]", "IMAGE = [ ID=x,RVMS=1 ]"),
    ("VM=[VMS=-3]", "VM = [ VMS=-3 ]"),
    ("VM=[CPU=many,MEMORY=1]", "VM = [ CPU=many,MEMORY=1 ]"),
])
def test_bad_vm_and_image_limits(text, shown):
    with pytest.raises(errors.OneError) as exc:
        quotas.set_limits(quotas.empty(), Template.parse(text, replace_mode=False), False)
    assert (exc.value.code, exc.value.detail) == (
        errors.ErrorCode.ACTION, f"Negative limits or bad format in quota {shown}")


def test_vm_check_order_text_and_default_limits():
    doc, defaults = quotas.empty(), quotas.empty()
    quotas.set_limits(defaults, Template.parse("VM=[MEMORY=100]", replace_mode=False), True)
    use = {"VMS": 1.0, "RUNNING_VMS": 1.0, "CPU": 0.5, "RUNNING_CPU": 0.5, "MEMORY": 64.0,
           "RUNNING_MEMORY": 64.0, "SYSTEM_DISK_SIZE": 0.0}
    quotas._check_add(doc, defaults, "user [5]", "VM", "", use)
    assert doc["VM"] == [vm_entry(VMS="1", RUNNING_VMS="1", CPU="0.50", RUNNING_CPU="0.50",
                                  MEMORY="64", RUNNING_MEMORY="64")]
    # MEMORY's default limit (100) refuses the second; nothing was added
    with pytest.raises(errors.OneError) as exc:
        quotas._check_add(doc, defaults, "user [5]", "VM", "", use)
    assert exc.value.detail == "user [5] limit of 100 reached for MEMORY quota in VM"
    assert doc["VM"][0]["VMS_USED"] == "1"
    # the user's own limit wins, and VMS is checked before MEMORY
    doc["VM"][0]["VMS"] = "1"
    with pytest.raises(errors.OneError) as exc:
        quotas._check_add(doc, defaults, "group [3]", "VM", "", use)
    assert exc.value.detail == "group [3] limit of 1 reached for VMS quota in VM"
    quotas._check_add(doc, quotas.empty(), "", "IMAGE", "7", {"RVMS": 1.0})
    doc["IMAGE"][0]["RVMS"] = "1"
    with pytest.raises(errors.OneError) as exc:
        quotas._check_add(doc, quotas.empty(), "user [5]", "IMAGE", "7", {"RVMS": 1.0})
    assert exc.value.detail == "user [5] limit of 1 reached for RVMS quota in IMAGE with ID: 7"


def test_release_cleans_up_what_holds_nothing():
    doc = quotas.empty()
    use = {"VMS": 1.0, "CPU": 0.25, "MEMORY": 32.0, "SYSTEM_DISK_SIZE": 10.0}
    quotas._check_add(doc, quotas.empty(), "", "VM", "", use, check=False)
    quotas._check_add(doc, quotas.empty(), "", "IMAGE", "2", {"RVMS": 1.0}, check=False)
    quotas._del(doc, "VM", "", {"VMS": 1.0, "CPU": 0.25, "MEMORY": 16.0})
    assert doc["VM"][0]["MEMORY_USED"] == "16"
    quotas._del(doc, "VM", "", {"MEMORY": 16.0, "SYSTEM_DISK_SIZE": 10.0})
    quotas._del(doc, "IMAGE", "2", {"RVMS": 1.0})
    assert (doc["VM"], doc["IMAGE"]) == ([], [])


def test_documents_print_the_four_sections_in_oneds_order():
    doc = quotas.empty()
    quotas._check_add(doc, quotas.empty(), "", "IMAGE", "3", {"RVMS": 1.0}, check=False)
    quotas._check_add(doc, quotas.empty(), "", "VM", "", {"VMS": 1.0}, check=False)
    xml = quotas.sections_xml(doc)
    assert xml == (
        "<DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA></NETWORK_QUOTA><VM_QUOTA><VM>"
        + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in sorted(vm_entry(VMS="1").items()))
        + "</VM></VM_QUOTA><IMAGE_QUOTA><IMAGE><ID><![CDATA[3]]></ID><RVMS><![CDATA[-1]]>"
        "</RVMS><RVMS_USED><![CDATA[1]]></RVMS_USED></IMAGE></IMAGE_QUOTA>")
    assert quotas.parse_doc(f"<QUOTAS><ID>1</ID>{xml}</QUOTAS>") == doc


# ------------------------------------------------------------------ what a VM holds
def vm_template(text: str) -> Template:
    return Template.parse(text, replace_mode=False)


def test_system_disk_size_counts_volatile_and_system_target_disks():
    t = vm_template(
        'CPU="0.5"\nMEMORY="128"\n'
        'DISK=[TYPE="fs",SIZE="100"]\n'                                     # volatile
        'DISK=[IMAGE_ID="1",SIZE="10",CLONE="YES",CLONE_TARGET="SYSTEM",'
        'LN_TARGET="NONE",DISK_SNAPSHOT_TOTAL_SIZE="5"]\n'                  # copied there
        'DISK=[IMAGE_ID="2",SIZE="20",CLONE="NO",CLONE_TARGET="SYSTEM",'
        'LN_TARGET="NONE"]\n'                                               # used in place
        'DISK=[IMAGE_ID="1",SIZE="40",CLONE="NO",CLONE_TARGET="SELF",LN_TARGET="SYSTEM"]')
    assert vm_quotas.system_disk_size(t) == 155
    assert vm_quotas.image_ids(t) == [1, 2, 1]
    assert vm_quotas.usage(t) == {
        "VMS": 1.0, "CPU": 0.5, "MEMORY": 128.0, "SYSTEM_DISK_SIZE": 155.0,
        "RUNNING_VMS": 1.0, "RUNNING_CPU": 0.5, "RUNNING_MEMORY": 128.0}
    assert vm_quotas.usage(t, basic=False) == {
        "VMS": 0.0, "CPU": 0.0, "MEMORY": 0.0, "SYSTEM_DISK_SIZE": 0.0,
        "RUNNING_VMS": 1.0, "RUNNING_CPU": 0.5, "RUNNING_MEMORY": 128.0}


@pytest.mark.parametrize(("state", "lcm", "counted"), [
    (1, 0, True), (2, 0, True), (10, 0, True), (11, 0, True),     # PENDING HOLD CLONING*
    (3, 3, True), (3, 1, True), (3, 11, True), (3, 18, True),    # RUNNING PROLOG EPILOG …
    (3, 51, False), (3, 33, False), (3, 63, False),              # … but not POWEROFF work
    (4, 0, False), (5, 0, False), (6, 0, False), (8, 0, False), (9, 0, False),
])
def test_running_states(state, lcm, counted):
    assert vm_quotas.running(state, lcm) is counted


def test_recount_keeps_limits_and_network_and_drops_what_holds_nothing():
    """db fsck's recount: counters from the requests alone, limits as they were, a
    vector with nothing held and implicit limits gone, NETWORK as stored."""
    have = quotas.parse_doc(
        "<QUOTAS><DATASTORE_QUOTA>"
        "<DATASTORE><ID>1</ID><IMAGES>-1</IMAGES><IMAGES_USED>9</IMAGES_USED>"
        "<SIZE>500</SIZE><SIZE_USED>3</SIZE_USED></DATASTORE>"
        "<DATASTORE><ID>2</ID><IMAGES>-1</IMAGES><IMAGES_USED>4</IMAGES_USED>"
        "<SIZE>-1</SIZE><SIZE_USED>40</SIZE_USED></DATASTORE></DATASTORE_QUOTA>"
        "<NETWORK_QUOTA><NETWORK><ID>0</ID><LEASES>5</LEASES><LEASES_USED>2</LEASES_USED>"
        "</NETWORK></NETWORK_QUOTA></QUOTAS>")
    requests = [quotas.image_request(1, 30), quotas.image_request(1, 7),
                quotas.held_request(((5, 100), {"VMS": 1.0, "CPU": 0.25}, [8, 8], {}))]
    want = quotas.recounted(have, requests)
    assert quotas.sections_xml(want) == (
        "<DATASTORE_QUOTA><DATASTORE><ID><![CDATA[1]]></ID><IMAGES><![CDATA[-1]]></IMAGES>"
        "<IMAGES_USED><![CDATA[2]]></IMAGES_USED><SIZE><![CDATA[500]]></SIZE>"
        "<SIZE_USED><![CDATA[37]]></SIZE_USED></DATASTORE></DATASTORE_QUOTA>"
        "<NETWORK_QUOTA><NETWORK><ID><![CDATA[0]]></ID><LEASES><![CDATA[5]]></LEASES>"
        "<LEASES_USED><![CDATA[2]]></LEASES_USED></NETWORK></NETWORK_QUOTA>"
        "<VM_QUOTA><VM><CPU><![CDATA[-1]]></CPU><CPU_USED><![CDATA[0.25]]></CPU_USED>"
        + "".join(f"<{m}><![CDATA[-1]]></{m}><{m}_USED><![CDATA[0]]></{m}_USED>"
                  for m in ("MEMORY", "RUNNING_CPU", "RUNNING_MEMORY", "RUNNING_VMS",
                            "SYSTEM_DISK_SIZE"))
        + "<VMS><![CDATA[-1]]></VMS><VMS_USED><![CDATA[1]]></VMS_USED></VM></VM_QUOTA>"
        "<IMAGE_QUOTA><IMAGE><ID><![CDATA[8]]></ID><RVMS><![CDATA[-1]]></RVMS>"
        "<RVMS_USED><![CDATA[2]]></RVMS_USED></IMAGE></IMAGE_QUOTA>")
    assert quotas.usage_drift(have, want, len(requests)) == [
        "DATASTORE 1: IMAGES_USED is 9, what exists holds 2",
        "DATASTORE 1: SIZE_USED is 3, what exists holds 37",
        "DATASTORE 2: IMAGES_USED is 4, what exists holds 0",
        "DATASTORE 2: SIZE_USED is 40, what exists holds 0",
        "VM: CPU_USED is 0, what exists holds 0.25",
        "VM: VMS_USED is 0, what exists holds 1",
        "IMAGE 8: RVMS_USED is 0, what exists holds 2"]
    assert quotas.usage_drift(want, want, 3) == []


def test_recount_forgives_the_rounding_of_charges_made_in_another_order():
    """Each charge rounds to two decimals: three VMs of CPU 0.333 charged one by one
    add up to 0.99, where charges made in another grouping can show 1 (0.67 + 0.33)."""
    one = {"VMS": 1.0, "CPU": 0.333}
    want = quotas.recounted(quotas.empty(), [quotas.held_request(((5, 100), one, [], {}))] * 3)
    assert want["VM"][0]["CPU_USED"] == "0.99"
    have = quotas.recounted(want, [quotas.held_request(((5, 100), one, [], {}))] * 3)
    have["VM"][0]["CPU_USED"] = "1"
    assert quotas.usage_drift(have, want, 3) == []
    assert quotas.usage_drift(have, want, 1) == ["VM: CPU_USED is 1, what exists holds 0.99"]
