"""``training.hlo_costs``: TPU layouts' tiling padding, instruction parsing, name stacks, and the
per-op costs of a tiny model compiled for the CPU (no TPU, no libtpu)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mobiledet_jax.training import hlo_costs


def test_tiled_layout_pads_the_minor_dimensions():
    # NHWC with C=16 most minor under an (8, 128) tile: C pads to 128 lanes, N (next in
    # minor-to-major order) to 8 sublanes (16 already is): 8x the logical bytes.
    (a,) = hlo_costs.parse_arrays("f32[16,160,160,16]{3,0,2,1:T(8,128)}")
    assert a.logical_bytes == 16 * 160 * 160 * 16 * 4
    assert a.padded_bytes == 16 * 160 * 160 * 128 * 4 and a.memory_space == 0
    (b,) = hlo_costs.parse_arrays("bf16[3,5,7]{0,2,1:T(8,128)(2,1)S(1)}")
    assert b.padded_bytes == 128 * 5 * 8 * 2  # dim 0 to 128, dim 2 to 8; dim 1 untouched
    assert b.memory_space == 1  # VMEM: on chip, not HBM traffic
    (c,) = hlo_costs.parse_arrays("f32[]{:T(128)}")
    assert c.padded_bytes == c.logical_bytes == 4
    assert [x.dtype for x in hlo_costs.parse_arrays("(s32[2]{0}, pred[], u32[]{:S(2)})")] == [
        "s32", "pred", "u32"
    ]  # fmt: skip


def test_instruction_and_name_stack():
    line = (
        "  %fusion.7 = (f32[8]{0:T(128)}, bf16[2,8]{1,0}) fusion(%a.1, %param_2.3), kind=kOutput, "
        'calls=%fused_computation.9, metadata={op_name="jit(step_fn)/transpose(jvp(SSDLite))/'
        'backbone/IBN_3/Conv/conv_general_dilated" stack_frame_id=1}'
    )
    ins = hlo_costs.parse_instruction(line)
    assert (ins.name, ins.opcode, ins.operands) == ("fusion.7", "fusion", ["a.1", "param_2.3"])
    assert [str(a) for a in ins.shape] == ["f32[8]{0:T(128)}", "bf16[2,8]{1,0}"]
    assert ins.attr("calls") == "fused_computation.9" and ins.attr("kind") == "kOutput"
    assert hlo_costs.module_of(ins.op_name) == ("backward", "SSDLite/backbone/IBN_3/Conv")
    assert hlo_costs.module_of("jit(step_fn)/jvp(SSDLite)/head/BoxPredictor_0/add") == (
        "forward", "SSDLite/head/BoxPredictor_0"
    )  # fmt: skip
    assert hlo_costs.module_of("jit(step_fn)/jvp()/reduce_sum") == ("forward", "loss")
    assert hlo_costs.module_of("jit(step_fn)/mul") == ("step", "mul")


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3), use_bias=False, name="Stem")(x)
        return nn.Dense(4, name="Head")(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("top", [3])
def test_tiny_model_on_cpu(top):
    """FLOPs of the conv and the dense layer by hand, each mapped back to its Flax module."""
    model = _Tiny()
    x = jnp.zeros((2, 8, 8, 3))
    params = model.init(jax.random.key(0), x)
    compiled = jax.jit(model.apply).lower(params, x).compile()
    s = hlo_costs.summary(compiled.as_text(), top)
    conv = 2 * (2 * 8 * 8 * 16) * (3 * 3 * 3)  # 2 x output elements x (kh kw cin)
    dense = 2 * (2 * 4) * 16
    assert s["flops"] == pytest.approx(conv + dense)
    by_module = {m["module"]: m for m in s["top_modules_by_bytes"]}
    assert len(s["top_by_flops"]) == top
    top_op = s["top_by_flops"][0]
    assert top_op["flops"] == pytest.approx(conv) and top_op["module"].endswith("Stem")
    assert any(k.endswith("Head") for k in by_module)
    # the output of the conv (2x8x8x16 f32) is read or written by some op: bytes are counted
    assert s["bytes"] >= 2 * 8 * 8 * 16 * 4
    assert all(r["pass"] == "step" for r in s["top_by_bytes"])  # no jvp/transpose here
