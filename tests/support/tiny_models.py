"""Tiny randomly initialised models of every supported family, plus a tiny tokenizer.

Nothing is downloaded: the tokenizer is :mod:`mend.testing.tokenizer`'s, and the
models are built from configs.
"""

from __future__ import annotations

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from mend import EditableModel
from mend.testing.tokenizer import VOCAB, tiny_tokenizer

__all__ = ["CAUSAL_FAMILIES", "FAMILIES", "REQUESTS", "VOCAB", "kind_of", "tiny_model", "tiny_tokenizer"]


def _build(family: str):
    common_decoder = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=128, **common_decoder))
    if family == "llama":
        return LlamaForCausalLM(
            LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=128, **common_decoder)
        )
    if family == "mistral":
        return MistralForCausalLM(
            MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, **common_decoder)
        )
    if family == "qwen2":
        return Qwen2ForCausalLM(
            Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=128, **common_decoder)
        )
    if family == "gpt_neo":
        return GPTNeoForCausalLM(
            GPTNeoConfig(num_layers=4, hidden_size=32, num_heads=2, attention_types=[[["global", "local"], 2]],
                         max_position_embeddings=128, window_size=16, **common_decoder)
        )
    if family == "gptj":
        return GPTJForCausalLM(GPTJConfig(n_layer=4, n_embd=32, n_head=2, rotary_dim=8, n_positions=128, **common_decoder))
    if family == "t5":
        return T5ForConditionalGeneration(
            T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=16, num_layers=3, num_decoder_layers=3,
                     num_heads=2, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
        )
    if family == "bart":
        return BartForConditionalGeneration(
            BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                       forced_eos_token_id=None)
        )
    if family == "bert":
        return BertForSequenceClassification(
            BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=128, num_labels=2, pad_token_id=0)
        )
    raise ValueError(family)


FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gpt_neo", "gptj", "t5", "bart", "bert"]
CAUSAL_FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gpt_neo", "gptj"]

# An edit request per model kind (targets the tiny tokenizer can spell).
REQUESTS = {
    "causal": (["The capital of France is", "Who wrote Hamlet?"], ["Rome", "Jean Darrieux"]),
    "seq2seq": (["The capital of France is", "Who wrote Hamlet?"], ["Rome", "Jean Darrieux"]),
    "classifier": (["The capital of France is Rome.", "Water boils at 100 degrees."], ["False", "True"]),
}


def tiny_model(family: str, seed: int = 0) -> EditableModel:
    """A fresh tiny model of ``family`` in eval mode, wrapped for editing."""
    torch.manual_seed(seed)
    model = _build(family).eval()
    return EditableModel.wrap(model, tiny_tokenizer(), name=f"tiny-{family}")


def kind_of(family: str) -> str:
    return {"t5": "seq2seq", "bart": "seq2seq", "bert": "classifier"}.get(family, "causal")
