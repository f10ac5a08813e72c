// Shared-prefix decode attention on the host: ponder.ops.shared_prefix_attention for fp32 query
// rows over an fp32 or bfloat16 paged KV cache. Torch-free: tensors arrive as raw pointers and
// shapes; ponder.ops checks dtypes, devices and shapes before calling, and the index values of
// the plan are checked here before any K / V is read.
//
// Each plan item (a run of pages shared by a set of branches) is read once for all of its query
// rows: for KV head g, the nq * G query heads of its branches form a row block. For head dims 32,
// 64 and 128, tokens go by in chunks of 128: every row's scores for 8 keys at a time, then p.V
// for 3 rows at a time, each K and V row loaded once per group of rows while the chunk stays in
// the cache (cpu_attention_blocks.h, shared with paged_attention_cpu). Other head dims take
// blocks of 32 tokens with K transposed to [D, 32]. The softmax is online (flash style: running
// maximum, sum and unnormalised output), and every row's state is merged into its branch's by
// log-sum-exp, in item order. Scores, softmax and merge are fp32 (bfloat16 K / V are widened on
// load); the result equals the reference up to fp32 rounding order.
#pragma once

#include <cstdint>

#include "attention_cpu.h"  // KVType

namespace ponder {

//   q                  [B, H, D] fp32, contiguous (row b is branch b's decode query)
//   k_plane, v_plane   [P, S, Hk, D] of kv_type (one layer's K and V), contiguous
//   item_page_indptr   [I+1] int32; item i reads pages item_pages[indptr[i] .. indptr[i+1])
//   item_pages         [num_item_pages] int32 page ids
//   item_num_tokens    [I] int32: the first item_num_tokens[i] tokens of those pages
//   item_query_indptr  [I+1] int32; item_queries [num_slots] int32: the branches reading item i
//   out                [B, H, D] fp32; a branch no item names gets zeros
// Checked before any K / V read (std::invalid_argument / std::out_of_range): both indptrs run
// non-decreasing from 0 to num_item_pages / num_slots; 1 <= item_num_tokens[i] <= pages * S;
// every page in [0, P); every query in [0, B).
// num_threads > 1 splits the branches into that many contiguous ranges when the call is large
// enough, taken by the calling thread and helpers as each is free (cpu_threads.h); each range
// reads the items its branches read, so a shared prefix is read once per range. Every row's
// result is the same at any thread count.
// The checks shared_prefix_attention_cpu makes of a plan's index values before it reads
// anything (std::invalid_argument / std::out_of_range naming the array and the entry), for a
// caller that must check them before it writes anything else.
void check_shared_prefix_plan(int64_t num_queries, int64_t page_size, int64_t num_pages,
                              const int32_t* item_page_indptr, const int32_t* item_pages,
                              const int32_t* item_num_tokens, int64_t num_items, int64_t num_item_pages,
                              const int32_t* item_query_indptr, const int32_t* item_queries, int64_t num_slots);

void shared_prefix_attention_cpu(const float* q, int64_t num_queries, int64_t num_heads, int64_t head_dim,
                                 const void* k_plane, const void* v_plane, KVType kv_type, int64_t num_kv_heads,
                                 int64_t page_size, int64_t num_pages, const int32_t* item_page_indptr,
                                 const int32_t* item_pages, const int32_t* item_num_tokens, int64_t num_items,
                                 int64_t num_item_pages, const int32_t* item_query_indptr,
                                 const int32_t* item_queries, int64_t num_slots, float scale, float* out,
                                 int num_threads = 1);

}  // namespace ponder
