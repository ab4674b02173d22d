"""Every loader on the real benchmark files in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mend.data import (
    LocalityProbe,
    MalformedRecordError,
    detect_format,
    load_counterfact,
    load_counterfact_flat,
    load_dataset,
    load_wikibio,
    load_zsre,
)

ZSRE_TRAIN = "zsre/zsre_mend_train-1k.json"
ZSRE_EVAL = "zsre/zsre_mend_eval-dev-537.json"
CF_ROME = "counterfact/counterfact_rome_500.json"
CF_TRAIN = "counterfact/counterfact-train.json"
CF_VAL = "counterfact/counterfact-val.json"
WB_TRAIN = "wikibio/hallucination-train.json"
WB_EDIT = "wikibio/hallucination-edit.json"


@pytest.mark.parametrize(
    "name, fmt, n_read",
    [
        (ZSRE_TRAIN, "zsre", 1000),
        (ZSRE_EVAL, "zsre", 537),
        (CF_ROME, "counterfact", 500),
        (CF_TRAIN, "counterfact_flat", 10000),
        (CF_VAL, "counterfact_flat", 1919),
        (WB_TRAIN, "wikibio", 306),
        (WB_EDIT, "wikibio", 600),
    ],
)
def test_counts_and_detection(shared_data: Path, check_conventions, name, fmt, n_read):
    assert detect_format(shared_data / name) == fmt
    ds = load_dataset(shared_data / name)
    report = ds.report
    assert (report.format, report.n_read) == (fmt, n_read)
    assert report.n_loaded + report.n_skipped == report.n_read == n_read
    assert len(report.errors) == report.n_skipped and len(ds) == report.n_loaded
    assert len({r.record_id for r in ds}) == len(ds)
    for record in ds:
        check_conventions(record)


def test_zsre_train_two_records_have_empty_alt(shared_data: Path):
    # Records 534 and 723 of the released file have alt == "": nothing to edit to.
    ds = load_zsre(shared_data / ZSRE_TRAIN)
    assert ds.report.n_loaded == 998
    assert [str(e) for e in ds.report.errors] == [
        "zsre_mend_train-1k.json[534].alt: empty string",
        "zsre_mend_train-1k.json[723].alt: empty string",
    ]
    with pytest.raises(MalformedRecordError) as info:
        load_zsre(shared_data / ZSRE_TRAIN, on_error="raise")
    assert info.value.error.index == 534 and info.value.error.field == "alt"


def test_zsre_mapping(shared_data: Path):
    ds = load_zsre(shared_data / ZSRE_TRAIN, limit=200)
    assert ds.report.n_read == 200
    first = ds[0]
    assert first.prompt == "What is the product made by UniFirst?"
    assert first.target == "unmanned aircraft"
    assert first.rephrases == ("What will be the product of UniFirst?",)
    # "nq question: john goodman's ..." -> MEND's NQ preprocessing.
    assert first.locality == (
        LocalityProbe("John goodman's character in the big lebowski?", "Walter Sobchak"),
    )
    assert (first.old_target, first.subject, first.kind) == ("uniform", "UniFirst", "qa")
    assert first.extra == {"pred": "uniform", "answers": ["uniform"]}
    # Record 174's alt is " Captain Universe" in the file: stripped.
    by_prompt = {r.prompt: r for r in ds}
    assert by_prompt["In which fictional universe does Captain Universe exist?"].target == (
        "Captain Universe"
    )


def test_zsre_eval_keeps_portability(shared_data: Path):
    first = load_zsre(shared_data / ZSRE_EVAL, limit=1)[0]
    assert first.target == "2006" and first.old_target == "1998"
    assert first.extra["portability"]["New Answer"] == "Athletics"


def test_zsre_train_and_eval_are_disjoint(shared_data: Path):
    train = {r.record_id for r in load_zsre(shared_data / ZSRE_TRAIN)}
    dev = {r.record_id for r in load_zsre(shared_data / ZSRE_EVAL)}
    assert not train & dev


def test_counterfact_rome_mapping(shared_data: Path):
    ds = load_counterfact(shared_data / CF_ROME, limit=3)
    first = ds[0]
    assert first.record_id == "counterfact:20952"
    assert first.prompt == "Angola is located in"
    assert (first.target, first.old_target, first.subject) == ("Antarctica", "Africa", "Angola")
    assert first.kind == "counterfact"
    assert first.rephrases[1] == (
        "Last updated on 4 February 2017. Angola is a part of the continent of"
    )
    assert len(first.locality) == 10
    assert first.locality[0] == LocalityProbe(
        "South Africa is a part of the continent of", "Africa"
    )
    assert all(p.answer == "Africa" for p in first.locality)
    assert first.extra["relation_id"] == "P30" and first.extra["target_new_id"] == "Q51"
    assert len(first.extra["attribute_prompts"]) == 10


def test_counterfact_flat_mapping(shared_data: Path):
    ds = load_counterfact_flat(shared_data / CF_TRAIN, limit=50)
    assert ds.report.n_read == 50
    first = ds[0]
    assert first.record_id == "counterfact:2"
    assert (first.prompt, first.target, first.old_target) == ("Toko Yasuda, the", "piano", "guitar")
    assert first.rephrases == ("Toko Yasuda is incredible at",)
    assert first.locality == (LocalityProbe("John Lennon performs on the", "guitar"),)
    assert first.subject == "Toko Yasuda" and first.kind == "counterfact"


def test_counterfact_flat_rephrase_equal_to_prompt_is_warned(shared_data: Path):
    ds = load_counterfact_flat(shared_data / CF_TRAIN)
    warned = [w for w in ds.report.warnings if w.field == "rephrase_prompt"]
    assert len(warned) == 13  # 13 records whose rephrase_prompt is their prompt
    assert all(not ds[0].rephrases or True for _ in warned)
    assert sum(1 for r in ds if not r.rephrases) == 13


def test_counterfact_overlap_between_files(shared_data: Path):
    # The flat train and val files share no case; but 261 of the ROME 500 cases
    # are also in them, as the same edit. The shared "counterfact:" id prefix is
    # what lets callers see (and remove) that overlap.
    rome = {r.record_id: r for r in load_counterfact(shared_data / CF_ROME)}
    train = {r.record_id: r for r in load_counterfact_flat(shared_data / CF_TRAIN)}
    val = {r.record_id: r for r in load_counterfact_flat(shared_data / CF_VAL)}
    assert not train.keys() & val.keys()
    assert len(rome.keys() & train.keys()) == 216
    assert len(rome.keys() & val.keys()) == 45
    for flat in (train, val):
        for key in rome.keys() & flat.keys():
            a, b = rome[key], flat[key]
            assert (a.prompt, a.target, a.old_target) == (b.prompt, b.target, b.old_target)


def test_wikibio_mapping_and_empty_locality(shared_data: Path):
    ds = load_wikibio(shared_data / WB_EDIT)
    first = ds[0]
    assert first.prompt.startswith("This is a Wikipedia passage about carole gist.")
    assert first.target.startswith("She was also the first contestant from Michigan")
    assert first.kind == "generation" and first.subject == "carole gist"
    assert first.locality[0].answer.startswith("l print or plan?")
    # Seven records have locality_ground_truth == "": edit kept, probe dropped.
    warned = [w for w in ds.report.warnings if w.field == "locality_ground_truth"]
    assert [w.index for w in warned] == [86, 90, 171, 172, 238, 314, 432]
    assert all(not ds[i].locality for i in (86, 90, 171))


def test_content_hash_is_pinned(shared_data: Path):
    # Pinned on purpose: a change here means every recorded dataset hash changes,
    # which must be a deliberate decision (bump HASH_SCHEMA), not a side effect.
    ds = load_zsre(shared_data / ZSRE_EVAL)
    assert ds.content_hash == load_zsre(shared_data / ZSRE_EVAL).content_hash
    assert ds.content_hash == PINNED_ZSRE_EVAL_HASH


PINNED_ZSRE_EVAL_HASH = "979849424e931cc4052c1d8bfe461ed35ea0c36a97a1eae3bb540a801b374fd7"
