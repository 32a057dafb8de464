"""OpenNebula templates: the ``NAME = value`` text grammar, the XML form, serialization.

One parser serves two masters: API input (image templates given to allocate/update,
replace mode) and the daemon configuration file (oned.conf grammar, multi mode, where
``DS_MAD_CONF`` and friends repeat).  Clients and test suites compare our answers with
real oned byte for byte, so the text parser deliberately reproduces oned's flex scanner
and bison LALR(1) automaton, quirks included:

* tokens are chosen by *longest match* (ties go to the earlier flex rule), which is why
  ``A="x"y`` is the bare value ``"x"y`` and a quoted value ends at the first ``"`` not
  preceded by a backslash;
* characters no rule matches are silently skipped (flex's default ECHO rule), so
  ``-A=1`` is accepted and ``A = = `` only fails at the end of input;
* bison's default reductions decide which tokens an error message says were expected
  (after ``NAME="x"`` an unexpected ``=`` is reported as "expecting $end", not
  "expecting $end or VARIABLE");
* error locations use flex's running column counter: 1-based *byte* columns that are
  never reset at newlines, and a 0-based line counter (the string scanner's yylineno
  starts at 0), i.e. the number of newlines consumed up to the end of the token.

Deliberate departures from oned, all towards safety: a comment may end at the end of
the input (flex needs a trailing newline, otherwise the comment's words become
tokens); any value containing ``]]>`` is refused with ``Parse error.`` (oned's scanner
only catches it on the line where the value starts); vector sub-attribute names get the
``ONE_`` fix like attribute names (oned only upper-cases them and could then write
invalid XML); and the text scanner stops at a NUL character, exactly as oned's
C-string scanner does.

The module is pure: no I/O, no Twisted, no global state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lxml import etree

__all__ = ["Attribute", "Template", "TemplateError", "Vector", "cdata"]

#: A vector attribute's sub-attributes, in insertion order.
Vector = dict[str, str]


class TemplateError(Exception):
    """A template that oned would refuse.

    ``message`` is oned's exact text (RPC layers prepend their own context, e.g.
    ``Cannot update template. ``).  ``line`` is the 1-based physical line of the
    problem when it is known, so that configuration-file errors can point at it; the
    message itself keeps oned's 0-based line counter.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return self.message


@dataclass(slots=True)
class Attribute:
    """One template attribute: a single string value or a vector.

    ``line`` (1-based line where the attribute started in text input, 0 for XML or
    programmatic attributes) only serves error reports, so it takes no part in
    equality.
    """

    name: str
    value: str | Vector
    line: int = field(default=0, compare=False)

    @property
    def is_vector(self) -> bool:
        return isinstance(self.value, dict)

    def copy(self) -> Attribute:
        value = dict(self.value) if isinstance(self.value, dict) else self.value
        return Attribute(self.name, value, self.line)


def cdata(value: str) -> str:
    """Wrap ``value`` in a CDATA section that stays well formed whatever it contains.

    A literal ``]]>`` would close the section early, so it is split across two
    sections; an XML parser reads the concatenation back as the original text.
    """
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def _fix_name(raw: str) -> str:
    """Attribute-name normalization of oned (its Attribute constructor).

    Upper-casing is ASCII only (C locale ``toupper``).  The ``ONE_`` prefix keeps the
    name usable as an XML element name: it is added when the name does not start with
    a letter or ``_``, or when the name *as written* starts with ``XML`` (oned checks
    the original spelling, so ``xml_a`` stays ``XML_A``).
    """
    name = raw.translate(_ASCII_UPPER)
    if raw and (raw[0] not in _NAME_START or raw.startswith("XML")):
        name = "ONE_" + name
    return name


def _trim_name(attrs: list[Attribute]) -> None:
    """oned trims trailing whitespace of the NAME attribute after every parse."""
    for attr in attrs:
        if attr.name == "NAME" and isinstance(attr.value, str):
            attr.value = attr.value.rstrip(" \f\n\r\t\v")


# --------------------------------------------------------------------------------------
# Text form: scanner
# --------------------------------------------------------------------------------------

# Token numbers follow bison's numbering, which orders the "expecting" lists.
_END, _EQUAL, _COMMA, _OBRACKET, _CBRACKET, _EQUAL_EMPTY, _CCDATA, _STRING, _VARIABLE = range(9)
_TOKEN_NAMES = ("$end", "EQUAL", "COMMA", "OBRACKET", "CBRACKET", "EQUAL_EMPTY", "CCDATA",
                "STRING", "VARIABLE")

_BLANKS = re.compile(r"[ \t]*")
_SPACE = re.compile(r"[ \t\n]*")
_VARIABLE_RE = re.compile(r"[A-Za-z0-9_]+")
_BARE_RE = re.compile(r"[^=#\t \n,\[\]]+")
# Runs of characters that no rule matches, skipped in one step instead of one by one so
# that a huge line of junk stays linear.  In the VALUE state blanks followed by '[' start
# an OBRACKET and are excluded; when the input contains ']]>' the run may not enter a
# new non-empty line, whose CCDATA rule must be tried first.
_JUNK_INITIAL = re.compile(r"[^ \t\n#=,\]A-Za-z0-9_]+")
_JUNK_VALUE = re.compile(r"(?:[=#,\]\n]|[ \t]++(?!\[))+")
_JUNK_VALUE_CDATA = re.compile(r"(?:[=#,\]]|[ \t]++(?!\[)|\n(?=\n))*\n?")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class _Token:
    __slots__ = ("kind", "start", "end", "value")

    def __init__(self, kind: int, start: int, end: int, value: str = "") -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.value = value


class _Scanner:
    """Token source equivalent to oned's flex scanner (two start states).

    Besides tokens it remembers the last chunk it consumed, because that is where
    flex's location counter stands when the end of input is reported.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.in_value = False
        self.has_cdata = "]]>" in text
        self._eol = -1  # end of the line holding self.pos, for the CCDATA rule
        self._last_cdata = -1  # start of the last ']]>' on that line, or -1
        # Location of the last consumed chunk: [start, end) and whether flex consumed
        # it byte by byte (default rule), which makes only its last byte the location.
        self.last_start = 0
        self.last_end = 0
        self.last_bytewise = False

    def _chunk(self, start: int, end: int, bytewise: bool = False) -> None:
        self.last_start, self.last_end, self.last_bytewise = start, end, bytewise
        self.pos = end

    def next(self) -> _Token:
        n = self.n
        while True:
            p = self.pos
            if p >= n:
                return _Token(_END, p, p)
            if self.in_value:
                tok = self._value_token(p)
            else:
                tok = self._initial_token(p)
            if tok is not None:
                return tok

    # INITIAL state ----------------------------------------------------------------
    def _initial_token(self, p: int) -> _Token | None:
        text, n = self.text, self.n
        c = text[p]
        if c in _ALNUM:
            end = _VARIABLE_RE.match(text, p).end()
            self._chunk(p, end)
            return _Token(_VARIABLE, p, end, text[p:end])
        if c in " \t\n#=,]":
            b = _BLANKS.match(text, p).end()
            nxt = text[b] if b < n else ""
            if nxt == "#":
                # Comment up to and including the newline (or the end of input).
                e = text.find("\n", b)
                self._chunk(p, n if e < 0 else e + 1)
                return None
            if nxt == "=":
                q = _BLANKS.match(text, b + 1).end()
                if q < n and text[q] == "\n":
                    self._chunk(p, q + 1)
                    return _Token(_EQUAL_EMPTY, p, q + 1)
                self._chunk(p, q)
                self.in_value = True
                return _Token(_EQUAL, p, q)
            w = _SPACE.match(text, p).end()
            if w < n and text[w] in ",]":
                end = _SPACE.match(text, w + 1).end()
                self._chunk(p, end)
                return _Token(_COMMA if text[w] == "," else _CBRACKET, p, end)
            self._chunk(p, w)  # blanks and newlines
            return None
        # No rule matches: flex's default rule skips it (one byte at a time).
        self._chunk(p, _JUNK_INITIAL.match(text, p).end(), bytewise=True)
        return None

    # VALUE state (right after EQUAL) ----------------------------------------------
    def _cdata_len(self, p: int) -> int:
        """Length of a CCDATA match at ``p``: the rest of the line, if it holds ']]>'."""
        if not self.has_cdata:
            return 0
        text = self.text
        if p > self._eol:
            eol = text.find("\n", p)
            self._eol = self.n if eol < 0 else eol
            self._last_cdata = text.rfind("]]>", p, self._eol)
        if self._last_cdata >= p:
            return self._eol - p
        return 0

    def _quoted_end(self, p: int) -> int:
        """End of the longest match of ``"([^"]|\\")*"`` at ``p`` (text[p] is '"'), or -1.

        Inside the quotes a '"' can only be part of a ``\\"`` pair, so the longest match
        ends at the first '"' not preceded by a backslash; failing that, at the last '"'.
        """
        text = self.text
        q = p
        last = -1
        while True:
            q = text.find('"', q + 1)
            if q < 0:
                return last + 1 if last >= 0 else -1
            if text[q - 1] != "\\":
                return q + 1
            last = q

    def _value_token(self, p: int) -> _Token | None:
        text, n = self.text, self.n
        best_len, best_kind = 0, -1
        # Candidates in flex rule order; a later rule wins only with a longer match.
        b = _BLANKS.match(text, p).end()
        if b < n and text[b] == "[":
            best_len, best_kind = _SPACE.match(text, b + 1).end() - p, _OBRACKET
        cd = self._cdata_len(p)
        if cd > best_len:
            best_len, best_kind = cd, _CCDATA
        quoted = False
        if text[p] == '"':
            qe = self._quoted_end(p)
            if qe > 0 and qe - p > best_len:
                best_len, best_kind, quoted = qe - p, _STRING, True
        m = _BARE_RE.match(text, p)
        if m is not None and m.end() - p > best_len:
            best_len, best_kind, quoted = m.end() - p, _STRING, False
        if best_kind < 0:
            junk = _JUNK_VALUE_CDATA if self.has_cdata else _JUNK_VALUE
            end = max(junk.match(text, p).end(), p + 1)
            self._chunk(p, end, bytewise=True)
            return None
        end = p + best_len
        self._chunk(p, end)
        self.in_value = False
        if best_kind == _STRING:
            value = text[p + 1:end - 1] if quoted else text[p:end]
            return _Token(_STRING, p, end, value)
        return _Token(best_kind, p, end)


# --------------------------------------------------------------------------------------
# Text form: parser (the LALR(1) automaton bison builds for oned's grammar)
# --------------------------------------------------------------------------------------
#
#   template_file : %empty | template
#   template      : attribute | template attribute
#   attribute     : VARIABLE EQUAL STRING                       (single)
#                 | VARIABLE EQUAL OBRACKET array_val CBRACKET  (vector)
#                 | VARIABLE EQUAL OBRACKET CBRACKET            (empty vector)
#                 | VARIABLE EQUAL_EMPTY                        (empty single)
#                 | VARIABLE EQUAL CCDATA                       (abort: "Parse error.")
#   array_val     : VARIABLE EQUAL STRING | array_val COMMA VARIABLE EQUAL STRING
#
# The tables are written out by hand; what matters for byte-exact messages is which
# states reduce by default (they never detect errors) and which tokens the others shift.

_ACCEPT = -1
_SHIFT: dict[int, dict[int, int]] = {
    0: {_VARIABLE: 1},
    1: {_EQUAL: 5, _EQUAL_EMPTY: 6},
    2: {_END: _ACCEPT},
    3: {_VARIABLE: 1},
    5: {_OBRACKET: 9, _CCDATA: 10, _STRING: 11},
    9: {_CBRACKET: 12, _VARIABLE: 13},
    13: {_EQUAL: 15},
    14: {_COMMA: 16, _CBRACKET: 17},
    15: {_STRING: 18},
    16: {_VARIABLE: 19},
    19: {_EQUAL: 20},
    20: {_STRING: 21},
}
# Default reductions: state -> rule.  Rules: (left-hand side, right-hand side length).
_DEFAULT = {0: 1, 3: 2, 4: 3, 6: 8, 8: 4, 10: 9, 11: 5, 12: 7, 17: 6, 18: 10, 21: 11}
_FILE, _TEMPLATE, _ATTRIBUTE, _ARRAY = range(4)
_RULES = {
    1: (_FILE, 0), 2: (_FILE, 1), 3: (_TEMPLATE, 1), 4: (_TEMPLATE, 2),
    5: (_ATTRIBUTE, 3), 6: (_ATTRIBUTE, 5), 7: (_ATTRIBUTE, 4), 8: (_ATTRIBUTE, 2),
    9: (_ATTRIBUTE, 3), 10: (_ARRAY, 3), 11: (_ARRAY, 5),
}
_GOTO = {(0, _FILE): 2, (0, _TEMPLATE): 3, (0, _ATTRIBUTE): 4, (3, _ATTRIBUTE): 8,
         (9, _ARRAY): 14}


def _unescape(value: str) -> str:
    return value.replace('\\"', '"')


class _LineCounter:
    """1-based line numbers of offsets, counting only the distance from the last query."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int) -> int:
        if pos >= self.pos:
            self.line += self.text.count("\n", self.pos, pos)
        else:
            self.line -= self.text.count("\n", pos, self.pos)
        self.pos = pos
        return self.line


def _syntax_error(scanner: _Scanner, tok: _Token, state: int) -> TemplateError:
    text = scanner.text
    if tok.kind == _END:
        start, end, bytewise = scanner.last_start, scanner.last_end, scanner.last_bytewise
    else:
        start, end, bytewise = tok.start, tok.end, False
    end_col = len(text[:end].encode("utf-8", "surrogatepass")) + 1
    start_col = end_col - 1 if bytewise else len(
        text[:start].encode("utf-8", "surrogatepass")) + 1
    expected = sorted(_SHIFT.get(state, {}))
    msg = f"syntax error, unexpected {_TOKEN_NAMES[tok.kind]}"
    if expected and len(expected) <= 4:
        msg += ", expecting " + " or ".join(_TOKEN_NAMES[k] for k in expected)
    line0 = text.count("\n", 0, end)
    phys = text.count("\n", 0, start if not bytewise else max(end - 1, 0)) + 1
    return TemplateError(f"Parse error: {msg} at line {line0}, columns {start_col}:{end_col}",
                         phys)


def _parse_text(text: str, replace_mode: bool) -> list[Attribute]:
    nul = text.find("\0")
    if nul >= 0:
        text = text[:nul]  # oned scans a C string
    scanner = _Scanner(text)
    lines = _LineCounter(text)
    attrs: list[Attribute] = []
    latest: dict[str, Attribute] = {}  # replace mode: name -> its (last) attribute
    states = [0]
    values: list[object] = [None]
    look: _Token | None = None

    def store(name_tok: _Token, value: str | Vector) -> None:
        attr = Attribute(_fix_name(name_tok.value), value, lines.at(name_tok.start))
        if replace_mode:
            latest.pop(attr.name, None)  # re-inserting moves the name to the end
            latest[attr.name] = attr
        else:
            attrs.append(attr)

    def checked(tok: _Token, line_tok: _Token) -> str:
        value = _unescape(tok.value)
        if "]]>" in value:
            raise TemplateError("Parse error.", lines.at(line_tok.start))
        return value

    while True:
        state = states[-1]
        rule = _DEFAULT.get(state)
        shifts = _SHIFT.get(state)
        if shifts is not None:
            if look is None:
                look = scanner.next()
            target = shifts.get(look.kind)
            if target is not None:
                if target == _ACCEPT:
                    break
                states.append(target)
                values.append(look)
                look = None
                continue
            if rule is None:
                raise _syntax_error(scanner, look, state)
        assert rule is not None  # every state shifts or reduces by default
        lhs, size = _RULES[rule]
        rhs = values[len(values) - size:] if size else []
        result: object = None
        if rule == 5:
            store(rhs[0], checked(rhs[2], rhs[0]))
        elif rule == 6:
            store(rhs[0], rhs[3])
        elif rule == 7:
            store(rhs[0], {})
        elif rule == 8:
            store(rhs[0], "")
        elif rule == 9:
            raise TemplateError("Parse error.", lines.at(rhs[0].start))
        elif rule == 10:
            result = {_fix_name(rhs[0].value): checked(rhs[2], rhs[0])}
        elif rule == 11:
            vec = rhs[0]
            key = _fix_name(rhs[2].value)
            value = checked(rhs[4], rhs[2])
            if key not in vec:  # oned fills a std::map with insert(): the first one wins
                vec[key] = value
            result = vec
        if size:
            del states[-size:]
            del values[-size:]
        states.append(_GOTO[(states[-1], lhs)])
        values.append(result)
    return list(latest.values()) if replace_mode else attrs


# --------------------------------------------------------------------------------------
# XML form
# --------------------------------------------------------------------------------------

_MALFORMED = "Parse error: XML Template malformed."


def _xml_parser() -> etree.XMLParser:
    # Never resolve entities, load a DTD or touch the network: template XML comes from
    # API callers.  CDATA is kept so that an empty <![CDATA[]]> is still a value.
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           load_dtd=False, dtd_validation=False, strip_cdata=False)


def _local_name(el: etree._Element) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if tag[:1] == "{" else tag


def _single_text(el: etree._Element, split: frozenset[etree._Element]) -> str | None:
    """The value of ``el`` when its only child node is one text/CDATA node."""
    if el.text is None or len(el) or el in split:
        # no text at all; comments, entities or elements as well; or text and CDATA
        # side by side, which lxml merges but libxml2 (and so oned) sees as two nodes
        return None
    return el.text


def _first_text(el: etree._Element, split: frozenset[etree._Element]) -> str | None:
    """Content of ``el``'s first child node when that node is text/CDATA."""
    if el.text is None:
        return None
    if el in split:
        return str(el.xpath("node()[1]")[0])
    return el.text


def _attrs_from_element(root: etree._Element, replace_mode: bool,
                        exact: bool) -> list[Attribute]:
    """oned's rebuild_attributes: element children of the root become attributes.

    An element whose only child is a text/CDATA node is a single attribute; one with
    element children is a vector whose sub-elements starting with text/CDATA become its
    values (names as written, a repeated one replaces the earlier); anything else,
    empty elements included, is ignored.
    """
    # Elements with several child nodes, found in one XPath pass; only needed when the
    # input has CDATA sections (otherwise libxml2 never splits text).
    split: frozenset[etree._Element] = frozenset(
        root.xpath("*[count(node())>1] | */*[count(node())>1]") if exact else ())
    attrs: list[Attribute] = []
    latest: dict[str, Attribute] = {}
    for el in root:
        if not isinstance(el.tag, str):
            continue  # comment, processing instruction, entity reference
        value: str | Vector | None = _single_text(el, split)
        if value is None:
            subs = [c for c in el if isinstance(c.tag, str)]
            if not subs:
                continue
            vec: Vector = {}
            for sub in subs:
                text = _first_text(sub, split)
                if text is not None:
                    vec.pop(_local_name(sub), None)
                    vec[_local_name(sub)] = text
            value = vec
        attr = Attribute(_fix_name(_local_name(el)), value)
        if replace_mode:
            latest.pop(attr.name, None)  # re-inserting moves the name to the end
            latest[attr.name] = attr
        else:
            attrs.append(attr)
    return list(latest.values()) if replace_mode else attrs


def _parse_xml(text: str, replace_mode: bool) -> list[Attribute]:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise TemplateError(_MALFORMED) from None
    try:
        root = etree.fromstring(data, _xml_parser())
    except (etree.LxmlError, ValueError):
        raise TemplateError(_MALFORMED) from None
    if root is None:
        raise TemplateError(_MALFORMED)
    return _attrs_from_element(root, replace_mode, exact=b"<![CDATA[" in data)


# --------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------


def _text_value(value: str) -> str:
    """Write a value so that oned's scanner reads it back unchanged.

    Quoted form, with '"' written as '\\"'.  A value ending in a backslash cannot be
    quoted (its closing quote would look escaped), so it is written bare when its
    characters allow; otherwise it only reads back correctly as the last value of
    the text.
    """
    escaped = value.replace('"', '\\"')
    if escaped.endswith("\\") and _BARE_RE.fullmatch(escaped):
        return escaped
    return '"' + escaped + '"'


class Template:
    """An ordered list of attributes, as oned keeps them (a multimap by name).

    Lookups are by exact name: parsing normalizes names, programmatic callers pass
    them already upper-cased.
    """

    __slots__ = ("_attrs",)

    def __init__(self, attrs: Iterable[Attribute] | None = None) -> None:
        self._attrs: list[Attribute] = list(attrs) if attrs is not None else []

    # Parsing --------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, replace_mode: bool = True) -> Template:
        """Parse API or configuration text: XML when it starts with '<', else oned text.

        ``replace_mode`` keeps only the last attribute of each name (image templates);
        without it every occurrence is kept in order (oned.conf).
        """
        if not text:
            return cls()
        if text[0] == "<":
            attrs = _parse_xml(text, replace_mode)
        else:
            attrs = _parse_text(text, replace_mode)
        _trim_name(attrs)
        return cls(attrs)

    @classmethod
    def from_element(cls, element: etree._Element, replace_mode: bool = False) -> Template:
        """Build a template from an already parsed XML element (e.g. a stored TEMPLATE).

        Same rules as the XML form of :meth:`parse`, without a serialize/parse round
        trip.  An empty CDATA value survives only if the tree was parsed keeping text
        nodes for it (lxml does, with or without ``strip_cdata``).
        """
        return cls(_attrs_from_element(element, replace_mode, exact=False))

    # Access ---------------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """Value of the last single attribute called ``name`` (vectors do not count)."""
        for attr in reversed(self._attrs):
            if attr.name == name and isinstance(attr.value, str):
                return attr.value
        return None

    def get_vector(self, name: str) -> Vector | None:
        """The last vector attribute called ``name`` (the live dict, not a copy)."""
        for attr in reversed(self._attrs):
            if attr.name == name and isinstance(attr.value, dict):
                return attr.value
        return None

    def get_all(self, name: str) -> list[str | Vector]:
        return [a.value for a in self._attrs if a.name == name]

    def has(self, name: str) -> bool:
        return any(a.name == name for a in self._attrs)

    def __contains__(self, name: object) -> bool:
        return any(a.name == name for a in self._attrs)

    def names(self) -> list[str]:
        """Distinct attribute names, in order of first appearance."""
        return list(dict.fromkeys(a.name for a in self._attrs))

    # Modification ---------------------------------------------------------------------
    def set(self, name: str, value: str | Vector) -> None:
        """Replace every attribute called ``name`` by a single one, appended at the end."""
        self._attrs = [a for a in self._attrs if a.name != name]
        self._attrs.append(Attribute(name, value))

    def add(self, name: str, value: str | Vector) -> None:
        """Append an attribute, keeping any others with the same name."""
        self._attrs.append(Attribute(name, value))

    def remove(self, name: str) -> list[str | Vector]:
        """Remove every attribute called ``name``; return their values in order."""
        removed = [a.value for a in self._attrs if a.name == name]
        if removed:
            self._attrs = [a for a in self._attrs if a.name != name]
        return removed

    def merge(self, other: Template) -> None:
        """one.image.update in merge mode: ``other``'s names replace those in ``self``.

        As oned's Template::merge, every attribute of a name present in ``other`` is
        dropped first, then copies of all of ``other``'s attributes are appended.
        """
        incoming = {a.name for a in other._attrs}
        self._attrs = [a for a in self._attrs if a.name not in incoming]
        self._attrs.extend(a.copy() for a in other._attrs)

    def copy(self) -> Template:
        """Deep copy (vectors are copied too)."""
        return Template(a.copy() for a in self._attrs)

    # Protocols ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Attribute]:
        return iter(self._attrs)

    def __len__(self) -> int:
        return len(self._attrs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self._attrs == other._attrs

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Template({self._attrs!r})"

    # Serialization --------------------------------------------------------------------
    def to_xml(self, root: str = "TEMPLATE") -> str:
        """oned's template XML: one line, attributes (and vector keys) sorted by name.

        The sort is stable, so same-named attributes keep their order.  Every value is
        CDATA, even an empty one; an empty vector is ``<NAME></NAME>``.
        """
        parts = [f"<{root}>"]
        for attr in sorted(self._attrs, key=_attr_name):
            name, value = attr.name, attr.value
            if isinstance(value, str):
                parts.append(f"<{name}>{cdata(value)}</{name}>")
            else:
                parts.append(f"<{name}>")
                for key in sorted(value):
                    parts.append(f"<{key}>{cdata(value[key])}</{key}>")
                parts.append(f"</{name}>")
        parts.append(f"</{root}>")
        return "".join(parts)

    def to_text(self) -> str:
        """oned's text form, one attribute per line, in order.

        ``Template.parse(t.to_text(), replace_mode=False) == t`` holds whenever names
        are valid normalized names and no value contains ``]]>`` or NUL or ends in a
        backslash while also containing blanks or ``=#,[]`` (oned's syntax has no way
        to write those).
        """
        lines = []
        for attr in self._attrs:
            value = attr.value
            if isinstance(value, str):
                lines.append(f"{attr.name}={_text_value(value)}\n")
            elif not value:
                lines.append(f"{attr.name}=[]\n")
            else:
                body = ",\n".join(f"  {k}={_text_value(v)}" for k, v in value.items())
                lines.append(f"{attr.name}=[\n{body} ]\n")
        return "".join(lines)


def _attr_name(attr: Attribute) -> str:
    return attr.name
