"""Flow ``prepare-data``: validate, split, hash and store the editing data.

    python -m flows.prepare_data [--config configs/pipeline-default.yaml] [--data FILE_OR_S3 ...]

Malformed records are counted and reported (file, index, field, reason) in a Prefect
table artifact and in ``datasets/<input_hash>/report.json``; too many of them fail the
flow. The result is cached on the hash of the input files and settings: preparing
the same inputs again returns the stored manifest without redoing the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.common import (
    PERSIST,
    TRANSIENT,
    ConfigArg,
    load_config,
    logger,
    markdown,
    md_table,
    store_for,
    table,
)
from mend.pipeline import data as pdata
from mend.pipeline.training_runs import short_hash


@task(name="resolve-sources", **TRANSIENT)
def resolve_sources(sources: list[str], cache_dir: str) -> list[str]:
    """Local paths for every source (S3 objects are downloaded; S3 hiccups are retried)."""
    paths = [str(pdata.resolve_source(s, cache_dir)) for s in sources]
    for source, path in zip(sources, paths, strict=True):
        logger().info("source %s -> %s", source, path)
    return paths


@task(name="hash-inputs")
def hash_inputs(paths: list[str], config: dict[str, Any]) -> str:
    cfg = load_config(config)
    return pdata.input_hash([Path(p) for p in paths], cfg.data)


def _cache_key(_context, parameters: dict[str, Any]) -> str:
    """Same inputs, same store: the stored manifest is the answer (no re-validation)."""
    return f"prepare-{parameters['in_hash']}-{short_hash(parameters['store_uri'])}"


@task(name="build-dataset", cache_key_fn=_cache_key, **TRANSIENT, **PERSIST)
def build_dataset(in_hash: str, store_uri: str, paths: list[str], config: dict[str, Any]) -> dict[str, Any]:
    """Validate and split the inputs and write them to the store (skipped if already there)."""
    cfg = load_config(config)
    store = store_for(store_uri)
    found = pdata.find_prepared(store, in_hash)
    if found is not None:
        logger().info("dataset %s already prepared in %s", in_hash, store.uri)
        return found
    validated = pdata.validate_sources([Path(p) for p in paths], cfg.data)
    splits = pdata.split_dataset(validated.records, cfg.data, validated.pins)
    manifest = pdata.write_prepared(store, in_hash, splits, validated, [s.path for s in cfg.data.sources])
    logger().info("prepared %s: %s (%d rejected of %d read)", in_hash, manifest["counts"],
                  validated.n_rejected, validated.n_read)
    return manifest


@task(name="find-prepared", **TRANSIENT)
def is_prepared(store_uri: str, in_hash: str) -> bool:
    return pdata.find_prepared(store_for(store_uri), in_hash) is not None


@task(name="read-report", **TRANSIENT)
def read_report(store_uri: str, key: str) -> dict[str, Any]:
    return store_for(store_uri).get_json(key)


@flow(name="prepare-data")
def prepare_data(config: ConfigArg = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate, split (by subject), hash and store the data; returns the dataset manifest."""
    cfg = load_config(config, overrides)
    cfg_dict = cfg.to_dict()
    log = logger()
    paths = resolve_sources([s.path for s in cfg.data.sources], str(Path(cfg.work_dir) / "cache"))
    in_hash = hash_inputs(paths, cfg_dict)
    store_uri = store_for(cfg.storage.uri).uri
    # A cached result only counts while the store still holds the dataset it describes.
    build = build_dataset if is_prepared(store_uri, in_hash) else build_dataset.with_options(refresh_cache=True)
    manifest = build(in_hash, store_uri, paths, cfg_dict)
    report = read_report(manifest["store_uri"], manifest["keys"]["report"])

    rejected = report["rejected"]
    if rejected:
        table(f"rejected-records-{in_hash[:12]}", rejected,
              f"{len(rejected)} of {report['n_read']} input records rejected (file, index, field, reason)")
        for row in rejected[:20]:
            log.warning("rejected %s[%s].%s: %s", row["file"], row["index"], row["field"], row["reason"])
    markdown(
        f"dataset-{in_hash[:12]}",
        "\n".join([
            f"# Dataset `{in_hash}`",
            f"Store: `{manifest['store_uri']}` (`datasets/{in_hash}/`)",
            f"Training split hash: `{manifest['dataset_hash']}`",
            "",
            md_table([{"split": k, "records": v, "hash": manifest["hashes"][k][:16]} for k, v in manifest["counts"].items()]),
            "",
            f"Read {report['n_read']} records, loaded {report['n_loaded']}, rejected {report['n_rejected']}.",
            "",
            "## Input files",
            md_table(report["files"]),
            "",
            "## Rejected records",
            md_table(rejected[:50], ["file", "index", "field", "reason"]),
        ]),
        description="prepared editing data",
    )
    log.info("dataset %s: %s", in_hash, manifest["counts"])
    return manifest


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(prepare_data)
