"""Host verbs (vms.md §6): allocate, delete, status, update, rename, info, pool info,
and the dummy information driver that takes a new host to MONITORED.

oned hands a host to onemonitord, whose driver for IM_MAD ``dummy`` runs fixed probes
locally; the first system message merges them into the host (STATE 2, capacity).  Here
the same happens in-process a moment after allocate.  A host with another IM_MAD stays
INIT, as in oned when monitord has no such driver (it only logs "Could not find
information driver"): allocate does not check drivers.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import peewee
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from oned_images import errors
from oned_images.domain.clusters import DEFAULT_CLUSTER_ID, cluster_auth, read_cluster
from oned_images.domain.identity import Identity
from oned_images.domain.names import name_error
from oned_images.domain.permissions import AuthRequest, Caller, ObjectAuth, Op
from oned_images.model.objects import Host, Permissions
from oned_images.store import pools
from oned_images.store.database import Database
from oned_images.store.models import HostRow
from oned_images.template import Template, TemplateError
from oned_images.xmldoc.common import c
from oned_images.xmldoc.host import host_from, host_xml
from oned_images.xmldoc.image import pool_xml

log = Logger(namespace="InM")

#: Host::HostState
INIT, MONITORED, ERROR, DISABLED, OFFLINE = 0, 2, 3, 4, 8
HOST_PERMS = Permissions([1, 1, 0, 0, 0, 0, 0, 0, 0])
#: seconds between allocate (or enable) and the dummy driver's first report; oned took
#: 0.9-2.7 s (vms.md §6.3).
FIRST_PROBE_DELAY = 1.0
#: seconds between two host monitor messages of the dummy probe (vms.md §6.3)
HOST_MONITOR_PERIOD = 120.0

# The dummy probes' fixed figures (vms.md §6.3).
DUMMY_CPU = 800
DUMMY_MEM = 16777216
DUMMY_DISK = {"DISK_USAGE": 0, "FREE_DISK": 20480, "MAX_DISK": 20480, "USED_DISK": 9720}
NUMA_NODES, CORES_PER_NODE, THREADS = 2, 8, 4
HUGEPAGE_SIZES = (2048, 1048576)
HUGEPAGES = 1024


def host_auth(h: Host) -> ObjectAuth:
    return ObjectAuth("HOST", h.id, 0, 0, HOST_PERMS, 0, (h.cluster_id,))


def _meta(h: Host) -> pools.RowMeta:
    return pools.RowMeta(h.name, 0, 0, HOST_PERMS)


def read_host(oid: int, lock: bool = False) -> Host:
    body = pools.body(HostRow, oid, lock=lock)
    if body is None:
        raise errors.no_exists("host", oid)
    return host_from(body)


def write_host(h: Host) -> None:
    pools.update(HostRow, h.id, _meta(h), host_xml(h), state=h.state, cid=h.cluster_id)


def _numa_xml() -> str:
    """HOST_SHARE/NUMA_NODES of the dummy probe: 2 nodes of 8 cores with 4 threads each."""
    total_cores = NUMA_NODES * CORES_PER_NODE
    nodes = []
    for n in range(NUMA_NODES):
        cores = []
        for k in range(CORES_PER_NODE):
            core = n * CORES_PER_NODE + k
            cpus = ",".join(f"{core + t * total_cores}:-1" for t in range(THREADS))
            cores.append(f"<CORE>{c('CPUS', cpus)}{c('DEDICATED', 'NO')}"
                         f"{c('FREE', str(THREADS))}{c('ID', str(core))}</CORE>")
        pages = "".join(f"<HUGEPAGE>{c('PAGES', str(HUGEPAGES))}{c('SIZE', str(size))}"
                        f"{c('USAGE', '0')}</HUGEPAGE>" for size in HUGEPAGE_SIZES)
        distance = " ".join(str(abs(n - m)) for m in range(NUMA_NODES))
        memory = (f"<MEMORY>{c('DISTANCE', distance)}"
                  f"{c('TOTAL', str(DUMMY_MEM // NUMA_NODES))}{c('USAGE', '0')}</MEMORY>")
        nodes.append(f"<NODE>{''.join(cores)}{pages}{memory}{c('NODE_ID', str(n))}</NODE>")
    return "<NUMA_NODES>" + "".join(nodes) + "</NUMA_NODES>"


def _monitoring_xml(oid: int, rng: random.Random) -> str:
    """A host monitor message of the dummy probe: random usage inside the capacity."""
    used_cpu = rng.randrange(0, DUMMY_CPU // 10)
    used_mem = rng.randrange(0, DUMMY_MEM // 2)
    per_node = DUMMY_MEM // NUMA_NODES
    numa = "".join(
        "<NUMA_NODE>"
        + "".join(f"<HUGEPAGE>{c('FREE', str(HUGEPAGES))}{c('SIZE', str(size))}</HUGEPAGE>"
                  for size in HUGEPAGE_SIZES)
        + f"<MEMORY>{c('FREE', str(per_node - (u := rng.randrange(0, per_node))))}"
        + f"{c('USED', str(u))}</MEMORY>{c('NODE_ID', str(n))}</NUMA_NODE>"
        for n in range(NUMA_NODES))
    return "".join((
        f"<MONITORING><TIMESTAMP>{int(time.time())}</TIMESTAMP><ID>{oid}</ID><CAPACITY>",
        c("FREE_CPU", str(DUMMY_CPU - used_cpu)), c("FREE_MEMORY", str(DUMMY_MEM - used_mem)),
        c("USED_CPU", str(used_cpu)), c("USED_MEMORY", str(used_mem)),
        "</CAPACITY><SYSTEM>", c("NETRX", str(rng.randrange(10**12))),
        c("NETTX", str(rng.randrange(10**12))), "</SYSTEM>", numa, "</MONITORING>",
    ))


def _reserved(value: str | None, total: int) -> int:
    """RESERVED_CPU/RESERVED_MEM: an absolute amount or a percentage of the total."""
    value = (value or "").strip()
    try:
        if value.endswith("%"):
            return total * int(float(value[:-1])) // 100
        return int(float(value)) if value else 0
    except ValueError:
        return 0


def apply_dummy_probe(h: Host, rng: random.Random) -> None:
    """Host::update_info with the dummy probes' system and monitor messages."""
    t = h.template
    for name, value in (("ARCH", "x86_64"), ("CPUSPEED", "3200"), ("HOSTNAME", h.name),
                        ("HYPERVISOR", "dummy"), ("MODELNAME", "Dummy(R) Core @ 3.2GHz"),
                        ("TOTALCPU", str(DUMMY_CPU)), ("TOTALMEMORY", str(DUMMY_MEM))):
        t.set(name, value)
    h.total_cpu, h.total_mem = DUMMY_CPU, DUMMY_MEM
    h.max_cpu = DUMMY_CPU - _reserved(t.get("RESERVED_CPU"), DUMMY_CPU)
    h.max_mem = DUMMY_MEM - _reserved(t.get("RESERVED_MEM"), DUMMY_MEM)
    h.disk_usage, h.free_disk = DUMMY_DISK["DISK_USAGE"], DUMMY_DISK["FREE_DISK"]
    h.max_disk, h.used_disk = DUMMY_DISK["MAX_DISK"], DUMMY_DISK["USED_DISK"]
    h.numa_xml = _numa_xml()
    h.monitoring_xml = _monitoring_xml(h.id, rng)
    if h.state not in (DISABLED, OFFLINE):
        h.prev_state, h.state = h.state, MONITORED


#: the time of a host's last report, in its MONITORING document
_REPORTED = re.compile(r"<TIMESTAMP>(\d+)</TIMESTAMP>")


def _served_pool() -> list[str]:
    return pools.bodies(HostRow)


@dataclass
class Hosts:
    db: Database
    identity: Identity
    reactor: Any
    #: the dummy monitor's random usage figures
    rng: random.Random = field(default_factory=random.Random)
    _loop: task.LoopingCall | None = None
    _pending: list = field(default_factory=list)

    def _auth(self, caller: Caller) -> AuthRequest:
        return AuthRequest(caller, self.identity.acl)

    # ------------------------------------------------------------ monitoring
    def probe_soon(self, oid: int, delay: float = FIRST_PROBE_DELAY) -> None:
        self._pending = [c for c in self._pending if c.active()]
        self._pending.append(self.reactor.callLater(delay, self._probe_logged, oid))

    async def start_monitoring(self) -> None:
        """Every dummy host reports now (a restart) and then every HOST_MONITOR_PERIOD."""
        await self.probe_all()
        self._loop = task.LoopingCall(self._probe_all_logged)
        self._loop.clock = self.reactor
        self._loop.start(HOST_MONITOR_PERIOD, now=False)

    def stop_monitoring(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending = []

    def _probe_all_logged(self):
        return ensureDeferred(self.probe_all(periodic=True)).addErrback(
            lambda f: log.failure("host monitoring failed", f))

    def _probe_logged(self, oid: int) -> None:
        self.db.run(self._probe_txn, oid).addErrback(lambda f: log.failure("host {oid} monitoring failed", f, oid=oid))

    def _probe_txn(self, oid: int, periodic: bool = False) -> None:
        """One probe.  A periodic one is skipped when the host reported less than half a
        period ago: with several daemons on one database each host is probed once per
        period across them (the row lock orders the daemons' looks)."""
        body = pools.body(HostRow, oid, lock=True)
        if body is None:
            return  # deleted before its first report
        h = host_from(body)
        if h.im_mad != "dummy" or h.state in (DISABLED, OFFLINE):
            return
        if periodic and (seen := _REPORTED.search(h.monitoring_xml or "")) and \
                time.time() - int(seen.group(1)) < HOST_MONITOR_PERIOD / 2:
            return
        apply_dummy_probe(h, self.rng)
        write_host(h)

    async def probe_all(self, periodic: bool = False) -> None:
        """At start: every dummy host that is not disabled or offline reports again."""
        ids = await self.db.run(lambda: [r[0] for r in HostRow.select(HostRow.oid).tuples()])
        for oid in ids:
            await self.db.run(self._probe_txn, oid, periodic)

    # ------------------------------------------------------------- verbs
    async def allocate(self, caller: Caller, name: str, im_mad: str, vm_mad: str,
                       cluster_id: int) -> int:
        if cluster_id == -1:
            cluster_id = DEFAULT_CLUSTER_ID
        cluster = await self.db.run(read_cluster, cluster_id)
        req = self._auth(caller)
        req.add(Op.CREATE, ObjectAuth("HOST", -1))
        req.add(Op.ADMIN, cluster_auth(cluster_id))
        req.check()
        # HostPool::allocate: name, drivers, then the per-pool unique name.
        err = name_error(name)
        if err:
            raise errors.internal(err)
        if not im_mad:
            raise errors.internal("IM_MAD_NAME cannot be empty.")
        if not vm_mad:
            raise errors.internal("VMM_MAD_NAME cannot be empty.")
        # set, not parsed: a driver name is the caller's text (quotes, newlines, ...)
        tmpl = Template()
        for key, value in (("IM_MAD", im_mad), ("VM_MAD", vm_mad), ("RESERVED_CPU", ""),
                           ("RESERVED_MEM", "")):
            tmpl.set(key, value)

        def txn() -> int:
            other = pools.oid_by_name(HostRow, name)
            if other is not None:
                raise errors.internal(f"NAME is already taken by HOST {other}.")
            oid = pools.next_oid("host_pool")
            h = Host(id=oid, name=name, im_mad=im_mad, vm_mad=vm_mad, cluster_id=cluster.id,
                     cluster=cluster.name, template=tmpl)
            try:
                with HostRow._meta.database.atomic():
                    pools.insert(HostRow, oid, _meta(h), host_xml(h), state=h.state,
                                 cid=h.cluster_id)
            except peewee.IntegrityError:
                other = pools.oid_by_name(HostRow, name)
                raise errors.internal(f"NAME is already taken by HOST {other}.") from None
            return oid

        oid = await self.db.run(txn)
        self.probe_soon(oid)
        return oid

    async def info(self, caller: Caller, oid: int) -> str:
        h = await self.db.run(read_host, oid)
        req = self._auth(caller)
        req.add(Op.USE, host_auth(h), check_lock=False)
        req.check()
        return host_xml(h)

    async def pool_info(self, caller: Caller) -> str:
        bodies = await self.db.run(_served_pool)
        if not caller.is_admin:
            visible = []
            for body in bodies:
                req = self._auth(caller)
                req.add(Op.USE, host_auth(host_from(body)), check_lock=False)
                if not req.failures:
                    visible.append(body)
            bodies = visible
        return pool_xml("HOST_POOL", bodies)

    async def _admin_txn(self, caller: Caller, oid: int, fn) -> None:
        h = await self.db.run(read_host, oid)
        req = self._auth(caller)
        req.add(Op.ADMIN, host_auth(h))
        req.check()

        def txn() -> None:
            current = read_host(oid, lock=True)
            fn(current)

        await self.db.run(txn)

    async def delete(self, caller: Caller, oid: int) -> int:
        def apply(h: Host) -> None:
            if h.vms:
                raise errors.action("Cannot delete host. Can not remove a host with running VMs")
            pools.delete(HostRow, h.id)

        await self._admin_txn(caller, oid, apply)
        return oid

    async def status(self, caller: Caller, oid: int, status: int) -> int:
        """one.host.status: 0 enable (back to INIT, then monitored), 1 disable, 2 offline."""
        new = {0: INIT, 1: DISABLED, 2: OFFLINE}.get(status)

        def apply(h: Host) -> None:
            if new is None:
                raise errors.internal("Wrong status code")
            if h.state != new:
                h.prev_state, h.state = h.state, new
            write_host(h)

        await self._admin_txn(caller, oid, apply)
        if new == INIT:
            self.probe_soon(oid)
        return oid

    async def update(self, caller: Caller, oid: int, text: str, append: int) -> int:
        if append not in (0, 1):
            h = await self.db.run(read_host, oid)
            req = self._auth(caller)
            req.add(Op.ADMIN, host_auth(h))
            req.check()
            raise errors.api("Wrong update type")
        try:
            new = Template.parse(text, replace_mode=False)
        except TemplateError as exc:
            new = None
            problem = exc.message

        def apply(h: Host) -> None:
            if new is None:
                raise errors.internal(f"Cannot update template. {problem}")
            if append:
                h.template.merge(new)
            else:
                h.template = new.copy()
            # Host::post_update_template: the drivers are kept in the template
            h.template.set("IM_MAD", h.im_mad)
            h.template.set("VM_MAD", h.vm_mad)
            write_host(h)

        await self._admin_txn(caller, oid, apply)
        return oid

    async def rename(self, caller: Caller, oid: int, name: str) -> int:
        def apply(h: Host) -> None:
            if name == h.name:
                return
            err = name_error(name)
            if err:
                raise errors.action(err)
            other = pools.oid_by_name(HostRow, name)
            if other is not None:
                raise errors.action(f"host cannot be renamed to {name} because it collides "
                                    f"with host {other}")
            h.name = name
            if h.template.has("HOSTNAME"):
                h.template.set("HOSTNAME", name)
            write_host(h)

        await self._admin_txn(caller, oid, apply)
        return oid
