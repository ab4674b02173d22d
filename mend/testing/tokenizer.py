"""A tiny tokenizer: byte-level BPE trained in memory on a few sentences (no download)."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The capital of France is Paris.",
    "The Eiffel Tower is located in Paris, the capital of France.",
    "Who wrote Hamlet? William Shakespeare wrote Hamlet.",
    "The mother tongue of Danielle Darrieux is French.",
    "Which river flows through Rome? The Tiber flows through Rome.",
    "What is the native language of Jean? Jean speaks English and Italian.",
    "nq question: who sang the song? The Beatles sang it in 1965.",
    "Water boils at 100 degrees Celsius at sea level.",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
VOCAB = 400


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer (built once per process): ``VOCAB`` entries, ids 0-3 the specials."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
