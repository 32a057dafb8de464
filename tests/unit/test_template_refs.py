"""Which images VM templates reference (domain/templates.py), on an in-memory SQLite
database in the daemon's schema: the resolution the recursive template verbs use, and
the rule of ``oneimage orphans`` (vms.md §2.2, §4.10)."""

from __future__ import annotations

import peewee
import pytest

from oned_images.domain.templates import referenced_image_ids, template_image_ids
from oned_images.model.objects import Image, Permissions, VmTemplate
from oned_images.store import pools, schema
from oned_images.store.models import ImageRow, TemplateRow, database_proxy
from oned_images.template import Template
from oned_images.xmldoc.image import image_xml
from oned_images.xmldoc.template_doc import vmtemplate_xml

USERS = {"alice": 5, "bob": 6}


@pytest.fixture
def db():
    database = peewee.SqliteDatabase(":memory:")
    database_proxy.initialize(database)
    schema.create(database)
    yield database
    database.close()


def image(oid: int, name: str, uid: int, itype: int = 0) -> None:
    uname = {v: k for k, v in USERS.items()}[uid]
    img = Image(oid, uid, 1, uname, "users", name, type=itype)
    pools.insert(ImageRow, oid, pools.RowMeta(name, uid, 1, Permissions()), image_xml(img))


def template(oid: int, text: str) -> Template:
    tmpl = Template.parse(text, replace_mode=False)
    t = VmTemplate(oid, 5, 1, "alice", "users", f"t{oid}", template=tmpl)
    pools.insert(TemplateRow, oid, pools.RowMeta(t.name, 5, 1, Permissions()),
                 vmtemplate_xml(t))
    return tmpl


def test_disk_resolution_and_orphan_rule(db):
    image(0, "os", 5)
    image(1, "data", 6)
    image(2, "same", 5)
    image(3, "same", 6)
    image(4, "by-uid", 6)
    image(5, "alone", 5)
    image(6, "unused", 5)
    tmpl = template(0, 'DISK=[IMAGE_ID="0"]\nDISK=[IMAGE="data",IMAGE_UNAME="bob"]\n'
                       'DISK=[TYPE="swap",SIZE="1"]\nDISK=[IMAGE="same"]\n'
                       'DISK=[IMAGE="by-uid",IMAGE_UID="6"]\nDISK=[IMAGE_ID="0"]\n'
                       'DISK=[IMAGE="nope"]\nDISK=[IMAGE="x",IMAGE_UNAME="nobody"]')
    template(1, 'DISK=[IMAGE="alone"]')
    # the recursive verbs: IMAGE names resolve with IMAGE_UID, IMAGE_UNAME, else the
    # caller; each image once, in DISK order; unresolvable names are skipped
    assert template_image_ids(tmpl, 5, USERS.get) == [0, 1, 2, 4]
    assert template_image_ids(tmpl, 6, USERS.get) == [0, 1, 3, 4]
    # oneimage orphans: IMAGE_ID, or IMAGE + IMAGE_UNAME; not IMAGE alone or with IMAGE_UID
    assert referenced_image_ids() == {0, 1}
