// ponder._core.paged_attention_cpu: host attention on raw tensor pointers (integers from
// data_ptr()). ponder.ops.attention checks dtypes, devices, shapes and contiguity before calling;
// index values are checked by the kernel itself.
#include <cstdint>

#include "attention_cpu.h"
#include "bindings.h"

namespace py = pybind11;

namespace ponder {

namespace {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void paged_attention_cpu_binding(uintptr_t q, int64_t num_rows, int64_t num_heads, int64_t head_dim,
                                 uintptr_t k_plane, uintptr_t v_plane, int64_t num_kv_heads, int64_t page_size,
                                 uintptr_t block_tables, int64_t batch, int64_t max_pages, uintptr_t seq_lens,
                                 uintptr_t query_indptr, int64_t num_pages, double scale, uintptr_t out) {
  paged_attention_cpu(as_ptr<const float>(q), num_rows, num_heads, head_dim, as_ptr<const float>(k_plane),
                      as_ptr<const float>(v_plane), num_kv_heads, page_size, as_ptr<const int32_t>(block_tables),
                      batch, max_pages, as_ptr<const int32_t>(seq_lens), as_ptr<const int32_t>(query_indptr),
                      num_pages, static_cast<float>(scale), as_ptr<float>(out));
}

}  // namespace

void bind_attention_cpu(py::module_& m) {
  m.def("paged_attention_cpu", &paged_attention_cpu_binding, py::arg("q"), py::arg("num_rows"),
        py::arg("num_heads"), py::arg("head_dim"), py::arg("k_plane"), py::arg("v_plane"), py::arg("num_kv_heads"),
        py::arg("page_size"), py::arg("block_tables"), py::arg("batch"), py::arg("max_pages"), py::arg("seq_lens"),
        py::arg("query_indptr"), py::arg("num_pages"), py::arg("scale"), py::arg("out"),
        "Causal attention of fp32 query rows [T, H, D] over one layer's fp32 paged K / V planes [P, S, Hk, D] "
        "(see csrc/attention_cpu.h). Pointers are integers: block_tables int32 [B, max_pages], seq_lens int32 "
        "[B], query_indptr int32 [B+1]; out fp32 [T, H, D]. Index values are checked before any read. "
        "Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
}

}  // namespace ponder
