"""Search filters from clients, in a small grammar that ragtune translates to a Milvus expression
(never a client's raw expression):

    filter     := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" or_expr ")" | comparison
    comparison := field ("==" | "!=" | "<" | "<=" | ">" | ">=") literal
                | field "like" string          (% matches any run of characters)
                | field "in" "[" literal ("," literal)* "]"
    field      := doc_id | chunk_index | title | source | doc_hash | metadata.<key>
    literal    := "string" | 'string' | number | true | false

e.g. ``doc_id like "policies/%" and metadata.year >= 2024``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

FIELDS = {"doc_id": "string", "chunk_index": "number", "title": "string", "source": "string", "doc_hash": "string"}
_MAX_LENGTH = 4096
_MAX_TERMS = 64
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "like", "in", "true", "false"}


class FilterError(ValueError):
    """The filter is not in ragtune's grammar; the message names the token and what is expected."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    at: int


def to_milvus(text: str) -> str:
    """The Milvus expression of a filter in ragtune's grammar ('' for an empty filter).

    Raises:
        FilterError: anything else, with the position and the offending token.
    """
    if not text.strip():
        return ""
    if len(text) > _MAX_LENGTH:
        raise FilterError(f"the filter has {len(text)} characters; the limit is {_MAX_LENGTH}")
    return _Parser(_tokens(text)).parse()


def _tokens(text: str) -> list[_Token]:
    out, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise FilterError(f"unexpected {text[at:at + 20]!r} at character {at}; filters are comparisons of "
                              f"{_fields()} joined by and / or")
        if match.lastgroup != "space":
            out.append(_Token(match.lastgroup, match.group(), at))
        at = match.end()
    return out


def _fields() -> str:
    return ", ".join(FIELDS) + ", metadata.<key>"


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.tokens, self.i, self.terms = tokens, 0, 0

    def parse(self) -> str:
        expression = self._or()
        if self.i < len(self.tokens):
            raise self._error("and / or, or the end of the filter")
        return expression

    def _peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, text: str | None = None, kind: str | None = None) -> _Token | None:
        token = self._peek()
        if token is None or (text is not None and token.text.lower() != text) or (kind and token.kind != kind):
            return None
        self.i += 1
        return token

    def _error(self, expected: str) -> FilterError:
        token = self._peek()
        found = f"{token.text!r} at character {token.at}" if token else "the end of the filter"
        return FilterError(f"expected {expected}, found {found}")

    def _or(self) -> str:
        parts = [self._and()]
        while self._take("or"):
            parts.append(self._and())
        return " or ".join(parts) if len(parts) == 1 else "(" + " or ".join(parts) + ")"

    def _and(self) -> str:
        parts = [self._unary()]
        while self._take("and"):
            parts.append(self._unary())
        return " and ".join(parts) if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    def _unary(self) -> str:
        if self._take("not"):
            return f"not ({self._unary()})"
        if self._take("("):
            inner = self._or()
            if not self._take(")"):
                raise self._error("')'")
            return f"({inner})"
        return self._comparison()

    def _comparison(self) -> str:
        self.terms += 1
        if self.terms > _MAX_TERMS:
            raise FilterError(f"the filter has more than {_MAX_TERMS} comparisons")
        field, kind = self._field()
        if self._take("like"):
            if kind == "number":
                raise FilterError(f"{field} is a number: like compares strings")
            pattern = self._literal()
            if not pattern.startswith('"'):
                raise FilterError(f"like takes a string pattern, e.g. {field} like \"policies/%\"")
            return f"{field} like {pattern}"
        if self._take("in"):
            if not self._take("["):
                raise self._error("'[' after in")
            values = [self._literal()]
            while self._take(","):
                values.append(self._literal())
            if not self._take("]"):
                raise self._error("',' or ']'")
            return f"{field} in [{', '.join(values)}]"
        op = self._take(kind="op")
        if op is None or op.text not in ("==", "!=", "<", "<=", ">", ">="):
            if op is not None:
                self.i -= 1
            raise self._error(f"a comparison (==, !=, <, <=, >, >=, like, in) after {field}")
        return f"{field} {op.text} {self._literal()}"

    def _field(self) -> tuple[str, str]:
        token = self._take(kind="word")
        if token is None or token.text.lower() in _KEYWORDS:
            if token is not None:
                self.i -= 1
            raise self._error(f"a field ({_fields()})")
        name = token.text
        if name.startswith("metadata."):
            return f'metadata[{json.dumps(name.split(".", 1)[1])}]', "any"
        if name not in FIELDS:
            raise FilterError(f"unknown field {name!r} at character {token.at}; filters take {_fields()}")
        return name, FIELDS[name]

    def _literal(self) -> str:
        token = self._peek()
        if token is None:
            raise self._error("a value (a quoted string, a number, true or false)")
        if token.kind == "string":
            self.i += 1
            try:
                value = json.loads(token.text) if token.text.startswith('"') else \
                    json.loads('"' + token.text[1:-1].replace('\\\'', "'").replace('"', '\\"') + '"')
            except json.JSONDecodeError:
                raise FilterError(f"invalid string {token.text[:40]!r} at character {token.at}") from None
            return json.dumps(value, ensure_ascii=False)
        if token.kind == "number":
            self.i += 1
            return token.text
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            self.i += 1
            return token.text.lower()
        raise self._error("a value (a quoted string, a number, true or false)")
