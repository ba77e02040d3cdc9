"""Config loading: validation messages name the key, --set reaches any key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import PipelineError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets:\n  - name: a\n    inputs: [data/x.jsonl]\n")
    cfg = load_config(cfg_file)
    assert cfg.datasets[0].inputs == [str(tmp_path / "data/x.jsonl")]
    assert cfg.output == "out"  # the default is relative to where the command runs
    cfg = load_config(write(tmp_path / "d.yaml", "output: store\ndatasets: [{name: a, inputs: [x]}]\n"))
    assert cfg.output == str(tmp_path / "store")
    assert cfg.stages.language.enabled and cfg.stages.exact_dedup.lowercase


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets: [{name: a, inputs: [x]}]\nstages:\n  language:\n    alowed: [en]\n")
    with pytest.raises(PipelineError, match=r"stages\.language\.alowed: unknown key"):
        load_config(cfg_file)


def test_wrong_type_is_rejected_with_its_path(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets: [{name: a, inputs: [x]}]\nshard_rows: many\n")
    with pytest.raises(PipelineError, match=r"shard_rows: Input should be a valid integer"):
        load_config(cfg_file)


def test_error_is_one_line(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets: [{name: a, inputs: [x]}]\nshard_rows: 0\nfoo: 1\n")
    with pytest.raises(PipelineError) as info:
        load_config(cfg_file)
    assert "\n" not in str(info.value) and "foo: unknown key" in str(info.value)


def test_set_overrides_nested_keys_with_yaml_values(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        inputs=[str(tmp_path / "reviews.jsonl")],
        overrides=["stages.language.allowed=[en,de]", "stages.quality.enabled=false", "shard_rows=10"],
    )
    assert cfg.stages.language.allowed == ["en", "de"]
    assert cfg.stages.quality.enabled is False
    assert cfg.shard_rows == 10
    assert cfg.datasets[0].name == "reviews"


def test_set_into_a_list_by_index(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets: [{name: a, inputs: [x]}, {name: b, inputs: [y]}]\n")
    cfg = load_config(cfg_file, overrides=["datasets.1.columns.text=body"])
    assert cfg.datasets[1].columns.text == "body" and cfg.datasets[0].columns.text is None
    with pytest.raises(PipelineError, match="not an index"):
        load_config(cfg_file, overrides=["datasets.5.name=c"])


@pytest.mark.parametrize("item", ["novalue", "=3", "stages.language.allowed=[en"])
def test_malformed_set_is_an_error(item: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="--set"):
        load_config(None, inputs=[str(tmp_path / "x.jsonl")], overrides=[item])


def test_unknown_key_through_set(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"stages\.nosuch: unknown key"):
        load_config(None, inputs=[str(tmp_path / "x.jsonl")], overrides=["stages.nosuch.enabled=false"])


def test_input_replaces_datasets_but_keeps_columns(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets: [{name: a, inputs: [x], columns: {text: body}}]\n")
    cfg = load_config(cfg_file, inputs=["other/reviews-2024*.csv"], output="elsewhere")
    assert [d.name for d in cfg.datasets] == ["reviews-2024"]
    assert cfg.datasets[0].columns.text == "body"
    assert cfg.output == "elsewhere"


def test_missing_config_and_no_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="no datasets to curate"):
        load_config(None)
    with pytest.raises(PipelineError, match="config file .*nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.yaml", "datasets: [\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_config(cfg_file)


def test_default_file_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "pipeline.yaml", "datasets: [{name: here, inputs: [x]}]\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(None).datasets[0].name == "here"


def test_a_dataset_overrides_stage_settings_for_itself_only(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "datasets:\n"
        "  - {name: a, inputs: [a.jsonl], stages: {augment: {enabled: true, balance: true}, quality: {min_words: 1}}}\n"
        "  - {name: b, inputs: [b.jsonl]}\n"
        "stages: {quality: {min_words: 2, max_words: 500}}\n"
    )
    cfg = load_config(path)
    a, b = (cfg.stages_for(d) for d in cfg.datasets)
    assert a.augment.enabled and a.augment.balance and not b.augment.enabled
    assert (a.quality.min_words, a.quality.max_words) == (1, 500)
    assert (b.quality.min_words, b.quality.max_words) == (2, 500)
    assert cfg.fingerprint_payload(cfg.datasets[0]) != cfg.fingerprint_payload(cfg.datasets[1])


def test_set_on_a_stage_wins_over_a_datasets_own_block(tmp_path: Path) -> None:
    """``--set stages.augment.enabled=false`` switches augment off for a dataset whose
    own block turns it on, as the sample config does; one dataset's setting, given
    after it, still wins for that dataset."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "datasets:\n"
        "  - {name: a, inputs: [a.jsonl], stages: {augment: {enabled: true, balance: true}, quality: {min_words: 1}}}\n"
        "  - {name: b, inputs: [b.jsonl]}\n"
    )
    cfg = load_config(path, overrides=["stages.augment.enabled=false", "stages.quality={min_words: 4}"])
    a, b = (cfg.stages_for(d) for d in cfg.datasets)
    assert not a.augment.enabled and not b.augment.enabled
    assert a.augment.balance, "the rest of the dataset's own block stays"
    assert a.quality.min_words == b.quality.min_words == 4
    cfg = load_config(path, overrides=["stages.augment.enabled=false", "datasets.0.stages.augment.enabled=true"])
    assert cfg.stages_for(cfg.datasets[0]).augment.enabled and not cfg.stages.augment.enabled


def test_a_bad_dataset_stage_override_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("datasets:\n  - {name: a, inputs: [a.jsonl], stages: {quality: {min_wrds: 1}}}\n")
    with pytest.raises(PipelineError, match=r"datasets\.0\.stages\.quality\.min_wrds: unknown key"):
        load_config(path)


def test_paths_in_a_config_file_are_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    write(
        folder / "pipeline.yaml",
        "output: store\n"
        "datasets: [{name: a, inputs: [a.jsonl], stages: {rehearsal: {enabled: true, inputs: [general.jsonl]}}}]\n"
        "stages: {rehearsal: {inputs: [top.jsonl]}}\n"
        "finetune: {runs: runs}\n",
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "pipeline.yaml")
    assert cfg.output == str(folder / "store") and cfg.datasets[0].inputs == [str(folder / "a.jsonl")]
    assert cfg.stages.rehearsal.inputs == [str(folder / "top.jsonl")]
    assert cfg.stages_for(cfg.datasets[0]).rehearsal.inputs == [str(folder / "general.jsonl")]
    assert cfg.finetune.runs == str(folder / "runs")


def test_finetune_settings_are_checked_with_the_config_and_stay_out_of_fingerprints(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "datasets: [{name: a, inputs: [a.jsonl]}]\n")
    with pytest.raises(PipelineError, match="finetune.*unknown training key 'epoch'"):
        load_config(path, overrides=["finetune.settings={epoch: 1}"])
    with pytest.raises(PipelineError, match="finetune.datasets: 'b' is not a dataset"):
        load_config(path, overrides=["finetune.datasets=[b]"])
    plain = load_config(path)
    chained = load_config(path, overrides=["finetune.enabled=true", "finetune.settings={epochs: 1}"])
    assert chained.finetune.trains("a", "classification") and not chained.finetune.trains("a", "text")
    assert not plain.finetune.trains("a", "classification")
    assert chained.fingerprint_payload(chained.datasets[0]) == plain.fingerprint_payload(plain.datasets[0])
