#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"
#include "cuda/launchers.h"
#include "cuda/shared_prefix_attention.cuh"

namespace ponder {

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ponder: ") + what + " failed: " + cudaGetErrorString(err));
  }
}

struct SpaArgs {
  std::uintptr_t q, kv;
  int64_t k_base, v_plane;
  const int32_t *page_indptr, *pages, *num_tokens, *query_indptr, *queries;
  int first_item, num_items;
  float *part_out, *part_lse;
  int num_heads, num_kv_heads, head_dim, page_size;
  float scale_log2;
  cudaStream_t stream;
};

template <typename T, int kDP>
void launch_spa(const SpaArgs& a) {
  const int64_t bytes = spa::Smem<T, kDP>::bytes;
  int device = 0, optin = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute");
  PONDER_CHECK_ARG(bytes <= optin, "shared_prefix_attention (cuda): head_dim ", a.head_dim, " with this dtype needs ",
                   bytes, " bytes of shared memory per block, the device allows ", optin,
                   "; use the triton or torch backend");
  auto kernel = spa::SharedPrefixAttentionKernel<T, kDP>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
             "cudaFuncSetAttribute(SharedPrefixAttentionKernel)");
  const dim3 grid(static_cast<unsigned>(a.num_items), static_cast<unsigned>(a.num_kv_heads));
  kernel<<<grid, spa::kThreads, bytes, a.stream>>>(
      reinterpret_cast<const T*>(a.q), reinterpret_cast<const T*>(a.kv), a.k_base, a.v_plane, a.page_indptr,
      a.pages, a.num_tokens, a.query_indptr, a.queries, a.part_out, a.part_lse, a.first_item, a.num_heads,
      a.num_kv_heads, a.head_dim, a.page_size, a.scale_log2);
  check_cuda(cudaGetLastError(), "SharedPrefixAttentionKernel launch");
}

template <typename T>
void dispatch_head_dim(const SpaArgs& a) {
  if (a.head_dim <= 16) return launch_spa<T, 16>(a);
  if (a.head_dim <= 32) return launch_spa<T, 32>(a);
  if (a.head_dim <= 64) return launch_spa<T, 64>(a);
  if (a.head_dim <= 128) return launch_spa<T, 128>(a);
  return launch_spa<T, 256>(a);
}

}  // namespace

void shared_prefix_attention_cuda(std::uintptr_t q, std::uintptr_t kv, int64_t dtype, int64_t k_base,
                                  int64_t v_plane, std::uintptr_t item_page_indptr, std::uintptr_t item_pages,
                                  std::uintptr_t item_num_tokens, std::uintptr_t item_query_indptr,
                                  std::uintptr_t item_queries, int64_t first_item, int64_t last_item,
                                  std::uintptr_t part_out, std::uintptr_t part_lse, int64_t num_heads,
                                  int64_t num_kv_heads, int64_t head_dim, int64_t page_size, double scale,
                                  std::uintptr_t stream) {
  PONDER_CHECK_ARG(dtype >= 0 && dtype <= 2, "shared_prefix_attention (cuda): dtype must be 0 (float32), 1 (bfloat16) "
                   "or 2 (float16), got ", dtype);
  PONDER_CHECK_ARG(head_dim >= 1 && head_dim <= 256, "shared_prefix_attention (cuda): head_dim must be in [1, 256], got ",
                   head_dim);
  PONDER_CHECK_ARG(num_kv_heads >= 1 && num_kv_heads <= 65535,
                   "shared_prefix_attention (cuda): num_kv_heads must be in [1, 65535], got ", num_kv_heads);
  PONDER_CHECK_ARG(num_heads >= num_kv_heads && num_heads % num_kv_heads == 0,
                   "shared_prefix_attention (cuda): num_heads (", num_heads, ") must be a multiple of num_kv_heads (",
                   num_kv_heads, ")");
  PONDER_CHECK_ARG(page_size >= 1, "shared_prefix_attention (cuda): page_size must be >= 1, got ", page_size);
  PONDER_CHECK_ARG(0 <= first_item && first_item <= last_item && last_item <= 0x7fffffff,
                   "shared_prefix_attention (cuda): items must satisfy 0 <= first_item <= last_item < 2^31, got [",
                   first_item, ", ", last_item, ")");
  if (first_item == last_item) return;
  PONDER_CHECK_ARG(q && kv && item_page_indptr && item_pages && item_num_tokens && item_query_indptr && item_queries &&
                       part_out && part_lse,
                   "shared_prefix_attention (cuda): null device pointer");
  SpaArgs a{q, kv, k_base, v_plane,
            reinterpret_cast<const int32_t*>(item_page_indptr), reinterpret_cast<const int32_t*>(item_pages),
            reinterpret_cast<const int32_t*>(item_num_tokens), reinterpret_cast<const int32_t*>(item_query_indptr),
            reinterpret_cast<const int32_t*>(item_queries), int(first_item), int(last_item - first_item),
            reinterpret_cast<float*>(part_out), reinterpret_cast<float*>(part_lse), int(num_heads), int(num_kv_heads),
            int(head_dim), int(page_size), float(scale * 1.4426950408889634), reinterpret_cast<cudaStream_t>(stream)};
  if (dtype == 0) return dispatch_head_dim<float>(a);
  if (dtype == 1) return dispatch_head_dim<__nv_bfloat16>(a);
  return dispatch_head_dim<__half>(a);
}

void merge_partials_cuda(std::uintptr_t part_out, std::uintptr_t part_lse, std::uintptr_t merge_indptr,
                         std::uintptr_t merge_slots, std::uintptr_t out, int64_t num_queries, int64_t num_heads,
                         int64_t head_dim, std::uintptr_t stream) {
  PONDER_CHECK_ARG(num_queries >= 0 && num_queries <= 0x7fffffff,
                   "merge_partials (cuda): num_queries must be in [0, 2^31), got ", num_queries);
  PONDER_CHECK_ARG(num_heads >= 1 && head_dim >= 1 && num_heads * head_dim <= 0x7fffffff,
                   "merge_partials (cuda): num_heads and head_dim must be >= 1, got ", num_heads, " and ", head_dim);
  if (num_queries == 0) return;
  PONDER_CHECK_ARG(part_out && part_lse && merge_indptr && merge_slots && out, "merge_partials (cuda): null device pointer");
  spa::MergePartialsKernel<<<static_cast<unsigned>(num_queries), 128, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const float*>(part_out), reinterpret_cast<const float*>(part_lse),
      reinterpret_cast<const int32_t*>(merge_indptr), reinterpret_cast<const int32_t*>(merge_slots),
      reinterpret_cast<float*>(out), int(num_heads), int(head_dim));
  check_cuda(cudaGetLastError(), "MergePartialsKernel launch");
}

}  // namespace ponder
