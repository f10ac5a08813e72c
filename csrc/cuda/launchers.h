// Host-side launchers for the CUDA kernels. Arguments are raw device pointers (as integers),
// shapes and the caller's CUDA stream (cudaStream_t as an integer; 0 = legacy default stream).
// Launchers validate what they can see, launch, and turn CUDA errors into std::runtime_error.
#pragma once

#include <cstdint>

namespace ponder {

// Copies page src_pages[i] to page dst_pages[i] in every (layer, K|V) plane of a KV cache laid out
// as [num_planes, num_pages, page_bytes] bytes. src_pages / dst_pages are int32 device arrays of
// num_pairs entries whose ids the caller has checked to lie in [0, num_pages).
void copy_pages_cuda(std::uintptr_t kv, std::uintptr_t src_pages, std::uintptr_t dst_pages,
                     int64_t num_pairs, int64_t num_planes, int64_t num_pages, int64_t page_bytes,
                     std::uintptr_t stream);

// Shared-prefix decode attention of plan items [first_item, last_item) (attention_plan layout, int32
// device arrays) for every KV head: writes part_out [slots, H, D] fp32 (normalised) and part_lse
// [slots, H] fp32 (base-2 log-sum-exp) of those items' slots. q: [B, H, D] contiguous in the
// cache's dtype (0 float32, 1 bfloat16, 2 float16); kv: the cache, with the layer's K plane at
// element k_base and its V plane v_plane elements after. Index values are the caller's to check.
void shared_prefix_attention_cuda(std::uintptr_t q, std::uintptr_t kv, int64_t dtype, int64_t k_base,
                                  int64_t v_plane, std::uintptr_t item_page_indptr, std::uintptr_t item_pages,
                                  std::uintptr_t item_num_tokens, std::uintptr_t item_query_indptr,
                                  std::uintptr_t item_queries, int64_t first_item, int64_t last_item,
                                  std::uintptr_t part_out, std::uintptr_t part_lse, int64_t num_heads,
                                  int64_t num_kv_heads, int64_t head_dim, int64_t page_size, double scale,
                                  std::uintptr_t stream);

// Merges each query's partials (merge_indptr [B+1], merge_slots int32) into out [B, H, D] fp32.
void merge_partials_cuda(std::uintptr_t part_out, std::uintptr_t part_lse, std::uintptr_t merge_indptr,
                         std::uintptr_t merge_slots, std::uintptr_t out, int64_t num_queries, int64_t num_heads,
                         int64_t head_dim, std::uintptr_t stream);

// ponder.ops.value_score on device: hidden [N, C] (dtype code as above, row stride in elements),
// rows [M] int64, norm_weight [C] fp32 or 0 (no norm), direction [C] fp32, parent_score [M] fp32,
// depth [M] int32 -> score, path_score [M] fp32. mode: 0 last, 1 min, 2 prod, 3 mean.
void value_score_cuda(std::uintptr_t hidden, int64_t dtype, std::uintptr_t rows, int64_t num_rows,
                      std::uintptr_t norm_weight, std::uintptr_t direction, std::uintptr_t parent_score,
                      std::uintptr_t depth, std::uintptr_t score, std::uintptr_t path_score, int64_t hidden_size,
                      int64_t stride_hidden, double eps, double bias, int64_t mode, std::uintptr_t stream);

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int cuda_device_count();

}  // namespace ponder
