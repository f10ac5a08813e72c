// ponder._core.paged_attention_cpu: host attention on raw tensor pointers (integers from
// data_ptr()). ponder.ops.attention checks dtypes, devices, shapes and contiguity before calling;
// index values are checked by the kernel itself.
#include <cstdint>

#include "attention_cpu.h"
#include "rotary_kv_cpu.h"
#include "shared_prefix_cpu.h"
#include "bindings.h"

namespace py = pybind11;

namespace ponder {

namespace {

void paged_attention_cpu_binding(uintptr_t q, int64_t num_rows, int64_t num_heads, int64_t head_dim,
                                 uintptr_t k_plane, uintptr_t v_plane, int kv_type, int64_t num_kv_heads,
                                 int64_t page_size, uintptr_t block_tables, int64_t batch, int64_t max_pages,
                                 uintptr_t seq_lens, uintptr_t query_indptr, int64_t num_pages, double scale,
                                 uintptr_t out, int num_threads) {
  paged_attention_cpu(as_ptr<const float>(q), num_rows, num_heads, head_dim, as_ptr<const void>(k_plane),
                      as_ptr<const void>(v_plane), static_cast<KVType>(kv_type), num_kv_heads, page_size,
                      as_ptr<const int32_t>(block_tables), batch, max_pages, as_ptr<const int32_t>(seq_lens),
                      as_ptr<const int32_t>(query_indptr), num_pages, static_cast<float>(scale), as_ptr<float>(out),
                      num_threads);
}

void shared_prefix_attention_cpu_binding(uintptr_t q, int64_t num_queries, int64_t num_heads, int64_t head_dim,
                                         uintptr_t k_plane, uintptr_t v_plane, int kv_type, int64_t num_kv_heads,
                                         int64_t page_size, int64_t num_pages, uintptr_t item_page_indptr,
                                         uintptr_t item_pages, uintptr_t item_num_tokens, int64_t num_items,
                                         int64_t num_item_pages, uintptr_t item_query_indptr, uintptr_t item_queries,
                                         int64_t num_slots, double scale, uintptr_t out, int num_threads) {
  shared_prefix_attention_cpu(as_ptr<const float>(q), num_queries, num_heads, head_dim, as_ptr<const void>(k_plane),
                              as_ptr<const void>(v_plane), static_cast<KVType>(kv_type), num_kv_heads, page_size,
                              num_pages, as_ptr<const int32_t>(item_page_indptr), as_ptr<const int32_t>(item_pages),
                              as_ptr<const int32_t>(item_num_tokens), num_items, num_item_pages,
                              as_ptr<const int32_t>(item_query_indptr), as_ptr<const int32_t>(item_queries),
                              num_slots, static_cast<float>(scale), as_ptr<float>(out), num_threads);
}

void rotary_cpu_binding(uintptr_t q, int64_t q_row_stride, uintptr_t k, int64_t k_row_stride, int64_t num_rows,
                        int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, uintptr_t positions,
                        uintptr_t cos_sin, int64_t max_pos, uintptr_t q_out, uintptr_t k_out) {
  rotary_cpu(as_ptr<const float>(q), q_row_stride, as_ptr<const float>(k), k_row_stride, num_rows, num_heads,
             num_kv_heads, head_dim,
             as_ptr<const int64_t>(positions), as_ptr<const float>(cos_sin), max_pos, as_ptr<float>(q_out),
             as_ptr<float>(k_out));
}

void append_kv_cpu_binding(uintptr_t k_plane, uintptr_t v_plane, int64_t num_slots, int64_t row_size, uintptr_t k,
                           int64_t k_row_stride, uintptr_t v, int64_t v_row_stride, uintptr_t slots,
                           int64_t num_rows) {
  append_kv_cpu(as_ptr<float>(k_plane), as_ptr<float>(v_plane), num_slots, row_size, as_ptr<const float>(k),
                k_row_stride, as_ptr<const float>(v), v_row_stride, as_ptr<const int64_t>(slots), num_rows);
}

void copy_pages_cpu_binding(uintptr_t kv, int64_t num_planes, int64_t num_pages, int64_t page_bytes,
                            uintptr_t src_pages, uintptr_t dst_pages, int64_t num_pairs) {
  copy_pages_cpu(as_ptr<void>(kv), num_planes, num_pages, page_bytes, as_ptr<const int32_t>(src_pages),
                 as_ptr<const int32_t>(dst_pages), num_pairs);
}

}  // namespace

void bind_attention_cpu(py::module_& m) {
  m.def("paged_attention_cpu", &paged_attention_cpu_binding, py::arg("q"), py::arg("num_rows"),
        py::arg("num_heads"), py::arg("head_dim"), py::arg("k_plane"), py::arg("v_plane"), py::arg("kv_type"),
        py::arg("num_kv_heads"), py::arg("page_size"), py::arg("block_tables"), py::arg("batch"),
        py::arg("max_pages"), py::arg("seq_lens"), py::arg("query_indptr"), py::arg("num_pages"), py::arg("scale"),
        py::arg("out"), py::arg("num_threads") = 1,
        "Causal attention of fp32 query rows [T, H, D] over one layer's paged K / V planes [P, S, Hk, D] "
        "(kv_type 0: float32, 1: bfloat16; see csrc/attention_cpu.h). Pointers are integers: block_tables "
        "int32 [B, max_pages], seq_lens int32 "
        "[B], query_indptr int32 [B+1]; out fp32 [T, H, D]. Index values are checked before any read. "
        "num_threads > 1 splits large calls' rows over threads (the same result). Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("shared_prefix_attention_cpu", &shared_prefix_attention_cpu_binding, py::arg("q"), py::arg("num_queries"),
        py::arg("num_heads"), py::arg("head_dim"), py::arg("k_plane"), py::arg("v_plane"), py::arg("kv_type"),
        py::arg("num_kv_heads"), py::arg("page_size"), py::arg("num_pages"), py::arg("item_page_indptr"),
        py::arg("item_pages"), py::arg("item_num_tokens"), py::arg("num_items"), py::arg("num_item_pages"),
        py::arg("item_query_indptr"), py::arg("item_queries"), py::arg("num_slots"), py::arg("scale"),
        py::arg("out"), py::arg("num_threads") = 1,
        "Decode attention of fp32 query rows [B, H, D] through a shared-prefix attention plan over one layer's "
        "paged K / V planes [P, S, Hk, D] (kv_type 0: float32, 1: bfloat16), each plan item read once for all of "
        "its rows (see csrc/shared_prefix_cpu.h). Pointers are integers; plan arrays int32; out fp32 [B, H, D]. "
        "Index values are checked before any read. num_threads > 1 splits the branches over threads (same "
        "results). Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("rotary_cpu", &rotary_cpu_binding, py::arg("q"), py::arg("q_row_stride"), py::arg("k"),
        py::arg("k_row_stride"), py::arg("num_rows"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("positions"), py::arg("cos_sin"), py::arg("max_pos"),
        py::arg("q_out"), py::arg("k_out"),
        "Rotary embedding of fp32 q [T, H, D] and k [T, Hk, D] by int64 positions [T] from the fp32 cos_sin table "
        "[max_pos, D] into q_out / k_out, bit for bit as ponder.ops.reference.rotary (see csrc/rotary_kv_cpu.h). "
        "Pointers are integers. Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("append_kv_cpu", &append_kv_cpu_binding, py::arg("k_plane"), py::arg("v_plane"), py::arg("num_slots"),
        py::arg("row_size"), py::arg("k"), py::arg("k_row_stride"), py::arg("v"), py::arg("v_row_stride"),
        py::arg("slots"), py::arg("num_rows"),
        "Copy fp32 rows k / v [T, row_size] to int64 slots [T] (-1 skips) of one layer's K / V planes "
        "[num_slots, row_size]; slots are checked before any write. Pointers are integers. Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("copy_pages_cpu", &copy_pages_cpu_binding, py::arg("kv"), py::arg("num_planes"), py::arg("num_pages"),
        py::arg("page_bytes"), py::arg("src_pages"), py::arg("dst_pages"), py::arg("num_pairs"),
        "Copy-on-write of pages on the host: page src_pages[i] onto dst_pages[i] (int32 [num_pairs]) in every plane "
        "of a contiguous cache [num_planes, num_pages, page_bytes] of any dtype (see csrc/rotary_kv_cpu.h). Ids "
        "are checked (range: IndexError; distinct destinations that are not sources: ValueError) before any "
        "write. Pointers are integers. Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace ponder
