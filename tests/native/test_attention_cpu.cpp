// paged_attention_cpu against a double-precision loop, and refused metadata (under ASan, a read
// outside the KV planes or a buffer would fail the run).
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "attention_cpu.h"
#include "check.h"

namespace {

struct Batch {
  int64_t H = 4, Hk = 2, D = 8, S = 3, P = 9, W = 4;
  std::vector<float> k, v, q, out;
  std::vector<int32_t> tables, lens, indptr;
};

// Two sequences sharing page 0; sequence 0 decodes one row at position 7, sequence 1 prefills
// its last 3 tokens (positions 2-4). Head dims 32, 64 and 128 take the fixed-size path.
Batch example(int64_t D = 8, int64_t H = 4, int64_t Hk = 2) {
  Batch b;
  b.D = D;
  b.H = H;
  b.Hk = Hk;
  std::mt19937 gen(3);
  b.k = ponder_test::normal_floats(b.P * b.S * b.Hk * b.D, gen);
  b.v = ponder_test::normal_floats(b.k.size(), gen);
  b.tables = {0, 4, 2, -1, 0, 7, -1, -1};
  b.lens = {8, 5};
  b.indptr = {0, 1, 4};
  b.q = ponder_test::normal_floats(4 * b.H * b.D, gen);
  b.out.assign(b.q.size(), 0.f);
  return b;
}

double expected(const Batch& b, int64_t seq, int64_t row, int64_t h, int64_t d, double scale) {
  const int64_t nq = b.indptr[seq + 1] - b.indptr[seq];
  const int64_t pos = b.lens[seq] - nq + (row - b.indptr[seq]);
  const int64_t g = h / (b.H / b.Hk);
  std::vector<double> s;
  double m = -1e300;
  for (int64_t j = 0; j <= pos; ++j) {
    const int64_t slot = b.tables[seq * b.W + j / b.S] * b.S + j % b.S;
    double dot = 0;
    for (int64_t e = 0; e < b.D; ++e) dot += double(b.q[(row * b.H + h) * b.D + e]) * b.k[(slot * b.Hk + g) * b.D + e];
    s.push_back(dot * scale);
    m = std::max(m, s.back());
  }
  double num = 0, den = 0;
  for (int64_t j = 0; j <= pos; ++j) {
    const int64_t slot = b.tables[seq * b.W + j / b.S] * b.S + j % b.S;
    const double w = std::exp(s[j] - m);
    num += w * b.v[(slot * b.Hk + g) * b.D + d];
    den += w;
  }
  return num / den;
}

void run(Batch& b, const std::vector<int32_t>& tables, const std::vector<int32_t>& lens,
         const std::vector<int32_t>& indptr) {
  ponder::paged_attention_cpu(b.q.data(), 4, b.H, b.D, b.k.data(), b.v.data(), ponder::KVType::kFloat32, b.Hk, b.S,
                              tables.data(), 2, b.W,
                              lens.data(), indptr.data(), b.P, 0.5f, b.out.data());
}

}  // namespace

PONDER_TEST(attention_cpu_matches_double_loops) {
  // run-time head dim; fixed head dims with 3 query heads per KV head, 4 (3 + 1) and 2
  for (auto [D, H, Hk] : {std::tuple<int64_t, int64_t, int64_t>{8, 4, 2}, {64, 6, 2}, {32, 4, 1}, {128, 4, 2}}) {
    Batch b = example(D, H, Hk);
    run(b, b.tables, b.lens, b.indptr);
    const int64_t seq_of_row[4] = {0, 1, 1, 1};
    // fp32 scores sum D products of unit normals (scaled by 0.5): their rounding error, and the
    // output's through the softmax, grows about linearly with D; 1e-5 at D = 8
    const double tol = 1e-5 * double(D) / 8;
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t h = 0; h < b.H; ++h)
        for (int64_t d = 0; d < b.D; ++d)
          CHECK_NEAR(b.out[(r * b.H + h) * b.D + d], expected(b, seq_of_row[r], r, h, d, 0.5), tol);
  }
}

PONDER_TEST(attention_cpu_refuses_bad_metadata) {
  Batch b = example();
  std::vector<int32_t> tables = b.tables;
  tables[5] = 9;  // page 9 of a 9-page pool
  CHECK_THROWS(run(b, tables, b.lens, b.indptr), std::out_of_range);
  tables[5] = -1;
  CHECK_THROWS(run(b, tables, b.lens, b.indptr), std::out_of_range);
  CHECK_THROWS(run(b, b.tables, {13, 5}, b.indptr), std::invalid_argument);  // 13 > 4 pages * 3
  CHECK_THROWS(run(b, b.tables, {8, 2}, b.indptr), std::invalid_argument);   // 3 rows but 2 tokens
  CHECK_THROWS(run(b, b.tables, b.lens, {0, 2, 1}), std::invalid_argument);  // decreasing
  CHECK_THROWS(run(b, b.tables, b.lens, {0, 1, 3}), std::invalid_argument);  // does not end at T
  for (float x : b.out) CHECK_EQ(x, 0.f);  // nothing written by a refused call
}
