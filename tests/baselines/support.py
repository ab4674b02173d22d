"""Facts with subjects and measurements for the MEMIT/AlphaEdit tests."""

import torch

from mend.data.records import EditRecord, LocalityProbe
from mend.models.tasks import per_example_nll

# The subject ends each prompt, so the value written at its last token feeds the first
# target token directly: a 4-block random model carries little from one token to another.
# Its states are tiny (norm well under 1), so the tests drop MEMIT's weight decay, which is
# relative to the state's squared norm and would hold every value at the unedited state.
FACTS = [
    ("The capital of France", "Rome", "France"),
    ("The mother tongue of Danielle", "English", "Danielle"),
]


def facts() -> list[EditRecord]:
    """Two facts the tiny tokenizer can spell, each with its subject in the prompt."""
    return [EditRecord(record_id=f"fact-{i}", prompt=p, target=t, subject=s,
                       rephrases=(f"What is {p.lower()}?",),
                       locality=(LocalityProbe("Water boils at", "100 degrees"),))
            for i, (p, t, s) in enumerate(FACTS)]


def target_nll(model, records) -> torch.Tensor:
    """Each record's mean NLL of its target after its prompt (teacher-forced)."""
    batch = model.task.batch([r.prompt for r in records], [r.target for r in records])
    with torch.no_grad():
        return per_example_nll(model.task.logits(model.model, batch), batch.scored_labels)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.model.named_parameters()}
