#include "shared_prefix_cpu.h"

#include "common.h"
#include "cpu_attention_blocks.h"
#include "cpu_clones.h"
#include "cpu_math.h"
#include "cpu_threads.h"

#include <algorithm>
#include <limits>
#include <vector>

// The item worker is PONDER_CPU_CLONES (cpu_clones.h); its fixed-width lane loops and `omp simd`
// loops (-fopenmp-simd, no OpenMP runtime) become vector instructions in each clone.

namespace ponder {

namespace {

constexpr int kLanes = 32;  // tokens per block: two vectors of scores per query row
constexpr int kRows = 4;    // query rows per register block
constexpr int kChunk = 128;  // tokens per chunk of the fixed-head-dim path (32 KiB of K at D = 64)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// below this many multiply-adds (both products) a call runs on one thread
constexpr int64_t kMinParallelMacs = int64_t(1) << 20;

// Scratch of one item x KV head: the scaled query rows and their online-softmax state.
struct ItemScratch {
  std::vector<float> q;    // [rows_pad, D], scale * q (padding rows zero)
  std::vector<float> acc;  // [rows_pad, D], unnormalised outputs
  std::vector<float> m;    // [rows_pad], running maxima
  std::vector<float> l;    // [rows_pad], running sums of exp(s - m)
  std::vector<float> kt;   // [D, kLanes], the block's K transposed
  std::vector<float> vb;   // [kLanes, D], the block's V
  std::vector<float> p;    // [kRows, kLanes], a row block's scores, then its softmax weights
  std::vector<float> s;    // [rows, kChunk], a chunk's scores, then its weights (fixed head dims)
};

// Token block [t0, t0 + n) of an item into kt (transposed) and vb, widened to fp32; lanes past
// n are zero.
template <typename T>
PONDER_ALWAYS_INLINE void load_block(const T* k_plane, const T* v_plane, const int32_t* pages, int64_t t0,
                                     int64_t n, int64_t S, int64_t Hk, int64_t g, int64_t D, float* kt, float* vb) {
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    float* vrow = vb + lane * D;
    if (lane >= n) {
      for (int64_t d = 0; d < D; ++d) kt[d * kLanes + lane] = 0.f;
      for (int64_t d = 0; d < D; ++d) vrow[d] = 0.f;
      continue;
    }
    const int64_t t = t0 + lane;
    const int64_t slot = static_cast<int64_t>(pages[t / S]) * S + t % S;
    const T* k = k_plane + (slot * Hk + g) * D;
    const T* v = v_plane + (slot * Hk + g) * D;
    for (int64_t d = 0; d < D; ++d) kt[d * kLanes + lane] = to_float(k[d]);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) vrow[d] = to_float(v[d]);
  }
}

// Rows [rb, rb + kRows) of the scratch against one token block of n valid lanes: scores, the
// online-softmax update and acc += p . V (head dims without a fixed-size path).
PONDER_ALWAYS_INLINE void attend_block(ItemScratch& w, int64_t rb, int64_t n, int64_t D) {
  const float* kt = w.kt.data();
  const float* vb = w.vb.data();
  const float* qr = w.q.data() + rb * D;
  float s[kRows][kLanes] = {};
  for (int64_t d = 0; d < D; ++d) {
    const float* kd = kt + d * kLanes;
    for (int r = 0; r < kRows; ++r) {
      const float qv = qr[r * D + d];
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) s[r][l] += qv * kd[l];
    }
  }
  // Softmax in memory, not in s: loops over an array the compiler keeps as one vector each,
  // where unrolled register copies would make the exponential scalar.
  float* pw = w.p.data();
  for (int r = 0; r < kRows; ++r) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) pw[r * kLanes + l] = s[r][l];
  }
  for (int r = 0; r < kRows; ++r) {
    float* p = pw + r * kLanes;
    // Lanes past n score -inf, so their weight is exp(-inf) = 0; every loop below runs over
    // all kLanes lanes (whole vectors) and the maximum and sum fold by halving, with no reduction
    // clause (which GCC leaves scalar here).
    float t[kLanes];
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      p[l] = l < n ? p[l] : kNegInf;
      t[l] = p[l];
    }
    for (int h = kLanes / 2; h > 0; h /= 2)
      for (int l = 0; l < h; ++l) t[l] = t[l] > t[l + h] ? t[l] : t[l + h];
    const float m_old = w.m[rb + r];
    const float m_new = std::max(m_old, t[0]);  // finite: the block has a valid lane
    const float c = exp_nonpositive(m_old - m_new);  // 0 while m_old is -inf
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      p[l] = exp_nonpositive(p[l] - m_new);
      t[l] = p[l];
    }
    for (int h = kLanes / 2; h > 0; h /= 2)
      for (int l = 0; l < h; ++l) t[l] += t[l + h];
    const float sum = t[0];
    w.m[rb + r] = m_new;
    w.l[rb + r] = w.l[rb + r] * c + sum;
    float* a = w.acc.data() + (rb + r) * D;
    if (c != 1.f) {
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] *= c;
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float* a = w.acc.data() + (rb + r) * D;
    for (int64_t j = 0; j < n; ++j) {  // lanes past n have weight 0
      const float pj = pw[r * kLanes + j];
      const float* v = vb + j * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += pj * v[d];
    }
  }
}

// A head dim known at compile time (a multiple of 32): the item's tokens in chunks of kChunk.
// For each chunk, every row's scores (8 keys at a time, each group of K rows read once for all
// rows), an online-softmax update of each row (running maximum, sum, unnormalised output), then
// the weighted V rows added for 3 rows at a time (cpu_attention_blocks.h). The chunk's K and V
// rows stay in the cache while the rows take them.
template <typename T, int D>
PONDER_ALWAYS_INLINE void attend_item_fixed(ItemScratch& w, const T* k_plane, const T* v_plane, const int32_t* pages,
                                            int64_t num_tokens, int64_t rows, int64_t S, int64_t Hk, int64_t g) {
  float* s = w.s.data();
  const T* values[kChunk];
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, num_tokens - t0);
    const T* keys[8];
    for (int64_t i = 0; i < n; i += 8) {
      const int m = static_cast<int>(std::min<int64_t>(8, n - i));
      for (int u = 0; u < m; ++u) {
        const int64_t t = t0 + i + u;
        const int64_t row = (static_cast<int64_t>(pages[t / S]) * S + t % S) * Hk + g;
        keys[u] = k_plane + row * D;
        values[i + u] = v_plane + row * D;
      }
      score_keys<D>(keys, m, w.q.data(), D, rows, 1.f, s + i, kChunk);  // q is scaled already
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * kChunk;
      const float m_new = std::max(w.m[r], max_of(sr, n));  // finite: n >= 1 finite scores
      const float c = exp_nonpositive(w.m[r] - m_new);   // 0 while w.m[r] is -inf
      w.l[r] = w.l[r] * c + exp_minus(sr, n, m_new);
      w.m[r] = m_new;
      if (c != 1.f) {
        float* a = w.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) a[d] *= c;
      }
    }
    auto for_values = [&](auto&& fn) PONDER_LAMBDA_INLINE {
      for (int64_t j = 0; j < n; ++j) fn(j, values[j]);
    };
    weighted_values_rows<D, true>(for_values, rows, s, kChunk, nullptr, w.acc.data());
  }
}

// Every token of one item for KV head g, over the item's rows (rows_pad scratch rows).
template <typename T, int DC>
PONDER_CPU_CLONES void attend_item(ItemScratch& w, const T* k_plane, const T* v_plane, const int32_t* pages,
                                   int64_t num_tokens, int64_t rows, int64_t rows_pad, int64_t S, int64_t Hk,
                                   int64_t g, int64_t D) {
  if constexpr (DC > 0) {
    attend_item_fixed<T, DC>(w, k_plane, v_plane, pages, num_tokens, rows, S, Hk, g);
  } else {
    for (int64_t t0 = 0; t0 < num_tokens; t0 += kLanes) {
      const int64_t n = std::min<int64_t>(kLanes, num_tokens - t0);
      load_block(k_plane, v_plane, pages, t0, n, S, Hk, g, D, w.kt.data(), w.vb.data());
      for (int64_t rb = 0; rb < rows_pad; rb += kRows) attend_block(w, rb, n, D);
    }
  }
}

using AttendItem = void (*)(ItemScratch&, const void*, const void*, const int32_t*, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, int64_t);

template <typename T, int DC>
void attend_item_erased(ItemScratch& w, const void* k, const void* v, const int32_t* pages, int64_t num_tokens,
                        int64_t rows, int64_t rows_pad, int64_t S, int64_t Hk, int64_t g, int64_t D) {
  attend_item<T, DC>(w, static_cast<const T*>(k), static_cast<const T*>(v), pages, num_tokens, rows, rows_pad, S, Hk,
                     g, D);
}

template <typename T>
AttendItem pick_for(int64_t head_dim) {
  return dispatch_head_dim(head_dim,
                           [](auto dc) -> AttendItem { return &attend_item_erased<T, decltype(dc)::value>; });
}

// Everything one call needs, shared read-only by its threads.
struct Work {
  const float* q;
  int64_t B, H, D;
  const void* k_plane;
  const void* v_plane;
  int64_t Hk, S;
  const int32_t* item_page_indptr;
  const int32_t* item_pages;
  const int32_t* item_num_tokens;
  int64_t num_items;
  const int32_t* item_query_indptr;
  const int32_t* item_queries;
  float scale;
  AttendItem attend;
};

// Branches [b0, b1): every item's rows of those branches, merged into their (branch, head)
// state (gm, gl and out rows of those branches only), then normalised.
void attend_branches(const Work& c, int64_t b0, int64_t b1, float* gm, float* gl, float* out) {
  const int64_t H = c.H, D = c.D, Hk = c.Hk, G = H / Hk;
  std::fill(out + b0 * H * D, out + b1 * H * D, 0.f);
  std::vector<int32_t> mine;  // an item's branches in [b0, b1), in the item's order
  int64_t max_rows = 0;
  for (int64_t i = 0; i < c.num_items; ++i) {
    int64_t n = 0;
    for (int32_t s = c.item_query_indptr[i]; s < c.item_query_indptr[i + 1]; ++s)
      n += c.item_queries[s] >= b0 && c.item_queries[s] < b1;
    max_rows = std::max<int64_t>(max_rows, n * G);
  }
  const int64_t max_pad = (max_rows + kRows - 1) / kRows * kRows;
  ItemScratch w;
  w.q.resize(static_cast<size_t>(max_pad * D));
  w.acc.resize(static_cast<size_t>(max_pad * D));
  w.m.resize(static_cast<size_t>(max_pad));
  w.l.resize(static_cast<size_t>(max_pad));
  if (dispatch_head_dim(D, [](auto dc) { return decltype(dc)::value > 0; })) {  // attend_item_fixed
    w.s.resize(static_cast<size_t>(max_pad * kChunk));
  } else {  // the 32-token blocks
    w.kt.resize(static_cast<size_t>(D * kLanes));
    w.vb.resize(static_cast<size_t>(kLanes * D));
    w.p.resize(static_cast<size_t>(kRows * kLanes));
  }

  for (int64_t i = 0; i < c.num_items; ++i) {
    mine.clear();
    for (int32_t s = c.item_query_indptr[i]; s < c.item_query_indptr[i + 1]; ++s)
      if (c.item_queries[s] >= b0 && c.item_queries[s] < b1) mine.push_back(c.item_queries[s]);
    if (mine.empty()) continue;
    const int64_t rows = static_cast<int64_t>(mine.size()) * G, rows_pad = (rows + kRows - 1) / kRows * kRows;
    for (int64_t g = 0; g < Hk; ++g) {
      // Row r = (branch mine[r / G], query head g * G + r % G).
      for (int64_t r = 0; r < rows_pad; ++r) {
        float* dst = w.q.data() + r * D;
        if (r < rows) {
          const float* src = c.q + (static_cast<int64_t>(mine[r / G]) * H + g * G + r % G) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * c.scale;
        } else {
          std::fill(dst, dst + D, 0.f);
        }
      }
      std::fill(w.acc.begin(), w.acc.begin() + rows_pad * D, 0.f);
      std::fill(w.m.begin(), w.m.begin() + rows_pad, kNegInf);
      std::fill(w.l.begin(), w.l.begin() + rows_pad, 0.f);
      c.attend(w, c.k_plane, c.v_plane, c.item_pages + c.item_page_indptr[i], c.item_num_tokens[i], rows, rows_pad,
               c.S, Hk, g, D);
      // Merge each row into its branch's state by log-sum-exp.
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t bh = static_cast<int64_t>(mine[r / G]) * H + g * G + r % G;
        const float m_new = std::max(gm[bh], w.m[r]);
        const float ca = exp_nonpositive(gm[bh] - m_new), cb = exp_nonpositive(w.m[r] - m_new);
        float* o = out + bh * D;
        const float* a = w.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) o[d] = o[d] * ca + a[d] * cb;
        gl[bh] = gl[bh] * ca + w.l[r] * cb;
        gm[bh] = m_new;
      }
    }
  }
  for (int64_t bh = b0 * H; bh < b1 * H; ++bh) {
    const float inv = gl[bh] > 0.f ? 1.f / gl[bh] : 0.f;
    float* o = out + bh * D;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  }
}

void check_indptr(const int32_t* indptr, int64_t n, int64_t total, const char* name) {
  PONDER_CHECK_ARG(indptr[0] == 0 && indptr[n] == total, name, " must run from 0 to ", total, ", got ", indptr[0],
                   " .. ", indptr[n]);
  for (int64_t i = 0; i < n; ++i)
    PONDER_CHECK_ARG(indptr[i + 1] >= indptr[i], name, " must be non-decreasing, got ", indptr[i], " then ",
                     indptr[i + 1], " at ", i);
}

}  // namespace

void check_shared_prefix_plan(int64_t num_queries, int64_t page_size, int64_t num_pages,
                              const int32_t* item_page_indptr, const int32_t* item_pages,
                              const int32_t* item_num_tokens, int64_t num_items, int64_t num_item_pages,
                              const int32_t* item_query_indptr, const int32_t* item_queries, int64_t num_slots) {
  PONDER_CHECK_ARG(page_size > 0 && num_pages >= 0 && num_queries >= 0 && num_items >= 0 && num_item_pages >= 0 &&
                       num_slots >= 0,
                   "shared_prefix_attention: sizes must be positive");
  check_indptr(item_page_indptr, num_items, num_item_pages, "plan.item_page_indptr");
  check_indptr(item_query_indptr, num_items, num_slots, "plan.item_query_indptr");
  for (int64_t i = 0; i < num_items; ++i) {
    const int64_t np = item_page_indptr[i + 1] - item_page_indptr[i];
    const int64_t nt = item_num_tokens[i];
    PONDER_CHECK_ARG(nt >= 1 && nt <= np * page_size, "plan.item_num_tokens[", i, "] = ", nt, " must lie in [1, ",
                     np * page_size, "] for its ", np, " pages of S = ", page_size);
  }
  for (int64_t p = 0; p < num_item_pages; ++p)
    PONDER_CHECK_RANGE(item_pages[p] >= 0 && item_pages[p] < num_pages, "plan.item_pages[", p, "] = ", item_pages[p],
                       " must be a page id in [0, ", num_pages, ")");
  for (int64_t s = 0; s < num_slots; ++s)
    PONDER_CHECK_RANGE(item_queries[s] >= 0 && item_queries[s] < num_queries, "plan.item_queries[", s, "] = ",
                       item_queries[s], " must be a query row in [0, ", num_queries, ")");
}

void shared_prefix_attention_cpu(const float* q, int64_t num_queries, int64_t num_heads, int64_t head_dim,
                                 const void* k_plane, const void* v_plane, KVType kv_type, int64_t num_kv_heads,
                                 int64_t page_size, int64_t num_pages, const int32_t* item_page_indptr,
                                 const int32_t* item_pages, const int32_t* item_num_tokens, int64_t num_items,
                                 int64_t num_item_pages, const int32_t* item_query_indptr,
                                 const int32_t* item_queries, int64_t num_slots, float scale, float* out,
                                 int num_threads) {
  PONDER_CHECK_ARG(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0,
                   "shared_prefix_attention: num_heads (", num_heads, ") must be a positive multiple of num_kv_heads (",
                   num_kv_heads, ")");
  PONDER_CHECK_ARG(head_dim > 0 && page_size > 0 && num_pages >= 0 && num_queries >= 0 && num_items >= 0 &&
                       num_item_pages >= 0 && num_slots >= 0,
                   "shared_prefix_attention: sizes must be positive");
  PONDER_CHECK_ARG(kv_type == KVType::kFloat32 || kv_type == KVType::kBFloat16,
                   "shared_prefix_attention: kv_type must be 0 (float32) or 1 (bfloat16), got ",
                   static_cast<int>(kv_type));
  // Every index is checked before anything is read: a bad plan raises, it never reads outside
  // the KV planes or writes outside out.
  check_shared_prefix_plan(num_queries, page_size, num_pages, item_page_indptr, item_pages, item_num_tokens,
                           num_items, num_item_pages, item_query_indptr, item_queries, num_slots);

  const Work work{q, num_queries, num_heads, head_dim, k_plane, v_plane, num_kv_heads, page_size,
                  item_page_indptr, item_pages, item_num_tokens, num_items, item_query_indptr, item_queries, scale,
                  kv_type == KVType::kFloat32 ? pick_for<float>(head_dim) : pick_for<uint16_t>(head_dim)};
  std::vector<float> gm(static_cast<size_t>(num_queries * num_heads), kNegInf);
  std::vector<float> gl(static_cast<size_t>(num_queries * num_heads), 0.f);
  // Threads take contiguous ranges of branches: each reads every item its branches read and
  // merges into its own branches' state only, so no state is shared and every row's arithmetic
  // (and the order of its merges) is the same at any thread count.
  int64_t macs = 0;  // query-head rows x tokens x head dim, both products
  for (int64_t i = 0; i < num_items; ++i)
    macs += (item_query_indptr[i + 1] - item_query_indptr[i]) * num_heads * item_num_tokens[i] * head_dim * 2;
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(std::max(num_threads, 1)), num_queries, macs / kMinParallelMacs}));
  // one range per thread (more would read the shared items more often); a range whose helper
  // starts late is taken by a thread that is free (cpu_threads.h)
  auto bounds = [&](int64_t t) { return num_queries * t / parts; };
  run_parts(parts, static_cast<int>(parts),
            [&](int64_t t) { attend_branches(work, bounds(t), bounds(t + 1), gm.data(), gl.data(), out); });
}

}  // namespace ponder
