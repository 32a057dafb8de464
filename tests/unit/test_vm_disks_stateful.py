"""Images used by VMs as a hypothesis state machine: VM acquire/release events mixed
with the image events that meet them (copy end, copy failure, enable of an ERROR image),
on a real database, against a pure-Python model of vms.md §1.2/§1.4 and api.md §5.

VMs are created with one or two DISKs (``acquire_disks`` in one transaction: a refusal
of any DISK must leave every image as it was) and end with ``release_disks`` (normally
or failed).  After each step every image's STATE, VMS and RUNNING_VMS are compared with
the model, and the invariants hold: RUNNING_VMS is the size of VMS, a persistent image
that is not SHAREABLE is held by one VM at most, the document validates (with the one
allowance oned's own output needs: an empty ``<SNAPSHOTS></SNAPSHOTS>`` after a
persistent image was released, vms.md §1.5 QUIRK).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from oned_images import errors
from oned_images.domain import driver_replies as replies
from oned_images.domain import vm_disks
from oned_images.domain.images import read_image, write_image
from oned_images.domain.states import ImageState as S
from oned_images.domain.states import next_state
from oned_images.driver.parse import DriverResult
from oned_images.template import Template
from oned_images.xmldoc.image import image_xml
from tests.support.seed import check_document
from tests.unit.test_vm_disks import CONFIG, add_image, bootstrapped, db  # noqa: F401

#: (name, persistent, shareable, initial state): ids 0..3 in this order
IMAGES = [("np", False, False, S.READY), ("p", True, False, S.READY),
          ("shared", True, True, S.READY), ("copying", False, False, S.LOCKED)]


class Model:
    def __init__(self) -> None:
        self.state = {i: s for i, (_, _, _, s) in enumerate(IMAGES)}
        self.vms: dict[int, set[int]] = {i: set() for i in range(len(IMAGES))}

    def acquire_ok(self, iid: int, vm: int, attach: bool) -> bool:
        _, persistent, shareable, _ = IMAGES[iid]
        st_ = self.state[iid]
        if st_ in (S.USED_PERS, S.LOCKED_USED_PERS) and not shareable:
            return False
        if attach and st_ in (S.LOCKED, S.LOCKED_USED, S.LOCKED_USED_PERS):
            return False
        return st_ in (S.READY, S.USED, S.USED_PERS, S.LOCKED, S.LOCKED_USED,
                       S.LOCKED_USED_PERS)

    def acquire(self, iid: int, vm: int) -> None:
        persistent = IMAGES[iid][1]
        st_ = self.state[iid]
        if st_ == S.READY:
            self.state[iid] = S.USED_PERS if persistent else S.USED
        elif st_ == S.LOCKED:
            self.state[iid] = S.LOCKED_USED_PERS if persistent else S.LOCKED_USED
        self.vms[iid].add(vm)

    def release(self, iid: int, vm: int, failed: bool) -> None:
        st_ = self.state[iid]
        if st_ not in (S.USED, S.USED_PERS, S.LOCKED_USED, S.LOCKED_USED_PERS):
            return  # wrong state: nothing, the VM id stays (QUIRK §1.4)
        self.vms[iid].discard(vm)
        persistent = st_ in (S.USED_PERS, S.LOCKED_USED_PERS)
        if persistent and failed:
            self.state[iid] = S.ERROR
        elif not self.vms[iid]:
            self.state[iid] = {S.USED: S.READY, S.USED_PERS: S.READY,
                               S.LOCKED_USED: S.LOCKED, S.LOCKED_USED_PERS: S.LOCKED}[st_]


class VmImages(RuleBasedStateMachine):
    database = None

    @initialize()
    def setup(self) -> None:
        self.model = Model()
        self.next_vm = 100
        self.vm_disks: dict[int, Template] = {}
        for name, persistent, shareable, state in IMAGES:
            add_image(self.database, name, persistent=persistent, state=state, fmt="raw",
                      template='DEV_PREFIX="sd"' + ('\nPERSISTENT_TYPE="SHAREABLE"'
                                                    if shareable else ""))

    @rule(images=st.lists(st.integers(0, len(IMAGES) - 1), min_size=1, max_size=2))
    def create_vm(self, images: list[int]) -> None:
        vm = self.next_vm
        self.next_vm += 1
        text = "\n".join(f'DISK=[IMAGE_ID="{i}"]' for i in images)
        tmpl = Template.parse(text, replace_mode=False)
        trial = Model()
        trial.state, trial.vms = dict(self.model.state), {k: set(v) for k, v in
                                                          self.model.vms.items()}
        expect_ok = True
        for iid in images:
            if not trial.acquire_ok(iid, vm, attach=False):
                expect_ok = False
                break
            trial.acquire(iid, vm)
        try:
            self.database.run_sync(lambda: vm_disks.acquire_disks(vm, 0, 0, tmpl, CONFIG,
                                                                  path="allocate"))
        except errors.OneError as exc:
            assert not expect_ok, exc
            assert "Cannot acquire image" in exc.detail
            return
        assert expect_ok
        self.model = trial
        self.vm_disks[vm] = tmpl

    @rule(data=st.data(), failed=st.booleans())
    def end_vm(self, data, failed: bool) -> None:
        if not self.vm_disks:
            return
        vm = data.draw(st.sampled_from(sorted(self.vm_disks)))
        tmpl = self.vm_disks.pop(vm)
        self.database.run_sync(lambda: vm_disks.release_disks(vm, tmpl, failed=failed))
        for d in tmpl.get_all("DISK"):
            self.model.release(int(d["IMAGE_ID"]), vm, failed)

    @rule(ok=st.booleans())
    def copy_ends(self, ok: bool) -> None:
        iid = 3
        result = DriverResult("cp", iid, 0 if ok else 1, "src raw\n" if ok else "",
                              "" if ok else "boom", error="" if ok else "boom")

        def txn() -> None:
            img = read_image(iid)
            replies.copy_done(img, result, "cp")
            write_image(img)

        self.database.run_sync(txn)
        st_ = self.model.state[iid]
        if st_ in (S.LOCKED, S.LOCKED_USED, S.LOCKED_USED_PERS):
            self.model.state[iid] = {S.LOCKED: S.READY, S.LOCKED_USED: S.USED,
                                     S.LOCKED_USED_PERS: S.USED_PERS}[st_] if ok else S.ERROR

    @rule(iid=st.integers(0, len(IMAGES) - 1))
    def enable(self, iid: int) -> None:
        def txn() -> None:
            img = read_image(iid)
            if img.state == S.ERROR:
                replies.set_state(img, next_state("enable", img.state,
                                                  running_vms=img.running_vms,
                                                  persistent=img.persistent))
                write_image(img)

        self.database.run_sync(txn)
        if self.model.state[iid] == S.ERROR:
            persistent = IMAGES[iid][1]
            self.model.state[iid] = (S.READY if not self.model.vms[iid] else
                                     S.USED_PERS if persistent else S.USED)

    @invariant()
    def images_match_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        for iid, (_, persistent, shareable, _) in enumerate(IMAGES):
            img = self.database.run_sync(read_image, iid, False)
            assert (S(img.state), set(img.vms)) == (self.model.state[iid],
                                                    self.model.vms[iid]), iid
            assert img.running_vms == len(img.vms) and img.vms == sorted(img.vms)
            if persistent and not shareable:
                assert len(img.vms) <= 1
            check_document(image_xml(img))


def test_vm_image_state_machine(db):  # noqa: F811
    VmImages.database = db

    def clear() -> None:
        from oned_images.store.models import ImageRow, PoolControl
        ImageRow.delete().execute()
        PoolControl.update(last_oid=-1).where(PoolControl.tablename == "image_pool").execute()

    class Fresh(VmImages):
        @initialize()
        def setup(self) -> None:
            db.run_sync(clear)
            VmImages.setup(self)

    Fresh.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None,
                                       suppress_health_check=list(HealthCheck))
    Fresh.TestCase().runTest()
