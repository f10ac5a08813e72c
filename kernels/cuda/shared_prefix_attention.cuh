// Device code for shared-prefix (cascade) decode attention through an attention plan, and the
// log-sum-exp merge of its partial outputs. No torch, no pybind11: raw pointers only.
//
// Plan (ponder.attention_plan, CSR arrays, int32): item i reads item_num_tokens[i] KV tokens
// stored in pages item_pages[item_page_indptr[i] ..], for the queries
// item_queries[item_query_indptr[i] .. item_query_indptr[i+1]). Slot s = item_query_indptr[i] + j
// is the partial result of query item_queries[s] over item i; merge_slots[merge_indptr[b] ..
// merge_indptr[b+1]) are the slots of query b.
//
// KV cache layout: [L, 2, P, S, Hk, D] contiguous. The K of token `off` of page `p`, KV head
// `h`, is at element k_base + ((p * S + off) * Hk + h) * D; its V is v_plane elements later.
//
// Partials: part_out [slots, H, D] fp32, already normalised; part_lse [slots, H] fp32, the base-2
// log-sum-exp of the scaled scores (log2 sum 2^(s * scale * log2 e)); -inf for no tokens.
//
// One block (8 warps) attends one plan item for one KV head: its rows are (query j of the item,
// head g of the KV head's group of G query heads), kRows at a time (items with more rows loop, re-reading
// the KV per chunk of rows). The item's tokens stream through shared memory kTile at a time, so
// each K / V element is read from global memory once per chunk of rows. Scores and P.V are
// tensor-core products (WMMA, fp32 accumulation) for 16-bit caches and fp32 FMA loops for fp32
// caches; the softmax is online, in fp32.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

namespace ponder {
namespace spa {

constexpr int kRows = 64;  // query rows (branch x group head) per pass
constexpr int kThreads = 4 * kRows;  // 8 warps; in the softmax, 4 threads own one row
constexpr int kWarps = kThreads / 32;

template <typename T>
struct Traits {
  static constexpr bool kMma = !std::is_same<T, float>::value;
  // Tokens per shared-memory tile: 64 for the tensor-core path (4 WMMA column blocks), 32 for the
  // fp32 path, whose smem tiles are twice as wide per element.
  static constexpr int kTile = kMma ? 64 : 32;
};

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Shared-memory layout of one block, in bytes from a 128-byte aligned base. kDP is the head dim
// padded to a power of two >= 16. Leading dimensions are padded (16 bytes for 16-bit rows, 16
// bytes for fp32 score / output rows, one float for the fp32 path's K rows) so that the rows of
// a WMMA tile, or lanes reading consecutive tokens, fall in different banks.
template <typename T, int kDP>
struct Smem {
  static constexpr int kTile = Traits<T>::kTile;
  static constexpr bool kMma = Traits<T>::kMma;
  static constexpr int kLdQ = kMma ? kDP + 8 : kDP;      // qs, vs
  static constexpr int kLdK = kMma ? kDP + 8 : kDP + 1;  // ks
  static constexpr int kLdS = kTile + 4;                 // ss (fp32)
  static constexpr int kLdP = kTile + 8;                 // ps (16-bit)
  static constexpr int kLdO = kDP + 4;                   // os (fp32)
  static constexpr int64_t align(int64_t b) { return (b + 127) / 128 * 128; }
  static constexpr int64_t q_off = 0;                                                   // [kRows, kLdQ] T
  static constexpr int64_t k_off = align(q_off + int64_t(kRows) * kLdQ * sizeof(T));  // [kTile, kLdK] T
  static constexpr int64_t v_off = align(k_off + int64_t(kTile) * kLdK * sizeof(T));  // [kTile, kLdQ] T
  static constexpr int64_t s_off = align(v_off + int64_t(kTile) * kLdQ * sizeof(T));  // [kRows, kLdS] f32
  static constexpr int64_t p_off = align(s_off + int64_t(kRows) * kLdS * 4);          // [kRows, kLdP] T (mma)
  static constexpr int64_t o_off = align(p_off + (kMma ? int64_t(kRows) * kLdP * sizeof(T) : 0));  // [kRows, kLdO] f32
  static constexpr int64_t stat_off = align(o_off + int64_t(kRows) * kLdO * 4);      // m, l: [2, kRows] f32
  static constexpr int64_t bytes = align(stat_off + 2 * kRows * 4);
};

// Loads tokens [n0, n0 + kTile) of an item (count valid) of KV head kvh into the smem tiles ks /
// vs; rows past `count` are zero. 16-byte loads when a token row is a whole number of them and
// the cache is 16-byte aligned; every thread issues all of its loads before storing any.
template <typename T, int kDP, int kLdK, int kLdV>
__device__ __forceinline__ void load_tile(const T* __restrict__ kv, int64_t k_base, int64_t v_plane,
                                          const int32_t* __restrict__ pages, int page_size, int num_kv_heads,
                                          int head_dim, int kvh, int n0, int count, T* ks, T* vs) {
  constexpr int kTile = Traits<T>::kTile;
  constexpr int kVec = 16 / sizeof(T);
  const int64_t token_stride = int64_t(num_kv_heads) * head_dim;
  const int64_t head_off = k_base + int64_t(kvh) * head_dim;
  if (kDP % kVec == 0 && kLdK % kVec == 0 && head_dim % kVec == 0 &&
      reinterpret_cast<std::uintptr_t>(kv) % 16 == 0) {
    constexpr int kPerRow = kDP / kVec;  // chunks of a padded row; those past head_dim are skipped
    constexpr int kIters = (kTile * kPerRow + kThreads - 1) / kThreads;
    uint4 kx[kIters], vx[kIters];
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      const int t = idx / kPerRow, c = (idx % kPerRow) * kVec;
      kx[i] = vx[i] = make_uint4(0, 0, 0, 0);
      if (t < count && c < head_dim) {
        const int n = n0 + t;
        const int64_t off = (int64_t(pages[n / page_size]) * page_size + n % page_size) * token_stride + head_off + c;
        kx[i] = *reinterpret_cast<const uint4*>(kv + off);
        vx[i] = *reinterpret_cast<const uint4*>(kv + v_plane + off);
      }
    }
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      const int t = idx / kPerRow, c = (idx % kPerRow) * kVec;
      if (t < kTile && c < head_dim) {
        *reinterpret_cast<uint4*>(ks + t * kLdK + c) = kx[i];
        *reinterpret_cast<uint4*>(vs + t * kLdV + c) = vx[i];
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < kTile * head_dim; idx += kThreads) {
      const int t = idx / head_dim, d = idx - t * head_dim;
      T kx = from_float<T>(0.f), vx = kx;
      if (t < count) {
        const int n = n0 + t;
        const int64_t off = (int64_t(pages[n / page_size]) * page_size + n % page_size) * token_stride + head_off + d;
        kx = kv[off];
        vx = kv[v_plane + off];
      }
      ks[t * kLdK + d] = kx;
      vs[t * kLdV + d] = vx;
    }
  }
}

// Grid (last_item - first_item, Hk), kThreads threads, Smem<T, kDP>::bytes of dynamic shared
// memory. q: [B, H, D] contiguous in T. Head dims d in [head_dim, kDP) stay zero in smem.
//
// Per tile of kTile tokens: load K / V (all threads); S = Q K^T (WMMA blocks spread over the
// warps, or FMA loops); online softmax with 4 threads per row, which also rescale the row's
// output accumulator; O += P V (WMMA blocks accumulating in smem, or FMA loops).
template <typename T, int kDP>
__global__ void __launch_bounds__(kThreads)
    SharedPrefixAttentionKernel(const T* __restrict__ q, const T* __restrict__ kv, int64_t k_base, int64_t v_plane,
                                const int32_t* __restrict__ item_page_indptr, const int32_t* __restrict__ item_pages,
                                const int32_t* __restrict__ item_num_tokens,
                                const int32_t* __restrict__ item_query_indptr,
                                const int32_t* __restrict__ item_queries, float* __restrict__ part_out,
                                float* __restrict__ part_lse, int first_item, int num_heads, int num_kv_heads,
                                int head_dim, int page_size, float scale_log2) {
  using L = Smem<T, kDP>;
  constexpr int kTile = L::kTile;
  constexpr int kLdQ = L::kLdQ, kLdK = L::kLdK, kLdS = L::kLdS, kLdP = L::kLdP, kLdO = L::kLdO;
  constexpr int kPart = kTile / 4;  // tokens of one softmax thread
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem + L::q_off);
  T* ks = reinterpret_cast<T*>(smem + L::k_off);
  T* vs = reinterpret_cast<T*>(smem + L::v_off);
  float* ss = reinterpret_cast<float*>(smem + L::s_off);
  T* ps = reinterpret_cast<T*>(smem + L::p_off);
  float* os = reinterpret_cast<float*>(smem + L::o_off);
  float* m_s = reinterpret_cast<float*>(smem + L::stat_off);
  float* l_s = m_s + kRows;

  const int item = first_item + blockIdx.x;
  const int kvh = blockIdx.y;
  const int group = num_heads / num_kv_heads;
  const int warp = threadIdx.x / 32;
  const int32_t* pages = item_pages + item_page_indptr[item];
  const int num_tokens = item_num_tokens[item];
  const int q_begin = item_query_indptr[item];
  const int total_rows = (item_query_indptr[item + 1] - q_begin) * group;
  // The softmax thread's row and token range; its running max / sum live in registers.
  const int my_row = threadIdx.x / 4, my_part = threadIdx.x % 4;

  for (int row0 = 0; row0 < total_rows; row0 += kRows) {
    const int nrows = min(kRows, total_rows - row0);
    // Clear everything (padding rows / dims must be finite zeros), then load the queries.
    __syncthreads();
    for (int64_t i = threadIdx.x; i < L::bytes / 16; i += kThreads) {
      reinterpret_cast<uint4*>(smem)[i] = make_uint4(0, 0, 0, 0);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nrows * head_dim; idx += kThreads) {
      const int r = idx / head_dim, d = idx - r * head_dim;
      const int j = (row0 + r) / group, g = (row0 + r) - j * group;
      const int64_t t = item_queries[q_begin + j];
      qs[r * kLdQ + d] = q[(t * num_heads + int64_t(kvh) * group + g) * head_dim + d];
    }
    float m_run = -INFINITY, l_run = 0.f;
    const int row_blocks = (nrows + 15) / 16;

    for (int n0 = 0; n0 < num_tokens; n0 += kTile) {
      const int count = min(kTile, num_tokens - n0);
      __syncthreads();  // the previous tile's P.V is done with ks / vs / ps
      load_tile<T, kDP, kLdK, kLdQ>(kv, k_base, v_plane, pages, page_size, num_kv_heads, head_dim, kvh, n0, count,
                                    ks, vs);
      __syncthreads();

      // Scores S = Q K^T for the live rows: [nrows, kTile] fp32, unscaled.
      if constexpr (L::kMma) {
        using namespace nvcuda;
        const int blocks = row_blocks * (kTile / 16);
        for (int blk = warp; blk < blocks; blk += kWarps) {
          const int rb = blk / (kTile / 16), cb = blk % (kTile / 16);
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
          wmma::fill_fragment(acc, 0.f);
#pragma unroll
          for (int k = 0; k < kDP; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
            wmma::load_matrix_sync(a, qs + rb * 16 * kLdQ + k, kLdQ);
            wmma::load_matrix_sync(b, ks + cb * 16 * kLdK + k, kLdK);
            wmma::mma_sync(acc, a, b, acc);
          }
          wmma::store_matrix_sync(ss + rb * 16 * kLdS + cb * 16, acc, kLdS, wmma::mem_row_major);
        }
      } else {
        for (int idx = threadIdx.x; idx < nrows * kTile; idx += kThreads) {
          const int r = idx / kTile, n = idx - r * kTile;
          const float* qr = reinterpret_cast<const float*>(qs) + r * kLdQ;
          const float* kr = reinterpret_cast<const float*>(ks) + n * kLdK;
          float acc = 0.f;
#pragma unroll 8
          for (int d = 0; d < kDP; ++d) acc = fmaf(qr[d], kr[d], acc);
          ss[r * kLdS + n] = acc;
        }
      }
      __syncthreads();

      // Online softmax: the 4 threads of a row (adjacent lanes) take kPart tokens each. Rows past
      // nrows hold zero scores and are computed too (never stored), so the shuffles see every lane.
      {
        float s[kPart];
        float tile_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < kPart; ++i) {
          const int n = my_part * kPart + i;
          s[i] = n < count ? ss[my_row * kLdS + n] * scale_log2 : -INFINITY;
          tile_max = fmaxf(tile_max, s[i]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float m_new = fmaxf(m_run, tile_max);
        const float alpha = m_run == -INFINITY ? 0.f : exp2f(m_run - m_new);
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < kPart; ++i) {
          const float p = exp2f(s[i] - m_new);  // 0 for the masked tokens (s = -inf)
          sum += p;
          if constexpr (L::kMma) {
            ps[my_row * kLdP + my_part * kPart + i] = from_float<T>(p);
          } else {
            ss[my_row * kLdS + my_part * kPart + i] = p;
          }
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l_run = l_run * alpha + sum;
        m_run = m_new;
        // O *= alpha for this row (its 4 threads split the padded dims).
        for (int d = my_part; d < kDP; d += 4) os[my_row * kLdO + d] *= alpha;
      }
      __syncthreads();

      // O += P V.
      if constexpr (L::kMma) {
        using namespace nvcuda;
        const int blocks = row_blocks * (kDP / 16);
        for (int blk = warp; blk < blocks; blk += kWarps) {
          const int rb = blk / (kDP / 16), cb = blk % (kDP / 16);
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
          wmma::load_matrix_sync(acc, os + rb * 16 * kLdO + cb * 16, kLdO, wmma::mem_row_major);
#pragma unroll
          for (int k = 0; k < kTile; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
            wmma::load_matrix_sync(a, ps + rb * 16 * kLdP + k, kLdP);
            wmma::load_matrix_sync(b, vs + k * kLdQ + cb * 16, kLdQ);
            wmma::mma_sync(acc, a, b, acc);
          }
          wmma::store_matrix_sync(os + rb * 16 * kLdO + cb * 16, acc, kLdO, wmma::mem_row_major);
        }
      } else {
        const float* vf = reinterpret_cast<const float*>(vs);
        for (int idx = threadIdx.x; idx < nrows * kDP; idx += kThreads) {
          const int r = idx / kDP, d = idx - r * kDP;
          const float* pr = ss + r * kLdS;
          float acc = os[r * kLdO + d];
#pragma unroll 8
          for (int n = 0; n < kTile; ++n) acc = fmaf(pr[n], vf[n * kLdQ + d], acc);
          os[r * kLdO + d] = acc;
        }
      }
    }
    if (my_part == 0) {
      m_s[my_row] = m_run;
      l_s[my_row] = l_run;
    }
    __syncthreads();

    // Normalised partials and their base-2 log-sum-exp.
    for (int idx = threadIdx.x; idx < nrows * head_dim; idx += kThreads) {
      const int r = idx / head_dim, d = idx - r * head_dim;
      const int j = (row0 + r) / group, g = (row0 + r) - j * group;
      const float l = l_s[r];
      const int64_t slot = q_begin + j;
      part_out[(slot * num_heads + int64_t(kvh) * group + g) * head_dim + d] = l > 0.f ? os[r * kLdO + d] / l : 0.f;
    }
    for (int r = threadIdx.x; r < nrows; r += kThreads) {
      const int j = (row0 + r) / group, g = (row0 + r) - j * group;
      const float l = l_s[r];
      part_lse[(int64_t(q_begin) + j) * num_heads + int64_t(kvh) * group + g] = l > 0.f ? m_s[r] + log2f(l) : -INFINITY;
    }
  }
}

// Grid (B), 128 threads: out[b, h, :] = sum_s 2^(lse_s - M) part_out[s, h, :] / sum_s 2^(lse_s - M)
// over the slots s of query b, M their largest lse; zeros when no slot has any token. out is
// [B, H, D] fp32 contiguous.
__global__ void __launch_bounds__(128)
    MergePartialsKernel(const float* __restrict__ part_out, const float* __restrict__ part_lse,
                        const int32_t* __restrict__ merge_indptr, const int32_t* __restrict__ merge_slots,
                        float* __restrict__ out, int num_heads, int head_dim) {
  const int64_t b = blockIdx.x;
  const int begin = merge_indptr[b], end = merge_indptr[b + 1];
  const int per_query = num_heads * head_dim;
  for (int e = threadIdx.x; e < per_query; e += blockDim.x) {
    const int h = e / head_dim;
    float top = -INFINITY;
    for (int k = begin; k < end; ++k) top = fmaxf(top, part_lse[int64_t(merge_slots[k]) * num_heads + h]);
    float num = 0.f, den = 0.f;
    if (top != -INFINITY) {
      for (int k = begin; k < end; ++k) {
        const int64_t s = merge_slots[k];
        const float w = exp2f(part_lse[s * num_heads + h] - top);
        num = fmaf(w, part_out[s * per_query + e], num);
        den += w;
      }
    }
    out[b * per_query + e] = den > 0.f ? num / den : 0.f;
  }
}

}  // namespace spa
}  // namespace ponder
