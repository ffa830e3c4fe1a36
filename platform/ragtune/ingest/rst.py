"""reStructuredText → Markdown-style text (headings as ``#``), through docutils.

Documentation trees are written for Sphinx, whose roles (``:ref:``, ``:func:``…) and directives
(``code-block``, ``toctree``, ``autoclass``, ``tab-set``…) docutils does not know. Nothing is
registered for them: docutils marks each one where it stands, and the walk below keeps what a
reader of the rendered page would read — a role's text (its title, or its target without the
``<...>`` part), a directive's arguments and its content (parsed as reStructuredText in turn).
Includes and raw passthrough are disabled: a file never reads another file.
"""

from __future__ import annotations

import io
import re

_ROLE = re.compile(r"^(?::[\w:.+-]+:)?`(?P<text>.*)`(?::[\w:.+-]+:)?_{0,2}$", re.DOTALL)
_TARGET = re.compile(r"\s*<[^<>]*>$")
_DIRECTIVE = re.compile(r"^\.\.\s+(?P<name>[\w:.+-]+)::(?P<args>[^\n]*)\n?(?P<body>.*)$", re.DOTALL)
_OPTION = re.compile(r"^:[\w-]+:(\s.*)?$")
# Directives whose content is not page text (navigation, generated API pages, file includes).
_NO_CONTENT = {"toctree", "autosummary", "literalinclude", "include", "image", "figure", "raw", "only",
               "currentmodule", "module", "py:module", "py:currentmodule", "highlight", "index", "meta"}
_CODE = {"code-block", "sourcecode", "code", "testcode", "doctest", "testoutput", "ipython", "jupyter-execute",
         "code-cell", "prompt"}
_MAX_DEPTH = 8


def rst_to_markdown(text: str, depth: int = 0) -> tuple[str, str]:
    """The page's title ("" when it has none) and its text, headings as Markdown ``#`` lines."""
    from docutils.core import publish_doctree

    settings = {"report_level": 3, "halt_level": 5, "warning_stream": io.StringIO(), "file_insertion_enabled": False,
                "raw_enabled": False, "input_encoding": "unicode", "syntax_highlight": "none"}
    doctree = publish_doctree(text, settings_overrides=settings)
    out: list[str] = []
    _walk(doctree, out, 1, depth)
    title = doctree.get("title", "")
    if title:
        out.insert(0, f"# {title}")
    return title, "\n\n".join(block for block in out if block.strip())


def _inline(node) -> str:
    """The text of an inline run, unknown roles as their text."""
    from docutils import nodes

    parts = []
    for child in node.children if isinstance(node, nodes.Element) else [node]:
        if isinstance(child, nodes.problematic):
            match = _ROLE.match(child.rawsource or child.astext())
            inner = match.group("text") if match else child.astext()
            parts.append(_TARGET.sub("", inner).lstrip("~!") or inner)
        elif isinstance(child, nodes.Text):
            parts.append(child.astext())
        elif isinstance(child, nodes.Element) and not isinstance(child, (nodes.target, nodes.system_message)):
            parts.append(_inline(child))
    return "".join(parts)


def _walk(node, out: list[str], level: int, depth: int) -> None:
    from docutils import nodes

    for child in node.children:
        if isinstance(child, nodes.section):
            title = child.next_node(nodes.title)
            if title is not None:
                out.append(f"{'#' * min(level + 1, 6)} {_inline(title)}")
            _walk(child, out, level + 1, depth)
        elif isinstance(child, nodes.title) and isinstance(node, (nodes.section, nodes.document)):
            continue  # written with its section, or as the page's title
        elif isinstance(child, nodes.system_message):
            _unknown_directive(child, out, depth)
        elif isinstance(child, (nodes.comment, nodes.target, nodes.substitution_definition, nodes.raw,
                                nodes.docinfo, nodes.decoration, nodes.pending)):
            continue
        elif isinstance(child, (nodes.literal_block, nodes.doctest_block)):
            out.append(f"```\n{child.astext()}\n```")
        elif isinstance(child, (nodes.paragraph, nodes.title, nodes.rubric, nodes.subtitle, nodes.line)):
            out.append(" ".join(_inline(child).split()))  # a paragraph's line breaks are not the page's
        elif isinstance(child, (nodes.bullet_list, nodes.enumerated_list)):
            for item in child.children:
                parts: list[str] = []
                _walk(item, parts, level, depth)
                out.append("- " + "\n  ".join(parts))
        elif isinstance(child, nodes.definition_list_item):
            term = child.next_node(nodes.term)
            out.append(_inline(term) if term is not None else "")
            for definition in child.findall(nodes.definition):
                _walk(definition, out, level, depth)
        elif isinstance(child, nodes.term):
            continue
        elif isinstance(child, nodes.field):
            name, body = child.children[0], child.children[1]
            parts = []
            _walk(body, parts, level, depth)
            out.append(f"{_inline(name)}: {' '.join(parts)}")
        elif isinstance(child, nodes.row):
            cells = []
            for entry in child.children:
                parts = []
                _walk(entry, parts, level, depth)
                cells.append(" ".join(parts))
            out.append(" | ".join(cells))
        elif isinstance(child, nodes.image):
            if child.get("alt"):
                out.append(child["alt"])
        elif isinstance(child, nodes.Element):
            _walk(child, out, level, depth)  # containers: admonitions, tables, blocks, lists of fields


def _unknown_directive(message, out: list[str], depth: int) -> None:
    """A directive docutils does not know arrives as an error holding its source: keep its
    arguments and content (code as code, other content parsed as reStructuredText)."""
    from docutils import nodes

    source = message.next_node(nodes.literal_block)
    match = _DIRECTIVE.match(source.astext()) if source is not None else None
    if match is None:
        return
    name = match.group("name").lower()
    if name in _NO_CONTENT or name.startswith("auto"):
        return
    lines = match.group("body").splitlines()
    while lines and _OPTION.match(lines[0].strip()):
        lines.pop(0)
    body = "\n".join(line[_indent(lines):] for line in lines).strip()
    args = match.group("args").strip()
    if name in _CODE:
        if body:
            out.append(f"```{args}\n{body}\n```")
        return
    if args:
        out.append(args)
    if body and depth < _MAX_DEPTH:
        out.append(rst_to_markdown(body, depth + 1)[1])


def _indent(lines: list[str]) -> int:
    widths = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    return min(widths, default=0)
