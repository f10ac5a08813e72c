// shared_prefix_attention_cpu against a double-precision loop (fp32 and bf16 planes), and refused
// plans (under ASan, a read outside the KV planes or a buffer would fail the run).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "shared_prefix_cpu.h"

namespace {

// Three branches under a 21-token prompt (pages 0-4 of S = 4, the last holding 1 token), each
// with its own tail page; 17 query rows over D = 48 exercise the run-time head-dim path, a
// partial token block and a partial row block (G = 2: 2 or 6 rows per item).
struct Case {
  int64_t B = 3, H = 4, Hk = 2, D = 48, S = 4, P = 9;
  std::vector<float> k, v, q;
  std::vector<int32_t> page_indptr{0, 5, 6, 7, 8}, pages{0, 1, 2, 3, 4, 5, 6, 7}, num_tokens{17, 3, 1, 2};
  std::vector<int32_t> query_indptr{0, 3, 4, 5, 6}, queries{0, 1, 2, 0, 1, 2};
};

Case make_case() {
  Case c;
  std::mt19937 gen(11);
  c.k = ponder_test::normal_floats(c.P * c.S * c.Hk * c.D, gen);
  c.v = ponder_test::normal_floats(c.k.size(), gen);
  c.q = ponder_test::normal_floats(c.B * c.H * c.D, gen);
  return c;
}

// Token j of branch b: the prompt's 17 tokens (pages 0-4), then its tail page 5 + b.
double expected(const Case& c, const std::vector<float>& k, const std::vector<float>& v, int64_t b, int64_t h,
                int64_t d, double scale) {
  const int64_t g = h / (c.H / c.Hk);
  std::vector<int64_t> slots;
  for (int64_t j = 0; j < 17; ++j) slots.push_back(c.pages[j / c.S] * c.S + j % c.S);
  for (int64_t j = 0; j < c.num_tokens[1 + b]; ++j) slots.push_back((5 + b) * c.S + j);
  std::vector<double> s;
  double m = -1e300;
  for (int64_t slot : slots) {
    double dot = 0;
    for (int64_t e = 0; e < c.D; ++e) dot += double(c.q[(b * c.H + h) * c.D + e]) * k[(slot * c.Hk + g) * c.D + e];
    s.push_back(dot * scale);
    m = std::max(m, s.back());
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    const double w = std::exp(s[i] - m);
    num += w * v[(slots[i] * c.Hk + g) * c.D + d];
    den += w;
  }
  return num / den;
}

void run(const Case& c, const void* k, const void* v, ponder::KVType type, const std::vector<int32_t>& pages,
         const std::vector<int32_t>& num_tokens, const std::vector<int32_t>& queries, std::vector<float>& out) {
  ponder::shared_prefix_attention_cpu(c.q.data(), c.B, c.H, c.D, k, v, type, c.Hk, c.S, c.P, c.page_indptr.data(),
                                      pages.data(), num_tokens.data(), 4, 8, c.query_indptr.data(), queries.data(),
                                      6, 0.3f, out.data());
}

uint16_t to_bf16(float x) {  // truncation: the test compares against the same truncated values
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint16_t>(b >> 16);
}

float from_bf16(uint16_t x) {
  const uint32_t b = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

}  // namespace

PONDER_TEST(shared_prefix_cpu_matches_double_loops) {
  Case c = make_case();
  std::vector<float> out(c.q.size());
  run(c, c.k.data(), c.v.data(), ponder::KVType::kFloat32, c.pages, c.num_tokens, c.queries, out);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t d = 0; d < c.D; ++d)
        CHECK_NEAR(out[(b * c.H + h) * c.D + d], expected(c, c.k, c.v, b, h, d, 0.3), 1e-5);
}

PONDER_TEST(shared_prefix_cpu_reads_bf16_planes) {
  Case c = make_case();
  std::vector<uint16_t> kb(c.k.size()), vb(c.v.size());
  std::vector<float> kw(c.k.size()), vw(c.v.size());
  for (size_t i = 0; i < c.k.size(); ++i) {
    kb[i] = to_bf16(c.k[i]);
    vb[i] = to_bf16(c.v[i]);
    kw[i] = from_bf16(kb[i]);
    vw[i] = from_bf16(vb[i]);
  }
  std::vector<float> out(c.q.size());
  run(c, kb.data(), vb.data(), ponder::KVType::kBFloat16, c.pages, c.num_tokens, c.queries, out);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t d = 0; d < c.D; ++d)
        CHECK_NEAR(out[(b * c.H + h) * c.D + d], expected(c, kw, vw, b, h, d, 0.3), 1e-5);
}

PONDER_TEST(shared_prefix_cpu_refuses_bad_plans) {
  Case c = make_case();
  std::vector<float> out(c.q.size(), 7.f);
  std::vector<int32_t> pages = c.pages, tokens = c.num_tokens, queries = c.queries;
  pages[3] = 9;  // page 9 of a 9-page pool
  CHECK_THROWS(run(c, c.k.data(), c.v.data(), ponder::KVType::kFloat32, pages, tokens, queries, out),
               std::out_of_range);
  tokens[0] = 21;  // 5 pages of 4 hold at most 20
  CHECK_THROWS(run(c, c.k.data(), c.v.data(), ponder::KVType::kFloat32, c.pages, tokens, queries, out),
               std::invalid_argument);
  queries[5] = 3;  // 3 query rows
  CHECK_THROWS(run(c, c.k.data(), c.v.data(), ponder::KVType::kFloat32, c.pages, c.num_tokens, queries, out),
               std::out_of_range);
  CHECK_THROWS(run(c, c.k.data(), c.v.data(), static_cast<ponder::KVType>(2), c.pages, c.num_tokens, c.queries, out),
               std::invalid_argument);
  for (float x : out) CHECK_EQ(x, 7.f);  // nothing written by a refused call
}

// Eight branches under a 512-token prefix (large enough to split over threads): 1, 2, 3 and 8
// threads give the same bits, and the branches no item names stay zero.
PONDER_TEST(shared_prefix_cpu_same_bits_at_any_thread_count) {
  const int64_t B = 10, H = 4, Hk = 2, D = 64, S = 16, P = 40;
  std::mt19937 gen(5);
  const std::vector<float> k = ponder_test::normal_floats(P * S * Hk * D, gen);
  const std::vector<float> v = ponder_test::normal_floats(k.size(), gen);
  const std::vector<float> q = ponder_test::normal_floats(B * H * D, gen);
  std::vector<int32_t> page_indptr{0}, pages, num_tokens, query_indptr{0}, queries;
  for (int32_t p = 0; p < 32; ++p) pages.push_back(p);  // item 0: the prefix, branches 0-7
  page_indptr.push_back(32);
  num_tokens.push_back(512);
  for (int32_t b = 0; b < 8; ++b) queries.push_back(7 - b);  // not in branch order
  query_indptr.push_back(8);
  for (int32_t b = 0; b < 8; ++b) {  // items 1-8: one tail page per branch, 1-8 tokens
    pages.push_back(32 + b);
    page_indptr.push_back(page_indptr.back() + 1);
    num_tokens.push_back(1 + b);
    queries.push_back(b);
    query_indptr.push_back(query_indptr.back() + 1);
  }
  auto run = [&](int threads) {
    std::vector<float> out(B * H * D, -7.0f);
    ponder::shared_prefix_attention_cpu(q.data(), B, H, D, k.data(), v.data(), ponder::KVType::kFloat32, Hk, S, P,
                                        page_indptr.data(), pages.data(), num_tokens.data(), 9,
                                        static_cast<int64_t>(pages.size()), query_indptr.data(), queries.data(),
                                        static_cast<int64_t>(queries.size()), 0.125f, out.data(), threads);
    return out;
  };
  const std::vector<float> one = run(1);
  for (int64_t i = 8 * H * D; i < B * H * D; ++i) CHECK_EQ(one[i], 0.0f);  // branches 8, 9: no item
  for (int threads : {2, 3, 8}) {
    const std::vector<float> many = run(threads);
    for (size_t i = 0; i < one.size(); ++i) CHECK_EQ(many[i], one[i]);
  }
}
