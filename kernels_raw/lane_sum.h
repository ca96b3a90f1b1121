// The tree of spec.lane_sum on a group of 32 lanes (refspec/spec.py, "_tree"; SPEC.md, "Reductions").
//
// Each lane holds its lane value: +0.0 plus, in order, the elements l, l+32, l+64, ... it was given. The spec
// adds lane i+16 onto lane i, then i+8, 4, 2, 1 apart. The xor butterfly below does the same additions: at
// offset o, lane l adds lane l^o, which for l < o is exactly the spec's acc[l] + acc[l+o]; the lanes above
// compute the same sums with the operands swapped (addition is commutative), so every lane ends with the
// spec's result. A group that is half of a 64-wide wavefront never exchanges with the other half.
#pragma once
#include "portable.h"

RS_DEVICE float rs_lane_tree(float v) {
#pragma unroll
  for (int offset = RS_LANES / 2; offset >= 1; offset /= 2) v = rs_add(v, rs_shfl_xor(v, offset));
  return v;
}

// np.max's rule for float32: NaN wins, otherwise the larger value (exact in any order).
RS_DEVICE float rs_max_nan(float m, float v) { return (v > m || rs_isnan(v)) ? v : m; }
