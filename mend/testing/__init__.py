"""Tiny, download-free models, tokenizers and data for tests and benchmarks.

    tokenizer   a byte-level BPE tokenizer trained in memory on a few sentences
    synthetic   editing records spelled in that tokenizer's vocabulary
    workload    a meta-training run on disk: a random LLaMA folder, zsRE files, a config
    s3          an in-process moto S3 server on 127.0.0.1 (needs the dev extra)

The test suite and ``bench/`` both build on these (neither imports the other).
"""
