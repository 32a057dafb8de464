"""The ``$FILE[...]`` scanner and grammar (domain/file_vars.py): what each reference
resolves to, and bison's syntax-error texts with flex's locations (vms.md §3.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oned_images.domain.file_vars import FileVarError, parse_file_refs


def refs(value: str) -> list[tuple[str, ...]]:
    return parse_file_refs(value, lambda *parts: parts)


def test_references_resolved_in_order():
    assert refs('$FILE[IMAGE="a b", IMAGE_UNAME=bob]$file[image_id=4] $FILE[ IMAGE = x ]') == [
        ("FILE", "IMAGE", "a b", "IMAGE_UNAME", "bob"), ("FILE", "IMAGE_ID", "4", "", ""),
        ("FILE", "IMAGE", "x", "", "")]
    # a character no rule takes is skipped (flex's default rule)
    assert refs("$FILE[IMAGE=-abc]") == [("FILE", "IMAGE", "abc", "", "")]


@pytest.mark.parametrize("value,message", [
    ("$FILE[IMAGE=vm_rd]", "unexpected VARIABLE, expecting COMMA or CBRACKET at line 0, "
     "columns 15:18"),
    ("$FILE[IMAGE=3", "unexpected EOA, expecting COMMA or CBRACKET at line 0, columns 13:14"),
    ("abc", "unexpected RSTRING, expecting VARIABLE at line 0, columns 1:4"),
    ("", "unexpected $end, expecting VARIABLE at line 0, columns 1:1"),
    ("$FILE[IMAGE=a]$", "unexpected EOA, expecting $end or VARIABLE at line 0, columns 15:16"),
    ("$FILE[IMAGE=a] x", "unexpected RSTRING, expecting $end or VARIABLE at line 0, "
     "columns 16:17"),
    ("$FILE[IMAGE=a]x", "unexpected VARIABLE, expecting EOA at line 0, columns 15:16"),
    ("$FILE IMAGE", "unexpected EOA, expecting OBRACKET at line 0, columns 6:7"),
    ("$FILE[IMAGE=a,B=c", "unexpected EOA, expecting CBRACKET at line 0, columns 17:18"),
])
def test_syntax_errors(value, message):
    with pytest.raises(FileVarError) as info:
        refs(value)
    assert info.value.message == "syntax error, " + message


def test_semantic_error_of_the_first_reference_comes_first():
    def resolve(*parts):
        raise FileVarError("no such image")

    with pytest.raises(FileVarError) as info:
        parse_file_refs("$FILE[IMAGE_ID=1]$FILE[", resolve)
    assert info.value.message == "no such image"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='$FILEIMAGE_ID=,[] "\\\n\tab1-é', max_size=40))
def test_any_value_parses_or_gets_a_message(value):
    """Whatever a template holds, the parser ends with references or oned's error text
    (never another exception, never a loop)."""
    try:
        out = refs(value)
    except FileVarError as exc:
        assert exc.message
    else:
        assert out and all(r[0] for r in out)
