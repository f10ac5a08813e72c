// Rotary embedding and the K/V write of one layer on the host, for fp32 tensors: the same
// arithmetic as ponder.ops.reference.rotary / append_kv, bit for bit (products and sums are
// rounded one by one, as PyTorch's elementwise kernels do; no fused multiply-add). Torch-free:
// tensors arrive as raw pointers and shapes; ponder.ops checks dtypes, devices and contiguity.
#pragma once

#include <cstdint>

namespace ponder {

// q_out[t, h] = rotate(q[t, h], positions[t]) and k_out likewise, rotate_half convention:
// with x = [x1, x2] in halves and c, s the halves of cos_sin[pos] ([max_pos, D] fp32, cos first),
// x_rot = [x1 * c - x2 * s, x2 * c + x1 * s]. q [T, H, D] and k [T, Hk, D] with heads and head
// dims dense and rows q_row_stride / k_row_stride floats apart (views into a fused qkv row);
// outputs are dense and may not alias inputs. Throws std::out_of_range for a position outside
// [0, max_pos) before writing anything.
void rotary_cpu(const float* q, int64_t q_row_stride, const float* k, int64_t k_row_stride, int64_t num_rows,
                int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, const int64_t* positions,
                const float* cos_sin, int64_t max_pos, float* q_out, float* k_out);

// Copy row t of k and v (row_size = Hk * D dense floats, rows k_row_stride / v_row_stride floats
// apart) to slot slots[t] of the layer's K and V planes ([num_slots, row_size] each); slot -1
// skips the row. Throws std::out_of_range for a slot outside [-1, num_slots) before writing.
void append_kv_cpu(float* k_plane, float* v_plane, int64_t num_slots, int64_t row_size, const float* k,
                   int64_t k_row_stride, const float* v, int64_t v_row_stride, const int64_t* slots,
                   int64_t num_rows);

// Copy-on-write of pages: for every pair i, page src_pages[i] onto page dst_pages[i] in each of
// the cache's num_planes planes ([num_planes, num_pages, page_bytes] contiguous bytes: a
// [L, 2, P, S, Hk, D] cache of any dtype has 2 L planes of P pages). Byte copies, so the same
// bytes as ponder.ops.reference.copy_pages. Before anything is written: every id must lie in
// [0, num_pages) (std::out_of_range), the destinations must be distinct and none may be a source
// (std::invalid_argument: the copies must not depend on their order).
void copy_pages_cpu(void* kv, int64_t num_planes, int64_t num_pages, int64_t page_bytes, const int32_t* src_pages,
                    const int32_t* dst_pages, int64_t num_pairs);

}  // namespace ponder
