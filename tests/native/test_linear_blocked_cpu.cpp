// linear_blocked_cpu: the vector path against the scalar std::fma path (the contract written out)
// bit for bit, a double-precision loop within rounding, rows independent of their batch, and
// refused arguments (under ASan, a read past x / wt / bias or a write past out fails the run).
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "check.h"
#include "linear_blocked_cpu.h"

namespace {

struct Small {
  int64_t M, K, N, stride;  // stride: wt's row length (N rounded up to 16)
  std::vector<float> x, w, wt, bias;
};

// x rows padded to K + 3 floats; wt holds w transposed with NaN in its padding columns, which
// the kernel reads and must never let into an output.
Small make(int64_t M, int64_t K, int64_t N, unsigned seed) {
  std::mt19937 gen(seed);
  Small s{M, K, N, (N + 15) / 16 * 16, ponder_test::normal_floats(M * (K + 3), gen),
          ponder_test::normal_floats(N * K, gen), {}, ponder_test::normal_floats(N, gen)};
  s.wt.assign(K * s.stride, std::nanf(""));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) s.wt[k * s.stride + n] = s.w[n * K + k];
  return s;
}

std::vector<float> run(const Small& s, int64_t rows, int64_t first, bool bias, bool bias_first, int64_t block,
                       bool scalar) {
  std::vector<float> out(rows * (s.N + 1), -7.0f);  // out rows padded by one float that must stay -7
  ponder::linear_blocked_cpu(s.x.data() + first * (s.K + 3), rows, s.K, s.K + 3, s.wt.data(), s.N, s.stride,
                             bias ? s.bias.data() : nullptr, bias_first, block, out.data(), s.N + 1, !scalar);
  return out;
}

// The same weight in strips of 16 columns ([strips][K][16], NaN in the padding columns).
std::vector<float> run_strips(const Small& s, int64_t rows, bool bias, bool bias_first, int64_t block, bool scalar) {
  const int64_t strips = s.stride / 16;
  std::vector<float> packed(strips * s.K * 16, std::nanf(""));
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t n = 0; n < s.N; ++n) packed[(n / 16) * s.K * 16 + k * 16 + n % 16] = s.w[n * s.K + k];
  std::vector<float> out(rows * (s.N + 1), -7.0f);
  ponder::linear_blocked_cpu(s.x.data(), rows, s.K, s.K + 3, packed.data(), s.N, 16, bias ? s.bias.data() : nullptr,
                             bias_first, block, out.data(), s.N + 1, !scalar, s.K * 16);
  return out;
}

}  // namespace

PONDER_TEST(linear_blocked_cpu_strips_give_the_bits_of_rows) {
  for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{7, 37, 13}, {13, 300, 33}, {6, 128, 48}}) {
    const Small s = make(M, K, N, 11 + unsigned(N));
    for (bool scalar : {false, true}) {
      const std::vector<float> rows = run(s, M, 0, true, true, K / 2 + 1, scalar);
      const std::vector<float> strips = run_strips(s, M, true, true, K / 2 + 1, scalar);
      for (size_t i = 0; i < rows.size(); ++i) CHECK_EQ(rows[i], strips[i]);
    }
  }
  const Small s = make(2, 8, 5, 3);
  std::vector<float> out(2 * 5);
  // strips closer than 16 K floats, and a layout that is neither rows nor strips
  CHECK_THROWS(ponder::linear_blocked_cpu(s.x.data(), 2, 8, 11, s.wt.data(), 5, 16, nullptr, false, 8, out.data(), 5,
                                          true, 127),
               std::invalid_argument);
  CHECK_THROWS(ponder::linear_blocked_cpu(s.x.data(), 2, 8, 11, s.wt.data(), 5, 32, nullptr, false, 8, out.data(), 5,
                                          true, 256),
               std::invalid_argument);
}

// Rows off the 6-row tile, N off the 16-column tile, one block and several.
PONDER_TEST(linear_blocked_cpu_vector_path_matches_the_scalar_path_and_a_double_loop) {
  for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{7, 37, 13}, {1, 1, 1}, {13, 300, 33}, {6, 128, 16}}) {
    const Small s = make(M, K, N, 7 + unsigned(K));
    for (int64_t block : {int64_t(1), int64_t(5), K / 2 + 1, K}) {
      for (auto [bias, first] : {std::pair<bool, bool>{false, false}, {true, false}, {true, true}}) {
        const std::vector<float> vec = run(s, M, 0, bias, first, block, false);
        const std::vector<float> sca = run(s, M, 0, bias, first, block, true);
        for (size_t i = 0; i < vec.size(); ++i) CHECK_EQ(vec[i], sca[i]);
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < N; ++n) {
            double want = bias ? s.bias[n] : 0.0, mag = std::fabs(want);
            for (int64_t k = 0; k < K; ++k) {
              const double t = double(s.x[m * (K + 3) + k]) * s.w[n * K + k];
              want += t;
              mag += std::fabs(t);
            }
            // fp32 sums of K + 1 terms: a few ulps of the sum of magnitudes per term
            CHECK_NEAR(vec[m * (N + 1) + n], want, 1e-6 * mag * (1.0 + double(K) / 64.0) + 1e-6);
          }
          CHECK_EQ(vec[m * (N + 1) + N], -7.0f);
        }
      }
    }
  }
}

PONDER_TEST(linear_blocked_cpu_rows_are_batch_invariant) {
  const Small s = make(23, 203, 71, 5);
  const std::vector<float> all = run(s, s.M, 0, true, true, 101, false);
  for (int64_t first : {0, 5, 17, 22}) {
    for (int64_t rows : {int64_t(1), int64_t(2), int64_t(6)}) {
      if (first + rows > s.M) continue;
      const std::vector<float> part = run(s, rows, first, true, true, 101, false);
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t n = 0; n <= s.N; ++n) CHECK_EQ(part[m * (s.N + 1) + n], all[(first + m) * (s.N + 1) + n]);
    }
  }
}

PONDER_TEST(linear_blocked_cpu_refuses_bad_arguments_before_writing) {
  const Small s = make(2, 8, 4, 1);
  std::vector<float> out(8, -7.0f);
  auto call = [&](int64_t M, int64_t K, int64_t xs, int64_t N, int64_t ws, int64_t block, int64_t os) {
    ponder::linear_blocked_cpu(s.x.data(), M, K, xs, s.wt.data(), N, ws, nullptr, false, block, out.data(), os);
  };
  CHECK_THROWS(call(-1, 8, 11, 4, 16, 8, 4), std::invalid_argument);
  CHECK_THROWS(call(2, 8, 7, 4, 16, 8, 4), std::invalid_argument);   // x rows overlap
  CHECK_THROWS(call(2, 8, 11, 4, 15, 8, 4), std::invalid_argument);  // wt rows shorter than 16
  CHECK_THROWS(call(2, 8, 11, 4, 16, 0, 4), std::invalid_argument);  // no block size
  CHECK_THROWS(call(2, 8, 11, 4, 16, 8, 3), std::invalid_argument);  // out rows overlap
  CHECK_THROWS(call(2, 8, 11, -4, 16, 8, 4), std::invalid_argument);
  for (float v : out) CHECK_EQ(v, -7.0f);
  call(0, 8, 11, 4, 16, 8, 4);  // no rows: nothing written, no error
  for (float v : out) CHECK_EQ(v, -7.0f);
}
