// PyTorch's fp32 CPU sum-of-squares order and vector exp, redone element by element; see
// torch_order_cpu.h. Compiled with -ffp-contract=off (CMakeLists.txt): the only fused
// multiply-adds are the explicit std::fma calls of the exp polynomial, as in PyTorch's.
#include "torch_order_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "cpu_clones.h"
#include "cpu_math.h"

namespace ponder {

namespace {

// one lane of f8 chosen by a comparison mask (all ones / zeros): mask ? a : b on the bits
PONDER_ALWAYS_INLINE f8 select8(i8 mask, f8 a, f8 b) {
  i8 ab, bb;
  std::memcpy(&ab, &a, sizeof ab);
  std::memcpy(&bb, &b, sizeof bb);
  const i8 out = (mask & ab) | (~mask & bb);
  f8 r;
  std::memcpy(&r, &out, sizeof r);
  return r;
}

// a * b + c rounded once, lane by lane (one vfmadd in the AVX2 / AVX-512 clones)
PONDER_ALWAYS_INLINE f8 fma8(f8 a, f8 b, f8 c) {
  f8 r;
  for (int l = 0; l < 8; ++l) r[l] = std::fma(a[l], b[l], c[l]);
  return r;
}

PONDER_ALWAYS_INLINE f8 pow2_8(i8 q) {
  const i8 bits = (q + 127) << 23;
  f8 r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// PyTorch's vector exp on 8 lanes (see torch_order_cpu.h). Written on vectors with bit
// selects: inside the ISA clones GCC keeps float selects scalar.
PONDER_ALWAYS_INLINE f8 vector_exp8(f8 d) {
  // ln 2 split in a high part with trailing zero bits and a low part (Cody-Waite), 1 / ln 2
  constexpr float kLog2e = 1.442695040888963407359924681001892137426645954152985934135449406931f;
  constexpr float kLn2Hi = 0.693145751953125f;
  constexpr float kLn2Lo = 1.428606765330187045e-06f;
  // q = d / ln 2 rounded to nearest, ties to even: adding and subtracting 1.5 * 2^23 rounds
  // any |t| < 2^22 so. t is clamped first (and NaN made 0) so that the conversion to int is
  // defined; the clamp only acts where the result is replaced at the end.
  constexpr float kRound = 12582912.0f;
  const f8 zero = f8{};
  f8 t = d * kLog2e;
  t = select8(t > 200.0f, zero + 200.0f, t);
  t = select8(t < -200.0f, zero - 200.0f, t);
  t = select8(t == t, t, zero);
  const f8 fq = (t + kRound) - kRound;
  const i8 q = __builtin_convertvector(fq, i8);
  f8 s = fma8(fq, zero - kLn2Hi, d);
  s = fma8(fq, zero - kLn2Lo, s);
  f8 u = zero + 0.000198527617612853646278381f;
  u = fma8(u, s, zero + 0.00139304355252534151077271f);
  u = fma8(u, s, zero + 0.00833336077630519866943359f);
  u = fma8(u, s, zero + 0.0416664853692054748535156f);
  u = fma8(u, s, zero + 0.166666671633720397949219f);
  u = fma8(u, s, zero + 0.5f);
  u = 1.0f + fma8(s * s, u, s);
  // 2^q in two factors, so that q up to 2 * 127 neither overflows the exponent field early
  // nor loses the subnormal results
  u = u * pow2_8(q >> 1) * pow2_8(q - (q >> 1));
  u = select8(d < -104.0f, zero, u);
  u = select8(d > 104.0f, zero + INFINITY, u);
  return u;
}

PONDER_ALWAYS_INLINE float vector_exp(float d) { return vector_exp8(f8{} + d)[0]; }

constexpr int kLevels = 4;  // PyTorch's cascade depth
constexpr int kIlp = 4;     // PyTorch's interleaved accumulators

template <int W>
PONDER_ALWAYS_INLINE float sum_squares(const float* x, int64_t n) {
  const int64_t vectors = n / W;
  const int64_t groups = vectors / kIlp;  // rows of the (-1, 4) view of the vectors
  float acc[kLevels][kIlp][W] = {};
  int64_t ceil_log2 = 0;
  while ((int64_t{1} << ceil_log2) < groups) ++ceil_log2;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2 / kLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  auto add_group = [&](int64_t g) PONDER_LAMBDA_INLINE {
    for (int k = 0; k < kIlp; ++k) {
      const float* v = x + (g * kIlp + k) * W;
      for (int l = 0; l < W; ++l) {
        const float sq = v[l] * v[l];
        acc[0][k][l] += sq;
      }
    }
  };
  int64_t i = 0;
  while (i + level_step <= groups) {
    for (int64_t j = 0; j < level_step; ++j, ++i) add_group(i);
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kIlp; ++k) {
        for (int l = 0; l < W; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < groups; ++i) add_group(i);
  for (int j = 1; j < kLevels; ++j) {
    for (int k = 0; k < kIlp; ++k) {
      for (int l = 0; l < W; ++l) acc[0][k][l] += acc[j][k][l];
    }
  }
  for (int64_t v = groups * kIlp; v < vectors; ++v) {
    for (int l = 0; l < W; ++l) {
      const float sq = x[v * W + l] * x[v * W + l];
      acc[0][0][l] += sq;
    }
  }
  for (int k = 1; k < kIlp; ++k) {
    for (int l = 0; l < W; ++l) acc[0][0][l] += acc[0][k][l];
  }
  float total = 0.0f;
  for (int64_t e = vectors * W; e < n; ++e) {
    const float sq = x[e] * x[e];
    total += sq;
  }
  for (int l = 0; l < W; ++l) total += acc[0][0][l];
  return total;
}

template <int W>
PONDER_ALWAYS_INLINE void rms_norm_rows(const float* x, int64_t rows, int64_t C, int64_t x_stride,
                                        const float* weight, float eps, float* out, int64_t out_stride) {
  const float count = static_cast<float>(C);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    float* o = out + r * out_stride;
    const float mean = sum_squares<W>(xr, C) / count;
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t c = 0; c < C; ++c) {
      const float normed = xr[c] * scale;
      o[c] = normed * weight[c];
    }
  }
}

PONDER_CPU_CLONES
void rms_norm_8(const float* x, int64_t rows, int64_t C, int64_t x_stride, const float* weight, float eps,
                float* out, int64_t out_stride) {
  rms_norm_rows<8>(x, rows, C, x_stride, weight, eps, out, out_stride);
}

PONDER_CPU_CLONES
void rms_norm_16(const float* x, int64_t rows, int64_t C, int64_t x_stride, const float* weight, float eps,
                 float* out, int64_t out_stride) {
  rms_norm_rows<16>(x, rows, C, x_stride, weight, eps, out, out_stride);
}

PONDER_CPU_CLONES
void silu_mul_rows(const float* gate, const float* up, int64_t rows, int64_t I, int64_t in_stride,
                   int64_t vector_part, float* out, int64_t out_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + r * in_stride;
    const float* u = up + r * in_stride;
    float* o = out + r * out_stride;
    for (int64_t j = 0; j < vector_part; j += 8) {  // vector_part: a multiple of 16
      f8 gv, uv;
      std::memcpy(&gv, g + j, sizeof gv);
      std::memcpy(&uv, u + j, sizeof uv);
      const f8 sv = gv / (1.0f + vector_exp8(-gv));
      const f8 ov = sv * uv;
      std::memcpy(o + j, &ov, sizeof ov);
    }
    for (int64_t j = vector_part; j < I; ++j) {
      const float s = g[j] / (1.0f + std::exp(-g[j]));
      o[j] = s * u[j];
    }
  }
}

void check_width(int width) {
  PONDER_CHECK_ARG(width == 8 || width == 16, "width must be 8 or 16 (PyTorch's fp32 vector size), got ", width);
}

}  // namespace

float exp_torch_vector(float d) { return vector_exp(d); }

float sum_squares_torch_order(const float* x, int64_t n, int width) {
  check_width(width);
  return width == 8 ? sum_squares<8>(x, n) : sum_squares<16>(x, n);
}

void rms_norm_torch_order(const float* x, int64_t rows, int64_t C, int64_t x_stride, const float* weight,
                          float eps, int width, float* out, int64_t out_stride) {
  check_width(width);
  PONDER_CHECK_ARG(C > 0 && rows >= 0, "rms_norm: C must be positive and rows non-negative, got C=", C,
                   " rows=", rows);
  if (width == 8) {
    rms_norm_8(x, rows, C, x_stride, weight, eps, out, out_stride);
  } else {
    rms_norm_16(x, rows, C, x_stride, weight, eps, out, out_stride);
  }
}

void silu_mul_torch_order(const float* gate, const float* up, int64_t rows, int64_t I, int64_t in_stride,
                          int width, float* out, int64_t out_stride) {
  check_width(width);
  PONDER_CHECK_ARG(I >= 0 && rows >= 0, "silu_mul: I and rows must be non-negative, got I=", I, " rows=", rows);
  const int64_t step = 2 * static_cast<int64_t>(width);
  silu_mul_rows(gate, up, rows, I, in_stride, I / step * step, out, out_stride);
}

}  // namespace ponder
