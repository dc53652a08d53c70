"""The search space as data: round trips, the released MobileDets as points of it, sizes."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import build_model, specs
from mobiledet_jax.search import space as S

# The reference counts (all variables, 320x320, 91 class slots; tests/models/test_models.py).
PARAMS = {"mobiledet_cpu": 4_205_423, "mobiledet_dsp": 7_159_343, "mobiledet_edgetpu": 4_196_095}

RELEASED = [
    ("mobiledet_cpu", "cpu_ibn"),
    ("mobiledet_cpu", "cpu_ibn_fused_tucker"),
    ("mobiledet_edgetpu", "edgetpu_ibn_fused_tucker"),
    ("mobiledet_dsp", "dsp_ibn_fused_tucker"),
]


@pytest.mark.parametrize("model,space_name", RELEASED)
def test_released_tables_are_points_of_the_space(model, space_name):
    space, spec = S.get_space(space_name), specs.MOBILEDETS[model]
    decoded = S.decode(space, S.encode(space, spec))
    assert dataclasses.replace(decoded, scope=spec.scope) == spec
    assert decoded.scope == S.SEARCHED_SCOPE


@pytest.mark.parametrize("model,space_name", RELEASED[1:])
def test_released_tables_built_as_searched_models_have_the_reference_counts(model, space_name):
    space = S.get_space(space_name)
    decoded = S.decode(space, S.encode(space, specs.MOBILEDETS[model]))
    cfg = config_lib.base_config("searched").model
    cfg.arch = specs.spec_to_json(decoded)
    net, x = build_model(cfg), jnp.zeros((1, 320, 320, 3))
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x))
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables)) == PARAMS[model]


def test_gpu_table_is_not_in_the_space():
    with pytest.raises(S.NotInSpaceError, match="b4.filters: 128 is not one of"):
        S.encode(S.get_space("gpu_ibn_fused_tucker"), specs.MOBILEDET_GPU)


def test_dsp_tf2_variant_is_not_in_the_space():
    # block 20 without its residual starts a fifth "block" in b6: not a point of the skeleton
    with pytest.raises(S.NotInSpaceError):
        S.encode(S.get_space("dsp_ibn_fused_tucker"), specs.dsp_tf2_variant())


def test_cpu_table_needs_the_cpu_space():
    # MobileDet-CPU is hard-swish with SE: the ReLU6 EdgeTPU space cannot hold it
    with pytest.raises(S.NotInSpaceError, match="activation"):
        S.encode(S.get_space("edgetpu_ibn"), specs.MOBILEDET_CPU)


@pytest.mark.parametrize("name", ["tiny", "test", "edgetpu_ibn_fused_tucker", "cpu_ibn"])
def test_random_round_trip(name):
    space, rng = S.get_space(name), np.random.default_rng(0)
    for _ in range(50):
        idx = S.random_indices(space, rng)
        spec = S.decode(space, idx)
        canonical = S.encode(space, spec)
        assert S.decode(space, canonical) == spec
        if max(b.max_layers for b in space.skeleton) <= 2:  # no skip can sit between two layers
            assert (canonical == idx).all()


def test_decisions_parents_precede_children():
    decs = S.decisions(S.get_space("edgetpu_ibn_fused_tucker"))
    for i, d in enumerate(decs):
        assert d.parent < i
        if d.parent >= 0:
            assert decs[d.parent].name.endswith(".family")
            assert d.name.startswith(decs[d.parent].name.replace(".family", "."))


def test_active_mask_of_a_skipped_layer():
    space = S.get_space("tiny")
    pos = S.decision_index(space)
    idx = np.zeros(len(S.decisions(space)), np.int64)
    fam = S.decisions(space)[pos["b2.l2.family"]].choices
    idx[pos["b2.l2.family"]] = fam.index(S.SKIP)
    active = S.active_mask(space, idx)
    assert active[pos["b2.l2.family"]]
    assert not active[pos["b2.l2.ibn.kernel"]] and not active[pos["b2.l2.fused.expansion"]]
    assert active[pos["b2.l1.ibn.kernel"]]  # family 0 = ibn is chosen in layer 1
    spec = S.decode(space, idx)
    # stem, b1, two layers in each of b2..b6 less b2's skipped one, b7
    assert len(spec.blocks) == 1 + 1 + (5 * 2 - 1) + 1


def test_widths_round_and_drop_duplicates():
    space = S.get_space("edgetpu_ibn")
    stem, b1 = space.skeleton[0], space.skeleton[1]
    assert space.widths(stem) == (16, 24, 32, 40, 48, 64)  # 0.625 and 0.75 both round to 24
    assert space.widths(b1) == (8, 16, 24, 32)


def test_space_sizes():
    # Architectures counted with duplicate widths dropped (SEARCH_SPEC's 10^21.2 / 26.8 / 33.4 /
    # 27.2 count all seven multipliers per block: 7/6 * 7/4 * 7/6 more, i.e. +0.377 in log10).
    dup = math.log10(7 / 6 * 7 / 4 * 7 / 6)
    for name, published in [
        ("edgetpu_ibn", 21.2),
        ("edgetpu_ibn_fused", 26.8),
        ("edgetpu_ibn_fused_tucker", 33.4),
        ("dsp_ibn_fused_tucker", 27.2),
    ]:
        assert S.log10_size(S.get_space(name)) + dup == pytest.approx(published, abs=0.05)


def test_tiny_table_entry_count():
    space = S.get_space("tiny")
    layers = sum(len(s.widths()) * len(s.templates) for s in S.slots(space, 160))
    widths = [space.widths(b) for b in space.skeleton]
    # + one stem per width, one head per (C4, C5) width pair: SEARCH_SPEC's 552 entries
    assert layers + len(widths[0]) + len(widths[5]) * len(widths[7]) == 552


def test_bad_indices_are_refused():
    space = S.get_space("test")
    n = len(S.decisions(space))
    with pytest.raises(ValueError, match="expected"):
        S.decode(space, np.zeros(n - 1, np.int64))
    bad = np.zeros(n, np.int64)
    bad[0] = 99
    with pytest.raises(ValueError, match="out of range"):
        S.decode(space, bad)


def test_spec_json_round_trip():
    for spec in specs.MOBILEDETS.values():
        assert specs.spec_from_json(specs.spec_to_json(spec)) == spec
    with pytest.raises(ValueError, match="unknown backbone table fields"):
        specs.spec_from_dict({**specs.spec_to_dict(specs.MOBILEDET_DSP), "colour": 1})
