// Paged attention on the host: the causal softmax attention of ponder.ops.paged_attention for
// fp32 queries over an fp32 or bfloat16 paged KV cache (bf16 K / V widened on load), reading K
// and V straight from their pages (no gathered copy). Torch-free: tensors arrive as raw pointers
// and shapes; ponder.ops checks dtypes, devices, contiguity and index values before calling.
//
// Work is split by (query row, KV head): the G = H / Hk query heads of a KV head share each K
// and V row read. For head dims 32, 64 and 128 scores, softmax and p.V run on 8-lane vectors
// (cpu_attention_blocks.h). Scores and the softmax are fp32, like the reference; only the order
// of the additions differs from it (a few ulp).
#pragma once

#include <cstdint>

namespace ponder {

// The element type of a KV cache's planes (bfloat16 as its 16 bits).
enum class KVType : int { kFloat32 = 0, kBFloat16 = 1 };

// out[t, h, :] = softmax_j(scale * q[t, h, :] . k[j, h / G, :]) . v[j, h / G, :] over the KV
// positions j = 0 .. p_t of row t's sequence, p_t = seq_lens[b] - n_b + (t - query_indptr[b]).
//   q            [T, H, D] fp32, contiguous
//   k_plane      [P, S, Hk, D] of kv_type (one layer's K), contiguous; v_plane likewise
//   block_tables [B, max_pages] int32 (entries past a sequence's last page are not read)
//   seq_lens     [B] int32, query_indptr [B+1] int32
//   out          [T, H, D] fp32
//   num_pages    P, the pages of each plane
// Checked here before anything is read (std::invalid_argument / std::out_of_range): indptr
// non-decreasing from 0 to T; n_b <= seq_lens[b] <= max_pages * S for sequences with rows;
// every page such a sequence reads lies in [0, P). Buffer sizes are the caller's to match.
// num_threads > 1 splits the rows into contiguous runs, taken by the calling thread and up to
// num_threads - 1 helpers, when the call is large enough (cpu_threads.h); every row's result
// is the same at any thread count.
void paged_attention_cpu(const float* q, int64_t num_rows, int64_t num_heads, int64_t head_dim,
                         const void* k_plane, const void* v_plane, KVType kv_type, int64_t num_kv_heads,
                         int64_t page_size,
                         const int32_t* block_tables, int64_t batch, int64_t max_pages, const int32_t* seq_lens,
                         const int32_t* query_indptr, int64_t num_pages, float scale, float* out,
                         int num_threads = 1);

}  // namespace ponder
