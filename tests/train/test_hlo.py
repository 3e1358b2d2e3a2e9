"""HBM and ICI traffic of hand-written optimized HLO (fourm_jax/train/hlo.py)."""
# ruff: noqa: E501  (lines of HLO text are as long as XLA prints them)

import pytest

from fourm_jax.train import hlo

# A scanned stack of 6 layers: the loop reads one layer's f32[64,64] weights out of the stacked
# f32[6,64,64] (a dynamic-slice inside a fusion), multiplies the bf16[8,64] activations by them,
# all-reduces the product, and writes it into row i of an f32[6,8,64] output in place.
# Around the loop: a convert of the input and a VMEM-resident (S(1)) result that costs no HBM.
SCANNED = """
HloModule scanned, entry_computation_layout={(f32[6,64,64]{2,1,0}, bf16[8,64]{1,0})->f32[6,8,64]{2,1,0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(f32[] %a, f32[] %b)
}

%layer_matmul (p0: f32[6,64,64], p1: s32[], p2: bf16[8,64]) -> f32[8,64] {
  %p0 = f32[6,64,64]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  %weights = f32[1,64,64]{2,1,0} dynamic-slice(f32[6,64,64]{2,1,0} %p0, s32[] %p1, s32[] %zero, s32[] %zero), dynamic_slice_sizes={1,64,64}
  %w = f32[64,64]{1,0} bitcast(f32[1,64,64]{2,1,0} %weights)
  %p2 = bf16[8,64]{1,0} parameter(2)
  %x = f32[8,64]{1,0} convert(bf16[8,64]{1,0} %p2)
  ROOT %dot = f32[8,64]{1,0} dot(f32[8,64]{1,0} %x, f32[64,64]{1,0} %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%write_row (q0: f32[6,8,64], q1: f32[8,64], q2: s32[]) -> f32[6,8,64] {
  %q0 = f32[6,8,64]{2,1,0} parameter(0)
  %q1 = f32[8,64]{1,0} parameter(1)
  %row = f32[1,8,64]{2,1,0} bitcast(f32[8,64]{1,0} %q1)
  %q2 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = f32[6,8,64]{2,1,0} dynamic-update-slice(f32[6,8,64]{2,1,0} %q0, f32[1,8,64]{2,1,0} %row, s32[] %q2, s32[] %z, s32[] %z)
}

%body (state: (s32[], f32[6,64,64], bf16[8,64], f32[6,8,64])) -> (s32[], f32[6,64,64], bf16[8,64], f32[6,8,64]) {
  %state = (s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %state), index=0
  %stack = f32[6,64,64]{2,1,0} get-tuple-element((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %state), index=1
  %acts = bf16[8,64]{1,0} get-tuple-element((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %state), index=2
  %out = f32[6,8,64]{2,1,0} get-tuple-element((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %state), index=3
  %product = f32[8,64]{1,0} fusion(f32[6,64,64]{2,1,0} %stack, s32[] %i, bf16[8,64]{1,0} %acts), kind=kOutput, calls=%layer_matmul
  %reduced = f32[8,64]{1,0} all-reduce(f32[8,64]{1,0} %product), replica_groups={{0,1,2,3}}, to_apply=%add
  %written = f32[6,8,64]{2,1,0} fusion(f32[6,8,64]{2,1,0} %out, f32[8,64]{1,0} %reduced, s32[] %i), kind=kLoop, calls=%write_row
  %one = s32[] constant(1)
  %next = s32[] add(s32[] %i, s32[] %one)
  ROOT %carry = (s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) tuple(s32[] %next, f32[6,64,64]{2,1,0} %stack, bf16[8,64]{1,0} %acts, f32[6,8,64]{2,1,0} %written)
}

%condition (cstate: (s32[], f32[6,64,64], bf16[8,64], f32[6,8,64])) -> pred[] {
  %cstate = (s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) parameter(0)
  %ci = s32[] get-tuple-element((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %cstate), index=0
  %limit = s32[] constant(6)
  ROOT %less = pred[] compare(s32[] %ci, s32[] %limit), direction=LT
}

ENTRY %main (weights: f32[6,64,64], inputs: bf16[8,64]) -> f32[6,8,64] {
  %weights = f32[6,64,64]{2,1,0} parameter(0)
  %inputs = bf16[8,64]{1,0} parameter(1)
  %scaled = bf16[8,64]{1,0:S(1)} multiply(bf16[8,64]{1,0} %inputs, bf16[8,64]{1,0} %inputs)
  %start = s32[] constant(0)
  %init = f32[6,8,64]{2,1,0} broadcast(f32[] constant(0)), dimensions={}
  %loop_in = (s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) tuple(s32[] %start, f32[6,64,64]{2,1,0} %weights, bf16[8,64]{1,0} %scaled, f32[6,8,64]{2,1,0} %init)
  %loop = (s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) while((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %loop_in), condition=%condition, body=%body
  ROOT %result = f32[6,8,64]{2,1,0} get-tuple-element((s32[], f32[6,64,64]{2,1,0}, bf16[8,64]{1,0}, f32[6,8,64]{2,1,0}) %loop), index=3
}
"""

LAYER_WEIGHTS = 64 * 64 * 4  # one layer's f32 weights, the slice the loop reads
ACTS_BF16 = 8 * 64 * 2
PRODUCT_F32 = 8 * 64 * 4


def test_loop_trip_count_from_its_condition():
    traffic = hlo.step_traffic(SCANNED)
    assert traffic.loops == (hlo.Loop(body="body", trip_count=6),)


def test_hbm_bytes_count_slices_in_place_updates_and_trip_counts():
    traffic = hlo.step_traffic(SCANNED)
    # Per iteration: the matmul fusion reads one layer's weights (not the stack), the activations,
    # and writes the product; the all-reduce reads and writes the product; the in-place row update
    # reads the product and writes one row (not the whole output); the counter add moves 3 scalars.
    per_iteration = ((LAYER_WEIGHTS + ACTS_BF16 + 4 + PRODUCT_F32) + 2 * PRODUCT_F32
                     + (PRODUCT_F32 + 4 + PRODUCT_F32) + 3 * 4)
    # Outside: the multiply writes to VMEM (S(1)) and reads its operand twice from HBM; the
    # broadcast reads a scalar constant (a free instruction: 0) and writes the output buffer.
    outside = 2 * ACTS_BF16 + 6 * 8 * 64 * 4
    assert traffic.hbm_bytes == pytest.approx(6 * per_iteration + outside)


def test_ici_bytes_of_an_all_reduce_in_a_loop():
    traffic = hlo.step_traffic(SCANNED)
    assert traffic.ici_bytes == {"all-reduce": pytest.approx(6 * 2 * PRODUCT_F32)}


def test_data_dependent_loop_counts_its_body_once():
    text = SCANNED.replace("%limit = s32[] constant(6)", "%limit = s32[] get-tuple-element(%cstate), index=0")
    traffic = hlo.step_traffic(text)
    assert traffic.loops == (hlo.Loop(body="body", trip_count=None),)
    assert traffic.ici_bytes["all-reduce"] == pytest.approx(2 * PRODUCT_F32)


def test_text_without_entry_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo.step_traffic(SCANNED.replace("ENTRY %main", "%main"))


# Collectives the TPU compiler puts inside fusions: an all-gather fused with its consumer
# (`async_collective_fusion`), a reduce-scatter written as an all-reduce whose fusion keeps one
# slice of it (`all-reduce-scatter`), and, for contrast, a fused all-reduce whose whole result is used.
FUSED_COLLECTIVES = """
HloModule fused_collectives, entry_computation_layout={(bf16[8,64]{1,0}, f32[32,64]{1,0})->(bf16[32,64]{1,0}, f32[8,64]{1,0}, f32[32,64]{1,0})}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(f32[] %a, f32[] %b)
}

%async_collective_fusion (g0: bf16[8,64]) -> bf16[32,64] {
  %g0 = bf16[8,64]{1,0} parameter(0)
  %gathered = bf16[32,64]{1,0} all-gather(bf16[8,64]{1,0} %g0), replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %negated = bf16[32,64]{1,0} negate(bf16[32,64]{1,0} %gathered)
}

%all-reduce-scatter (r0: f32[32,64]) -> f32[8,64] {
  %r0 = f32[32,64]{1,0} parameter(0)
  %summed = (f32[32,64]{1,0}) all-reduce(f32[32,64]{1,0} %r0), replica_groups={{0,1,2,3}}, to_apply=%add
  %element = f32[32,64]{1,0} get-tuple-element((f32[32,64]{1,0}) %summed), index=0
  %pid = u32[] partition-id()
  %eight = u32[] constant(8)
  %offset = u32[] multiply(u32[] %pid, u32[] %eight)
  %zero = u32[] constant(0)
  ROOT %shard = f32[8,64]{1,0} dynamic-slice(f32[32,64]{1,0} %element, u32[] %offset, u32[] %zero), dynamic_slice_sizes={8,64}
}

%all_reduce_whole (s0: f32[32,64]) -> f32[32,64] {
  %s0 = f32[32,64]{1,0} parameter(0)
  %whole = f32[32,64]{1,0} all-reduce(f32[32,64]{1,0} %s0), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %scaled = f32[32,64]{1,0} multiply(f32[32,64]{1,0} %whole, f32[32,64]{1,0} %whole)
}

ENTRY %main (shard: bf16[8,64], grads: f32[32,64]) -> (bf16[32,64], f32[8,64], f32[32,64]) {
  %shard = bf16[8,64]{1,0} parameter(0)
  %grads = f32[32,64]{1,0} parameter(1)
  %weights = bf16[32,64]{1,0} fusion(bf16[8,64]{1,0} %shard), kind=kOutput, calls=%async_collective_fusion
  %scattered = f32[8,64]{1,0} fusion(f32[32,64]{1,0} %grads), kind=kCustom, calls=%all-reduce-scatter
  %reduced = f32[32,64]{1,0} fusion(f32[32,64]{1,0} %grads), kind=kLoop, calls=%all_reduce_whole
  ROOT %out = (bf16[32,64]{1,0}, f32[8,64]{1,0}, f32[32,64]{1,0}) tuple(bf16[32,64]{1,0} %weights, f32[8,64]{1,0} %scattered, f32[32,64]{1,0} %reduced)
}
"""


def test_ici_bytes_of_collectives_inside_fusions():
    traffic = hlo.step_traffic(FUSED_COLLECTIVES)
    grads_f32 = 32 * 64 * 4
    assert traffic.ici_bytes == {"all-gather": pytest.approx(32 * 64 * 2),  # the gathered result
                                 "reduce-scatter": pytest.approx(grads_f32),  # the operand, once
                                 "all-reduce": pytest.approx(2 * grads_f32)}
