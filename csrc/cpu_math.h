// Scalar math for the host kernels, written so the loops around it vectorise (no libm calls).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_clones.h"

namespace ponder {

PONDER_ALWAYS_INLINE uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}

PONDER_ALWAYS_INLINE float bits_float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// e^(x - n ln2) for x - n ln2 in [-ln2 / 2, ln2 / 2]: ln2 in two parts (Cody-Waite), then a
// degree-6 polynomial (the Cephes expf coefficients). V is float or a vector of floats; each
// lane takes the same steps.
template <typename V>
PONDER_ALWAYS_INLINE V exp_reduced(V x, V n) {
  const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// exp(x) for x <= 0 (softmax weights after subtracting the row maximum), in plain arithmetic so
// the loop around it vectorises: x = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial for
// e^r (the Cephes expf coefficients, about 1 ulp), and 2^n built in the exponent bits. Below
// -87 (where e^x leaves the normal floats, -inf included) the weight is 0; NaN stays NaN.
// There is no floating-point branch or select: inside the ISA clones GCC does not if-convert
// those (the loop would stay scalar), so the clamp and the cut-off compare the bits as
// integers -- for x <= 0 a larger magnitude is a larger unsigned bit pattern -- and floor()
// is a truncation minus a 0/1 correction.
PONDER_ALWAYS_INLINE float exp_nonpositive(float x) {
  constexpr uint32_t kLimit = 0xC2AE0000u;  // the bits of -87.0f
  const uint32_t bx = float_bits(x);
  const float xc = bits_float(bx > kLimit ? kLimit : bx);  // max(x, -87) for x <= 0
  const float y = xc * 1.44269504088896341f + 0.5f;
  const float tr = static_cast<float>(static_cast<int32_t>(y));
  const float n = tr - static_cast<float>(tr > y);  // floor(y), exact for |y| <= 126
  const float e = exp_reduced(xc, n);
  const float value = e * bits_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  const bool is_nan = (bx & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t out = is_nan ? bx : (bx > kLimit ? 0u : float_bits(value));
  return bits_float(out);
}

// 8 floats as one value: a ymm register in the AVX2 / AVX-512 clones, two xmm in the baseline.
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint32_t u8 __attribute__((vector_size(32)));

// exp_nonpositive on 8 lanes: the same steps lane by lane, written on vectors (GCC leaves the
// scalar version's loop scalar inside the ISA clones when a reduction goes with it). A selected
// lane is (mask & a) | (~mask & b) on the bits.
PONDER_ALWAYS_INLINE f8 exp_nonpositive8(f8 x) {
  const u8 limit = u8{} + 0xC2AE0000u;  // the bits of -87.0f
  u8 bx;
  std::memcpy(&bx, &x, sizeof bx);
  const u8 beyond = (u8)(bx > limit);  // all ones where x < -87 (or x is -inf / a negative NaN)
  const u8 cb = (beyond & limit) | (~beyond & bx);
  f8 xc;
  std::memcpy(&xc, &cb, sizeof xc);
  const f8 y = xc * 1.44269504088896341f + 0.5f;
  const f8 tr = __builtin_convertvector(__builtin_convertvector(y, i8), f8);
  const i8 above = (i8)(tr > y);  // -1 where the truncation rounded up
  const f8 n = tr + __builtin_convertvector(above, f8);  // floor(y)
  const f8 e = exp_reduced(xc, n);
  const u8 scale_bits = (u8)((__builtin_convertvector(n, i8) + 127) << 23);
  f8 two_n;
  std::memcpy(&two_n, &scale_bits, sizeof two_n);
  const f8 value = e * two_n;
  u8 vb;
  std::memcpy(&vb, &value, sizeof vb);
  const u8 is_nan = (u8)((bx & 0x7FFFFFFFu) > 0x7F800000u);
  const u8 out = (is_nan & bx) | (~is_nan & ~beyond & vb);
  f8 res;
  std::memcpy(&res, &out, sizeof res);
  return res;
}

// A bfloat16 value (its 16 bits) as float: the bits are the float's upper half.
PONDER_ALWAYS_INLINE float bf16_to_float(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

PONDER_ALWAYS_INLINE float to_float(float x) { return x; }
PONDER_ALWAYS_INLINE float to_float(uint16_t bf16_bits) { return bf16_to_float(bf16_bits); }

}  // namespace ponder
