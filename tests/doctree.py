"""A documentation tree written for ragtune's tests and benchmarks from real text: the SQuAD part A
paragraphs (CC BY-SA 4.0, ../shared/data/squad) laid out as a Sphinx project would be — a
directory per article with an ``index.rst`` (title, toctree, the first paragraph) and pages of
three paragraphs each, one section per paragraph, in turn reStructuredText (roles, notes, code
blocks, tabs, includes, raw HTML), MyST Markdown and Jupyter notebooks (markdown, code and
outputs). Every SQuAD question then has a known source page: ``questions`` gives them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "dev-v1.1.part-a.json"
PER_PAGE = 3


@dataclass(frozen=True)
class Question:
    text: str
    answers: list[str]
    page: str  # the source page's path relative to the tree's root: its document id


def _words(text: str, n: int) -> str:
    return " ".join(re.findall(r"[\w'-]+", text)[:n])


def _rst_title(text: str, char: str, over: bool = False) -> str:
    line = char * len(text)
    return f"{line}\n{text}\n{line}\n" if over else f"{text}\n{line}\n"


def _rst_page(article: str, title: str, paragraphs: list[str]) -> str:
    parts = [f".. _{article.lower()}-{_words(title, 3).lower().replace(' ', '-')}:\n", _rst_title(title, "=", over=True),
             f"Part of :doc:`index`; see also :ref:`the overview <{article.lower()}-index>`.\n"]
    for n, text in enumerate(paragraphs):
        parts.append(_rst_title(_words(text, 6), "-"))
        if n == 1:
            parts.append(".. note::\n\n   " + text + "\n")
        elif n == 2:
            parts.append(".. tab-set::\n\n   .. tab-item:: Summary\n\n      " + text + "\n")
        else:
            parts.append(text + "\n")
    parts += [".. code-block:: python\n\n   import ragtune  # an example that is not page text\n",
              ".. raw:: html\n\n   <script>window.tracking = 1</script>\n",
              ".. literalinclude:: ../examples/snippet.py\n"]
    return "\n".join(parts)


def _myst_page(title: str, paragraphs: list[str]) -> str:
    parts = [f"# {title}\n"]
    for n, text in enumerate(paragraphs):
        parts.append(f"## {_words(text, 6)}\n")
        parts.append(f":::{{note}}\n{text}\n:::\n" if n == 1 else text + "\n")
    return "\n".join(parts)


def _notebook(title: str, paragraphs: list[str]) -> str:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": [f"# {title}"]}]
    for text in paragraphs:
        cells.append({"cell_type": "markdown", "metadata": {}, "source": [f"## {_words(text, 6)}\n", "\n", text]})
        cells.append({"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["len(text.split())"],
                      "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                   "data": {"text/plain": [str(len(text.split()))]}}]})
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": cells,
                       "metadata": {"kernelspec": {"name": "python3", "language": "python"}}}, indent=1)


def write_doc_tree(root: Path, articles: int | None = None) -> list[Question]:
    """Write the tree under ``root`` (``articles``: the first N; all 24 give 373 files) and return
    every question of the paragraphs it holds, with its page."""
    data = json.loads(SQUAD.read_text())["data"][:articles]
    questions: list[Question] = []
    for a, article in enumerate(data):
        name, title = article["title"], article["title"].replace("_", " ")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        paragraphs = [p["context"] for p in article["paragraphs"]]
        pages = [paragraphs[i:i + PER_PAGE] for i in range(1, len(paragraphs), PER_PAGE)]
        page_names = [f"part-{n + 1:02d}" for n in range(len(pages))]
        (folder / "index.rst").write_text("\n".join([
            f".. _{name.lower()}-index:\n", _rst_title(title, "#", over=True),
            ".. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   {p}\n" for p in page_names), paragraphs[0] + "\n"]))
        files = ["index.rst"]
        for n, (page, texts) in enumerate(zip(page_names, pages)):
            heading = f"{title}: {_words(texts[0], 4)}"
            kind = (a + n) % 3
            if kind == 0:
                file = f"{page}.rst"
                (folder / file).write_text(_rst_page(name, heading, texts))
            elif kind == 1:
                file = f"{page}.md"
                (folder / file).write_text(_myst_page(heading, texts))
            else:
                file = f"{page}.ipynb"
                (folder / file).write_text(_notebook(heading, texts))
            files.append(file)
        for i, paragraph in enumerate(article["paragraphs"]):
            page = files[0] if i == 0 else files[1 + (i - 1) // PER_PAGE]
            questions += [Question(qa["question"], [x["text"] for x in qa["answers"]], f"{name}/{page}")
                          for qa in paragraph["qas"]]
    return questions
