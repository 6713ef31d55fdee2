"""Tests of :mod:`pipeline.config` and ``configs/default.yaml``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import (
    Config,
    SessionInfo,
    default_config_path,
    load_config,
    resolve_sessions,
)
from pipeline.errors import ConfigError
from workflows.docs import BEGIN, END, ConfigEntry, config_entries, config_reference_markdown

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def model_leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys of all non-section fields of ``model``."""
    leaves: set[str] = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            leaves |= model_leaves(ann, f"{prefix}{name}.")
        else:
            leaves.add(prefix + name)
    return leaves


def model_fields_with_defaults(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        if not field.is_required():
            found.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            found += model_fields_with_defaults(ann, f"{prefix}{name}.")
    return found


# ----------------------------------------------------------------- defaults


def test_default_path_is_repo_file():
    assert default_config_path() == REPO / "configs" / "default.yaml"


def test_defaults_load():
    cfg = load_config()
    assert cfg.seed == 20251125
    assert cfg.bids.lesion_derivatives == "derivatives/lesions"
    assert cfg.bids.lesion_label == "lesion"
    assert cfg.bids.bold_task == "rest"
    assert cfg.bids.pybids_validate is False
    assert cfg.sessions.order == ("baseline", "m03", "m06")
    assert dict(cfg.sessions.months) == {"baseline": 0.0, "m03": 3.0, "m06": 6.0}
    assert cfg.sessions.tsv_time_column == "time_months"
    assert cfg.group.compare == ("baseline", "m06")
    assert cfg.validation.b0_threshold == 50
    assert cfg.validation.min_directions == 6
    assert cfg.validation.grid_tolerance_mm == pytest.approx(0.01)
    assert cfg.sources == [str(default_config_path())]
    assert cfg.source_of("validation.b0_threshold") == str(default_config_path())


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(ValidationError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.validation.b0_threshold = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.sessions.months["m03"] = 4  # type: ignore[index]
    assert isinstance(cfg.sessions.order, tuple)
    cfg.sources.append("x")  # a copy: does not change the config
    assert cfg.sources == [str(default_config_path())]


def test_models_declare_no_default_values():
    # default.yaml is the single source of truth for default values
    assert model_fields_with_defaults(Config) == []


def test_every_default_leaf_is_documented():
    """Each `key: value` line of default.yaml carries or follows a comment."""
    entries = config_entries()  # raises on a line that is not `key: value  # comment`
    undocumented = sorted(e.key for e in entries if not e.description)
    assert undocumented == [], f"default.yaml keys without a comment: {undocumented}"
    # every model parameter is written on a commented one-line leaf
    assert {e.key for e in entries} == model_leaves(Config)


def test_readme_configuration_reference_is_generated_from_the_defaults():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == config_reference_markdown().strip(), "run `python -m workflows.docs`"
    assert "| `dwi.denoise` | `mppca` | mppca (Marchenko-Pastur PCA)" in block


def test_config_reference_reads_trailing_and_preceding_comments(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# Section one.\na:\n  # above\n  x: 1\n  y: '#no' # kept\n\nb: 2  # top\n")
    assert config_entries(path) == [
        ConfigEntry("a.x", "1", "above", "Section one."),
        ConfigEntry("a.y", "'#no'", "kept"),
        ConfigEntry("b", "2", "top"),
    ]
    path.write_text("a:\n  - 1\n")
    with pytest.raises(ValueError, match=r"c\.yaml:2"):
        config_entries(path)


# ----------------------------------------------------------------- merging


def test_user_file_deep_merge_keeps_siblings(tmp_path):
    user = write(tmp_path, "user.yaml", "validation:\n  b0_threshold: 20\nseed: 7\n")
    cfg = load_config([user])
    assert cfg.validation.b0_threshold == 20
    assert cfg.validation.shell_tolerance == 100  # sibling kept from defaults
    assert cfg.seed == 7
    assert cfg.bids.bold_task == "rest"
    assert cfg.sources == [str(default_config_path()), str(user)]
    assert cfg.source_of("validation.b0_threshold") == str(user)
    assert cfg.source_of("validation.shell_tolerance") == str(default_config_path())


def test_later_sources_win(tmp_path):
    a = write(tmp_path, "a.yaml", "seed: 1\nbids: {bold_task: a}\n")
    b = write(tmp_path, "b.yaml", "seed: 2\n")
    cfg = load_config([a, b], overrides={"bids": {"lesion_derivatives": None}})
    assert cfg.seed == 2
    assert cfg.bids.bold_task == "a"
    assert cfg.bids.lesion_derivatives is None
    assert cfg.sources[-1] == "command line"
    assert cfg.source_of("bids.lesion_derivatives") == "command line"


def test_mapping_leaf_is_replaced_not_merged(tmp_path):
    user = write(
        tmp_path,
        "user.yaml",
        "sessions:\n  order: [baseline, m12]\n  months: {baseline: 0, m12: 12}\n"
        "group:\n  compare: [baseline, m12]\n",
    )
    cfg = load_config([user])
    assert dict(cfg.sessions.months) == {"baseline": 0.0, "m12": 12.0}


def test_dotted_overrides_and_empty_file(tmp_path):
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    cfg = load_config([empty], overrides={"validation.min_directions": 12})
    assert cfg.validation.min_directions == 12
    assert cfg.validation.b0_threshold == 50


# ----------------------------------------------------------------- errors


def test_unknown_key_names_key_and_file(tmp_path):
    user = write(tmp_path, "user.yaml", "bids:\n  lesion_lable: x\n")
    with pytest.raises(ConfigError) as info:
        load_config([user])
    err = info.value
    assert err.key == "bids.lesion_lable"
    assert err.source == str(user)
    assert "bids.lesion_lable" in str(err) and str(user) in str(err)
    assert "lesion_label" in str(err)  # did-you-mean hint


def test_unknown_section_names_file(tmp_path):
    user = write(tmp_path, "user.yaml", "no_such_section:\n  x: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert (info.value.key, info.value.source) == ("no_such_section", str(user))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("seed: abc\n", "seed"),
        ("seed: 1.5\n", "seed"),
        ("validation:\n  min_directions: true\n", "validation.min_directions"),
        ("bids:\n  pybids_validate: 'yes'\n", "bids.pybids_validate"),
        ("validation:\n  b0_threshold: '50'\n", "validation.b0_threshold"),
        ("sessions:\n  months: [0, 3, 6]\n", "sessions.months"),
        ("bids: 3\n", "bids"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, text, key):
    user = write(tmp_path, "user.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert info.value.key == key
    assert info.value.source == str(user)
    assert f"'{key}'" in str(info.value) and str(user) in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"seed": -1}, "seed"),
        ({"validation": {"b0_threshold": -5}}, "validation.b0_threshold"),
        ({"validation": {"min_directions": 5}}, "validation.min_directions"),
        ({"validation": {"bvec_norm_tolerance": 1.5}}, "validation.bvec_norm_tolerance"),
        ({"validation": {"grid_tolerance_mm": 0}}, "validation.grid_tolerance_mm"),
        ({"validation": {"shell_tolerance": float("nan")}}, "validation.shell_tolerance"),
        ({"bids": {"bold_task": "task-rest"}}, "bids.bold_task"),
    ],
)
def test_out_of_range(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert info.value.key == key
    assert info.value.source == "command line"


def test_compare_session_not_in_order(tmp_path):
    user = write(tmp_path, "user.yaml", "group:\n  compare: [baseline, m12]\n")
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert info.value.key == "group.compare"
    assert info.value.source == str(user)
    assert "m12" in str(info.value)


def test_compare_needs_two_distinct_sessions():
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"group": {"compare": ["m03", "m03"]}})
    assert info.value.key == "group.compare"
    with pytest.raises(ConfigError):
        load_config(overrides={"group": {"compare": ["baseline"]}})


def test_months_must_match_order_and_increase(tmp_path):
    user = write(tmp_path, "user.yaml", "sessions:\n  months: {baseline: 0, m03: 6, m06: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert (info.value.key, info.value.source) == ("sessions.months", str(user))
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"sessions": {"months": {"baseline": 0, "m06": 6}}})
    assert info.value.key == "sessions.months" and "m03" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"sessions": {"order": ["baseline", "m03", "m03"]}})
    assert info.value.key == "sessions.order"


def test_tract_orientation_model_options(tmp_path):
    cfg = load_config(overrides={"tract": {"model": "csd", "method": "probabilistic", "sh_order": 8,
                                           "tractogram_format": "trx"}})
    assert (cfg.tract.model, cfg.tract.sh_order, cfg.tract.tractogram_format) == ("csd", 8, "trx")
    user = write(tmp_path, "user.yaml", "tract:\n  model: csa\n  method: probabilistic\n")
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert (
        info.value.key == "tract.method"
        and "csd" in str(info.value)
        and info.value.source == str(user)
    )
    for bad, key in (({"sh_order": 7}, "tract.sh_order"), ({"sh_order": 14}, "tract.sh_order"),
                     ({"model": "dti"}, "tract.model"), ({"tractogram_format": "tck"}, "tract.tractogram_format")):
        with pytest.raises(ConfigError) as info:
            load_config(overrides={"tract": bad})
        assert info.value.key == key, (bad, info.value.key)


def test_several_errors_are_all_reported(tmp_path):
    user = write(tmp_path, "user.yaml", "seed: -1\nvalidation:\n  min_bold_volumes: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert info.value.key == "seed"
    assert "validation.min_bold_volumes" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["- a\n- b\n", "just a string\n", "seed: [unclosed\n", "seed: 1\nseed: 2\n"],
)
def test_bad_yaml_file_names_file(tmp_path, text):
    user = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config([user])
    assert info.value.source == str(user)


def test_missing_file_names_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config([missing])
    assert info.value.source == str(missing)


def test_overrides_must_be_a_mapping():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[("seed", 1)])  # type: ignore[arg-type]
    assert info.value.source == "command line"


# ----------------------------------------------------------------- serialisation


def test_to_dict_round_trip():
    cfg = load_config(overrides={"seed": 3, "bids": {"lesion_derivatives": None}})
    data = cfg.to_dict()
    json.dumps(data)  # plain JSON types only
    assert isinstance(data["sessions"]["order"], list)
    again = load_config(overrides=data)
    assert again == cfg
    assert again.to_dict() == data
    data["seed"] = 4  # a copy: the config is untouched
    assert cfg.seed == 3


def test_to_yaml_round_trip(tmp_path):
    cfg = load_config(overrides={"validation": {"b0_threshold": 10}})
    text = cfg.to_yaml()
    assert "command line" in text.splitlines()[2]  # provenance header
    assert yaml.safe_load(text) == cfg.to_dict()
    assert load_config([write(tmp_path, "resolved.yaml", text)]) == cfg


# ----------------------------------------------------------------- sessions


def _months(infos: list[SessionInfo]) -> list[tuple[str, float, int]]:
    return [(s.label, s.months, s.order) for s in infos]


def test_resolve_sessions_without_table():
    cfg = load_config()
    assert _months(resolve_sessions(cfg, None)) == [
        ("baseline", 0.0, 0),
        ("m03", 3.0, 1),
        ("m06", 6.0, 2),
    ]


def test_resolve_sessions_table_without_time_column():
    cfg = load_config()
    rows: list[dict[str, Any]] = [{"session_id": "ses-m06"}, {"session_id": "ses-baseline"}]
    assert _months(resolve_sessions(cfg, rows)) == [("baseline", 0.0, 0), ("m06", 6.0, 1)]


def test_resolve_sessions_uses_time_column():
    cfg = load_config()
    rows = [
        {"session_id": "ses-baseline", "time_months": "0"},
        {"session_id": "ses-m06", "time_months": "5.5"},
        {"session_id": "ses-m03", "time_months": "n/a"},  # falls back to config
        {"session_id": "ses-extra", "time_months": "1.25"},  # unknown but timed
    ]
    infos = resolve_sessions(cfg, rows)
    assert _months(infos) == [
        ("baseline", 0.0, 0),
        ("extra", 1.25, 1),
        ("m03", 3.0, 2),
        ("m06", 5.5, 3),
    ]
    with pytest.raises(AttributeError):
        infos[0].months = 1.0  # type: ignore[misc]


def test_resolve_sessions_unknown_untimed_session():
    cfg = load_config()
    rows = [{"session_id": "ses-baseline"}, {"session_id": "ses-m99"}]
    with pytest.raises(ConfigError) as info:
        resolve_sessions(cfg, rows)
    assert isinstance(info.value, ValueError)
    assert (info.value.key, info.value.source) == ("sessions.order", "sessions.tsv")
    assert "ses-m99" in str(info.value)


@pytest.mark.parametrize(
    "rows",
    [
        [{"session_id": "ses-baseline", "time_months": "soon"}],
        [{"session_id": "ses-m03", "time_months": "6"}, {"session_id": "ses-m06"}],
        [{"session_id": "ses-m03"}, {"session_id": "ses-m03"}],
        [{"participant_id": "sub-01"}],
    ],
)
def test_resolve_sessions_bad_table(rows):
    with pytest.raises(ConfigError) as info:
        resolve_sessions(load_config(), rows, source="sub-01_sessions.tsv")
    assert info.value.source == "sub-01_sessions.tsv"


def test_path_keys_resolve_against_the_file_that_set_them(tmp_path, monkeypatch):
    """dwi.atlas / dwi.atlas_labels / tract.bundles given relative in a configuration file
    point next to that file whatever the working directory; on the command line they are
    relative to the working directory; absolute paths and null are kept."""
    project = tmp_path / "project"
    project.mkdir()
    cfg = project / "study.yaml"
    cfg.write_text("dwi:\n  atlas: atlases/jhu.nii.gz\n  atlas_labels: atlases/jhu.tsv\n"
                   "tract:\n  bundles: /abs/bundles.yaml\n")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config([cfg])
    assert c.dwi.atlas == str(project / "atlases/jhu.nii.gz")
    assert c.dwi.atlas_labels == str(project / "atlases/jhu.tsv")
    assert c.tract.bundles == "/abs/bundles.yaml"
    c = load_config([cfg], overrides={"tract.bundles": "mine.yaml"})
    assert c.tract.bundles == str(elsewhere / "mine.yaml")
    assert load_config([]).dwi.atlas is None
