"""The pure parts of domain/quotas: oned's number printing, Quota::set's limit rules,
cleanup, and the documents (the accounting itself is pinned by tests/e2e/test_quotas.py)."""

from __future__ import annotations

import pytest

from oned_images import errors
from oned_images.domain import quotas
from oned_images.template import Template


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (7, "7"), (-1, "-1"), (-2, "-2"), (0.25, "0.25"), (2.5, "2.50"),
    (1024000, "1024000"),
])
def test_float_str_is_one_util_float_to_str(value, text):
    assert quotas.float_str(value) == text


def limits(text: str, entries=None, is_default=False):
    entries = [] if entries is None else entries
    quotas.set_limits(entries, Template.parse(text, replace_mode=False), is_default)
    return entries


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
    xml = quotas.quotas_xml(9, entries)
    assert xml == (
        "<QUOTAS><ID>9</ID><DATASTORE_QUOTA><DATASTORE><ID><![CDATA[3]]></ID><IMAGES><![CDATA["
        "2]]></IMAGES><IMAGES_USED><![CDATA[0]]></IMAGES_USED><SIZE><![CDATA[2.50]]></SIZE>"
        "<SIZE_USED><![CDATA[0]]></SIZE_USED></DATASTORE></DATASTORE_QUOTA><NETWORK_QUOTA>"
        "</NETWORK_QUOTA><VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA></QUOTAS>")
    assert quotas.parse_entries(xml) == entries
    assert quotas.parse_entries(quotas.defaults_xml(quotas.USER, entries)) == entries
