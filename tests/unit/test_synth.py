"""The pure parts of `ragtune synth`: the answers picked from a chunk, the question cleaned from a reply,
the checks, near duplicates and the splits."""

from ragtune.core.metrics import normalize_answer
from ragtune.core.synth import (
    answer_candidates, clean_question, in_chunk, near_duplicates, question_problem, split_of, token_recall,
)

TESLA = ("Nikola Tesla (10 July 1856 – 7 January 1943) was a Serbian American inventor. He emigrated to the "
         "United States in 1884, where he worked for Thomas Edison. In 1887 he set up laboratories in New York. "
         "His patents on alternating current were licensed by George Westinghouse.")


def test_answers_are_names_numbers_and_dates_spread_over_the_sentences():
    picked = answer_candidates(TESLA, 4)
    assert len(picked) == 4 and all(in_chunk(a, TESLA) for a in picked)
    assert picked == ["Nikola Tesla", "United States", "1887", "George Westinghouse"]
    # a date is one answer, not its year alone; a sentence's first word alone is no name
    assert answer_candidates("Tesla was born on 10 July 1856 in Smiljan.", 3) == ["10 July 1856", "Smiljan"]
    assert "He" not in picked and "His" not in picked and "In" not in picked
    # fewer answers than sentences: spread over the chunk, one per sentence
    assert answer_candidates(TESLA, 2) == ["Nikola Tesla", "George Westinghouse"]
    assert answer_candidates(TESLA, 1) == answer_candidates(TESLA, 1)  # deterministic
    assert answer_candidates("a chunk with no names and no numbers at all.", 3) == []
    assert answer_candidates("Luther wrote of God's grace in Wittenberg.", 3) == ["God", "Wittenberg"]


def test_the_question_is_the_last_line_that_asks_without_prefixes_or_quotes():
    assert clean_question("What is the answer to this question?\nWhich year did Tesla reach New York?") == \
        "Which year did Tesla reach New York?"
    assert clean_question('Question: "Who licensed the patents?"') == "Who licensed the patents?"
    assert clean_question("1. Where was Tesla born?") == "Where was Tesla born?"
    assert clean_question("Tesla was an inventor.") is None


def test_a_question_must_stand_alone_and_not_give_its_answer_away():
    assert question_problem("Which country did Tesla emigrate to in 1884?", "United States") is None
    assert question_problem("What is the name of the city in the passage?", "New York") == "malformed"
    assert question_problem("What is the answer?", "1884") == "malformed"
    assert question_problem("Who?", "Tesla") == "malformed"
    assert question_problem("When did Tesla emigrate to the United States?", "United States") == "answer_in_question"
    assert question_problem("When did Tesla emigrate to the United States?", "1884") is None
    assert question_problem("What is the EU's role in the European Union?", "EU") == "answer_in_question"
    assert question_problem("What was Nikola Tesla's career?", "Nikola Tesla") == "answer_in_question"


def test_round_trip_recall_counts_the_answers_words_in_the_reply():
    assert token_recall("the United States", "He went to the United States.") == 1.0
    assert token_recall("George Westinghouse", "Westinghouse licensed them.") == 0.5
    assert token_recall("1884", "In 1887.") == 0.0


def test_near_duplicates_are_found_among_many_questions_by_their_word_sets():
    questions = ["Who licensed Tesla's patents?", "who licensed teslas patents", "Who licensed the patents of Tesla?",
                 "When was Tesla born?", "Where did Tesla set up laboratories?"]
    questions += [f"What happened in the year {y}?" for y in range(1800, 2000)]
    assert near_duplicates(questions, 0.8) == {1}
    # at 0.6 the "year" questions (4 of 6 words shared) are near duplicates of the first of them too
    sets = [set(normalize_answer(q).split()) for q in questions]
    kept, brute = [], set()
    for i, words in enumerate(sets):  # the same by brute force
        if any(len(words & sets[j]) / len(words | sets[j]) >= 0.6 for j in kept):
            brute.add(i)
        else:
            kept.append(i)
    assert near_duplicates(questions, 0.6) == brute and {1, 6} <= brute and 2 not in brute


def test_splits_keep_unseen_documents_whole_and_hold_out_questions_of_the_others():
    docs = [f"doc{i}" for i in range(400)]
    by_doc = {d: {split_of(d, f"{d}:q{j}", 0.25, 0.2, 0) for j in range(5)} for d in docs}
    unseen = [d for d, splits in by_doc.items() if "eval_unseen" in splits]
    assert all(by_doc[d] == {"eval_unseen"} for d in unseen)  # a document is unseen with all its questions
    assert 0.18 < len(unseen) / len(docs) < 0.32
    seen_splits = [split_of(d, f"{d}:q{j}", 0.25, 0.2, 0) for d in docs if d not in unseen for j in range(5)]
    assert 0.14 < seen_splits.count("eval_seen") / len(seen_splits) < 0.26
    assert split_of("doc1", "q", 0.25, 0.2, 1) in ("train", "eval_seen", "eval_unseen")
