"""The seam between VMs and images (vms.md §1, §2): authorize, acquire and release the
images a VM's DISKs name.

STUB of the VM-core branch: the signatures are the contract of
/work/briefs/common-vm.md; the VM-disks branch provides the real module, which
replaces this file when both are merged.
"""

from __future__ import annotations

from oned_images.config import DaemonConfig
from oned_images.domain.permissions import Caller
from oned_images.template import Template


def authorize_disks(caller: Caller, tmpl: Template, config: DaemonConfig) -> None:
    """vms.md §2.1, before anything is created; runs on a DB thread (inside db.run).
    Raises errors.OneError with oned's authorization text."""


def acquire_disks(vm_id: int, uid: int, gid: int, tmpl: Template, config: DaemonConfig,
                  *, path: str) -> list[int]:
    """Inside the transaction that inserts VM ``vm_id``: acquire every DISK's image,
    mutating ``tmpl`` in place; returns the acquired image ids in DISK order."""
    return []


def release_disks(vm_id: int, tmpl: Template, *, failed: bool) -> None:
    """Inside the transaction that ends VM ``vm_id`` (vms.md §1.4-§1.6)."""
