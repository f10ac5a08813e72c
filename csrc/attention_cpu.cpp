#include "attention_cpu.h"

#include "common.h"
#include "cpu_attention_blocks.h"
#include "cpu_clones.h"
#include "cpu_math.h"
#include "cpu_threads.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

// The per-row workers are PONDER_CPU_CLONES (cpu_clones.h). `omp simd` reductions (enabled by
// -fopenmp-simd, no OpenMP runtime) let the compiler split the dot products into vector lanes.

namespace ponder {

namespace {

// below this many multiply-adds (both products) a call runs on one thread
constexpr int64_t kMinParallelMacs = int64_t(1) << 20;
// runs of rows per thread of a split call
constexpr int64_t kPartsPerThread = 4;

struct Layout {
  int64_t num_heads, head_dim, num_kv_heads, page_size, max_pages;
  float scale;
};

// fn(j, row) for the ctx first tokens of a sequence, in order: row is token j's [D] K or V row
// of KV head g in `plane` (fp32, or bf16 bits widened by to_float), found through the
// sequence's block table.
template <typename T, typename Fn>
PONDER_ALWAYS_INLINE void for_each_token(const T* plane, const int32_t* table, int64_t ctx, int64_t S,
                                         int64_t Hk, int64_t g, int64_t D, Fn&& fn) {
  int64_t j = 0;
  for (int64_t p = 0; j < ctx; ++p) {
    const int64_t base = static_cast<int64_t>(table[p]) * S;
    const int64_t n = std::min(S, ctx - j);
    for (int64_t o = 0; o < n; ++o, ++j) fn(j, plane + ((base + o) * Hk + g) * D);
  }
}

// Scores sh[0, ctx) become unnormalised softmax weights exp(s - max) in place (fp32); returns
// 1 / their sum.
PONDER_ALWAYS_INLINE float softmax_weights(float* sh, int64_t ctx) {
  return 1.f / exp_minus(sh, ctx, max_of(sh, ctx));
}

// One query row `qrow` [H, D] of a sequence whose block table row is `table`, attending to
// positions [0, ctx). Writes out_row [H, D]. `scores` holds G * ctx floats, `inv_sum` G.
template <typename T>
PONDER_CPU_CLONES void attend_row(const Layout& L, const float* qrow, const T* k_plane, const T* v_plane,
                                  const int32_t* table, int64_t ctx, float* scores, float* inv_sum, float* out_row) {
  const int64_t D = L.head_dim, Hk = L.num_kv_heads, S = L.page_size;
  const int64_t G = L.num_heads / Hk;
  for (int64_t g = 0; g < Hk; ++g) {
    const float* qg = qrow + g * G * D;  // the G query heads reading KV head g, [G, D]
    float* og = out_row + g * G * D;
    // scores[h * ctx + j] = scale * q_h . k_j
    for_each_token(k_plane, table, ctx, S, Hk, g, D, [&](int64_t j, const T* k) {
      for (int64_t h = 0; h < G; ++h) {
        const float* qh = qg + h * D;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; ++d) s += qh[d] * to_float(k[d]);
        scores[h * ctx + j] = s * L.scale;
      }
    });
    // softmax per head (fp32), normalised at the end
    for (int64_t h = 0; h < G; ++h) {
      inv_sum[h] = softmax_weights(scores + h * ctx, ctx);
      float* oh = og + h * D;
      for (int64_t d = 0; d < D; ++d) oh[d] = 0.f;
    }
    for_each_token(v_plane, table, ctx, S, Hk, g, D, [&](int64_t j, const T* v) {
      for (int64_t h = 0; h < G; ++h) {
        const float w = scores[h * ctx + j];
        float* oh = og + h * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) oh[d] += w * to_float(v[d]);
      }
    });
    for (int64_t h = 0; h < G; ++h) {
      float* oh = og + h * D;
      const float r = inv_sum[h];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) oh[d] *= r;
    }
  }
}

// The same for a head dim D known at compile time (a multiple of 32), on 8-float vectors
// (cpu_attention_blocks.h): scores for 8 keys at a time, the softmax on vectors, and p.V for up
// to 3 query heads at once, so each V row is read once per slice of 4 vectors.
template <int D, typename T>
PONDER_CPU_CLONES void attend_row_fixed(const Layout& L, const float* qrow, const T* k_plane, const T* v_plane,
                                        const int32_t* table, int64_t ctx, float* scores, float* inv_sum,
                                        float* out_row) {
  const int64_t Hk = L.num_kv_heads, S = L.page_size;
  const int64_t G = L.num_heads / Hk;
  const T* keys[8];
  for (int64_t g = 0; g < Hk; ++g) {
    const float* qg = qrow + g * G * D;
    int n = 0;
    int64_t j0 = 0;
    for_each_token(k_plane, table, ctx, S, Hk, g, D, [&](int64_t j, const T* k) PONDER_LAMBDA_INLINE {
      if (n == 0) j0 = j;
      keys[n++] = k;
      if (n == 8) {
        score_keys<D>(keys, 8, qg, D, G, L.scale, scores + j0, ctx);
        n = 0;
      }
    });
    if (n > 0) score_keys<D>(keys, n, qg, D, G, L.scale, scores + j0, ctx);
    for (int64_t h = 0; h < G; ++h) inv_sum[h] = softmax_weights(scores + h * ctx, ctx);
    auto values = [&](auto&& fn) PONDER_LAMBDA_INLINE { for_each_token(v_plane, table, ctx, S, Hk, g, D, fn); };
    weighted_values_rows<D, false>(values, G, scores, ctx, inv_sum, out_row + g * G * D);
  }
}

using AttendRow = void (*)(const Layout&, const float*, const void*, const void*, const int32_t*, int64_t, float*,
                           float*, float*);

template <typename T, int D>
void attend_row_erased(const Layout& L, const float* qrow, const void* k, const void* v, const int32_t* table,
                       int64_t ctx, float* scores, float* inv_sum, float* out_row) {
  if constexpr (D > 0) {
    attend_row_fixed<D, T>(L, qrow, static_cast<const T*>(k), static_cast<const T*>(v), table, ctx, scores, inv_sum,
                           out_row);
  } else {
    attend_row<T>(L, qrow, static_cast<const T*>(k), static_cast<const T*>(v), table, ctx, scores, inv_sum, out_row);
  }
}

template <typename T>
AttendRow pick_attend_row(int64_t head_dim) {
  return dispatch_head_dim(head_dim,
                           [](auto dc) -> AttendRow { return &attend_row_erased<T, decltype(dc)::value>; });
}

}  // namespace

void paged_attention_cpu(const float* q, int64_t num_rows, int64_t num_heads, int64_t head_dim,
                         const void* k_plane, const void* v_plane, KVType kv_type, int64_t num_kv_heads,
                         int64_t page_size,
                         const int32_t* block_tables, int64_t batch, int64_t max_pages, const int32_t* seq_lens,
                         const int32_t* query_indptr, int64_t num_pages, float scale, float* out,
                         int num_threads) {
  PONDER_CHECK_ARG(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0,
                   "paged_attention: num_heads (", num_heads, ") must be a positive multiple of num_kv_heads (",
                   num_kv_heads, ")");
  PONDER_CHECK_ARG(head_dim > 0 && page_size > 0 && batch >= 0 && max_pages >= 0 && num_rows >= 0,
                   "paged_attention: sizes must be positive");
  PONDER_CHECK_ARG(kv_type == KVType::kFloat32 || kv_type == KVType::kBFloat16,
                   "paged_attention: kv_type must be 0 (float32) or 1 (bfloat16), got ", static_cast<int>(kv_type));
  // Every index is checked before anything is read: bad metadata raises, it never reads
  // outside the KV planes.
  PONDER_CHECK_ARG(query_indptr[0] == 0 && query_indptr[batch] == num_rows, "query_indptr must run from 0 to T = ",
                   num_rows, ", got ", query_indptr[0], " .. ", query_indptr[batch]);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t nq = static_cast<int64_t>(query_indptr[b + 1]) - query_indptr[b];
    PONDER_CHECK_ARG(nq >= 0, "query_indptr must be non-decreasing, got ", query_indptr[b], " then ",
                     query_indptr[b + 1], " at ", b);
    if (nq == 0) continue;
    const int64_t len = seq_lens[b];
    PONDER_CHECK_ARG(len >= nq && len <= max_pages * page_size, "seq_lens[", b, "] = ", len, " must lie in [", nq,
                     ", ", max_pages * page_size, "]");
    for (int64_t p = 0; p < (len + page_size - 1) / page_size; ++p) {
      const int32_t page = block_tables[b * max_pages + p];
      PONDER_CHECK_RANGE(page >= 0 && page < num_pages, "block_tables[", b, ", ", p, "] = ", page,
                         " must be a page id in [0, ", num_pages, ")");
    }
  }
  const Layout L{num_heads, head_dim, num_kv_heads, page_size, max_pages, scale};
  const int64_t HD = num_heads * head_dim;
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) longest = std::max<int64_t>(longest, seq_lens[b]);
  const int64_t G = num_heads / num_kv_heads;
  const AttendRow attend =
      kv_type == KVType::kFloat32 ? pick_attend_row<float>(head_dim) : pick_attend_row<uint16_t>(head_dim);
  // Rows [lo, hi) of the flattened batch, with their own scratch.
  auto rows = [&](int64_t lo, int64_t hi) {
    std::vector<float> scores(static_cast<size_t>(G * longest + G));
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t r0 = std::max<int64_t>(lo, query_indptr[b]), r1 = std::min<int64_t>(hi, query_indptr[b + 1]);
      if (r1 <= r0) continue;
      const int64_t first_pos = seq_lens[b] - (query_indptr[b + 1] - query_indptr[b]);
      const int32_t* table = block_tables + b * max_pages;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t ctx = first_pos + (r - query_indptr[b]) + 1;
        attend(L, q + r * HD, k_plane, v_plane, table, ctx, scores.data(), scores.data() + G * longest,
               out + r * HD);
      }
    }
  };
  // Rows are independent, so threads take contiguous runs of them (a few per thread, so that a
  // helper that starts late leaves its share to the others; cpu_threads.h) with the same
  // result at any thread count.
  int64_t macs = 0;  // (row, key) pairs x H x D, both products
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t nq = query_indptr[b + 1] - query_indptr[b];
    macs += (nq * (seq_lens[b] - nq) + nq * (nq + 1) / 2) * HD * 2;
  }
  split_rows(num_rows, macs, num_threads, kMinParallelMacs, kPartsPerThread, rows);
}

}  // namespace ponder
