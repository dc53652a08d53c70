"""The architecture summary (``models.architecture_summary``): totals against SPEC section 6, rows
and table (the command line is tests/commands/test_summary.py)."""

import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import architecture_summary as summary_lib

MOBILEDETS = ["mobiledet_cpu", "mobiledet_dsp", "mobiledet_edgetpu", "mobiledet_gpu"]

# SPEC section 6 (320x320, 91 class slots).
ALL_VARIABLES = {
    "mobiledet_cpu": 4_205_423,
    "mobiledet_dsp": 7_159_343,
    "mobiledet_edgetpu": 4_196_095,
    "mobiledet_gpu": 13_109_151,
}
TRAINABLE = {  # (backbone, extra layers, heads, total)
    "mobiledet_cpu": (3_006_440, 366_144, 792_471, 4_165_055),
    "mobiledet_dsp": (5_839_952, 390_720, 871_407, 7_102_079),
    "mobiledet_edgetpu": (2_777_040, 427_584, 941_919, 4_146_543),
    "mobiledet_gpu": (11_689_920, 427_584, 951_743, 13_069_247),
}
BN_STATS = {
    "mobiledet_cpu": 40_368,
    "mobiledet_dsp": 57_264,
    "mobiledet_edgetpu": 49_552,
    "mobiledet_gpu": 39_904,
}
BACKBONE_ALL = {
    "mobiledet_cpu": 3_036_728,
    "mobiledet_dsp": 5_886_464,
    "mobiledet_edgetpu": 2_815_456,
    "mobiledet_gpu": 11_718_560,
}
# Conv MAdds in millions: total (SE gating included for CPU: 442.5M + 4.9M) and backbone (SE excluded).
MADDS = {
    "mobiledet_cpu": (447.0, 406.3),
    "mobiledet_dsp": (2816.0, 2763.4),
    "mobiledet_edgetpu": (1533.0, 1473.8),
    "mobiledet_gpu": (5073.0, 5009.9),
}
CPU_CONV_MADDS, CPU_SE_MADDS = 442.5, 4.9


@pytest.fixture(scope="module")
def summaries():
    return {name: summary_lib.summarize(config_lib.base_config(name).model) for name in MOBILEDETS}


@pytest.mark.parametrize("name", MOBILEDETS)
def test_params_match_spec(summaries, name):
    s = summaries[name]
    assert s.input_hw == (320, 320) and s.num_slots == 91
    assert s.total["params"] == ALL_VARIABLES[name]
    assert s.total["bn_stats"] == BN_STATS[name]
    groups = (s.groups[g]["trainable"] for g in summary_lib.GROUPS)
    assert (*groups, s.total["trainable"]) == TRAINABLE[name]
    assert s.groups["backbone"]["params"] == BACKBONE_ALL[name]
    assert set(s.groups) == set(summary_lib.GROUPS)  # every variable belongs to a known group
    # The rows are disjoint and add up to the totals.
    assert sum(r.params for r in s.rows) == s.total["params"]
    assert sum(r.madds + r.se_madds for r in s.rows) == s.total["madds"] + s.total["se_madds"]


@pytest.mark.parametrize("name", MOBILEDETS)
def test_madds_match_spec(summaries, name):
    s = summaries[name]
    total, backbone = MADDS[name]
    got_total = (s.total["madds"] + s.total["se_madds"]) / 1e6
    assert got_total == pytest.approx(total, rel=0.005)
    assert s.groups["backbone"]["madds"] / 1e6 == pytest.approx(backbone, abs=0.05)
    if name == "mobiledet_cpu":
        assert s.total["madds"] / 1e6 == pytest.approx(CPU_CONV_MADDS, abs=0.05)
        assert s.total["se_madds"] / 1e6 == pytest.approx(CPU_SE_MADDS, abs=0.05)
    else:
        assert s.total["se_madds"] == 0


def test_rows_follow_the_spec_tables(summaries):
    s = summaries["mobiledet_cpu"]
    blocks = s.backbone_rows()
    assert len(blocks) == 20
    assert [b.type for b in blocks[:3]] == ["conv", "ibn_noexp", "ibn"]
    stem, ibn5 = blocks[0], blocks[7]
    assert (stem.kernel, stem.stride, stem.cin, stem.cout, stem.out_hw) == (3, 2, 3, 16, (160, 160))
    assert (ibn5.name, ibn5.kernel, ibn5.stride, ibn5.cin, ibn5.cout) == ("IBN_5", 5, 2, 32, 72)
    assert ibn5.label == "IBN k5 e8 +SE" and ibn5.out_hw == (20, 20)
    assert [b.endpoint for b in blocks if b.endpoint] == ["C1", "C2", "C3", "C4", "C5"]
    se_rows = [r for r in s.rows if r.type == "se"]
    assert len(se_rows) == 19 and se_rows[0].detail == "h8"
    # 1x1 SE convs + gating multiply of IBN_5: 2*256*64 + 20*20*256.
    assert se_rows[6].name == "IBN_5/SqueezeExcite"
    assert se_rows[6].se_madds == 2 * 256 * 64 + 20 * 20 * 256
    extra = [r for r in s.rows if r.group == "extra layers"]
    assert [(r.cout, r.out_hw, r.stride) for r in extra] == [
        (512, (5, 5), 2),
        (256, (3, 3), 2),
        (256, (2, 2), 2),
        (128, (1, 1), 2),
    ]
    heads = [r for r in s.rows if r.group == "heads"]
    assert [r.cout for r in heads[:2]] == [3 * 4, 3 * 91]
    assert len(heads) == 12
    tucker = summaries["mobiledet_dsp"].backbone_rows()[5]
    assert (tucker.type, tucker.label) == ("tucker", "Tucker k3 r0.25/0.75")
    table = summary_lib.format_table(s, detail=True)
    assert "442.5M (+4.9M SE gating; total 447.4M)" in table
    assert "4,205,423" in table and "backbone/IBN_5/SqueezeExcite/Conv_1" in table


def test_non_square_input():
    cfg = config_lib.base_config("mobiledet_edgetpu").model
    cfg.image_height, cfg.image_width = 256, 320
    s = summary_lib.summarize(cfg)
    assert s.input_hw == (256, 320)
    assert s.total["params"] == ALL_VARIABLES["mobiledet_edgetpu"]
    blocks = s.backbone_rows()
    assert blocks[0].out_hw == (128, 160) and blocks[-1].out_hw == (8, 10)
    assert [r.out_hw for r in s.rows if r.group == "extra layers"] == [
        (4, 5),
        (2, 3),
        (1, 2),
        (1, 1),
    ]
    # Conv MAdds scale with the area of the maps: below the 320x320 count, above 256x256's share.
    assert 0.75 * 1533e6 < s.total["madds"] < 0.82 * 1533e6
