"""The bundled knowledge base is internally consistent: every answer is in its document."""

import json
import re
from collections import Counter

from ragtune.ingest.parsers import ParseOptions, parse_file
from ragtune.ingest.sources import expand_sources, read_bytes
from tests.conftest import KB_DIR

QS = KB_DIR.parent


def _docs(root):
    out = {}
    for entry in expand_sources([str(root)]):
        docs, rejects = parse_file(entry, read_bytes(entry, 10**7), ParseOptions(10**7))
        assert not rejects, rejects
        out[entry.rel] = docs[0].text
    return out


def _norm(text):
    return " ".join(re.sub(r"[^\w$.:+@-]", " ", text.lower()).split())


def test_kb_has_mixed_formats():
    formats = Counter(p.suffix for p in KB_DIR.rglob("*") if p.is_file())
    assert sum(formats.values()) >= 25
    assert {".md", ".html", ".txt", ".pdf"} <= set(formats)


def test_every_answer_is_in_its_document():
    docs = _docs(KB_DIR)
    qa = [json.loads(l) for l in (QS / "qa.jsonl").read_text().splitlines()]
    assert len(qa) >= 100 and len({q["id"] for q in qa}) == len(qa)
    for q in qa:
        assert q["doc_id"] in docs, q
        answer = q["answer"]
        if answer.split(",")[0] in ("yes", "no"):
            continue  # yes/no answers paraphrase the document
        assert _norm(answer) in _norm(docs[q["doc_id"]]), q


def test_update_set_changes_exactly_the_listed_facts():
    before, after = _docs(KB_DIR), _docs(QS / "kb_updates")
    updates = [json.loads(l) for l in (QS / "updates.jsonl").read_text().splitlines()]
    assert len(updates) >= 20 and set(after) <= set(before)
    assert {u["doc_id"] for u in updates} == set(after)
    for u in updates:
        assert before[u["doc_id"]] != after[u["doc_id"]]
        # a string, or phrasings of the same fact with the canonical one first
        old, new = ([a] if isinstance(a, str) else a for a in (u["answer_before"], u["answer_after"]))
        if new[0].split(",")[0] != "yes":
            assert _norm(new[0]) in _norm(after[u["doc_id"]])
            assert _norm(old[0]) in _norm(before[u["doc_id"]])
        assert not {_norm(p) for p in old} & {_norm(p) for p in new}, u
