"""FEVER and wikitext edits, from small files written in their formats."""

from __future__ import annotations

import random

from mend.data import (
    LocalityProbe,
    detect_format,
    load_dataset,
    load_fever,
    load_wikitext,
)


def fever_line(i: int, answer: str, rephrases: list[str]) -> dict:
    # Field names as in MEND's data_classes/fever.py (De Cao et al.'s KILT FEVER).
    return {
        "id": f"claim-{i}",
        "input": f"Claim number {i} is a fact.",
        "output": [{"answer": answer, "provenance": [{"wikipedia_id": "1"}]}],
        "prediction": "REFUTES" if answer == "SUPPORTS" else "SUPPORTS",
        "alternatives": [answer],
        "filtered_rephrases": rephrases,
        "logit": -0.5,
    }


FEVER_LINES = [
    fever_line(0, "SUPPORTS", ["It is a fact: claim 0.", "Claim number 0 is a fact."]),
    fever_line(1, "REFUTES", ["Claim one is true."]),
    fever_line(2, "SUPPORTS", []),
    fever_line(3, "REFUTES", ["  Claim three holds.  "]),
]


def test_fever_mapping(write_json, check_conventions):
    path = write_json("fever-dev-kilt.jsonl", FEVER_LINES)
    assert detect_format(path) == "fever"
    ds = load_dataset(path)
    assert ds.report.ok and len(ds) == 4
    first = ds[0]
    assert first.record_id == "fever:claim-0"
    assert (first.prompt, first.target, first.kind) == (
        "Claim number 0 is a fact.",
        "True",
        "fact_check",
    )
    assert first.extra == {
        "label": True,
        "prediction": False,
        "alternatives": ["SUPPORTS"],
        "logit": -0.5,
    }
    # The rephrase equal to the claim is dropped, with a warning.
    assert first.rephrases == ("It is a fact: claim 0.",)
    assert [str(w) for w in ds.report.warnings] == [
        "fever-dev-kilt.jsonl[0].filtered_rephrases[1]: rephrase identical to the prompt dropped"
    ]
    assert ds[1].target == "False" and ds[1].extra["label"] is False
    assert ds[2].rephrases == () and ds[3].rephrases == ("Claim three holds.",)
    for record in ds:
        check_conventions(record)
        (probe,) = record.locality
        assert probe.prompt != record.prompt
        other = next(r for r in ds if r.prompt == probe.prompt)
        assert probe.answer == other.target  # answered with its own label word


def test_fever_locality_is_deterministic_and_order_independent(write_json):
    lines = [fever_line(i, "SUPPORTS" if i % 3 else "REFUTES", []) for i in range(12)]
    a = load_fever(write_json("a.jsonl", lines), n_locality=2)
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    b = load_fever(write_json("b.json", shuffled), n_locality=2)  # a JSON list works too
    by_id = {r.record_id: r.locality for r in b}
    assert all(len(r.locality) == 2 and by_id[r.record_id] == r.locality for r in a)
    assert a.content_hash == load_fever(write_json("c.jsonl", lines), n_locality=2).content_hash


def test_fever_single_claim_warns_about_locality(write_json):
    ds = load_fever(write_json("one.jsonl", FEVER_LINES[:1]))
    assert ds[0].locality == ()
    assert "locality claims available" in ds.report.warnings[-1].reason


WIKI_LINES = [
    {"context": "The castle was built in the twelfth century by", "continuation": "the Normans."},
    {
        "id": 7,
        "context": "Rainfall in the\nregion peaks in late summer",
        "continuation": "and autumn.",
    },
    {"context": "Alone", "continuation": "it stood."},
    {
        "context": "Its river carries sediment from the upper valley down",
        "continuation": "to the sea.",
    },
]


def test_wikitext_mapping(write_json, check_conventions):
    path = write_json("edits.jsonl", WIKI_LINES)
    assert detect_format(path) == "wikitext"
    ds = load_dataset(path)
    assert ds.report.ok and len(ds) == 4
    first = ds[0]
    assert (first.prompt, first.target, first.kind) == (
        WIKI_LINES[0]["context"],
        "the Normans.",
        "generation",
    )
    assert ds[1].record_id == "wikitext:7"
    for record in ds:
        check_conventions(record)
        if record.prompt == "Alone":
            continue
        (rephrase,) = record.rephrases
        # A proper suffix of the context, cut at a word, at most half the words gone.
        assert record.prompt.endswith(rephrase) and rephrase != record.prompt
        dropped = record.prompt[: -len(rephrase)].split()
        assert 1 <= len(dropped) <= len(record.prompt.split()) // 2
        # Locality: another passage, first word as prompt, the rest as answer.
        (probe,) = record.locality
        (source,) = [r for r in ds if r is not record and _cut_from(r.prompt, probe)]
        assert source.prompt != record.prompt
    # The one-word context gets no rephrase, with a warning, and is no locality source.
    alone = ds[2]
    assert alone.rephrases == ()
    assert any(w.index == 2 and w.field == "context" for w in ds.report.warnings)
    assert all(p.prompt != "Alone" for r in ds for p in r.locality)


def test_wikitext_is_deterministic(write_json):
    a = load_wikitext(write_json("a.jsonl", WIKI_LINES))
    b = load_wikitext(write_json("b.jsonl", list(reversed(WIKI_LINES))))
    assert {r.record_id: (r.rephrases, r.locality) for r in a} == {
        r.record_id: (r.rephrases, r.locality) for r in b
    }
    assert a.content_hash == load_wikitext(write_json("c.jsonl", WIKI_LINES)).content_hash


def _cut_from(passage: str, probe: LocalityProbe) -> bool:
    """Whether ``probe`` is ``passage`` split after its first word, spacing kept."""
    first = passage.split()[0]
    return probe.prompt == first and passage[len(first) :].strip() == probe.answer


def test_passage_spacing_survives(write_json):
    lines = [WIKI_LINES[1], {"context": "Two words", "continuation": "x"}]
    ds = load_wikitext(write_json("s.jsonl", lines))
    by_prompt = {r.prompt: r for r in ds}
    assert by_prompt["Two words"].locality == (
        LocalityProbe("Rainfall", "in the\nregion peaks in late summer"),
    )
    rephrase = by_prompt[WIKI_LINES[1]["context"]].rephrases[0]
    # 6 words: 1 to 3 of them dropped, the newline kept in the rest.
    assert rephrase in {
        "in the\nregion peaks in late summer",
        "the\nregion peaks in late summer",
        "region peaks in late summer",
    }
