"""Generic text for the MEMIT/AlphaEdit tests."""

import random

import pytest

from mend.baselines import SecondMoments
from mend.testing.tokenizer import CORPUS


@pytest.fixture
def moments():
    """C from sentences of the tiny tokenizer's words (varied enough that C has full
    rank in the tiny models' MLPs), in memory only."""
    rng = random.Random(0)
    words = " ".join(CORPUS).split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 16))) for _ in range(80)]
    return SecondMoments(CORPUS + texts, directory=False)
