"""Config: presets fill switches, YAML + dotted overrides, and errors that name key and choices."""

from __future__ import annotations

import pytest

from sbir.config import ConfigError, ZSEConfig, build_config, dump_config, load_config
from sbir.presets import available_presets


def test_defaults_are_official_base():
    cfg = build_config()
    zse = cfg.model.zse
    assert (zse.preset, zse.tokenizer_scope, zse.ca_wiring, zse.downsample) == (
        "official",
        "both",
        "q_own_k_other_v_own",
        "reshape_scramble",
    )
    assert (zse.image_size, zse.depth, zse.width, zse.derived_anchors) == (224, 12, 768, 49)
    assert zse.keep_dead_ca_copy is True


def test_paper_preset_and_single_switch_override():
    cfg = build_config(overrides=["model.zse.preset=paper", "model.zse.downsample=linear"])
    zse = cfg.model.zse
    assert zse.tokenizer_scope == "sketch_only"
    assert zse.ca_wiring == "q_other_kv_own"
    assert zse.downsample == "linear"  # the explicit switch beats the preset
    assert zse.keep_dead_ca_copy is False


def test_tiny_size_fills_geometry():
    zse = ZSEConfig(size="tiny")
    assert (zse.image_size, zse.patch_size, zse.grid, zse.derived_anchors) == (64, 8, 8, 16)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"model\.zse\.dept: unknown key"):
        build_config(overrides=["model.zse.dept=3"])


def test_bad_choice_names_allowed_values():
    with pytest.raises(ConfigError) as err:
        build_config(overrides=["model.zse.ca_wiring=sideways"])
    message = str(err.value)
    assert "model.zse.ca_wiring" in message
    assert "q_own_k_other_v_own" in message and "q_other_kv_own" in message


def test_bad_value_type_and_range():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        build_config(overrides=["train.epochs=0"])
    with pytest.raises(ConfigError, match=r"train\.lr"):
        build_config(overrides=["train.lr=fast"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        build_config(overrides=["train.epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        build_config(overrides=["train.epochs=3", "train.epochs.x=1"])


def test_geometry_validation():
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        build_config(overrides=["model.zse.size=tiny", "model.zse.image_size=60"])
    with pytest.raises(ConfigError, match="requires downsample=linear"):
        build_config(overrides=["model.zse.size=tiny", "model.zse.evit_keep=[1, 0.5, 1, 1]"])
    with pytest.raises(ConfigError, match="one keep rate per layer"):
        build_config(overrides=["model.zse.size=tiny", "model.zse.downsample=linear", "model.zse.evit_keep=[1]"])
    with pytest.raises(ConfigError, match="anchors=10"):
        build_config(overrides=["model.zse.anchors=10"])


def test_yaml_roundtrip_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  method: zse\n  zse: {size: tiny}\ntrain: {epochs: 3}\n")
    cfg = load_config(path, ["train.epochs=5", "eval.modes=[ret, rn]"])
    assert cfg.train.epochs == 5 and cfg.eval.modes == ["ret", "rn"]
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
    with pytest.raises(ConfigError, match="neither a config file nor a built-in preset"):
        load_config("no_such_preset")


def test_builtin_presets_validate():
    names = available_presets()
    assert "synthetic_zse" in names and "synthetic_clip_at" in names
    for name in names:
        load_config(name)


def test_clip_at_sharing_follows_granularity():
    cat = build_config(overrides=["model.clip_at.granularity=category"]).model.clip_at
    fg = build_config(overrides=["model.clip_at.granularity=fine_grained"]).model.clip_at
    assert (cat.prompt_sharing, cat.ln_sharing) == ("per_modality", "per_modality")
    assert (fg.prompt_sharing, fg.ln_sharing) == ("shared", "shared")
    official = build_config(overrides=["model.clip_at.preset=official"]).model.clip_at
    assert (official.margin, official.cls_weight, official.freeze) == (0.2, 0.0, "official_freeze")


@pytest.mark.parametrize(
    ("preset", "setting"),
    [
        ("zse_sketchy25", "sketchy25"),
        ("zse_sketchy21", "sketchy21"),
        ("zse_tuberlin30", "tuberlin30"),
        ("zse_quickdraw30", "quickdraw30"),
        ("clip_at_sketchy25", "sketchy25"),
        ("clip_at_sketchy21", "sketchy21"),
        ("clip_at_tuberlin30", "tuberlin30"),
        ("clip_at_quickdraw30", "quickdraw30"),
        ("clip_at_fg_sketchy", "fg_sketchy"),
        ("zse_fg_sketchy", "fg_sketchy"),
        ("clip_at_sketchy21_official", "sketchy21"),
        ("zse_cross_dataset", "cross_sketchy"),
        ("clip_at_cross_dataset", "cross_sketchy"),
        ("synthetic_zse", "synthetic"),
        ("synthetic_clip_at", "synthetic"),
    ],
)
def test_every_setting_has_a_valid_preset(preset, setting):
    from sbir.data.batches import batch_spec

    config = load_config(preset)
    assert config.setting == setting
    micro = config.train.batch_size // max(1, config.train.num_workers)
    spec = batch_spec(config.train, config.model.fine_grained)
    assert spec.batch_size == (2 * micro if config.train.sampler == "quadruplets" else micro)


def test_cross_dataset_presets_evaluate_on_tuberlin_and_quickdraw():
    targets = load_config("zse_cross_dataset").eval.targets
    assert [(t.layout, t.split) for t in targets] == [("tuberlin", "zeroshot"), ("quickdraw", "zeroshot")]


def test_batch_that_does_not_split_over_workers_is_rejected():
    with pytest.raises(ConfigError, match=r"train\.batch_size 15"):
        load_config("zse_sketchy25", ["train.num_workers=2"])
