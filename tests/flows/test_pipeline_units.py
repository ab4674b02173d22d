"""The pipeline's building blocks without Prefect: config, data preparation, the gate."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from mend.data import load_dataset
from mend.data.bundled import bundled_path
from mend.pipeline import data as pdata
from mend.pipeline.config import (
    DEFAULT_CONFIG,
    DataSpec,
    LauncherSpec,
    PipelineConfig,
    PromotionSpec,
)
from mend.pipeline.promotion import decide
from mend.storage import LocalStore
from tests.flows.helpers import tiny_config

# -- configuration ------------------------------------------------------------------------


def test_default_config_is_valid_and_sized_for_the_main_job():
    cfg = PipelineConfig.from_yaml(DEFAULT_CONFIG)
    assert cfg.model == "smollm2-135m" and cfg.model_name == "mend-editor-smollm2-135m"
    assert [(s.path, s.split) for s in cfg.data.sources] == [
        ("bundled:zsre_eval.json", "test"), ("bundled:zsre_train.json", None)]
    # The 30-minute budget holds model load, evaluation and registration besides training: with
    # 22 minutes of training bench/main_job.py measured 32 on a 2-core CPU.
    assert cfg.train.train_fields()["max_minutes"] <= 17
    assert cfg.evaluation.n_records >= 100 and cfg.evaluation.baseline_records < cfg.evaluation.n_records
    assert set(cfg.promotion.metrics) == {"edit_success", "generalization", "locality"}
    # The champion edits scoped, its scope reading the block bench/router chose (below the edited ones).
    assert cfg.scope.enabled and cfg.scope.layers == [8]
    train_config = cfg.train.train_config(model=cfg.model, output_dir="o", train_path="t", val_path="v")
    assert train_config.editor.down_init == "xavier"
    # The editor recipe of the library's zsRE config (configs/zsre-smollm2.yaml).
    library = yaml.safe_load((DEFAULT_CONFIG.resolve().parent / "zsre-smollm2.yaml").read_text())
    assert train_config.editor.model_dump(exclude_unset=True) == library["editor"]
    assert {k: getattr(train_config, k) for k in ("c_edit", "n_loc", "n_edits", "lr")} == {
        k: library[k] for k in ("c_edit", "n_loc", "n_edits", "lr")}
    # ...with a locality term at least as strong: the shorter run ends earlier on its way.
    assert train_config.c_loc >= library["c_loc"]


def test_config_rejects_typos_and_pipeline_owned_fields():
    with pytest.raises(ValueError, match="max_minuts"):
        PipelineConfig.from_dict({"train": {"max_minuts": 3}})
    with pytest.raises(ValueError, match="set by the pipeline"):
        PipelineConfig.from_dict({"train": {"output_dir": "x"}})
    with pytest.raises(ValueError, match="sum to 1"):
        PipelineConfig.from_dict({"data": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}})
    cfg = PipelineConfig.from_dict({}, {"train.max_minutes": 2, "evaluation.n_records": 5})
    assert cfg.train.train_fields()["max_minutes"] == 2 and cfg.evaluation.n_records == 5


def test_launcher_templates():
    ds = LauncherSpec(kind="deepspeed", num_gpus=4, deepspeed_config="zero3.json")
    argv = ds.argv(config="c.yaml", splits="s", output_dir="o", python="py")
    assert argv[:4] == ["deepspeed", "--num_gpus", "4", "--module"]
    assert argv[-2:] == ["--deepspeed-config", "zero3.json"]
    default = LauncherSpec(kind="deepspeed").argv(config="c", splits="s", output_dir="o")
    assert default[-2:] == ["--deepspeed-config", "deepspeed_configs/zero2_fp32.json"]
    assert "--deepspeed-config" not in LauncherSpec(kind="command", command=["{python}"]).argv(python="py")
    cmd = LauncherSpec(kind="command", command=["{python}", "-m", "x", "{output_dir}"])
    assert cmd.argv(python="py", config="c", splits="s", output_dir="o") == ["py", "-m", "x", "o"]
    with pytest.raises(ValueError):
        LauncherSpec(kind="command")


# -- the bundled sample -----------------------------------------------------------------


def test_bundled_sample_loads_and_reports_its_malformed_record():
    loaded = load_dataset(bundled_path("zsre_sample.json"))
    assert loaded.report.n_read == 171 and len(loaded.records) == 170
    (error,) = loaded.report.errors
    assert (error.file, error.index, error.field) == ("zsre_sample.json", 25, "alt")
    assert bundled_path("zsre_sample.json").stat().st_size < 1_000_000
    with pytest.raises(FileNotFoundError, match="available"):
        bundled_path("../../pyproject.toml")


def test_bundled_training_and_held_out_files():
    train = load_dataset(bundled_path("zsre_train.json"))
    held_out = load_dataset(bundled_path("zsre_eval.json"))
    assert train.report.n_read == 1000 and len(train.records) == 998  # two have an empty `alt` upstream
    assert [e.index for e in train.report.errors] == [534, 723]
    assert held_out.report.n_read == len(held_out.records) == 200
    assert not {r.prompt for r in train.records} & {r.prompt for r in held_out.records}
    assert sum(bundled_path(n).stat().st_size for n in ("zsre_train.json", "zsre_eval.json")) < 1_000_000


def test_bundled_files_are_the_shared_releases(shared_data):
    zsre = shared_data / "zsre"
    assert json.loads(bundled_path("zsre_train.json").read_text()) == json.loads(
        (zsre / "zsre_mend_train-1k.json").read_text())
    assert json.loads(bundled_path("zsre_eval.json").read_text()) == json.loads(
        (zsre / "zsre_mend_eval-dev-537.json").read_text())[:200]


def test_bundled_sample_shares_nothing_with_the_benchmark_eval_set(shared_data):
    sample = json.loads(bundled_path("zsre_sample.json").read_text())
    evaluation = json.loads((shared_data / "zsre" / "zsre_mend_eval-dev-537.json").read_text())
    assert not {r["src"] for r in sample} & {r["src"] for r in evaluation}
    assert not {r["subject"] for r in sample} & {r["subject"] for r in evaluation}


# -- preparation ------------------------------------------------------------------------


def test_subject_split_keeps_subjects_together_and_is_deterministic():
    spec = DataSpec(sources=[{"path": "bundled:zsre_sample.json"}])
    records = load_dataset(bundled_path("zsre_sample.json")).records
    splits = pdata.split_dataset(records, spec)
    owner: dict[str, str] = {}
    for name, part in splits.items():
        for r in part:
            assert owner.setdefault(r.subject, name) == name, r.subject
    assert sum(map(len, splits.values())) == len(records)
    assert splits == pdata.split_dataset(list(records), spec)
    assert all(len(splits[n]) > 5 for n in ("train", "val", "test"))


def test_a_pinned_source_fills_its_split_alone_and_pulls_its_groups(tiny_data):
    records = load_dataset(tiny_data).records
    held_out, rest = records[:10], records[10:]
    # One training record about a held-out subject: it follows its subject into test.
    rest[0] = dataclasses.replace(rest[0], subject=held_out[3].subject)
    spec = DataSpec(sources=[{"path": "eval.json", "split": "test"}, {"path": "train.json"}],
                    splits={"train": 0.7, "val": 0.1, "test": 0.2})
    assert spec.unpinned_fractions() == pytest.approx({"train": 0.875, "val": 0.125})
    splits = pdata.split_dataset(held_out + rest, spec, ["test"] * 10 + [None] * len(rest))
    assert splits["test"] == [*held_out, rest[0]]  # file order: the pinned file first
    assert sorted(r.record_id for r in splits["train"] + splits["val"]) == sorted(r.record_id for r in rest[1:])
    assert splits["train"] and splits["val"]
    # Unpinned, the same records split by the fractions (test included), as --data does.
    unpinned = pdata.split_dataset(held_out + rest, DataSpec(sources=[{"path": "all.json"}], splits=spec.splits))
    assert unpinned["test"] != splits["test"] and all(unpinned.values())
    with pytest.raises(ValueError, match="no share"):
        DataSpec(sources=[{"path": "a", "split": "test"}, {"path": "b"}], splits={"train": 0, "val": 0, "test": 1})
    with pytest.raises(ValueError, match="pins for"):
        pdata.split_dataset(records, spec, ["test"])


def test_input_hash_follows_bytes_and_settings(tmp_path, tiny_data):
    spec = DataSpec(sources=[{"path": str(tiny_data)}])
    base = pdata.input_hash([tiny_data], spec)
    assert pdata.input_hash([tiny_data], spec) == base
    assert pdata.input_hash([tiny_data], DataSpec(sources=[{"path": "elsewhere"}])) == base  # content, not name
    assert pdata.input_hash([tiny_data], spec.model_copy(update={"seed": 1})) != base
    assert pdata.input_hash([tiny_data], DataSpec(sources=[{"path": str(tiny_data), "split": "test"}])) != base
    changed = tmp_path / "changed.json"
    changed.write_text(tiny_data.read_text().replace("subject-0", "subject-zero"))
    assert pdata.input_hash([changed], spec) != base


def test_validation_counts_rejects_and_fails_past_the_threshold(tmp_path, tiny_data):
    spec = DataSpec(sources=[{"path": str(tiny_data)}, {"path": str(tiny_data)}], max_error_fraction=0.6)
    validated = pdata.validate_sources([tiny_data, tiny_data], spec)
    # The second copy's records are duplicates of the first's: rejected, not silently dropped.
    assert len(validated.records) == 48 and validated.n_read == 98
    first = validated.errors[0]
    assert (first.file, first.index, first.field) == ("edits.json", 3, "alt")
    duplicates = [e for e in validated.errors if e.field == "record_id"]
    assert len(duplicates) == 48 and [e.index for e in duplicates[2:5]] == [2, 4, 5]  # index 3 was skipped
    assert "already loaded from edits.json[4]" in duplicates[3].reason
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"src": "q", "alt": ""}] * 3 + json.loads(tiny_data.read_text())[:2]))
    with pytest.raises(pdata.DataValidationError, match="3 of 5 records are malformed"):
        pdata.validate_sources([bad], DataSpec(sources=[{"path": str(bad)}]))


def test_prepared_dataset_round_trips_through_the_store(tmp_path, tiny_data):
    spec = DataSpec(sources=[{"path": str(tiny_data)}], splits={"train": 0.6, "val": 0.2, "test": 0.2})
    store = LocalStore(tmp_path / "store")
    validated = pdata.validate_sources([tiny_data], spec)
    splits = pdata.split_dataset(validated.records, spec)
    in_hash = pdata.input_hash([tiny_data], spec)
    assert pdata.find_prepared(store, in_hash) is None
    manifest = pdata.write_prepared(store, in_hash, splits, validated, [str(tiny_data)])
    assert pdata.find_prepared(store, in_hash) == manifest
    assert pdata.load_split(store, manifest, "test") == splits["test"]
    report = store.get_json(manifest["keys"]["report"])
    assert report["rejected"] == [{"file": "edits.json", "index": 3, "field": "alt", "reason": "empty string"}]


def test_s3_sources_need_no_recorded_checksum(moto_s3, s3_bucket, tmp_path, tiny_data):
    # Uploaded with a plain client (no sha256 metadata), as users do with the AWS CLI.
    moto_s3.client().put_object(Bucket=s3_bucket, Key="incoming/edits.json", Body=tiny_data.read_bytes())
    path = pdata.resolve_source(f"s3://{s3_bucket}/incoming/edits.json", tmp_path)
    assert path.read_bytes() == tiny_data.read_bytes()
    with pytest.raises(ValueError, match="names a bucket"):
        pdata.resolve_source(f"s3://{s3_bucket}", tmp_path)
    with pytest.raises(KeyError):  # a missing object is an error, not an empty file
        pdata.resolve_source(f"s3://{s3_bucket}/incoming/missing.json", tmp_path)


# -- the gate -----------------------------------------------------------------------------


def test_gate_first_candidate_needs_only_the_floors():
    spec = PromotionSpec()
    good = {"edit_success": 0.9, "generalization": 0.8, "locality": 0.95}
    assert decide(good, spec).promote
    low = decide({**good, "locality": 0.5}, spec)
    assert not low.promote and "locality 0.5000 < floor" in low.reason and low.alias == "challenger"


def test_gate_against_a_champion_both_ways():
    spec = PromotionSpec()
    champion = {"edit_success": 0.9, "generalization": 0.8, "locality": 0.95}
    better = decide({"edit_success": 0.92, "generalization": 0.79, "locality": 0.945}, spec, champion,
                    champion_version="3")
    assert better.promote and "edit_success" in better.reason  # small tolerated regressions
    worse = decide({"edit_success": 0.95, "generalization": 0.8, "locality": 0.9}, spec, champion,
                   champion_version="3")
    assert not worse.promote and "locality" in worse.reason and "champion 0.9500" in worse.reason
    equal = decide(dict(champion), spec, champion, champion_version="3")
    assert not equal.promote and "no gate metric improves" in equal.reason
    other_base = decide({"edit_success": 1, "generalization": 1, "locality": 1}, spec, champion,
                        champion_version="3", same_base_model=False)
    assert not other_base.promote and "another base model" in other_base.reason


def test_train_main_trains_on_the_splits_it_is_given(tmp_path, tiny_model_dir, tiny_data):
    # What a launcher command runs: the run folder the flow prepared, nothing else.
    from mend.pipeline import train_main
    from mend.pipeline.training import prepare_run_dir

    records = pdata.validate_sources([tiny_data], DataSpec(sources=[{"path": str(tiny_data)}])).records
    cfg = PipelineConfig.from_dict(tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)]),
                                   {"train.max_steps": 4, "train.val_every": 2, "train.checkpoint_every": 2})
    out = tmp_path / "run"
    prepare_run_dir(cfg, out, records[:30], records[30:36])
    assert train_main.main(["--config", str(out / "train-config.yaml"), "--splits", str(out / "splits")]) == 0
    summary = json.loads((out / "train-summary.json").read_text())
    assert summary["steps"] == 4 and summary["stopped"] == "max_steps"
    assert (out / "best" / "editor.safetensors").exists()
