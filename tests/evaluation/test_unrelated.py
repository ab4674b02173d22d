"""Locality probes that name a stored correction's subject (mend.evaluation.unrelated)."""

from mend.evaluation.unrelated import naming_subjects


def test_a_probe_names_a_subject_only_as_a_whole_word_or_phrase():
    probes = ["The twin city of London is", "Snow is a citizen of", "Who founded the Legend of Zelda series?",
              "Londoners speak"]
    assert naming_subjects(probes, ["London", "Tizen", "the legend of zelda", None, " "]) == [True, False, True, False]


def test_no_subjects_name_nothing():
    assert naming_subjects(["The twin city of London is"], []) == [False]
