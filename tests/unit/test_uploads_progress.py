"""Pieces of the uploads and progress code that need no daemon (issue 11)."""

from __future__ import annotations

import base64

import pytest

from oned_images.domain.uploads import Refused, default_name, parse_metadata
from oned_images.driver import progress


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_metadata_parsed_and_checked():
    assert parse_metadata(f"name {b64('disk')},persistent {b64('yes')}, filename") == {
        "name": "disk", "persistent": "yes", "filename": ""}
    with pytest.raises(Refused) as exc:
        parse_metadata(f"name {b64('a')},name {b64('b')}")
    assert (exc.value.status, exc.value.text) == (400, "Upload-Metadata key 'name' given twice")
    with pytest.raises(Refused) as exc:
        parse_metadata("name not*base64")
    assert exc.value.text == "Upload-Metadata value of 'name' is not base64 of UTF-8 text"


@pytest.mark.parametrize(("sent", "name"), [
    ("disk.iso", "disk.iso"), ("C:\\Users\\me\\disk.iso", "disk.iso"),
    ("../../etc/passwd", "passwd"), ("dir/", ""),
])
def test_default_name_is_the_last_component(sent, name):
    assert default_name(sent) == name


def test_progress_lines_and_records():
    assert progress.parse("image_source: progress 10 200") == (10, 200)
    assert progress.parse("progress 5 0") == (5, 0)
    assert progress.parse("Copying progress.img") is None
    now = [100.0]
    prog = progress.Progress(clock=lambda: now[0])
    prog.start(7, "cp")
    now[0] = 102.0
    prog.update(7, "cp", 50, 250)
    prog.update(8, "cp", 1, 0)
    assert prog.snapshot({7, 8}) == {
        "7": {"action": "cp", "done": 50, "total": 250, "rate": 25, "eta": 8.0},
        "8": {"action": "cp", "done": 1, "total": 0, "rate": 0, "eta": None}}
    assert list(prog.snapshot({8})) == ["8"]
    prog.end(7)
    assert list(prog.snapshot()) == ["8"]


@pytest.mark.parametrize("text", ["a\ufffeb", "x\uffff", "nul\x00", "esc\x1b[31m"])
def test_metadata_xml_cannot_carry_is_refused(text):
    header = "name " + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    with pytest.raises(Refused) as exc:
        parse_metadata(header)
    assert (exc.value.status, str(exc.value)) == (
        400, "Upload-Metadata value of 'name' holds a character XML cannot carry (a control "
             "character, U+FFFE or U+FFFF)")
