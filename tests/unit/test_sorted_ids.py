"""model/ids.py: an image's <VMS> kept as text behaves like the ascending id list it
stands for, and image_from/image_xml give back exactly what was stored."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oned_images.model.ids import SortedIds
from oned_images.model.objects import Image
from oned_images.xmldoc.image import _cut_vms, image_from, image_xml


def stored(ids: list[int]) -> SortedIds:
    """The collection as image_from hands it over: text, not yet parsed."""
    got = image_from(image_xml(Image(1, 0, 0, "a", "b", "n", vms=ids))).vms
    assert got._ids is None
    return got


@given(st.lists(st.integers(0, 500), unique=True),
       st.lists(st.tuples(st.booleans(), st.integers(0, 520))))
def test_behaves_like_a_sorted_list(start, ops):
    model = sorted(start)
    ids = stored(start)
    for add, oid in ops:
        if add:
            assert ids.add(oid) == (oid not in model)
            if oid not in model:
                model = sorted([*model, oid])
        else:
            assert ids.discard(oid) == (oid in model)
            model = [v for v in model if v != oid]
        assert (oid in ids) == (oid in model)
        assert len(ids) == len(model) and bool(ids) == bool(model)
    assert list(ids) == model and ids == model
    expected = "<VMS>" + "".join(f"<ID>{v}</ID>" for v in model) + "</VMS>"
    assert ids.xml("VMS") == expected


def test_round_trip_and_user_text_that_looks_like_vms():
    img = Image(3, 0, 0, "a", "b", "n", vms=[4, 9], path="x]]></FS>",
                source="</DATASTORE><VMS><ID>1</ID></VMS>")
    img.template.set("VMS", "<VMS><ID>7</ID></VMS>")
    body = image_xml(img)
    back = image_from(body)
    assert back.vms == [4, 9] and back.source == img.source and image_xml(back) == body


def test_a_body_of_another_shape_is_parsed_whole():
    body = image_xml(Image(3, 0, 0, "a", "b", "n", vms=[4, 9]))
    spaced = body.replace("<VMS><ID>4</ID>", "<VMS>\n <ID>4</ID>")
    assert _cut_vms(spaced)[1] is None
    assert image_from(spaced).vms == [4, 9]
    empty = body.replace("<VMS><ID>4</ID><ID>9</ID></VMS>", "<VMS/>")
    assert image_from(empty).vms == []
