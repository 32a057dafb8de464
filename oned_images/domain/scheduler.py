"""The built-in placement (vms.md §5.12): PENDING VMs are deployed on a MONITORED host
with room, on their own, a moment after they became PENDING.

oned collects PENDING VMs for a window (10 s or 7 VMs), asks its rank scheduler for
a plan and runs it as internal deploys (oneadmin, enforce, host and cluster default
system DS); VMs it cannot place get USER_TEMPLATE/SCHED_MESSAGE and are retried.  Here
a pass runs WINDOW seconds after a VM became PENDING and every RETRY seconds.  While
hosts and datastores stay as they were, a pass only looks at the VMs that became PENDING
since the last one (the VMs it could not place would fail again); when they change, it
looks at every PENDING VM.  So an instantiate costs the same with 10,000 unplaced VMs in
the pool as with none.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from oned_images import errors
from oned_images.domain import vm_states as vs
from oned_images.domain.hosts import MONITORED
from oned_images.domain.vms import ONEADMIN, Vms, capacity, read_vm, system_datastores, write_vm
from oned_images.model.objects import Host
from oned_images.store import daemons, pools
from oned_images.store.models import HostRow, VmRow
from oned_images.xmldoc.host import host_from

log = Logger(namespace="SCH")

#: seconds between a VM becoming PENDING and the pass that places it (oned: 10-13 s)
WINDOW = 1.0
#: seconds between two passes (oned retries unplaced VMs every 60 s)
RETRY = 5.0
#: VMs considered per pass: a pass is one transaction, and SQLite has one writer, so
#: a long pass would hold every other call back; more waiting VMs get the next pass
#: PAUSE seconds later
BATCH = 50
PAUSE = 0.1


# ------------------------------------------------------------------ requirements
_TOKEN = re.compile(r'\s*(?:(?P<op>!=|>=|<=|@>|[=<>&|!()])|"(?P<q>[^"]*)"|(?P<w>[^\s=<>&|!()"@]+))')


class RequirementError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RequirementError(text)
        pos = m.end()
        if m.group("op") is not None:
            out.append(("op", m.group("op")))
        elif m.group("q") is not None:
            out.append(("str", m.group("q")))
        else:
            out.append(("str", m.group("w")))
    return out


def requirements_match(expr: str, attrs: dict[str, list[str]]) -> bool:
    """A subset of oned's requirement language: ``A = v``, ``!=``, ``<``, ``>``,
    ``@>`` (contains), ``!``, ``&``, ``|`` and parentheses; a missing attribute makes
    a comparison false.  Raises RequirementError when the text is not understood."""
    toks = _tokens(expr)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise RequirementError(expr)
        pos += 1
        return toks[pos - 1]

    def compare(name: str, op: str, value: str) -> bool:
        have = attrs.get(name.upper())
        if have is None:
            return op == "!="
        for h in have:
            try:
                a, b = float(h), float(value)
            except ValueError:
                a, b = h, value
            if (op in ("=", "@>") and a == b) or (op == "!=" and a != b) or \
                    (op == ">" and a > b) or (op == "<" and a < b) or \
                    (op == ">=" and a >= b) or (op == "<=" and a <= b):
                return True
        return False

    def term() -> bool:
        kind, value = take()
        if kind == "op" and value == "!":
            return not term()
        if kind == "op" and value == "(":
            result = disjunction()
            if take() != ("op", ")"):
                raise RequirementError(expr)
            return result
        if kind != "str":
            raise RequirementError(expr)
        op_kind, op = take()
        if op_kind != "op" or op not in ("=", "!=", ">", "<", ">=", "<=", "@>"):
            raise RequirementError(expr)
        v_kind, v = take()
        if v_kind != "str":
            raise RequirementError(expr)
        return compare(value, op, v)

    def conjunction() -> bool:
        result = term()
        while peek() == ("op", "&"):
            take()
            result = term() and result
        return result

    def disjunction() -> bool:
        result = conjunction()
        while peek() == ("op", "|"):
            take()
            result = conjunction() or result
        return result

    result = disjunction()
    if pos != len(toks):
        raise RequirementError(expr)
    return result


def host_attrs(h: Host) -> dict[str, list[str]]:
    attrs = {a.name: [a.value] for a in h.template if isinstance(a.value, str)}
    attrs.update({
        "ID": [str(h.id)], "NAME": [h.name], "STATE": [str(h.state)],
        "CLUSTER_ID": [str(h.cluster_id)], "CLUSTER": [h.cluster], "IM_MAD": [h.im_mad],
        "VM_MAD": [h.vm_mad], "MAX_CPU": [str(h.max_cpu)], "MAX_MEM": [str(h.max_mem)],
        "CPU_USAGE": [str(h.cpu_usage)], "MEM_USAGE": [str(h.mem_usage)],
        "RUNNING_VMS": [str(h.running_vms)],
    })
    return attrs


def _message(text: str) -> str:
    return f"{time.ctime()}: {text}"


@dataclass
class Scheduler:
    db: Any
    vms: Vms
    reactor: Any
    _loop: task.LoopingCall | None = None
    _soon: Any = None
    _running: bool = False
    _again: bool = False
    #: the hosts and datastores as the last full look at the pending VMs saw them
    _world: tuple | None = None
    #: VMs that became PENDING since the last pass looked at them
    _fresh: set[int] = field(default_factory=set)

    def start(self) -> None:
        self._loop = task.LoopingCall(self.trigger)
        self._loop.clock = self.reactor
        self._loop.start(RETRY, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()

    def pending(self, oid: int) -> None:
        """A VM became PENDING: a pass runs once the window closes."""
        self._fresh.add(oid)
        if self._soon is None or not self._soon.active():
            self._soon = self.reactor.callLater(WINDOW, self.trigger)

    def trigger(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        d = ensureDeferred(self.run_pass())
        d.addErrback(lambda f: log.failure("scheduler pass failed", f))

        def done(_):
            self._running = False
            if self._again:
                self._again = False
                self.reactor.callLater(PAUSE, self.trigger)

        d.addBoth(done)

    async def run_pass(self) -> None:
        """One pass; with several daemons on one database one at a time across them
        (a claim, README "Several daemons"): a daemon that finds another's pass running
        tries again after PAUSE.  deploy's row locks keep each placement correct."""
        if not await self.db.run(daemons.hold_alone, "scheduler", 0, "pass"):
            self._again = bool(self._fresh)
            return
        try:
            await self._pass()
        finally:
            await self.db.run(daemons.release, "scheduler", 0)

    async def _pass(self) -> None:
        # the pass owns this set (the reactor adds new ids to a new one meanwhile)
        fresh, self._fresh = self._fresh, set()
        try:
            plan, left = await self.db.run(self._plan, fresh)
        except Exception:
            self._fresh |= fresh
            raise
        self._fresh |= left
        more = bool(left)
        for oid, hid in plan:
            try:
                await self.vms.deploy(ONEADMIN, oid, hid, True, -1, "", scheduled=True)
            except errors.OneError as exc:
                detail = exc.detail or exc.message("one.vm.deploy", 0, "virtual machine")
                await self.db.run(self._note, oid, detail)
        if more:
            self._again = True

    def _plan(self, fresh: set[int]) -> tuple[list[tuple[int, int]], set[int]]:
        hosts = [host_from(b) for b in pools.bodies(HostRow)]
        dss = system_datastores()
        world = (tuple((h.id, h.state, h.cpu_usage, h.mem_usage) for h in hosts),
                 tuple((d.id, d.state) for d in dss))
        if world != self._world:
            # hosts or datastores changed: every PENDING VM gets another chance
            fresh.update(r[0] for r in VmRow.select(VmRow.oid).where(
                VmRow.state == vs.V.PENDING).tuples())
            self._world = world
        todo = sorted(fresh)[:BATCH]
        left = fresh.difference(todo)
        usable = [h for h in hosts if h.state == MONITORED]
        free = {h.id: [h.max_cpu - h.cpu_usage, h.max_mem - h.mem_usage] for h in usable}
        plan = []
        for oid in todo:
            try:
                vm = read_vm(oid, lock=True)
            except errors.OneError:
                continue
            if vm.state != vs.V.PENDING:
                continue
            hid, text = self._place(vm, usable, dss, free)
            if hid is None:
                self._note(oid, text, vm)
                continue
            cpu, mem = capacity(vm)
            free[hid][0] -= cpu
            free[hid][1] -= mem
            plan.append((oid, hid))
        return plan, left

    @staticmethod
    def _place(vm, hosts: list[Host], dss, free) -> tuple[int | None, str]:
        if not hosts:
            return None, "Cannot dispatch VM: No hosts enabled to run VMs"
        reqs = [r for r in (vm.template.get("AUTOMATIC_REQUIREMENTS"),
                            vm.user_template.get("SCHED_REQUIREMENTS")
                            or vm.template.get("SCHED_REQUIREMENTS")) if r]
        matching = []
        for h in hosts:
            attrs = host_attrs(h)
            try:
                if all(requirements_match(r, attrs) for r in reqs):
                    matching.append(h)
            except RequirementError:
                return None, "Cannot dispatch VM: No host meets SCHED_REQUIREMENTS"
        if not matching:
            return None, "Cannot dispatch VM: No host meets SCHED_REQUIREMENTS"
        with_ds = [h for h in matching
                   if any(h.cluster_id in d.clusters and d.state == 0 for d in dss)]
        if not with_ds:
            return None, "Cannot dispatch VM: No system datastores found to run VMs"
        cpu, mem = capacity(vm)
        fits = [h for h in with_ds if free[h.id][0] >= cpu and free[h.id][1] >= mem]
        if not fits:
            ids = " ".join(str(h.id) for h in with_ds)
            return None, f"Cannot allocate VM. Not enough capacity in hosts {ids}"
        fits.sort(key=lambda h: (h.running_vms, h.id))
        return fits[0].id, ""

    @staticmethod
    def _note(oid: int, text: str, vm=None) -> None:
        """USER_TEMPLATE/SCHED_MESSAGE of a VM still PENDING (rewritten only when the
        text changes, so retries do not rewrite every unplaced VM)."""
        vm = read_vm(oid, lock=True) if vm is None else vm
        if vm.state != vs.V.PENDING:
            return
        current = vm.user_template.get("SCHED_MESSAGE") or ""
        if current.partition(": ")[2] == text:
            return
        vm.user_template.set("SCHED_MESSAGE", _message(text))
        write_vm(vm)
