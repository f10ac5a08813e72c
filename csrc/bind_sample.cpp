// ponder._core.sample_cpu: host sampling on raw tensor pointers (integers from data_ptr()).
// ponder.ops.sampling checks devices, dtypes and contiguity before calling.
#include "bindings.h"
#include "sample.h"

namespace py = pybind11;

namespace ponder {

namespace {

void sample_cpu_binding(uintptr_t logits, int64_t batch, int64_t vocab, int64_t row_stride, uintptr_t keys,
                        uintptr_t temperature, uintptr_t top_k, uintptr_t top_p, uintptr_t allowed,
                        uintptr_t allowed_row, uintptr_t tokens, uintptr_t deferred, int num_threads,
                        uintptr_t logit_rows, int64_t num_logit_rows) {
  sample_cpu(as_ptr<const float>(logits), batch, vocab, row_stride, as_ptr<const int64_t>(keys),
             as_ptr<const float>(temperature), as_ptr<const int32_t>(top_k), as_ptr<const float>(top_p),
             as_ptr<const uint8_t>(allowed), as_ptr<const int64_t>(allowed_row), as_ptr<int64_t>(tokens),
             as_ptr<uint8_t>(deferred), num_threads, as_ptr<const int64_t>(logit_rows), num_logit_rows);
}

}  // namespace

void bind_sample(py::module_& m) {
  m.def("sample_cpu", &sample_cpu_binding, py::arg("logits"), py::arg("batch"), py::arg("vocab"),
        py::arg("row_stride"), py::arg("keys"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
        py::arg("allowed"), py::arg("allowed_row"), py::arg("tokens"), py::arg("deferred"),
        py::arg("num_threads") = 1, py::arg("logit_rows") = 0, py::arg("num_logit_rows") = 0,
        "Draw one token per row of fp32 host logits [batch, row_stride] (see csrc/sample.h). Pointers are "
        "integers (0 = null): logits fp32, keys int64 [batch, 4], temperature fp32, top_k int32, top_p "
        "fp32 [batch], allowed uint8 [num_masks, vocab] (nucleus rows), allowed_row int64 [batch] (-1 = "
        "none); outputs tokens int64, deferred uint8 [batch] (1 = draw this row with the reference). "
        "num_threads: share large batches' rows out to up to this many threads (same results). "
        "logit_rows: int64 [batch], row b reads logits row logit_rows[b] of num_logit_rows (0 = row b). "
        "Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("sampling_uniform", &sampling_uniform, py::arg("row_hash"), py::arg("v"),
        "The uniform in (0, 1) a row hash assigns vocabulary index v (float32 value).");
  m.def(
      "sampling_row_hash",
      [](int64_t seed, int64_t node, int64_t child, int64_t position) {
        const int64_t key[4] = {seed, node, child, position};
        return sampling_row_hash(key);
      },
      py::arg("seed"), py::arg("node_id"), py::arg("child_index"), py::arg("position"),
      "uint32 hash of one row key (seed, node_id, child_index, position).");
}

}  // namespace ponder
