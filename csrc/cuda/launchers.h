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

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int cuda_device_count();

}  // namespace ponder
