"""Search spaces of sweeps: built-in ones, YAML ones, and the errors that name what is wrong."""

from __future__ import annotations

import pytest


def test_builtin_spaces_are_valid_for_their_presets():
    from tune.space import BUILTIN, check_space, load_space

    for name, preset in (("clip_at_prompts", "synthetic_clip_at"), ("zse_kernels", "synthetic_zse")):
        dims = load_space(name)
        assert [d.key for d in dims] == list(BUILTIN[name])
        check_space(dims, preset, [])


def test_a_yaml_space_maps_to_ray_tune_primitives(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    from tune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        "train.lr: {loguniform: [1.0e-6, 1.0e-3]}\n"
        "model.zse.kernel_count: {randint: [5, 9]}\n"
        "model.zse.kernel_sigma: {uniform: [0.05, 0.2]}\n"
        "model.zse.relation_head: {choice: [mlp, kernel]}\n"
        "train.seed: {grid: [1, 2]}\n"
    )
    tune_space = {d.key: d.to_tune() for d in load_space(str(path))}
    assert isinstance(tune_space["train.lr"], Float) and tune_space["train.lr"].lower == 1e-6
    assert isinstance(tune_space["model.zse.kernel_count"], Integer) and tune_space["model.zse.kernel_count"].upper == 9
    assert isinstance(tune_space["model.zse.relation_head"], Categorical)
    assert tune_space["train.seed"] == {"grid_search": [1, 2]}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("train.lr: {gaussian: [0, 1]}\n", ["train.lr", "unknown distribution 'gaussian'", "loguniform"]),
        ("train.lr: {uniform: [0.1]}\n", ["train.lr", "[low, high]"]),
        ("train.lr: {loguniform: [0, 1]}\n", ["low > 0"]),
        ("train.lr: {uniform: [2, 1]}\n", ["low < high"]),
        ("model.zse.kernel_count: {randint: [1.5, 4]}\n", ["randint takes integers"]),
        ("train.lr: 0.1\n", ["one distribution"]),
        ("train.lrr: {choice: [0.1]}\n", ["train.lrr", "not a valid value"]),
        ("model.zse.kernel_count: {choice: [1, 5]}\n", ["kernel_count=1"]),
        ("run.name: {choice: [a, b]}\n", ["runtime setting"]),
        ("[1, 2]\n", ["non-empty mapping"]),
        ("train.lr: {choice: [\n", ["invalid YAML"]),
    ],
)
def test_bad_spaces_are_refused_naming_the_problem(tmp_path, text, needles):
    from tune.space import SearchSpaceError, check_space, load_space

    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError) as caught:
        check_space(load_space(str(path)), "synthetic_zse", [])
    for needle in needles:
        assert needle in str(caught.value)


def test_an_unknown_space_name_lists_the_builtin_ones():
    from tune.space import SearchSpaceError, load_space

    with pytest.raises(SearchSpaceError, match="clip_at_prompts, zse_kernels"):
        load_space("kernels")


def test_the_tune_section_refuses_test_class_metrics_and_is_a_runtime_section():
    from sbir.config import RUNTIME_SECTIONS, ConfigError, load_config

    config = load_config("synthetic_zse", ["tune.scheduler=fifo", "tune.num_samples=3"])
    assert config.tune.num_samples == 3 and config.tune.metric == "val_score"
    with pytest.raises(ConfigError, match="unseen test classes"):
        load_config("synthetic_zse", ["tune.metric=test_rn_rerank_map_all_voc"])
    with pytest.raises(ConfigError, match="reduction_factor"):
        load_config("synthetic_zse", ["tune.reduction_factor=1"])
    assert "tune" in RUNTIME_SECTIONS  # a checkpoint never decides how a sweep runs
