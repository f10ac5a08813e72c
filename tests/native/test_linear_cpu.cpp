// linear_cpu against a double-precision loop, the same bits for every row count, thread count and
// instruction-set path, and refused arguments (under ASan, a read past x / w / bias or a write past
// out would fail the run).
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "check.h"
#include "linear_cpu.h"

namespace {

struct Dense {
  int64_t M, K, N;
  std::vector<float> x, w, bias;
};

// x rows padded to K + 3 floats (a row stride above K), a bias.
Dense make(int64_t M, int64_t K, int64_t N, unsigned seed) {
  std::mt19937 gen(seed);
  Dense d{M, K, N, ponder_test::normal_floats(M * (K + 3), gen), ponder_test::normal_floats(N * K, gen),
          ponder_test::normal_floats(N, gen)};
  return d;
}

std::vector<float> run(const Dense& d, int64_t rows, int64_t first, int threads, bool bias,
                       ponder::LinearIsa isa = ponder::LinearIsa::kAuto) {
  std::vector<float> out(rows * (d.N + 1), -7.0f);  // out rows padded by one float that must stay -7
  ponder::linear_cpu(d.x.data() + first * (d.K + 3), rows, d.K, d.K + 3, d.w.data(), d.N,
                     bias ? d.bias.data() : nullptr, out.data(), d.N + 1, threads, isa);
  return out;
}

}  // namespace

// Odd sizes: K with a 16-float tail (37, 5) or none (48), N and M not multiples of any tile side.
PONDER_TEST(linear_cpu_matches_double_loop) {
  for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{7, 37, 13}, {1, 48, 9}, {9, 5, 3}, {6, 160, 22}}) {
    const Dense d = make(M, K, N, 3 + unsigned(K));
    for (bool bias : {false, true}) {
      const std::vector<float> out = run(d, M, 0, 1, bias);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double want = bias ? d.bias[n] : 0.0, mag = std::fabs(want);
          for (int64_t k = 0; k < K; ++k) {
            want += double(d.x[m * (K + 3) + k]) * d.w[n * K + k];
            mag += std::fabs(double(d.x[m * (K + 3) + k]) * d.w[n * K + k]);
          }
          // fp32 sums of K + 1 terms: a few ulps of the sum of magnitudes
          CHECK_NEAR(out[m * (N + 1) + n], want, 1e-6 * mag + 1e-6);
        }
        CHECK_EQ(out[m * (N + 1) + N], -7.0f);
      }
    }
  }
}

// A row's bits do not depend on how many rows share the call, where it sits in it, the thread
// count or the instruction-set path (all of them fuse the multiply-add on x86-64-v3 and up).
PONDER_TEST(linear_cpu_rows_are_batch_invariant) {
  const Dense d = make(23, 203, 71, 5);
  const std::vector<float> all = run(d, d.M, 0, 1, true);
  for (int threads : {2, 3}) {
    // 23 x 203 x 71 multiply-adds are below the threading threshold; a wide product is not
    const std::vector<float> again = run(d, d.M, 0, threads, true);
    for (size_t i = 0; i < all.size(); ++i) CHECK_EQ(again[i], all[i]);
  }
  for (int64_t first : {0, 5, 22}) {
    for (int64_t rows : {int64_t(1), int64_t(2), int64_t(3)}) {
      if (first + rows > d.M) continue;
      const std::vector<float> part = run(d, rows, first, 1, true);
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t n = 0; n <= d.N; ++n) CHECK_EQ(part[m * (d.N + 1) + n], all[(first + m) * (d.N + 1) + n]);
    }
  }
  if (ponder::linear_cpu_has(ponder::LinearIsa::kAvx2) && ponder::linear_cpu_has(ponder::LinearIsa::kAvx512)) {
    const std::vector<float> a = run(d, d.M, 0, 1, true, ponder::LinearIsa::kAvx512);
    const std::vector<float> b = run(d, d.M, 0, 1, true, ponder::LinearIsa::kAvx2);
    for (size_t i = 0; i < a.size(); ++i) CHECK_EQ(a[i], b[i]);
  }
}

// The register layout of an accumulator (one zmm, two ymm or four xmm per 16 lanes) and the tile
// shape that goes with it never change a result: compared here in the baseline instruction set,
// where all three layouts run on any x86-64 CPU.
PONDER_TEST(linear_cpu_register_layouts_give_the_same_bits) {
  for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{23, 203, 71}, {9, 5, 3}, {5, 48, 17}}) {
    const Dense d = make(M, K, N, 11 + unsigned(K));
    std::vector<std::vector<float>> outs;
    for (int parts : {1, 2, 4}) {
      std::vector<float> out(M * (N + 1), -7.0f);
      ponder::detail::linear_cpu_baseline_parts(parts, d.x.data(), M, K, K + 3, d.w.data(), N, d.bias.data(),
                                                out.data(), N + 1);
      outs.push_back(out);
    }
    for (size_t i = 0; i < outs[0].size(); ++i) {
      CHECK_EQ(outs[1][i], outs[0][i]);
      CHECK_EQ(outs[2][i], outs[0][i]);
    }
    CHECK_EQ(outs[0][N], -7.0f);
  }
  std::vector<float> out(4);
  CHECK_THROWS(ponder::detail::linear_cpu_baseline_parts(3, out.data(), 1, 1, 1, out.data(), 1, nullptr,
                                                         out.data() + 2, 1),
               std::invalid_argument);
}

PONDER_TEST(linear_cpu_splits_large_products_over_threads) {
  const Dense d = make(64, 512, 300, 9);  // 9.8 M multiply-adds: split over the threads
  const std::vector<float> one = run(d, d.M, 0, 1, false);
  const std::vector<float> four = run(d, d.M, 0, 4, false);
  for (size_t i = 0; i < one.size(); ++i) CHECK_EQ(four[i], one[i]);
}

PONDER_TEST(linear_cpu_refuses_bad_arguments_before_writing) {
  const Dense d = make(2, 8, 4, 1);
  std::vector<float> out(8, -7.0f);
  auto call = [&](int64_t M, int64_t K, int64_t xs, int64_t N, int64_t os, int threads) {
    ponder::linear_cpu(d.x.data(), M, K, xs, d.w.data(), N, nullptr, out.data(), os, threads);
  };
  CHECK_THROWS(call(-1, 8, 11, 4, 4, 1), std::invalid_argument);
  CHECK_THROWS(call(2, 8, 7, 4, 4, 1), std::invalid_argument);   // x rows overlap
  CHECK_THROWS(call(2, 8, 11, 4, 3, 1), std::invalid_argument);  // out rows overlap
  CHECK_THROWS(call(2, 8, 11, 4, 4, 0), std::invalid_argument);
  CHECK_THROWS(call(2, 8, 11, -4, 4, 1), std::invalid_argument);
  for (float v : out) CHECK_EQ(v, -7.0f);
  call(0, 8, 11, 4, 4, 1);  // no rows: nothing written, no error
  for (float v : out) CHECK_EQ(v, -7.0f);
}
