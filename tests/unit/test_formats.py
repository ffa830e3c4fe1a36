"""Every document format beyond text, HTML and PDF: reStructuredText (Sphinx pages), Jupyter
notebooks, docx, pptx, EPUB, csv and xlsx — text, title and sections arrive, headings as Markdown
so that chunking follows them; bad files are classified rejections; script text never arrives."""

import io
import json
import zipfile

import pytest

from ragtune.core.chunking import markdown_sections
from ragtune.core.documents import RejectReason
from ragtune.ingest.parsers import ParseOptions, parse_file
from ragtune.ingest.sources import FileEntry

LIMIT = 10**7

SPHINX_PAGE = """\
.. _returns:

==============
Returns policy
==============

.. toctree::
   :maxdepth: 2

   refunds
   exchanges

Items can be returned within **30 days**; see :ref:`the refund rules <refunds>` and
:func:`~brightwave.orders.start_return`.

.. note::

   Gift cards cannot be returned. Ask :doc:`support`.

Refunds
=======

.. code-block:: python
   :linenos:

   order.refund(days=5)

.. tab-set::

   .. tab-item:: Card

      Card refunds take 5 days.

   .. tab-item:: Voucher

      Voucher refunds are instant.

.. include:: /etc/passwd

.. raw:: html

   <script>alert("never indexed")</script>

.. literalinclude:: ../examples/refund.py

.. autoclass:: brightwave.orders.Order

+--------+------+
| Item   | Days |
+========+======+
| Aria   | 30   |
+--------+------+
"""


def parse(name: str, data: bytes, **options):
    return parse_file(FileEntry(f"/docs/{name}", name, len(data)), data, ParseOptions(LIMIT, **options))


def test_a_sphinx_page_arrives_as_its_rendered_text_with_its_sections():
    [doc], [] = parse("policies/returns.rst", SPHINX_PAGE.encode())
    assert doc.title == "Returns policy" and doc.doc_id == "policies/returns.rst"
    assert doc.text.startswith("# Returns policy\n\nItems can be returned within 30 days; see the refund rules and "
                               "brightwave.orders.start_return.")
    for expected in ("Gift cards cannot be returned. Ask support.", "## Refunds", "```python\norder.refund(days=5)\n```",
                     "Card refunds take 5 days.", "Voucher refunds are instant.", "Aria | 30"):
        assert expected in doc.text
    for never in ("toctree", "exchanges", "passwd", "root:", "script", "never indexed", "literalinclude",
                  "autoclass", ":ref:", "maxdepth", ":linenos:"):
        assert never not in doc.text  # navigation, includes, raw HTML and markup are not page text
    assert [s.splitlines()[0] for s in markdown_sections(doc.text)] == ["# Returns policy", "## Refunds"]


def test_a_notebook_gives_markdown_and_code_cells_and_its_outputs_when_asked():
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"language": "python", "name": "py3"}},
                "cells": [{"cell_type": "markdown", "source": ["# Pairing the Aria\n", "Hold the button."]},
                          {"cell_type": "code", "source": "aria.pair()", "outputs": [
                              {"output_type": "stream", "name": "stdout", "text": ["paired in 3 s\n"]},
                              {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=",
                                                                        "text/plain": "<Figure>"}}]},
                          {"cell_type": "raw", "source": "not rendered"}]}
    data = json.dumps(notebook).encode()
    [doc], [] = parse("guides/pairing.ipynb", data)
    assert doc.title == "Pairing the Aria"
    assert doc.text == "# Pairing the Aria\nHold the button.\n\n```python\naria.pair()\n```"
    [with_outputs], [] = parse("guides/pairing.ipynb", data, notebook_outputs=True)
    assert with_outputs.text.endswith("```\npaired in 3 s\n```\n\n```\n<Figure>\n```")
    assert "iVBOR" not in with_outputs.text
    [], [bad] = parse("guides/broken.ipynb", b'{"cells": "no"}')
    assert bad.reason == RejectReason.PARSE_ERROR and "not a Jupyter notebook" in bad.detail


def test_docx_pptx_and_epub_arrive_with_titles_headings_and_notes():
    from docx import Document as Docx
    from pptx import Presentation

    document = Docx()
    document.core_properties.title = "Returns policy"
    document.add_paragraph("Items can be returned within 30 days.")
    document.add_heading("Refunds", 1)
    document.add_paragraph("Refunds reach the card within 5 days.")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "Item", (0, 1): "Days", (1, 0): "Aria", (1, 1): "30"}.items():
        table.cell(row, col).text = text
    out = io.BytesIO()
    document.save(out)
    [doc], [] = parse("policies/returns.docx", out.getvalue())
    assert doc.title == "Returns policy" and "# Refunds\n\nRefunds reach the card within 5 days." in doc.text
    assert "| Aria | 30 |" in doc.text

    deck = Presentation()
    for title, body, notes in (("Roadmap", "Aria 2 ships in May", "mention the delay"),
                               ("Support", "Phone support opens on Sundays", "")):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text, slide.placeholders[1].text = title, body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    [doc], [] = parse("talks/q3.pptx", out.getvalue())
    assert [s.splitlines()[0] for s in markdown_sections(doc.text)] == ["# Roadmap", "# Support"]
    assert "Aria 2 ships in May" in doc.text and "mention the delay" in doc.text and "<!--" not in doc.text

    [doc], [] = parse("books/handbook.epub", _epub())
    assert doc.title == "The Aria handbook"
    assert "# Charging\n\nCharge the Aria for two hours." in doc.text and "# Pairing" in doc.text
    assert "alert" not in doc.text


def _epub() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as book:
        book.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        book.writestr("META-INF/container.xml", '<?xml version="1.0"?><container version="1.0" '
                      'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile '
                      'full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>')
        book.writestr("OEBPS/content.opf", '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" '
                      'version="3.0" unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
                      '<dc:title>The Aria handbook</dc:title><dc:identifier id="id">aria</dc:identifier></metadata>'
                      '<manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/><item id="c2" '
                      'href="c2.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="c1"/>'
                      '<itemref idref="c2"/></spine></package>')
        book.writestr("OEBPS/c1.xhtml", '<html xmlns="http://www.w3.org/1999/xhtml"><body><h1>Charging</h1><p>Charge '
                      'the Aria for two hours.</p><script>alert("x")</script></body></html>')
        book.writestr("OEBPS/c2.xhtml", '<html xmlns="http://www.w3.org/1999/xhtml"><body><h1>Pairing</h1><p>Hold '
                      'the button for five seconds.</p></body></html>')
    return out.getvalue()


def test_tables_are_a_document_per_sheet_or_per_row():
    from openpyxl import Workbook

    data = b"product,price,warranty\nAria,199,2 years\nBolt,49,\n,,\n"
    [doc], [] = parse("prices.csv", data)
    assert doc.doc_id == "prices.csv" and doc.title == "prices"
    assert doc.text == "product: Aria\nprice: 199\nwarranty: 2 years\n\nproduct: Bolt\nprice: 49"
    rows, [] = parse("prices.csv", data, table_documents="row")
    assert [(d.doc_id, d.title, d.text) for d in rows] == [
        ("prices.csv#2", "prices, row 2", "product: Aria\nprice: 199\nwarranty: 2 years"),
        ("prices.csv#3", "prices, row 3", "product: Bolt\nprice: 49")]

    book = Workbook()
    book.active.title = "Headphones"
    book.active.append(["model", "battery"])
    book.active.append(["Aria", 30])
    book.create_sheet("Empty")
    book.create_sheet("Speakers").append(["model"])
    book["Speakers"].append(["Bolt"])
    out = io.BytesIO()
    book.save(out)
    sheets, [] = parse("catalog.xlsx", out.getvalue())
    assert [(d.doc_id, d.title, d.text) for d in sheets] == [
        ("catalog.xlsx#Headphones", "catalog — Headphones", "model: Aria\nbattery: 30"),
        ("catalog.xlsx#Speakers", "catalog — Speakers", "model: Bolt")]
    rows, [] = parse("catalog.xlsx", out.getvalue(), table_documents="row")
    assert [d.doc_id for d in rows] == ["catalog.xlsx#Headphones:2", "catalog.xlsx#Speakers:2"]
    [], [empty] = parse("header-only.csv", b"a,b\n")
    assert empty.reason == RejectReason.NO_TEXT


@pytest.mark.parametrize("name", ["bad.docx", "bad.pptx", "bad.xlsx", "bad.epub"])
def test_a_broken_office_file_is_a_classified_rejection(name):
    [], [not_zip] = parse(name, b"plain text, not a zip container")
    assert not_zip.reason == RejectReason.PARSE_ERROR and "not a zip container" in not_zip.detail
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("word/document.xml", "<not xml")
    [], [broken] = parse(name, out.getvalue())
    assert broken.reason == RejectReason.PARSE_ERROR
    [], [empty] = parse(name, b"")
    assert empty.reason == RejectReason.EMPTY


def test_myst_markdown_arrives_as_its_readers_see_it():
    page = """(returns)=
# Returns policy

See {ref}`the refund rules <refunds>` and {py:func}`~brightwave.start_return`.

::::{tab-set}
:::{tab-item} Card
:sync: card
Card refunds take 5 days.
:::
::::

```{note}
Gift cards cannot be returned.
```

```{code-block} python
:linenos:
order.refund()
```
"""
    [doc], [] = parse("returns.md", page.encode())
    assert doc.title == "Returns policy"
    assert doc.text == ("# Returns policy\n\nSee the refund rules and brightwave.start_return.\n\nCard\nCard refunds take "
                        "5 days.\n\nGift cards cannot be returned.\n\n```python\norder.refund()\n```")
