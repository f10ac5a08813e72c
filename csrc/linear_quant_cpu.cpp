// out = x · Wᵀ (+ bias) with W in GGUF blocks; see linear_quant_cpu.h for the contract and why
// the result is linear_cpu's to the bit.
//
// Layout: a tile is MT rows x NT weight rows. For each 32-weight block along K, a weight row's
// block is de-quantised into four 8-float vectors (weights 0-7, 8-15, 16-23, 24-31) and used for
// the tile's MT rows; an output's 16-lane accumulator is held as two 8-lane halves (lanes 0-7
// and 8-15), so the block's four vectors feed lanes 0-7, 8-15, 0-7, 8-15 in ascending k, as
// linear_cpu's 16-float steps do. A 1-row decode step uses 1 x 4 tiles (8 independent chains);
// more rows 2 x 2, then 4 x 1 (the weights de-quantised once for 4 rows).
#include "linear_quant_cpu.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_clones.h"
#include "cpu_threads.h"
#include "linear_cpu.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PONDER_QUANT_X86 1
#include <immintrin.h>
#else
#define PONDER_QUANT_X86 0
#endif

namespace ponder {

namespace {

constexpr int64_t kBlock = 32;
// below this many multiply-adds a product runs on one thread (as linear_cpu)
constexpr int64_t kMinParallelMacs = int64_t(1) << 18;
constexpr int64_t kPartsPerThread = 4;
// Each weight row's stream is prefetched this many bytes ahead of the block being read. A 1-row
// tile reads 4 weight rows side by side, blocks of 20-34 bytes a row apart, which the hardware
// prefetcher follows badly: SmolLM2-135M's 121 matrices at 1 row took 17.7 ms per pass without
// it and 11.5 ms with it (one thread, AMD EPYC; 1-8 KB ahead all gave 11.5-13.5 ms).
constexpr int64_t kPrefetchBytes = 4096;

bool known_type(int type) {
  return type == static_cast<int>(QuantType::kQ4_0) || type == static_cast<int>(QuantType::kQ4_1) ||
         type == static_cast<int>(QuantType::kQ8_0);
}

struct QProblem {
  const float* x;
  int64_t rows, in, x_stride;
  const uint8_t* w;
  int64_t row_bytes;  // one weight row: in / 32 blocks
  const float* bias;
  float* out;
  int64_t out_stride;
};

#if PONDER_QUANT_X86
#define PONDER_QTARGET __attribute__((target("arch=x86-64-v3")))

PONDER_QTARGET PONDER_ALWAYS_INLINE __m256 half_to_ps(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));  // broadcast, then widen (exact)
}

// The 32 weights of one block as four 8-float vectors, in k order.
template <int TYPE>
PONDER_QTARGET PONDER_ALWAYS_INLINE void dequantize(const uint8_t* blk, __m256 (&w)[4]) {
  const __m256 d = half_to_ps(blk);
  if constexpr (TYPE == static_cast<int>(QuantType::kQ8_0)) {
    // 32 int8 from byte 2: w = d * q, exact
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * i));
      w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
    }
  } else {
    // 16 bytes of nibbles: the low nibble of byte j is weight j, the high nibble weight j + 16.
    // Bytes 0-7 and 8-15 widened to 32 bits: masking gives weights 0-7 / 8-15, shifting 16-23 / 24-31.
    constexpr int kQs = TYPE == static_cast<int>(QuantType::kQ4_1) ? 4 : 2;
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + kQs)));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + kQs + 8)));
    const __m256i mask = _mm256_set1_epi32(0x0F);
    __m256 q[4] = {_mm256_cvtepi32_ps(_mm256_and_si256(b0, mask)), _mm256_cvtepi32_ps(_mm256_and_si256(b1, mask)),
                   _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4))};
    if constexpr (TYPE == static_cast<int>(QuantType::kQ4_1)) {
      const __m256 m = half_to_ps(blk + 2);
      // d * q is exact, so the fused form rounds once, as d * q then + m does
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) w[i] = _mm256_fmadd_ps(d, q[i], m);
    } else {
      const __m256 eight = _mm256_set1_ps(8.0f);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(d, _mm256_sub_ps(q[i], eight));
    }
  }
}

// linear_cpu's reduction of a 16-lane accumulator given as lanes 0-7 and 8-15: lane l + lane
// l + 8, then l + (l + 4), then (0 + 2) + (1 + 3).
PONDER_QTARGET PONDER_ALWAYS_INLINE float reduce_halves(__m256 lo, __m256 hi) {
  const __m256 h = _mm256_add_ps(lo, hi);
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  float f[4];
  _mm_storeu_ps(f, q);
  return (f[0] + f[2]) + (f[1] + f[3]);
}

// MT rows from m, NT weight rows from n. Not inlined into the driver below: that is built for
// the baseline, and a call per tile (thousands of multiply-adds) costs nothing measurable.
template <int TYPE, int MT, int NT>
PONDER_QTARGET void tile_avx2(const QProblem& p, int64_t m, int64_t n) {
  constexpr int64_t kBytes = TYPE == static_cast<int>(QuantType::kQ8_0) ? 34
                             : TYPE == static_cast<int>(QuantType::kQ4_1) ? 20 : 18;
  __m256 acc[MT][NT][2];
#pragma GCC unroll 4
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
  const float* x = p.x + m * p.x_stride;
  const uint8_t* w = p.w + n * p.row_bytes;
  const int64_t blocks = p.in / kBlock;
  for (int64_t b = 0; b < blocks; ++b) {
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      const uint8_t* blk = w + j * p.row_bytes + b * kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchBytes), _MM_HINT_T0);  // never faults
      __m256 wv[4];
      dequantize<TYPE>(blk, wv);
#pragma GCC unroll 4
      for (int i = 0; i < MT; ++i) {
        const float* xb = x + i * p.x_stride + b * kBlock;
        acc[i][j][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xb), wv[0], acc[i][j][0]);
        acc[i][j][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8), wv[1], acc[i][j][1]);
        acc[i][j][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 16), wv[2], acc[i][j][0]);
        acc[i][j][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 24), wv[3], acc[i][j][1]);
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MT; ++i) {
    float* o = p.out + (m + i) * p.out_stride + n;
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) o[j] = reduce_halves(acc[i][j][0], acc[i][j][1]) + (p.bias ? p.bias[n + j] : 0.0f);
  }
}

// A 4 x 1 tile de-quantises each block once for 4 rows; a 1-row step takes 1 x 4 tiles (8
// independent chains), 2 rows 2 x 2.
struct Avx2 {
  static constexpr int kWidth[5] = {0, 4, 2, 1, 1};  // weight rows per tile, by the tile's rows
  template <int TYPE, int MT, int NT>
  static void tile(const QProblem& p, int64_t m, int64_t n) { tile_avx2<TYPE, MT, NT>(p, m, n); }
};

// ---- AVX-512: one zmm per 16-lane accumulator ----
//
// A block's 32 weights are two 16-float vectors, weights 0-15 and 16-31, which feed every lane
// in ascending k exactly as linear_cpu's two 16-float steps over the block do; the reduction is
// reduce_halves of the accumulator's two 256-bit halves. So the bits are those of the AVX2 path.
#define PONDER_Q512 __attribute__((target("arch=x86-64-v4")))

template <int TYPE>
PONDER_Q512 PONDER_ALWAYS_INLINE void dequantize16(const uint8_t* blk, __m512 (&w)[2]) {
  uint16_t h;
  std::memcpy(&h, blk, sizeof h);
  const __m512 d = _mm512_set1_ps(_cvtsh_ss(h));  // exact
  if constexpr (TYPE == static_cast<int>(QuantType::kQ8_0)) {
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const __m128i q8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + 16 * i));
      w[i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8)));
    }
  } else {
    // the 16 bytes of nibbles widened once: low nibbles are weights 0-15, high nibbles 16-31
    constexpr int kQs = TYPE == static_cast<int>(QuantType::kQ4_1) ? 4 : 2;
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQs)));
    const __m512 q[2] = {_mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0x0F))),
                         _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4))};
    if constexpr (TYPE == static_cast<int>(QuantType::kQ4_1)) {
      std::memcpy(&h, blk + 2, sizeof h);
      const __m512 m = _mm512_set1_ps(_cvtsh_ss(h));
#pragma GCC unroll 2
      for (int i = 0; i < 2; ++i) w[i] = _mm512_fmadd_ps(d, q[i], m);  // d * q exact: one rounding, as before
    } else {
      const __m512 eight = _mm512_set1_ps(8.0f);
#pragma GCC unroll 2
      for (int i = 0; i < 2; ++i) w[i] = _mm512_mul_ps(d, _mm512_sub_ps(q[i], eight));
    }
  }
}

template <int TYPE, int MT, int NT>
PONDER_Q512 void tile_avx512(const QProblem& p, int64_t m, int64_t n) {
  constexpr int64_t kBytes = TYPE == static_cast<int>(QuantType::kQ8_0) ? 34
                             : TYPE == static_cast<int>(QuantType::kQ4_1) ? 20 : 18;
  __m512 acc[MT][NT];
#pragma GCC unroll 4
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* x = p.x + m * p.x_stride;
  const uint8_t* w = p.w + n * p.row_bytes;
  const int64_t blocks = p.in / kBlock;
  for (int64_t b = 0; b < blocks; ++b) {
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      const uint8_t* blk = w + j * p.row_bytes + b * kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchBytes), _MM_HINT_T0);
      __m512 wv[2];
      dequantize16<TYPE>(blk, wv);
#pragma GCC unroll 4
      for (int i = 0; i < MT; ++i) {
        const float* xb = x + i * p.x_stride + b * kBlock;
        acc[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(xb), wv[0], acc[i][j]);
        acc[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(xb + 16), wv[1], acc[i][j]);
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MT; ++i) {
    float* o = p.out + (m + i) * p.out_stride + n;
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      const __m256 lo = _mm512_castps512_ps256(acc[i][j]);
      const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][j]), 1));
      o[j] = reduce_halves(lo, hi) + (p.bias ? p.bias[n + j] : 0.0f);
    }
  }
}

// 4 x 4 tiles (16 zmm sums; each block de-quantised once for 4 rows), then the last rows.
struct Avx512 {
  static constexpr int kWidth[5] = {0, 4, 4, 4, 4};
  template <int TYPE, int MT, int NT>
  static void tile(const QProblem& p, int64_t m, int64_t n) { tile_avx512<TYPE, MT, NT>(p, m, n); }
};

// Rows m to m + MT of output columns [n0, n1): MT x NT tiles, then MT x 1 for the last columns.
template <typename Path, int TYPE, int MT>
void rows_of(const QProblem& p, int64_t m, int64_t n0, int64_t n1) {
  constexpr int NT = Path::kWidth[MT];
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) Path::template tile<TYPE, MT, NT>(p, m, n);
  for (; n < n1; ++n) Path::template tile<TYPE, MT, 1>(p, m, n);
}

// Output columns [n0, n1) of every row: rows in fours, then the last 1-3 together.
template <typename Path, int TYPE>
void columns(const QProblem& p, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= p.rows; m += 4) rows_of<Path, TYPE, 4>(p, m, n0, n1);
  switch (p.rows - m) {
    case 3: rows_of<Path, TYPE, 3>(p, m, n0, n1); break;
    case 2: rows_of<Path, TYPE, 2>(p, m, n0, n1); break;
    case 1: rows_of<Path, TYPE, 1>(p, m, n0, n1); break;
    default: break;
  }
}

using ColumnsFn = void (*)(const QProblem&, int64_t, int64_t);

template <typename Path>
ColumnsFn columns_of(int type) {
  switch (type) {
    case static_cast<int>(QuantType::kQ4_0): return columns<Path, static_cast<int>(QuantType::kQ4_0)>;
    case static_cast<int>(QuantType::kQ4_1): return columns<Path, static_cast<int>(QuantType::kQ4_1)>;
    case static_cast<int>(QuantType::kQ8_0): return columns<Path, static_cast<int>(QuantType::kQ8_0)>;
    default: return nullptr;
  }
}

ColumnsFn pick(int type, LinearIsa isa) {
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("x86-64-v4");  // as linear_cpu decides
  if (isa == LinearIsa::kGeneric || (isa == LinearIsa::kAvx512 && !has512)) return nullptr;
  return isa != LinearIsa::kAvx2 && has512 ? columns_of<Avx512>(type) : columns_of<Avx2>(type);
}
#endif

}  // namespace

int64_t quant_block_bytes(int type) {
  switch (type) {
    case static_cast<int>(QuantType::kQ4_0): return 18;
    case static_cast<int>(QuantType::kQ4_1): return 20;
    case static_cast<int>(QuantType::kQ8_0): return 34;
    default:
      throw std::invalid_argument("linear_quant_cpu: type must be 2 (Q4_0), 3 (Q4_1) or 8 (Q8_0), got " +
                                  std::to_string(type));
  }
}

bool linear_quant_cpu_available() {
#if PONDER_QUANT_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

void linear_quant_cpu(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                      const uint8_t* blocks, int type, int64_t out_features, const float* bias, float* out,
                      int64_t out_row_stride, int num_threads, LinearIsa isa) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("linear_quant_cpu: " + what); };
  const int64_t block_bytes = quant_block_bytes(type);
  detail::check_linear_args("linear_quant_cpu", num_rows, in_features, x_row_stride, out_features, out_row_stride,
                            num_threads);
  if (in_features % kBlock != 0)
    bad("in_features must be a multiple of 32 (the block size), got " + std::to_string(in_features));
  if (!linear_quant_cpu_available()) bad("this CPU or build has no AVX2 + FMA + F16C path");
  if (static_cast<int>(isa) < 0 || static_cast<int>(isa) > 3)
    bad("isa must be 0 (auto), 1 (avx512) or 2 (avx2), got " + std::to_string(static_cast<int>(isa)));
#if PONDER_QUANT_X86
  const ColumnsFn run = pick(type, isa);
  if (run == nullptr)
    bad("this CPU or build has no such instruction-set path: isa " + std::to_string(static_cast<int>(isa)));
  if (num_rows == 0 || out_features == 0) return;
  const QProblem p{x, num_rows, in_features, x_row_stride, blocks, in_features / kBlock * block_bytes, bias, out,
                   out_row_stride};
  split_rows(out_features, num_rows * in_features * out_features, num_threads, kMinParallelMacs, kPartsPerThread,
             [&](int64_t n0, int64_t n1) { run(p, n0, n1); });
#endif
}

}  // namespace ponder
