"""Fused per-slice merge kernels (numba, CPU): one pass over memory per step, stored dtypes in and out.

Each kernel reads the base and expert slices as stored (float32, or bfloat16 / float16 as raw 16-bit
patterns: `uint16` arrays hold bfloat16, `int16` arrays hold float16), converts each entry to float32 in a
register, and writes the output dtype directly. The float32 arithmetic repeats the reference path's
operations in the same order (`mergelab.methods`, torch on the CPU): sums over experts accumulate from +0 in
expert order, `add_(x, alpha=w)` is a fused multiply-add as torch's CPU kernels do, scalars are rounded to
float32 before use, division stays division. Nothing is compiled with fast-math or FMA contraction, so
results are bit-identical to the reference. The kernels release the GIL, so threads can run them on
different slices at once.

Magnitude histograms use the float32 bit pattern of |tau| (non-negative floats order like their bits):
32768 coarse bins of the top 15 bits, then 65536 fine bins of the low 16 bits inside one coarse bin.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

SIGN_SUM, SIGN_COUNT = 0, 1
AGG_MEAN, AGG_SUM, AGG_MEAN_ALL = 0, 1, 2
FLOAT32_TINY = np.float32(np.finfo(np.float32).tiny)

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _bits_of_f32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once, as torch's vectorized `add(other, alpha)`."""

    def codegen(context, builder, signature, args):
        single = ir.FloatType()
        fma = builder.module.declare_intrinsic("llvm.fma", [single], ir.FunctionType(single, [single] * 3))
        return builder.call(fma, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True)
def _half_to_f32(bits):
    """float16 bit pattern (uint32) to float32, exactly."""
    sign = (bits & np.uint32(0x8000)) << np.uint32(16)
    exponent = (bits >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = bits & np.uint32(0x3FF)
    if exponent == 0:
        magnitude = np.float32(mantissa) * np.float32(2.0**-24)  # zero or subnormal: exact
        return _f32_from_bits(_bits_of_f32(magnitude) | sign)
    if exponent == 31:
        return _f32_from_bits(sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13)))
    return _f32_from_bits(sign | ((exponent + np.uint32(112)) << np.uint32(23)) | (mantissa << np.uint32(13)))


@njit(cache=True)
def _f32_to_half(value):
    """float32 to a float16 bit pattern, round to nearest even (c10::Half's algorithm)."""
    base = (np.float32(abs(value)) * _f32_from_bits(np.uint32(0x77800000))) * _f32_from_bits(
        np.uint32(0x08800000)
    )
    w = _bits_of_f32(value)
    shl1_w = np.uint32((w + w) & np.uint32(0xFFFFFFFF))  # numba widens uint32 sums: wrap explicitly
    sign = w & np.uint32(0x80000000)
    bias = shl1_w & np.uint32(0xFF000000)
    if bias < np.uint32(0x71000000):
        bias = np.uint32(0x71000000)
    base = _f32_from_bits((bias >> np.uint32(1)) + np.uint32(0x07800000)) + base
    bits = _bits_of_f32(base)
    exp_bits = (bits >> np.uint32(13)) & np.uint32(0x00007C00)
    mantissa_bits = bits & np.uint32(0x00000FFF)
    nonsign = exp_bits + mantissa_bits
    if shl1_w > np.uint32(0xFF000000):
        nonsign = np.uint32(0x7E00)
    return np.uint16((sign >> np.uint32(16)) | nonsign)


@njit(cache=True)
def _f32_to_bf16(value):
    """float32 to a bfloat16 bit pattern, round to nearest even (c10::BFloat16's algorithm)."""
    if value != value:
        return np.uint16(0x7FC0)
    bits = _bits_of_f32(value)
    bits = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return np.uint16(bits >> np.uint32(16))


def _load(array, index):
    """Entry `index` of a stored array as float32."""


@overload(_load)
def _load_impl(array, index):
    if array.dtype == types.float32:

        def load_float32(array, index):
            return array[index]

        return load_float32
    if array.dtype == types.uint16:

        def load_bf16(array, index):
            return _f32_from_bits(np.uint32(array[index]) << np.uint32(16))

        return load_bf16
    if array.dtype == types.int16:

        def load_half(array, index):
            return _half_to_f32(np.uint32(array[index]) & np.uint32(0xFFFF))

        return load_half
    return None


def _store(array, index, value):
    """Write float32 `value` into a stored array, rounding to its dtype."""


@overload(_store)
def _store_impl(array, index, value):
    if array.dtype == types.float32:

        def store_float32(array, index, value):
            array[index] = value

        return store_float32
    if array.dtype == types.uint16:

        def store_bf16(array, index, value):
            array[index] = _f32_to_bf16(value)

        return store_bf16
    if array.dtype == types.int16:

        def store_half(array, index, value):
            array[index] = np.int16(_f32_to_half(value))

        return store_half
    return None


@njit(cache=True)
def _magnitude_bits(base, expert, index, base_value):
    return _bits_of_f32(_load(expert, index) - base_value) & np.uint32(0x7FFFFFFF)


@njit(**_JIT)
def high_histograms(base, experts, histograms):
    """Add each expert's coarse histogram of |expert - base| (top 15 bits) to `histograms[expert]`."""
    for index in range(base.size):
        base_value = _load(base, index)
        for expert_index in range(len(experts)):
            bits = _magnitude_bits(base, experts[expert_index], index, base_value)
            histograms[expert_index, bits >> np.uint32(16)] += 1


@njit(**_JIT)
def low_histograms(base, experts, cut_high, histograms):
    """Add each expert's fine histogram (low 16 bits) of the magnitudes in its coarse bin `cut_high`."""
    for index in range(base.size):
        base_value = _load(base, index)
        for expert_index in range(len(experts)):
            bits = _magnitude_bits(base, experts[expert_index], index, base_value)
            if np.int64(bits >> np.uint32(16)) == cut_high[expert_index]:
                histograms[expert_index, bits & np.uint32(0xFFFF)] += 1


@njit(**_JIT)
def tie_counts(base, experts, thresholds, counts):
    """Add to `counts[expert]` how many magnitudes equal that expert's threshold."""
    for index in range(base.size):
        base_value = _load(base, index)
        for expert_index in range(len(experts)):
            if abs(_load(experts[expert_index], index) - base_value) == thresholds[expert_index]:
                counts[expert_index] += 1


@njit(cache=True)
def _sign(value):
    return np.float32(value > 0) - np.float32(value < 0)


_BLOCK = 512  # entries per block: the kernels run expert by expert over a block that stays in L1


@njit(**_JIT)
def ties_slice(
    base,
    experts,
    thresholds,
    ties_to_keep,
    weights,
    scale,
    sign_rule,
    elect,
    agg,
    mean_all_divisor,
    majority_sign,
    out,
    other_index,
    other_value,
):
    """TIES on one slice: trim, elect, disjoint merge, `base + scale * merged` into `out`.

    Each expert keeps magnitudes above its threshold plus its first `ties_to_keep` magnitudes equal to it.
    Zero votes take `majority_sign`. When `other_index` is not empty, the entries whose result depends on
    that sign (zero vote, some nonzero kept value) also get their result for the opposite sign, recorded
    as (`other_index`, `other_value`), so a caller that learns the majority sign only after the pass can
    patch them (`store_entries`) instead of making a second pass. With an empty `out` it only sums the
    signs. Returns (sum of elected signs before zero resolution, number of entries recorded).

    A trimmed entry is held as 0: in the reference it is `tau * 0`, which adds nothing to the sums (they
    start at +0 and never become -0) and agrees with no sign, exactly like a kept zero.
    """
    n_experts = len(experts)
    taken = np.zeros(n_experts, np.int64)
    base_block = np.empty(_BLOCK, np.float32)
    kept = np.empty((n_experts, _BLOCK), np.float32)
    vote = np.empty(_BLOCK, np.float32)
    elected = np.empty(_BLOCK, np.float32)
    merged = np.empty(_BLOCK, np.float32)
    total_weight = np.empty(_BLOCK, np.float32)
    zero = np.float32(0.0)
    sign_total = 0
    n_other = 0
    write = out.size > 0
    record = other_index.size > 0 and elect
    for start in range(0, base.size, _BLOCK):
        size = min(_BLOCK, base.size - start)
        for j in range(size):
            base_block[j] = _load(base, start + j)
            vote[j] = zero
        for expert_index in range(n_experts):
            expert = experts[expert_index]
            threshold = thresholds[expert_index]
            row = kept[expert_index]
            ties = 0
            for j in range(size):
                tau = _load(expert, start + j) - base_block[j]
                magnitude = abs(tau)
                ties += magnitude == threshold
                row[j] = tau if magnitude > threshold else zero
            if ties > 0 and taken[expert_index] < ties_to_keep[expert_index]:
                for j in range(size):  # the ties at the cut, first come in flattened order
                    tau = _load(expert, start + j) - base_block[j]
                    if abs(tau) == threshold and taken[expert_index] < ties_to_keep[expert_index]:
                        row[j] = tau
                        taken[expert_index] += 1
            if sign_rule == SIGN_SUM:
                for j in range(size):
                    vote[j] = vote[j] + row[j]
            else:
                for j in range(size):
                    vote[j] = vote[j] + _sign(row[j])
        block_total = zero
        for j in range(size):
            elected[j] = _sign(vote[j])
            block_total += elected[j]
        sign_total += np.int64(block_total)
        if not write:
            continue
        if elect:
            for j in range(size):
                if elected[j] != 0:
                    continue
                if record and _decisive(kept, j):
                    other = _disjoint_entry(kept, j, -majority_sign, elect, weights, agg, mean_all_divisor)
                    other_index[n_other] = start + j
                    other_value[n_other] = base_block[j] + scale * other
                    n_other += 1
                elected[j] = majority_sign
        _disjoint_block(kept, elected, elect, weights, size, merged, total_weight)
        for j in range(size):
            value = _aggregate(merged[j], total_weight[j], agg, mean_all_divisor)
            _store(out, start + j, base_block[j] + scale * value)
    return sign_total, n_other


@njit(cache=True)
def _decisive(kept, j):
    """Some expert kept a nonzero value at block entry `j` (so its elected sign matters)."""
    for expert_index in range(kept.shape[0]):
        if kept[expert_index, j] != 0:
            return True
    return False


@njit(cache=True)
def _disjoint_block(kept, elected, elect, weights, size, merged, total_weight):
    """Per block entry: weighted sum and total weight of the kept values that agree with `elected` (all
    nonzero kept values without `elect`), accumulated in expert order from +0."""
    zero = np.float32(0.0)
    for j in range(size):
        merged[j] = zero
        total_weight[j] = zero
    for expert_index in range(kept.shape[0]):
        weight = weights[expert_index]
        row = kept[expert_index]
        for j in range(size):
            agrees = row[j] * elected[j] > 0 if elect else row[j] != 0
            merged[j] = merged[j] + (row[j] * weight if agrees else zero)
            total_weight[j] = total_weight[j] + (weight if agrees else zero)


@njit(cache=True)
def _disjoint_entry(kept, j, elected, elect, weights, agg, mean_all_divisor):
    """`_disjoint_block` and `_aggregate` for one entry and one elected sign."""
    merged = np.float32(0.0)
    total_weight = np.float32(0.0)
    for expert_index in range(kept.shape[0]):
        value = kept[expert_index, j]
        if (value * elected > 0) if elect else (value != 0):
            merged = merged + value * weights[expert_index]
            total_weight = total_weight + weights[expert_index]
    return _aggregate(merged, total_weight, agg, mean_all_divisor)


@njit(cache=True)
def _aggregate(merged, total_weight, agg, mean_all_divisor):
    if agg == AGG_MEAN:
        return merged / (total_weight if total_weight > FLOAT32_TINY else FLOAT32_TINY)
    if agg == AGG_MEAN_ALL:
        return merged / mean_all_divisor
    return merged


@njit(**_JIT)
def store_entries(out, indices, values):
    """`out[indices] = values`, rounded to `out`'s dtype."""
    for position in range(indices.size):
        _store(out, indices[position], values[position])


@njit(**_JIT)
def task_arithmetic_slice(base, experts, weights, scale, out):
    """`base + scale * sum_i fma(expert_i - base, w_i)` into `out`."""
    for index in range(base.size):
        base_value = _load(base, index)
        summed = np.float32(0.0)
        for expert_index in range(len(experts)):
            summed = _fma(_load(experts[expert_index], index) - base_value, weights[expert_index], summed)
        _store(out, index, base_value + scale * summed)


@njit(**_JIT)
def average_slice(experts, weights, out):
    """`expert_0 * w_0` then `fma(expert_i, w_i, .)` for the rest (weights already normalized) into `out`."""
    for index in range(out.size):
        merged = _load(experts[0], index) * weights[0]
        for expert_index in range(1, len(experts)):
            merged = _fma(_load(experts[expert_index], index), weights[expert_index], merged)
        _store(out, index, merged)


# --- DARE: torch's CPU generator (mt19937) and `torch.rand(n) < density`, reproduced bit for bit.

_MT_N, _MT_M = 624, 397


@njit(cache=True)
def _mt_mix(state, i, j, k):
    y = (state[i] & np.uint32(0x80000000)) | (state[j] & np.uint32(0x7FFFFFFF))
    value = state[k] ^ (y >> np.uint32(1))
    if y & np.uint32(1):
        value ^= np.uint32(0x9908B0DF)
    state[i] = value


@njit(**_JIT)
def _mt_twist(state):
    for i in range(_MT_N - _MT_M):
        _mt_mix(state, i, i + 1, i + _MT_M)
    for i in range(_MT_N - _MT_M, _MT_N - 1):
        _mt_mix(state, i, i + 1, i + _MT_M - _MT_N)
    _mt_mix(state, _MT_N - 1, 0, _MT_M - 1)


@njit(**_JIT)
def dare_keep_bits(seed, n_entries, keep_below, bits):
    """Packed keep mask (bit j of byte j // 8 is entry j, little-endian within a byte) of
    `torch.rand(n_entries, generator=torch.Generator().manual_seed(seed)) < density`, where a draw keeps
    when its 24-bit integer is below `keep_below` (= ceil(float32(density) * 2**24)).

    torch seeds mt19937 with the seed's low 32 bits and draws one 32-bit word per float32, of which
    `uniform_` uses the low 24 bits.
    """
    state = np.empty(_MT_N, np.uint32)
    state[0] = np.uint32(seed & 0xFFFFFFFF)
    for j in range(1, _MT_N):
        previous = np.uint64(state[j - 1])
        state[j] = np.uint32(
            (np.uint64(1812433253) * (previous ^ (previous >> np.uint64(30))) + np.uint64(j))
            & np.uint64(0xFFFFFFFF)
        )
    position = _MT_N
    bits[:] = 0
    for index in range(n_entries):
        if position == _MT_N:
            _mt_twist(state)
            position = 0
        y = state[position]
        position += 1
        y ^= y >> np.uint32(11)
        y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
        y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
        y ^= y >> np.uint32(18)
        if np.int64(y & np.uint32(0xFFFFFF)) < keep_below:
            bits[index >> 3] |= np.uint8(1 << (index & 7))


@njit(cache=True)
def _dare_rows(base_block, experts, keep_bits, offset, start, size, density, dropping, kept):
    """Each expert's dropped-and-rescaled task vector over one block: `tau / density` where the mask
    keeps it (`tau` without dropping), 0 where it drops it (the reference's `tau * 0`, as in `ties_slice`)."""
    zero = np.float32(0.0)
    for expert_index in range(len(experts)):
        expert = experts[expert_index]
        row = kept[expert_index]
        bits = keep_bits[expert_index]
        for j in range(size):
            tau = _load(expert, start + j) - base_block[j]
            if dropping:
                position = offset + start + j
                keep = (bits[position >> 3] >> np.uint8(position & 7)) & np.uint8(1)
                row[j] = tau / density if keep else zero
            else:
                row[j] = tau


@njit(**_JIT)
def dare_linear_slice(base, experts, keep_bits, offset, density, dropping, weights, scale, out):
    """DARE with `combine: linear`: `base + scale * sum_i w_i * tau_i / density` over kept entries."""
    n_experts = len(experts)
    base_block = np.empty(_BLOCK, np.float32)
    kept = np.empty((n_experts, _BLOCK), np.float32)
    merged = np.empty(_BLOCK, np.float32)
    for start in range(0, base.size, _BLOCK):
        size = min(_BLOCK, base.size - start)
        for j in range(size):
            base_block[j] = _load(base, start + j)
            merged[j] = np.float32(0.0)
        _dare_rows(base_block, experts, keep_bits, offset, start, size, density, dropping, kept)
        for expert_index in range(n_experts):
            weight = weights[expert_index]
            row = kept[expert_index]
            for j in range(size):
                merged[j] = merged[j] + row[j] * weight
        for j in range(size):
            _store(out, start + j, base_block[j] + scale * merged[j])


@njit(**_JIT)
def dare_ties_slice(
    base,
    experts,
    keep_bits,
    offset,
    density,
    dropping,
    weights,
    scale,
    majority_sign,
    out,
    other_index,
    other_value,
):
    """DARE with `combine: ties` (sign of the sum, disjoint mean) into `out`; zero votes take
    `majority_sign` and are recorded with their result for the opposite sign, as in `ties_slice`.
    Returns (sum of elected signs before zero resolution, number of entries recorded)."""
    n_experts = len(experts)
    base_block = np.empty(_BLOCK, np.float32)
    kept = np.empty((n_experts, _BLOCK), np.float32)
    vote = np.empty(_BLOCK, np.float32)
    elected = np.empty(_BLOCK, np.float32)
    merged = np.empty(_BLOCK, np.float32)
    total_weight = np.empty(_BLOCK, np.float32)
    sign_total = 0
    n_other = 0
    for start in range(0, base.size, _BLOCK):
        size = min(_BLOCK, base.size - start)
        for j in range(size):
            base_block[j] = _load(base, start + j)
        _dare_rows(base_block, experts, keep_bits, offset, start, size, density, dropping, kept)
        for j in range(size):
            vote[j] = np.float32(0.0)
        for expert_index in range(n_experts):
            row = kept[expert_index]
            for j in range(size):
                vote[j] = vote[j] + row[j]
        block_total = np.float32(0.0)
        for j in range(size):
            elected[j] = _sign(vote[j])
            block_total += elected[j]
        sign_total += np.int64(block_total)
        for j in range(size):
            if elected[j] != 0:
                continue
            if _decisive(kept, j):
                other = _disjoint_entry(kept, j, -majority_sign, True, weights, AGG_MEAN, np.float32(1.0))
                other_index[n_other] = start + j
                other_value[n_other] = base_block[j] + scale * other
                n_other += 1
            elected[j] = majority_sign
        _disjoint_block(kept, elected, True, weights, size, merged, total_weight)
        for j in range(size):
            value = _aggregate(merged[j], total_weight[j], AGG_MEAN, np.float32(1.0))
            _store(out, start + j, base_block[j] + scale * value)
    return sign_total, n_other
