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

// The spec's tree for N sums of a group at once, each lane holding its lane value of every sum in slots
// 0 .. N-1 (q8_gemv: slot i*R + r is weight row i, activation row r; attention: head i, column c). At each
// offset (16, 8, 4, 2, 1) the group halves the slots it carries while their count is even: a lane keeps the
// half selected by its offset bit and sends the other half to its partner, which adds it to the same slots
// (lane value + partner's lane value, as in rs_lane_tree). With an odd count every slot is exchanged, and the
// lanes with the offset bit set hold duplicates. Every slot sees rs_lane_tree's additions, with 62 exchanges
// for 64 slots instead of 5 * 64. Templates keep every index a compile-time constant (no register array may go
// to memory). After the last level this lane holds slots first .. first+COUNT-1.
template <int COUNT, int OFFSET>
struct RsTreeCount {  // how many slots a lane holds after the levels OFFSET, OFFSET/2, ..., 1
  static constexpr int value = RsTreeCount<COUNT % 2 == 0 ? COUNT / 2 : COUNT, OFFSET / 2>::value;
};
template <int COUNT>
struct RsTreeCount<COUNT, 0> {
  static constexpr int value = COUNT;
};

template <int N, int COUNT, int OFFSET>
struct RsTreeSlots {
  RS_DEVICE void run(float (&v)[N], int lane, int& first, bool& owner) {
    if (COUNT % 2 == 0) {
      constexpr int half = COUNT / 2;
      const bool upper = (lane & OFFSET) != 0;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const float low = rs_opaque(v[i]), high = rs_opaque(v[half + i]);
        const float send = upper ? low : high;
        const float keep = upper ? high : low;
        v[i] = rs_add(keep, rs_shfl_xor(send, OFFSET));
      }
      if (upper) first += half;
      RsTreeSlots<N, COUNT % 2 == 0 ? COUNT / 2 : COUNT, OFFSET / 2>::run(v, lane, first, owner);
    } else {
#pragma unroll
      for (int i = 0; i < COUNT; ++i) v[i] = rs_add(v[i], rs_shfl_xor(v[i], OFFSET));
      if (lane & OFFSET) owner = false;
      RsTreeSlots<N, COUNT, OFFSET / 2>::run(v, lane, first, owner);
    }
  }
};

template <int N, int COUNT>
struct RsTreeSlots<N, COUNT, 0> {
  RS_DEVICE void run(float (&)[N], int, int&, bool&) {}
};
