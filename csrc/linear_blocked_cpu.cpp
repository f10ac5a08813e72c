// out = x · Wᵀ (+ bias) for small matrices on few rows; see linear_blocked_cpu.h for the contract.
//
// Layout: an "outer product" kernel on the transposed weight. A tile holds up to 6 rows x 16
// output columns in 12 AVX2 registers; for each k it loads 16 weights of row k of Wᵀ and
// broadcasts x[m, k], so every output element is one fused multiply-add chain over ascending k,
// exactly as a BLAS micro-kernel sums it. Column blocks run outermost, so a block's slice of Wᵀ
// (K x 16 floats) stays in L1 for every row. The tile shape never changes how an element is
// computed, so the vector path, the scalar path and any row count give the same bits. This file
// is compiled with -ffp-contract=off: the only fused operations are the explicit ones.
#include "linear_blocked_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_clones.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PONDER_BLOCKED_X86 1
#include <immintrin.h>
#else
#define PONDER_BLOCKED_X86 0
#endif

namespace ponder {

namespace {

constexpr int64_t kCols = 16;  // output columns per tile
constexpr int kMaxRows = 6;    // rows per tile on the vector path

struct Job {
  const float* x;
  int64_t rows, in, x_stride;
  const float* wt;
  int64_t out_features, wt_stride, wt_strip;  // wt[(n / 16) * wt_strip + k * wt_stride + n % 16]
  const float* bias;
  bool bias_first;
  int64_t block;
  float* out;
  int64_t out_stride;
};

// One element at a time, with std::fma: the contract written out (the path for CPUs without a
// vector FMA, and the baseline the tests compare the vector path with).
void run_scalar(const Job& j) {
  for (int64_t m = 0; m < j.rows; ++m) {
    const float* x = j.x + m * j.x_stride;
    for (int64_t n = 0; n < j.out_features; ++n) {
      float s = 0.0f;
      for (int64_t b0 = 0; b0 < j.in || b0 == 0; b0 += j.block) {
        const int64_t b1 = std::min(j.in, b0 + j.block);
        float p = 0.0f;
        const float* w = j.wt + (n / kCols) * j.wt_strip + n % kCols;
        for (int64_t k = b0; k < b1; ++k) p = std::fma(x[k], w[k * j.wt_stride], p);
        if (b0 == 0) {
          s = (j.bias && j.bias_first) ? j.bias[n] + p : p;
        } else {
          s = s + p;
        }
        if (j.in == 0) break;
      }
      if (j.bias && !j.bias_first) s = s + j.bias[n];
      j.out[m * j.out_stride + n] = s;
    }
  }
}

#if PONDER_BLOCKED_X86
#define PONDER_AVX2 __attribute__((target("avx2,fma")))

// MR rows from m, the 16 columns from n0 (of which `cols` are real).
template <int MR>
PONDER_AVX2 void tile_avx2(const Job& j, int64_t m, int64_t n0, int64_t cols) {
  alignas(32) float sums[MR][kCols];
  alignas(32) float bias[kCols] = {};
  if (j.bias) std::memcpy(bias, j.bias + n0, cols * sizeof(float));
  const float* x = j.x + m * j.x_stride;
  const int64_t K = j.in;
  for (int64_t b0 = 0; b0 < K || b0 == 0; b0 += j.block) {
    const int64_t b1 = std::min(K, b0 + j.block);
    __m256 acc[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float* w = j.wt + (n0 / kCols) * j.wt_strip;
    for (int64_t k = b0; k < b1; ++k) {
      const __m256 w0 = _mm256_loadu_ps(w + k * j.wt_stride);
      const __m256 w1 = _mm256_loadu_ps(w + k * j.wt_stride + 8);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_broadcast_ss(x + i * j.x_stride + k);
        acc[i][0] = _mm256_fmadd_ps(xv, w0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(xv, w1, acc[i][1]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m256 lo = acc[i][0], hi = acc[i][1];
      if (b0 == 0) {
        if (j.bias && j.bias_first) {
          lo = _mm256_add_ps(_mm256_load_ps(bias), lo);
          hi = _mm256_add_ps(_mm256_load_ps(bias + 8), hi);
        }
      } else {
        lo = _mm256_add_ps(_mm256_load_ps(sums[i]), lo);
        hi = _mm256_add_ps(_mm256_load_ps(sums[i] + 8), hi);
      }
      _mm256_store_ps(sums[i], lo);
      _mm256_store_ps(sums[i] + 8, hi);
    }
    if (K == 0) break;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (j.bias && !j.bias_first) {
      _mm256_store_ps(sums[i], _mm256_add_ps(_mm256_load_ps(sums[i]), _mm256_load_ps(bias)));
      _mm256_store_ps(sums[i] + 8, _mm256_add_ps(_mm256_load_ps(sums[i] + 8), _mm256_load_ps(bias + 8)));
    }
    std::memcpy(j.out + (m + i) * j.out_stride + n0, sums[i], cols * sizeof(float));
  }
}

// tile_avx2<count> for a count in [1, MR].
template <int MR>
PONDER_AVX2 void last_rows_avx2(const Job& j, int64_t m, int64_t n0, int64_t cols, int64_t count) {
  if constexpr (MR > 0) {
    if (count == MR) {
      tile_avx2<MR>(j, m, n0, cols);
    } else {
      last_rows_avx2<MR - 1>(j, m, n0, cols, count);
    }
  }
}

PONDER_AVX2 void run_avx2(const Job& j) {
  for (int64_t n0 = 0; n0 < j.out_features; n0 += kCols) {
    const int64_t cols = std::min(kCols, j.out_features - n0);
    int64_t m = 0;
    for (; m + kMaxRows <= j.rows; m += kMaxRows) tile_avx2<kMaxRows>(j, m, n0, cols);
    if (m < j.rows) last_rows_avx2<kMaxRows - 1>(j, m, n0, cols, j.rows - m);
  }
}
#endif

bool has_avx2_fma() {
#if PONDER_BLOCKED_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

Job checked(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride, const float* wt,
            int64_t out_features, int64_t wt_row_stride, int64_t wt_strip_stride, const float* bias,
            bool bias_first, int64_t block, float* out, int64_t out_row_stride) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("linear_blocked_cpu: " + what); };
  if (num_rows < 0 || in_features < 0 || out_features < 0)
    bad("num_rows, in_features and out_features must be >= 0, got " + std::to_string(num_rows) + ", " +
        std::to_string(in_features) + ", " + std::to_string(out_features));
  if (block < 1) bad("block must be >= 1, got " + std::to_string(block));
  if (x_row_stride < in_features)
    bad("x_row_stride must be >= in_features = " + std::to_string(in_features) + ", got " +
        std::to_string(x_row_stride));
  const int64_t padded = (out_features + kCols - 1) / kCols * kCols;
  if (wt_strip_stride == kCols) {  // rows of the transposed weight
    if (wt_row_stride < padded)
      bad("wt_row_stride must be >= out_features rounded up to a multiple of 16 = " + std::to_string(padded) +
          ", got " + std::to_string(wt_row_stride));
  } else if (wt_row_stride == kCols) {  // strips of 16 columns, each K rows of 16
    if (wt_strip_stride < in_features * kCols)
      bad("wt_strip_stride must be >= 16 * in_features = " + std::to_string(in_features * kCols) + ", got " +
          std::to_string(wt_strip_stride));
  } else {
    bad("the transposed weight must be rows (wt_strip_stride 16) or strips of 16 columns (wt_row_stride 16), "
        "got wt_row_stride " + std::to_string(wt_row_stride) + " and wt_strip_stride " +
        std::to_string(wt_strip_stride));
  }
  if (out_row_stride < out_features)
    bad("out_row_stride must be >= out_features = " + std::to_string(out_features) + ", got " +
        std::to_string(out_row_stride));
  return Job{x,    num_rows,   in_features, x_row_stride, wt,  out_features,  wt_row_stride,
             wt_strip_stride, bias, bias_first, block, out, out_row_stride};
}

// The checked problem on the vector path when the CPU has one and `vector` asks for it.
void run(const Job& j, bool vector) {
  if (j.rows == 0 || j.out_features == 0) return;
#if PONDER_BLOCKED_X86
  if (vector && has_avx2_fma()) {
    run_avx2(j);
    return;
  }
#endif
  run_scalar(j);
}

}  // namespace

bool linear_blocked_cpu_fast() { return has_avx2_fma(); }

void linear_blocked_cpu(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                        const float* wt, int64_t out_features, int64_t wt_row_stride, const float* bias,
                        bool bias_first, int64_t block, float* out, int64_t out_row_stride, bool vector_path,
                        int64_t wt_strip_stride) {
  run(checked(x, num_rows, in_features, x_row_stride, wt, out_features, wt_row_stride, wt_strip_stride, bias,
              bias_first, block, out, out_row_stride),
      vector_path);
}

}  // namespace ponder
