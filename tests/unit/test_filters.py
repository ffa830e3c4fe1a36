"""Search filters: ragtune's grammar translated to Milvus, and anything else refused by name."""

import pytest

from ragtune.core.filters import FilterError, to_milvus


@pytest.mark.parametrize("text, milvus", [
    ("", ""),
    ('doc_id like "policies/%"', 'doc_id like "policies/%"'),
    ('doc_id in ["a", \'b\'] and chunk_index >= 1', '(doc_id in ["a", "b"] and chunk_index >= 1)'),
    ("metadata.year >= 2024 or not (title == 'it''s')", None),
    ('metadata.lang == "de" or metadata.draft == false', '(metadata["lang"] == "de" or metadata["draft"] == false)'),
    ('title == "say \\"hi\\""', 'title == "say \\"hi\\""'),
    ('not (source != "x") AND chunk_index < 3', '(not ((source != "x")) and chunk_index < 3)'),
])
def test_the_grammar_translates_to_milvus(text, milvus):
    if milvus is None:
        with pytest.raises(FilterError):
            to_milvus(text)
    else:
        assert to_milvus(text) == milvus


@pytest.mark.parametrize("text, message", [
    ('text_match(text, "refund")', "unknown field 'text_match' at character 0"),
    ('doc_id == "a" || 1 == 1', "unexpected '|| 1 == 1' at character 14"),
    ("chunk_count > 2", "unknown field 'chunk_count'"),
    ('metadata["k"] == 1', "unknown field 'metadata'"),
    ("doc_id ==", "expected a value (a quoted string, a number, true or false), found the end of the filter"),
    ('chunk_index like "1%"', "chunk_index is a number: like compares strings"),
    ('doc_id == "a" doc_id == "b"', "expected and / or, or the end of the filter, found 'doc_id' at character 14"),
    ('(doc_id == "a"', "expected ')', found the end of the filter"),
    ('doc_id = "a"', "unexpected '= \"a\"' at character 7"),
    (" or ".join(['chunk_index == 1'] * 65), "more than 64 comparisons"),
])
def test_anything_else_is_refused_naming_the_problem(text, message):
    with pytest.raises(FilterError, match=None) as caught:
        to_milvus(text)
    assert message in str(caught.value)
