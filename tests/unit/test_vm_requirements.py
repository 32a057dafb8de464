"""AUTOMATIC_REQUIREMENTS of a new VM (vms.md §3.2, §5.3): the clusters of the kernel and
initrd datastores and of every image DISK's datastore, intersected, with oned's texts
when they do not meet."""

from __future__ import annotations

import pytest

from oned_images.domain.vms import _automatic_requirements
from oned_images.errors import OneError
from oned_images.template import Template


def reqs(text: str) -> dict:
    t = Template.parse(text, replace_mode=False)
    _automatic_requirements(t)
    return {k: t.get(k) for k in ("AUTOMATIC_REQUIREMENTS", "AUTOMATIC_DS_REQUIREMENTS",
                                  "AUTOMATIC_NIC_REQUIREMENTS")}


def refusal(text: str) -> str:
    with pytest.raises(OneError) as exc:
        reqs(text)
    return exc.value.detail


def test_no_clusters_only_the_pin_policy():
    assert reqs('DISK=[TYPE="swap",SIZE="1"]') == {
        "AUTOMATIC_REQUIREMENTS": "!(PIN_POLICY = PINNED)",
        "AUTOMATIC_DS_REQUIREMENTS": None, "AUTOMATIC_NIC_REQUIREMENTS": None}


def test_kernel_datastore_alone_sets_the_clusters():
    assert reqs('OS=[KERNEL_DS_CLUSTER_ID="0,3"]') == {
        "AUTOMATIC_REQUIREMENTS": "(CLUSTER_ID = 0 | CLUSTER_ID = 3) & !(PIN_POLICY = PINNED)",
        "AUTOMATIC_DS_REQUIREMENTS": '("CLUSTERS/ID" @> 0 | "CLUSTERS/ID" @> 3)',
        "AUTOMATIC_NIC_REQUIREMENTS": '("CLUSTERS/ID" @> 0 | "CLUSTERS/ID" @> 3)'}


def test_disks_intersect_with_the_kernel_and_each_other():
    got = reqs('OS=[KERNEL_DS_CLUSTER_ID="0,3",INITRD_DS_CLUSTER_ID="3,4"]\n'
               'DISK=[CLUSTER_ID="3,5"]\nDISK=[TYPE="fs",SIZE="1"]\nTM_MAD_SYSTEM="shared"')
    assert got == {
        "AUTOMATIC_REQUIREMENTS": "(CLUSTER_ID = 3) & !(PIN_POLICY = PINNED)",
        "AUTOMATIC_DS_REQUIREMENTS": '("CLUSTERS/ID" @> 3) & (TM_MAD = "shared")',
        "AUTOMATIC_NIC_REQUIREMENTS": '("CLUSTERS/ID" @> 3)'}


def test_refusals():
    assert refusal('OS=[KERNEL_DS_CLUSTER_ID="1",INITRD_DS_CLUSTER_ID="2"]') == (
        "Incompatible cluster in INITRD datastore, it should be in cluster 2.")
    assert refusal('OS=[KERNEL_DS_CLUSTER_ID="1"]\nDISK=[TYPE="swap"]\nDISK=[CLUSTER_ID="2"]') == (
        "Incompatible clusters in DISK. Datastore for DISK 1 is not in the same cluster as "
        "the one used by other VM elements (cluster 1)")
    assert refusal('DISK=[CLUSTER_ID="0"]\nDISK=[CLUSTER_ID=""]') == (
        "Missing clusters. Datastore for DISK 1 is not in any cluster")
