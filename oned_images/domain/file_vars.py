"""``$FILE[...]`` references of OS/KERNEL_DS, OS/INITRD_DS and CONTEXT/FILES_DS
(vms.md §3.1): oned's ``vm_var_parser.l`` scanner and ``vm_file_var_syntax.y`` grammar,
reproduced so that a malformed value gets oned's exact text.

Pure: :func:`parse_file_refs` calls ``resolve(var1, val1, var2, val2)`` for each complete
reference, in order (a reference is reduced as soon as its closing token is read, so a
semantic error in the first one is reported before a syntax error in the second, as
bison does), and returns what the calls returned.  Errors are :class:`FileVarError`
with the text oned wraps as ``Error parsing: <value>. <message>``.

Scanner facts that matter (flex, longest match, ties to the earlier rule):
* outside a variable everything up to ``$`` is one RSTRING (never valid here);
* inside ``$...[...]`` blanks around ``=`` and ``,`` and after ``[`` / before ``]`` belong
  to those tokens; a value is ``"..."`` or ``[[:alnum:]]+`` (so ``vm_rd`` splits into
  the value ``vm`` and a VARIABLE ``_rd``); a character no rule matches is skipped;
* after ``]``, a ``$`` ends the reference and starts the next one; any other character
  (or the end) ends it too;
* locations are flex's running byte columns from 1, the line its 0-based counter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

END, EQUAL, COMMA, OBRACKET, CBRACKET, EOA, STRING, VARIABLE, RSTRING = (
    "$end", "EQUAL", "COMMA", "OBRACKET", "CBRACKET", "EOA", "STRING", "VARIABLE", "RSTRING")
#: bison's token numbers order the "expecting" lists
_ORDER = {END: 0, EQUAL: 3, COMMA: 4, OBRACKET: 5, CBRACKET: 6, EOA: 7, STRING: 8,
          VARIABLE: 9, RSTRING: 10}

_RSTRING = re.compile(rb"(?:[^$\\]|\\\$|\\[^$])+")
_VAR_RULES = (  # (regex, token, next state) in flex rule order
    (re.compile(rb"[ \t]*=[ \t]*"), EQUAL, "VALUE"),
    (re.compile(rb"[ \t]*,[ \t]*"), COMMA, None),
    (re.compile(rb"\[[ \t]*"), OBRACKET, None),
    (re.compile(rb"[ \t]*\]"), CBRACKET, None),
    (re.compile(rb"[A-Za-z0-9_]+"), VARIABLE, None),
    (re.compile(rb"\$"), EOA, None),
    (re.compile(rb"[^\n]"), EOA, "INITIAL"),
)
_QUOTED = re.compile(rb'"[^"]*"')
_ALNUM = re.compile(rb"[A-Za-z0-9]+")


class FileVarError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Token:
    __slots__ = ("kind", "value", "line", "first", "last")

    def __init__(self, kind: str, value: str, line: int, first: int, last: int) -> None:
        self.kind, self.value, self.line, self.first, self.last = kind, value, line, first, last


def _tokens(text: bytes):
    """The scanner: yields tokens with their flex locations, then $end for ever."""
    pos, state, line, last = 0, "INITIAL", 0, 1
    first = 1
    while True:
        if pos >= len(text):
            if state == "VAR":
                state = "INITIAL"
                yield _Token(EOA, "", line, first, last)
                continue
            while True:
                yield _Token(END, "", line, first, last)
        best: tuple[int, str | None, str | None] = (0, None, None)
        if state == "INITIAL":
            m = _RSTRING.match(text, pos)
            if m:
                best = (m.end() - pos, RSTRING, None)
            if text[pos:pos + 1] == b"$" and best[0] < 1:
                best = (1, None, "VAR")
        elif state == "VAR":
            for regex, kind, nxt in _VAR_RULES:
                m = regex.match(text, pos)
                if m and m.end() - pos > best[0]:
                    best = (m.end() - pos, kind, nxt)
        else:  # VALUE
            for regex in (_QUOTED, _ALNUM):
                m = regex.match(text, pos)
                if m and m.end() - pos > best[0]:
                    best = (m.end() - pos, STRING, "VAR")
        length, kind, nxt = best
        if length == 0:  # flex's default rule: the character is skipped (ECHO)
            length, kind, nxt = 1, None, None
        chunk = text[pos:pos + length]
        line += chunk.count(b"\n")
        first, last = last, last + length
        pos += length
        if nxt is not None:
            state = nxt
        if kind is None:
            continue
        value = chunk.decode("utf-8", "replace")
        if kind == STRING and value.startswith('"'):
            value = value[1:-1]
        yield _Token(kind, value, line, first, last)


def _syntax_error(tok: _Token, expected: tuple[str, ...]) -> FileVarError:
    names = sorted(expected, key=_ORDER.__getitem__)
    return FileVarError(f"syntax error, unexpected {tok.kind}, expecting {' or '.join(names)}"
                        f" at line {tok.line}, columns {tok.first}:{tok.last}")


def parse_file_refs(value: str, resolve: Callable[[str, str, str, str, str], T]) -> list[T]:
    """Every ``$FILE[...]`` of ``value`` (leading blanks already stripped) resolved in
    order; FileVarError with the parser's or ``resolve``'s message (resolve raises
    FileVarError itself)."""
    tokens = _tokens(value.encode("utf-8"))
    out: list[T] = []

    def take(*expected: str) -> _Token:
        tok = next(tokens)
        if tok.kind not in expected:
            raise _syntax_error(tok, expected)
        return tok

    tok = take(VARIABLE)
    while True:
        var = tok.value
        take(OBRACKET)
        var1 = take(VARIABLE).value
        take(EQUAL)
        val1 = take(STRING).value
        sep = take(COMMA, CBRACKET)
        var2 = val2 = ""
        if sep.kind == COMMA:
            var2 = take(VARIABLE).value
            take(EQUAL)
            val2 = take(STRING).value
            take(CBRACKET)
        take(EOA)
        out.append(resolve(var.upper(), var1.upper(), val1, var2.upper(), val2))
        tok = take(END, VARIABLE)
        if tok.kind == END:
            return out
