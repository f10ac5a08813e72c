// Device code for KV page copies. No torch, no pybind11: raw pointers only.
//
// KV cache layout (one tensor per model):  [L, 2, P, S, Hk, D]
//   a "plane" is one (layer, K-or-V) slice: P pages of page_bytes = S * Hk * D * elem_size bytes,
//   contiguous. Example, L=2, P=4: planes 0..3 are (l0 K), (l0 V), (l1 K), (l1 V), and page p of
//   plane y starts at byte y * P * page_bytes + p * page_bytes.
#pragma once

#include <cstdint>

namespace ponder {

// One block per (copy pair, plane): blockIdx.x = pair, blockIdx.y = plane. The threads of a block
// stream one page with VecT-wide accesses (uint4 = 16 bytes when page_bytes and the base pointer
// allow it), so a copy is a handful of fully coalesced transactions.
template <typename VecT>
__global__ void CopyPagesKernel(char* __restrict__ kv, const int32_t* __restrict__ src_pages,
                                const int32_t* __restrict__ dst_pages, int64_t plane_bytes,
                                int64_t page_bytes) {
  const int64_t pair = blockIdx.x;
  const int64_t plane = blockIdx.y;
  char* base = kv + plane * plane_bytes;
  const VecT* src = reinterpret_cast<const VecT*>(base + int64_t(src_pages[pair]) * page_bytes);
  VecT* dst = reinterpret_cast<VecT*>(base + int64_t(dst_pages[pair]) * page_bytes);
  const int64_t n = page_bytes / int64_t(sizeof(VecT));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    dst[i] = src[i];
  }
}

}  // namespace ponder
