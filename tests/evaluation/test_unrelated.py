"""Locality probes that name a stored correction's subject (mend.evaluation.unrelated)."""

from mend.data.records import EditRecord
from mend.evaluation.unrelated import asking_stored_facts, naming_subjects


def test_a_probe_names_a_subject_only_as_a_whole_word_or_phrase():
    probes = ["The twin city of London is", "Snow is a citizen of", "Who founded the Legend of Zelda series?",
              "Londoners speak"]
    assert naming_subjects(probes, ["London", "Tizen", "the legend of zelda", None, " "]) == [True, False, True, False]


def test_no_subjects_name_nothing():
    assert naming_subjects(["The twin city of London is"], []) == [False]


def test_a_probe_asks_a_stored_fact_when_it_names_the_subject_and_expects_the_replaced_answer():
    stored = [EditRecord("a", "Seoul is a twin city of", "Athens", subject="Seoul", old_target="Sydney"),
              EditRecord("b", "Andrea Pirlo, the", "baseball", subject="Andrea Pirlo", old_target="soccer"),
              EditRecord("c", "Who wrote it?", "Ann")]  # no subject, no old target: asks nothing
    probes = [("The twin city of  seoul is", "Sydney"),  # the corrected fact itself: must change
              ("Seoul is located in the country of", "South Korea"),  # another fact about Seoul: must stay
              ("Francesco Totti professionally plays the sport", "soccer"),  # same answer, other subject
              ("Who wrote it?", "Ann")]
    assert asking_stored_facts(probes, stored) == [True, False, False, False]
    assert asking_stored_facts(probes, []) == [False] * 4
