"""The pool objects as plain data: what oned keeps in each XML body.

They are built from, and written back to, the stored documents by
``oned_images.xmldoc``; domain verbs mutate them inside one DB transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oned_images.model.ids import SortedIds
from oned_images.template import Template

PERM_NAMES = (
    "OWNER_U", "OWNER_M", "OWNER_A",
    "GROUP_U", "GROUP_M", "GROUP_A",
    "OTHER_U", "OTHER_M", "OTHER_A",
)


@dataclass
class Permissions:
    """The nine owner/group/other × use/manage/admin bits, in oned's order."""

    bits: list[int] = field(default_factory=lambda: [1, 1, 0, 0, 0, 0, 0, 0, 0])

    @classmethod
    def from_umask(cls, umask: int, base: int) -> Permissions:
        mode = base & ~umask
        # oned's octal mode: owner rwx-style digit where 4=USE, 2=MANAGE, 1=ADMIN.
        bits = []
        for shift in (6, 3, 0):
            digit = (mode >> shift) & 7
            bits += [1 if digit & 4 else 0, 1 if digit & 2 else 0, 1 if digit & 1 else 0]
        return cls(bits)

    @property
    def owner_u(self) -> int:
        return self.bits[0]

    @property
    def group_u(self) -> int:
        return self.bits[3]

    @property
    def other_u(self) -> int:
        return self.bits[6]

    def copy(self) -> Permissions:
        return Permissions(list(self.bits))


@dataclass
class Lock:
    locked: int
    owner: int
    time: int
    req_id: int


@dataclass
class Image:
    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    lock: Lock | None = None
    perms: Permissions = field(default_factory=Permissions)
    type: int = 0
    disk_type: int = 0
    persistent: int = 0
    regtime: int = 0
    modtime: int = 0
    source: str = ""
    path: str = ""
    format: str = ""
    fs: str = ""
    size: int = 0
    state: int = 0
    prev_state: int = 0
    running_vms: int = 0
    cloning_ops: int = 0
    cloning_id: int = -1
    target_snapshot: int = -1
    datastore_id: int = -1
    datastore: str = ""
    #: the VMs using the image (see model/ids.py for why not a list)
    vms: SortedIds = field(default_factory=SortedIds)
    clones: list[int] = field(default_factory=list)
    app_clones: list[int] = field(default_factory=list)
    template: Template = field(default_factory=Template)
    snapshots: Template = field(default_factory=Template)
    backup_increments: Template = field(default_factory=Template)
    backup_disk_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.vms, SortedIds):
            self.vms = SortedIds(self.vms)


@dataclass
class Datastore:
    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    perms: Permissions = field(default_factory=lambda: Permissions([1, 1, 0, 1, 0, 0, 0, 0, 0]))
    ds_mad: str = ""
    tm_mad: str = ""
    base_path: str = ""
    type: int = 0
    disk_type: int = 0
    state: int = 0
    clusters: list[int] = field(default_factory=lambda: [0])
    total_mb: int = 0
    free_mb: int = 0
    used_mb: int = 0
    images: list[int] = field(default_factory=list)
    template: Template = field(default_factory=Template)


@dataclass
class LoginToken:
    token: str
    expiration_time: int
    egid: int


@dataclass
class User:
    id: int
    gid: int
    groups: list[int]
    gname: str
    name: str
    password: str
    auth_driver: str = "core"
    enabled: int = 1
    login_tokens: list[LoginToken] = field(default_factory=list)
    template: Template = field(default_factory=Template)


@dataclass
class Group:
    id: int
    name: str
    template: Template = field(default_factory=Template)
    users: list[int] = field(default_factory=list)
    admins: list[int] = field(default_factory=list)


@dataclass
class Cluster:
    """oned's cluster: only cluster 0 ``default`` exists here (hosts and datastores
    name it); HOSTS and DATASTORES are served from the rows that name it."""

    id: int
    name: str
    hosts: list[int] = field(default_factory=list)
    datastores: list[int] = field(default_factory=list)
    vnets: list[int] = field(default_factory=list)
    template: Template = field(default_factory=Template)


@dataclass
class Host:
    """A host's HOST document.  PCI_DEVICES, NUMA_NODES and MONITORING nest deeper than
    a Template holds, so they are kept as the XML text the monitor produced."""

    id: int
    name: str
    state: int = 0
    prev_state: int = 0
    im_mad: str = ""
    vm_mad: str = ""
    cluster_id: int = 0
    cluster: str = "default"
    mem_usage: int = 0
    cpu_usage: int = 0
    total_mem: int = 0
    total_cpu: int = 0
    max_mem: int = 0
    max_cpu: int = 0
    running_vms: int = 0
    vms_thread: int = 1
    disk_usage: int = 0
    free_disk: int = 0
    max_disk: int = 0
    used_disk: int = 0
    pci_xml: str = "<PCI_DEVICES></PCI_DEVICES>"
    numa_xml: str = "<NUMA_NODES></NUMA_NODES>"
    vms: list[int] = field(default_factory=list)
    template: Template = field(default_factory=Template)
    monitoring_xml: str = "<MONITORING/>"


@dataclass
class VmTemplate:
    """A VM template (VMTEMPLATE document): the user's template minus NAME."""

    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    lock: Lock | None = None
    perms: Permissions = field(default_factory=Permissions)
    regtime: int = 0
    template: Template = field(default_factory=Template)


@dataclass
class History:
    """One HISTORY record of a VM (History::to_xml): a stay on one host, its times
    and the action that ended it."""

    oid: int
    seq: int
    hostname: str
    hid: int
    cid: int
    stime: int = 0
    etime: int = 0
    vm_mad: str = ""
    tm_mad: str = ""
    ds_id: int = 0
    plan_id: int = -1
    action_id: int = -1
    pstime: int = 0
    petime: int = 0
    rstime: int = 0
    retime: int = 0
    estime: int = 0
    eetime: int = 0
    action: int = 0
    uid: int = -1
    gid: int = -1
    request_id: int = -1


@dataclass
class Vm:
    """A virtual machine (VM document): the VM attributes in ``template``, the rest of
    what the user wrote in ``user_template``, every history record in SEQ order."""

    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    perms: Permissions = field(default_factory=Permissions)
    last_poll: int = 0
    state: int = 0
    lcm_state: int = 0
    prev_state: int = 0
    prev_lcm_state: int = 0
    resched: int = 0
    stime: int = 0
    etime: int = 0
    deploy_id: str = ""
    lock: Lock | None = None
    template: Template = field(default_factory=Template)
    user_template: Template = field(default_factory=Template)
    history: list[History] = field(default_factory=list)
    #: the disk snapshot lists (``/VM/SNAPSHOTS``, each with its DISK_ID), by DISK_ID
    snapshots: list[Template] = field(default_factory=list)
