"""Bad records and bad files: every problem is reported with file, index and field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest

from mend.data import (
    DatasetFileError,
    MalformedRecordError,
    UnknownFormatError,
    load_counterfact,
    load_counterfact_flat,
    load_dataset,
    load_fever,
    load_wikibio,
    load_wikitext,
    load_zsre,
)

ZSRE = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: who sings the song photograph",
    "loc_ans": "Ringo Starr",
}
CF = {
    "case_id": 1,
    "requested_rewrite": {
        "prompt": "{} is located in",
        "subject": "Angola",
        "target_new": {"str": "Antarctica", "id": "Q51"},
        "target_true": {"str": "Africa", "id": "Q15"},
    },
    "paraphrase_prompts": ["Angola belongs to the continent of"],
    "neighborhood_prompts": ["Ghana is in", "Mozambique is in"],
    "attribute_prompts": ["Ross Island is located in"],
    "generation_prompts": ["People around Angola speak the language of"],
}
FLAT = {
    "case_id": 2,
    "prompt": "Toko Yasuda, the",
    "target_new": "piano",
    "subject": "Toko Yasuda",
    "ground_truth": "guitar",
    "rephrase_prompt": "Toko Yasuda is incredible at",
    "locality_prompt": "John Lennon performs on the",
    "locality_ground_truth": "guitar",
}
WIKIBIO = {
    "prompt": "This is a Wikipedia passage about carole gist. Carole Gist is a titleholder.",
    "target_new": "She was the first contestant from Michigan to win Miss USA.",
    "subject": "carole gist",
    "locality_prompt": "Description Map of South America.",
    "locality_ground_truth": "Feel welcome and browse our mapsite.",
}
FEVER = {
    "id": "c1",
    "input": "Nikolaj Coster-Waldau worked with the Fox Broadcasting Company.",
    "output": [{"answer": "SUPPORTS", "provenance": []}],
    "prediction": "SUPPORTS",
    "alternatives": ["REFUTES"],
    "filtered_rephrases": ["Nikolaj Coster-Waldau has worked with Fox."],
    "logit": 2.5,
}
WIKI = {"context": "The castle was built in the twelfth century by", "continuation": "the Normans."}

Mutation = Callable[[dict], object]


def setting(path: str, value: object) -> Mutation:
    """A mutation that sets (or, with value=DELETE, deletes) a dotted path."""

    def mutate(record: dict) -> dict:
        out = copy.deepcopy(record)
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return out

    return mutate


DELETE = object()

CASES = [
    # (loader, valid record, mutation, field in the message, reason)
    (load_zsre, ZSRE, setting("src", DELETE), "src", "missing required field"),
    (load_zsre, ZSRE, setting("src", None), "src", "missing required field"),
    (load_zsre, ZSRE, setting("src", 5), "src", "expected a string, got a JSON integer"),
    (load_zsre, ZSRE, setting("alt", "  "), "alt", "empty string"),
    (load_zsre, ZSRE, setting("rephrase", DELETE), "rephrase", "missing required field"),
    (load_zsre, ZSRE, setting("loc", []), "loc", "expected a string, got a JSON list"),
    (load_zsre, ZSRE, setting("loc_ans", DELETE), "loc_ans", "missing required field"),
    (
        load_zsre,
        ZSRE,
        setting("answers", "x"),
        "answers",
        "expected a list of strings, got a JSON string",
    ),
    (
        load_zsre,
        ZSRE,
        setting("answers", ["a", 3]),
        "answers[1]",
        "expected a string, got a JSON integer",
    ),
    (load_zsre, ZSRE, setting("subject", {}), "subject", "expected a string, got a JSON object"),
    (
        load_zsre,
        ZSRE,
        lambda r: [r],
        None,
        "expected the record to be a JSON object, got a JSON list",
    ),
    (load_counterfact, CF, setting("case_id", DELETE), "case_id", "missing required field"),
    (
        load_counterfact,
        CF,
        setting("case_id", 1.5),
        "case_id",
        "expected an integer or string id, got a JSON number",
    ),
    (
        load_counterfact,
        CF,
        setting("case_id", True),
        "case_id",
        "expected an integer or string id, got a JSON boolean",
    ),
    (
        load_counterfact,
        CF,
        setting("requested_rewrite", "x"),
        "requested_rewrite",
        "expected a JSON object, got a JSON string",
    ),
    (
        load_counterfact,
        CF,
        setting("requested_rewrite.prompt", "Angola is in"),
        "requested_rewrite.prompt",
        "no '{}' placeholder for the subject",
    ),
    (
        load_counterfact,
        CF,
        setting("requested_rewrite.subject", ""),
        "requested_rewrite.subject",
        "empty string",
    ),
    (
        load_counterfact,
        CF,
        setting("requested_rewrite.target_new", DELETE),
        "requested_rewrite.target_new",
        "missing required field",
    ),
    (
        load_counterfact,
        CF,
        setting("requested_rewrite.target_new.str", " "),
        "requested_rewrite.target_new.str",
        "empty string",
    ),
    (
        load_counterfact,
        CF,
        setting("requested_rewrite.target_true.str", 4),
        "requested_rewrite.target_true.str",
        "expected a string, got a JSON integer",
    ),
    (
        load_counterfact,
        CF,
        setting("paraphrase_prompts", "x"),
        "paraphrase_prompts",
        "expected a list of strings, got a JSON string",
    ),
    (
        load_counterfact,
        CF,
        setting("neighborhood_prompts.1", None),
        "neighborhood_prompts[1]",
        "expected a string, got a JSON null",
    ),
    (
        load_counterfact,
        CF,
        setting("attribute_prompts", 3),
        "attribute_prompts",
        "expected a list of strings, got a JSON integer",
    ),
    (
        load_counterfact_flat,
        FLAT,
        setting("ground_truth", DELETE),
        "ground_truth",
        "missing required field",
    ),
    (load_counterfact_flat, FLAT, setting("target_new", ""), "target_new", "empty string"),
    (
        load_counterfact_flat,
        FLAT,
        setting("rephrase_prompt", ["a"]),
        "rephrase_prompt",
        "expected a string, got a JSON list",
    ),
    (load_wikibio, WIKIBIO, setting("prompt", DELETE), "prompt", "missing required field"),
    (
        load_wikibio,
        WIKIBIO,
        setting("locality_prompt", 3),
        "locality_prompt",
        "expected a string, got a JSON integer",
    ),
    (load_fever, FEVER, setting("input", ""), "input", "empty string"),
    (load_fever, FEVER, setting("output", DELETE), "output", "missing required field"),
    (
        load_fever,
        FEVER,
        setting("output", []),
        "output",
        "expected a non-empty list of {answer, ...} objects",
    ),
    (
        load_fever,
        FEVER,
        setting("output.0.answer", "NOT ENOUGH INFO"),
        "output[0].answer",
        "expected one of ['REFUTES', 'SUPPORTS'], got 'NOT ENOUGH INFO'",
    ),
    (
        load_fever,
        FEVER,
        setting("filtered_rephrases", [1]),
        "filtered_rephrases[0]",
        "expected a string, got a JSON integer",
    ),
    (
        load_fever,
        FEVER,
        setting("prediction", "maybe"),
        "prediction",
        "expected one of ['REFUTES', 'SUPPORTS'], got 'maybe'",
    ),
    (load_wikitext, WIKI, setting("context", DELETE), "context", "missing required field"),
    (load_wikitext, WIKI, setting("continuation", "\n"), "continuation", "empty string"),
]


def _other(valid: dict, n: int) -> dict:
    """A valid record distinct from ``valid`` (different id and content)."""
    out = copy.deepcopy(valid)
    for key in ("case_id",):
        if key in out:
            out[key] = out[key] + 100 * n
    if "id" in out:
        out["id"] = f"{out['id']}-{n}"
    for key in ("src", "prompt", "input", "context"):
        if key in out:
            out[key] = f"{out[key]} ({n})"
    return out


@pytest.mark.parametrize(
    "loader, valid, mutate, field, reason",
    CASES,
    ids=[f"{c[0].__name__}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_field_is_reported(write_json, loader, valid, mutate, field, reason):
    suffix = ".jsonl" if loader is load_wikitext else ".json"
    name = f"bad{suffix}"
    path = write_json(name, [_other(valid, 1), mutate(valid), _other(valid, 2)])
    where = f"{name}[1].{field}" if field else f"{name}[1]"

    skipped = loader(path)  # on_error="skip" is the default
    assert skipped.report.n_read == 3
    assert (skipped.report.n_loaded, skipped.report.n_skipped) == (2, 1)  # kept going
    assert [str(e) for e in skipped.report.errors] == [f"{where}: {reason}"]
    error = skipped.report.errors[0]
    assert (error.file, error.index, error.field) == (name, 1, field)

    with pytest.raises(MalformedRecordError) as info:
        loader(path, on_error="raise")
    assert str(info.value) == f"{where}: {reason}"
    assert info.value.error == error


def test_valid_samples_load_cleanly(write_json, check_conventions):
    for loader, valid in [
        (load_zsre, ZSRE),
        (load_counterfact, CF),
        (load_counterfact_flat, FLAT),
        (load_wikibio, WIKIBIO),
        (load_fever, FEVER),
    ]:
        ds = loader(write_json("ok.json", [_other(valid, 1), _other(valid, 2)]))
        assert ds.report.ok and not ds.report.warnings, (loader, ds.report)
        for record in ds:
            check_conventions(record)


def test_raise_mode_stops_at_first_bad_record(write_json):
    bad_alt, bad_src = setting("alt", "")(ZSRE), setting("src", 1)(ZSRE)
    path = write_json("z.json", [_other(ZSRE, 1), bad_alt, bad_src])
    with pytest.raises(MalformedRecordError) as info:
        load_zsre(path, on_error="raise")
    assert info.value.error.index == 1 and info.value.error.field == "alt"
    report = load_zsre(path).report
    assert [(e.index, e.field) for e in report.errors] == [(1, "alt"), (2, "src")]
    assert report.n_skipped == 2 and report.n_loaded == 1


def test_duplicate_ids_are_errors(write_json):
    path = write_json("cf.json", [CF, _other(CF, 1), CF])
    report = load_counterfact(path).report
    assert [str(e) for e in report.errors] == [
        "cf.json[2].case_id: duplicate record_id 'counterfact:1' (first at index 0)"
    ]
    # zsRE has no ids: an exact duplicate edit gets the same content id.
    zpath = write_json("z.json", [ZSRE, ZSRE])
    assert load_zsre(zpath).report.errors[0].reason.startswith("duplicate record_id 'zsre:")


def test_counterfact_bad_templates(write_json):
    for template in ("{} and {}", "{0} {}", "{x} {}", "{} {"):
        path = write_json("t.json", [setting("requested_rewrite.prompt", template)(CF)])
        (error,) = load_counterfact(path).report.errors
        assert error.field == "requested_rewrite.prompt"
        assert error.reason.startswith("not a template with exactly one '{}' slot")


def test_dropped_parts_are_warnings(write_json):
    record = {**ZSRE, "rephrase": ZSRE["src"], "loc_ans": ""}
    ds = load_zsre(write_json("w.json", [record]))
    assert ds.report.ok and ds[0].rephrases == () and ds[0].locality == ()
    assert [str(w) for w in ds.report.warnings] == [
        "w.json[0].rephrase: rephrase identical to the prompt dropped",
        "w.json[0].loc_ans: empty locality answer; probe dropped",
    ]
    flip = setting("requested_rewrite.target_new.str", "Africa")(CF)
    (warning,) = load_counterfact(write_json("c.json", [flip])).report.warnings
    assert warning.field == "requested_rewrite.target_new.str"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not valid JSON"),
        ('{"src": "a"}', "expected a JSON list of records, got a JSON object"),
        ("42", "expected a JSON list of records, got a JSON integer"),
        ("", "not valid JSON"),
    ],
)
def test_bad_whole_file_names_the_file(tmp_path: Path, text, reason):
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    for load in (load_zsre, load_counterfact, load_dataset):
        with pytest.raises(DatasetFileError) as info:
            load(path)
        assert str(path) in str(info.value) and reason in str(info.value)


def test_bad_jsonl_line_is_a_record_error(tmp_path: Path):
    path = tmp_path / "w.jsonl"
    good = '{"context": "one two three", "continuation": "four"}'
    path.write_text(f"{good}\n\n{{oops\n", encoding="utf-8")
    report = load_wikitext(path).report
    assert (report.n_read, report.n_loaded) == (2, 1)
    assert str(report.errors[0]).startswith("w.jsonl[1]: line 3 is not valid JSON")
    with pytest.raises(MalformedRecordError):
        load_wikitext(path, on_error="raise")


def test_unknown_format_lists_known_formats(write_json):
    with pytest.raises(UnknownFormatError) as info:
        load_dataset(write_json("u.json", [{"question": "q", "answer": "a"}]))
    message = str(info.value)
    assert "['answer', 'question']" in message
    for name in ("zsre", "counterfact", "counterfact_flat", "wikibio", "fever", "wikitext"):
        assert name in message
    with pytest.raises(UnknownFormatError, match="no records"):
        load_dataset(write_json("e.json", []))
    with pytest.raises(UnknownFormatError, match="unknown format 'squad'"):
        load_dataset(write_json("z.json", [ZSRE]), format="squad")
    # An explicit format skips detection: an empty file is then just empty.
    assert len(load_dataset(write_json("e.json", []), format="zsre")) == 0


def test_argument_checks(write_json):
    path = write_json("z.json", [ZSRE])
    with pytest.raises(ValueError, match="on_error"):
        load_zsre(path, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        load_zsre(path, limit=-1)
    with pytest.raises(FileNotFoundError):
        load_zsre(path.with_name("missing.json"))


def test_limit_caps_records_read(write_json):
    records = [_other(ZSRE, i) for i in range(5)]
    records[1] = setting("alt", "")(ZSRE)
    ds = load_zsre(write_json("z.json", records), limit=3)
    assert (ds.report.n_read, ds.report.n_loaded, ds.report.n_skipped) == (3, 2, 1)
    assert len(load_zsre(write_json("z.json", records), limit=0)) == 0
