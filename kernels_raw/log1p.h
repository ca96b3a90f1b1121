// refspec_log1p: spec.log1p transcribed operation for operation (refspec/spec.py, "log1p"; SPEC.md, "log1p"),
// for y >= 0. Every constant is the binary32 value the spec names, in hexadecimal so it is exact. No libm.
#pragma once
#include "portable.h"

#define RS_LOG_SQRT2 0x1.6a09e6p+0f      // spec.LOG_SQRT2: sqrt(2) rounded down
#define RS_LOG_LN2_HI 0x1.63p-1f         // spec.LOG_LN2_HI = 355/512
#define RS_LOG_LN2_LO (-0x1.bd0106p-13f) // spec.LOG_LN2_LO

RS_DEVICE float refspec_log1p(float y) {
  if (rs_isnan(y) || !rs_isfinite(y)) return y;  // NaN stays NaN, +inf stays +inf
  const float u = rs_add(1.0f, y);
  if (u == 1.0f) return y;  // y below half an ulp of 1
  const float c = rs_div(rs_sub(y, rs_sub(u, 1.0f)), u);  // what rounding 1 + y lost, relative to u
  const int bits = rs_as_int(u);
  int e = (bits >> 23) - 127;
  float m = rs_as_float((bits & 0x7FFFFF) | 0x3F800000);  // u's significand, in [1, 2)
  if (m > RS_LOG_SQRT2) {
    m = rs_mul(m, 0.5f);  // exact
    e += 1;
  }
  const float f = rs_sub(m, 1.0f);
  const float s = rs_div(f, rs_add(2.0f, f));
  const float z = rs_mul(s, s);
  // spec.LOG_POLY = 2/3, 2/5, 2/7, 2/9, 2/11 in Horner form from the last
  float p = rs_add(rs_mul(z, 0x1.745d18p-3f), 0x1.c71c72p-3f);
  p = rs_add(rs_mul(p, z), 0x1.24924ap-2f);
  p = rs_add(rs_mul(p, z), 0x1.99999ap-2f);
  p = rs_add(rs_mul(p, z), 0x1.555556p-1f);
  const float log_m = rs_add(rs_add(s, s), rs_mul(rs_mul(s, z), p));
  const float ef = (float)e;  // exact
  return rs_add(rs_mul(ef, RS_LOG_LN2_HI), rs_add(rs_add(rs_mul(ef, RS_LOG_LN2_LO), log_m), c));
}
