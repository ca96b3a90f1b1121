// refspec_exp: spec.exp transcribed operation for operation (refspec/spec.py, "exp"; SPEC.md, "exp").
// Every constant is the binary32 value the spec names, written in hexadecimal so it is exact. No libm call.
#pragma once
#include "portable.h"

#define RS_EXP_LOG2E 0x1.715476p+0f     // spec.EXP_LOG2E, log2(e) rounded to binary32
#define RS_EXP_LN2_HI 0x1.63p-1f        // spec.EXP_LN2_HI = 355/512
#define RS_EXP_LN2_LO (-0x1.bd0106p-13f) // spec.EXP_LN2_LO = ln(2) - EXP_LN2_HI, rounded
#define RS_EXP_ROUND 0x1.8p+23f         // spec.EXP_ROUND = 1.5 * 2**23: rounds to an integer, ties to even
#define RS_EXP_X_MAX 88.0f              // spec.EXP_X_MAX
#define RS_EXP_X_MIN (-87.0f)           // spec.EXP_X_MIN

RS_DEVICE float refspec_exp(float x) {
  if (rs_isnan(x)) return x;  // NaN in, NaN out (its payload is not specified)
  const float xc = x < RS_EXP_X_MIN ? RS_EXP_X_MIN : (x > RS_EXP_X_MAX ? RS_EXP_X_MAX : x);
  // k = (xc * log2e + 1.5*2**23) - 1.5*2**23: each step rounded, nothing folded.
  const float k = rs_sub(rs_add(rs_mul(xc, RS_EXP_LOG2E), RS_EXP_ROUND), RS_EXP_ROUND);
  const float r = rs_sub(rs_sub(xc, rs_mul(k, RS_EXP_LN2_HI)), rs_mul(k, RS_EXP_LN2_LO));
  // Horner form of the degree-7 Taylor polynomial, coefficients spec.EXP_POLY = 1/7!, 1/6!, ..., 1/0!.
  float p = rs_add(rs_mul(r, 0x1.a01a02p-13f), 0x1.6c16c2p-10f);
  p = rs_add(rs_mul(p, r), 0x1.111112p-7f);
  p = rs_add(rs_mul(p, r), 0x1.555556p-5f);
  p = rs_add(rs_mul(p, r), 0x1.555556p-3f);
  p = rs_add(rs_mul(p, r), 0x1.0p-1f);
  p = rs_add(rs_mul(p, r), 1.0f);
  p = rs_add(rs_mul(p, r), 1.0f);
  const float scale = rs_as_float(((int)k + 127) << 23);  // 2**k from its bits, exact: k is in [-126, 127]
  p = rs_mul(p, scale);
  if (x > RS_EXP_X_MAX) p = rs_as_float(0x7f800000);  // +inf
  if (x < RS_EXP_X_MIN) p = 0.0f;
  return p;
}

// spec.silu: x / (1 + exp(-x)); spec.silu_mul of one value: silu(g) * u. Each step rounded.
RS_DEVICE float rs_silu(float x) { return rs_div(x, rs_add(1.0f, refspec_exp(-x))); }
RS_DEVICE float rs_silu_mul(float g, float u) { return rs_mul(rs_silu(g), u); }
