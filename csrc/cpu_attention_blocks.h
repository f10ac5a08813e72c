// Vector building blocks of the host attention kernels for a head dim D known at compile time
// (a multiple of 16): paged_attention_cpu (one query row at a time) and
// shared_prefix_attention_cpu (every row under a shared run of pages at once) compute scores,
// softmax weights and weighted sums of V with these, so both read K and V the same way.
// Everything here is PONDER_ALWAYS_INLINE: it is compiled into each caller's ISA clone.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu_clones.h"
#include "cpu_math.h"

namespace ponder {

PONDER_ALWAYS_INLINE f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

PONDER_ALWAYS_INLINE f8 load8(const uint16_t* p) {  // 8 bfloat16 values widened
  typedef uint16_t u16x8 __attribute__((vector_size(16)));
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  const u8 w = __builtin_convertvector(h, u8) << 16;
  f8 v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

// The maximum of x[0, n) (-inf for n = 0), 8 lanes at a time, the last partial vector padded
// with -inf.
PONDER_ALWAYS_INLINE float max_of(const float* x, int64_t n) {
  const int64_t whole = n - n % 8;
  f8 mv = f8{} - __builtin_inff();
  for (int64_t t = whole; t < n; ++t) mv[t - whole] = x[t];
  for (int64_t t = 0; t < whole; t += 8) {
    const f8 v = load8(x + t);
    mv = mv > v ? mv : v;
  }
  float m = mv[0];
  for (int l = 1; l < 8; ++l) m = m > mv[l] ? m : mv[l];
  return m;
}

// x[t] = exp(x[t] - m) in place for t < n (m >= every x[t]); returns their sum. The last partial
// vector is padded with -inf (weight 0), so every weight comes out of exp_nonpositive8 wherever
// it sits.
PONDER_ALWAYS_INLINE float exp_minus(float* x, int64_t n, float m) {
  const int64_t whole = n - n % 8;
  f8 sum = f8{};
  for (int64_t t = 0; t < whole; t += 8) {
    const f8 v = exp_nonpositive8(load8(x + t) - m);
    std::memcpy(x + t, &v, sizeof v);
    sum += v;
  }
  if (whole < n) {
    f8 tail = f8{} - __builtin_inff();
    for (int64_t t = whole; t < n; ++t) tail[t - whole] = x[t];
    tail = exp_nonpositive8(tail - m);
    for (int64_t t = whole; t < n; ++t) x[t] = tail[t - whole];
    sum += tail;
  }
  typedef float f4 __attribute__((vector_size(16)));
  const f4 h = __builtin_shufflevector(sum, sum, 0, 1, 2, 3) + __builtin_shufflevector(sum, sum, 4, 5, 6, 7);
  return (h[0] + h[2]) + (h[1] + h[3]);
}

// Lane t of the result: the sum of a[t]'s 8 lanes (pairs, then quads, then the two halves).
PONDER_ALWAYS_INLINE f8 sum_each(const f8 (&a)[8]) {
  f8 b[4], c[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // b[i] lanes: a[2i] (0+1), a[2i+1] (0+1), a[2i] (2+3), ... (6+7)
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // c[i] lanes: a[4i .. 4i + 3] (0..3), then the same (4..7)
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// scores[r * s_stride + t] = scale * q_r . k_t for the first n of the 8 K rows in `keys` (n < 8:
// the others are read again as padding and not stored) and query rows r < rows of q (q_stride
// floats apart). For each row its D / 8 vectors stay in registers while 8 accumulators (one per
// key, independent chains) take the keys; one shuffle tree turns them into the 8 scores.
template <int D, typename T>
PONDER_ALWAYS_INLINE void score_keys(const T* (&keys)[8], int n, const float* q, int64_t q_stride, int64_t rows,
                                     float scale, float* scores, int64_t s_stride) {
  constexpr int NV = D / 8;
  for (int t = n; t < 8; ++t) keys[t] = keys[0];
  for (int64_t r = 0; r < rows; ++r) {
    f8 qv[NV];
#pragma GCC unroll 32
    for (int c = 0; c < NV; ++c) qv[c] = load8(q + r * q_stride + c * 8);
    f8 acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) acc[t] = qv[0] * load8(keys[t]);
#pragma GCC unroll 32
    for (int c = 1; c < NV; ++c)
#pragma GCC unroll 8
      for (int t = 0; t < 8; ++t) acc[t] += qv[c] * load8(keys[t] + c * 8);
    const f8 sc = sum_each(acc) * scale;
    float* dst = scores + r * s_stride;
    if (n == 8) {
      std::memcpy(dst, &sc, sizeof sc);
    } else {
      for (int t = 0; t < n; ++t) dst[t] = sc[t];
    }
  }
}

// Weighted sums of V for HG rows (weights w_r = w + r * w_stride, indexed by token; outputs
// out_r = out + r * D): out_r = factor[r] * sum_j w_r[j] * v_j, or with ACCUMULATE, out_r +=
// sum_j w_r[j] * v_j. for_values(fn) calls fn(j, v_j) for every token j in order. For each slice
// of 4 output vectors the HG x 4 sums stay in registers over all tokens, so each V vector is
// loaded once for the HG rows.
template <int D, int HG, bool ACCUMULATE, typename ForValues>
PONDER_ALWAYS_INLINE void weighted_values(ForValues&& for_values, const float* w, int64_t w_stride,
                                          const float* factor, float* out) {
  constexpr int NV = D / 8, SL = 4;
  static_assert(NV % SL == 0, "D must be a multiple of 32");
  for (int s0 = 0; s0 < NV; s0 += SL) {
    f8 acc[HG][SL];
#pragma GCC unroll 4
    for (int r = 0; r < HG; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < SL; ++c) acc[r][c] = ACCUMULATE ? load8(out + r * D + (s0 + c) * 8) : f8{};
    for_values([&](int64_t j, const auto* v) PONDER_LAMBDA_INLINE {
      f8 wj[HG];
#pragma GCC unroll 4
      for (int r = 0; r < HG; ++r) wj[r] = f8{} + w[r * w_stride + j];
#pragma GCC unroll 4
      for (int c = 0; c < SL; ++c) {
        const f8 vc = load8(v + (s0 + c) * 8);
#pragma GCC unroll 4
        for (int r = 0; r < HG; ++r) acc[r][c] += wj[r] * vc;
      }
    });
#pragma GCC unroll 4
    for (int r = 0; r < HG; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < SL; ++c) {
        const f8 o = ACCUMULATE ? acc[r][c] : acc[r][c] * factor[r];
        std::memcpy(out + r * D + (s0 + c) * 8, &o, sizeof o);
      }
    }
  }
}

// weighted_values over `rows` rows, in groups of 3 (then 2 or 1).
template <int D, bool ACCUMULATE, typename ForValues>
PONDER_ALWAYS_INLINE void weighted_values_rows(ForValues&& for_values, int64_t rows, const float* w, int64_t w_stride,
                                               const float* factor, float* out) {
  int64_t r = 0;
  for (; r + 3 <= rows; r += 3)
    weighted_values<D, 3, ACCUMULATE>(for_values, w + r * w_stride, w_stride, factor + (ACCUMULATE ? 0 : r),
                                      out + r * D);
  if (rows - r == 2)
    weighted_values<D, 2, ACCUMULATE>(for_values, w + r * w_stride, w_stride, factor + (ACCUMULATE ? 0 : r),
                                      out + r * D);
  if (rows - r == 1)
    weighted_values<D, 1, ACCUMULATE>(for_values, w + r * w_stride, w_stride, factor + (ACCUMULATE ? 0 : r),
                                      out + r * D);
}

}  // namespace ponder
