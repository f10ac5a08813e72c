// ponder._core.linear_cpu: the host fp32 linear layer on raw tensor pointers (integers from
// data_ptr()). ponder.ops.linear checks dtypes, devices, shapes and contiguity before calling.
#include <cstdint>

#include "bindings.h"
#include "linear_cpu.h"
#include "linear_quant_cpu.h"

namespace py = pybind11;

namespace ponder {

namespace {

void linear_cpu_binding(uintptr_t x, int64_t num_rows, int64_t in_features, int64_t x_row_stride, uintptr_t w,
                        int64_t out_features, uintptr_t bias, uintptr_t out, int64_t out_row_stride, int num_threads,
                        int isa) {
  if (isa < 0 || isa > 3) throw py::value_error("isa must be 0 (auto), 1 (avx512), 2 (avx2) or 3 (generic)");
  linear_cpu(as_ptr<const float>(x), num_rows, in_features, x_row_stride, as_ptr<const float>(w), out_features,
             as_ptr<const float>(bias), as_ptr<float>(out), out_row_stride, num_threads, static_cast<LinearIsa>(isa));
}

void linear_quant_cpu_binding(uintptr_t x, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                              uintptr_t blocks, int type, int64_t out_features, uintptr_t bias, uintptr_t out,
                              int64_t out_row_stride, int num_threads, int isa) {
  if (isa < 0 || isa > 2) throw py::value_error("isa must be 0 (auto), 1 (avx512) or 2 (avx2)");
  linear_quant_cpu(as_ptr<const float>(x), num_rows, in_features, x_row_stride, as_ptr<const uint8_t>(blocks), type,
                   out_features, as_ptr<const float>(bias), as_ptr<float>(out), out_row_stride, num_threads,
                   static_cast<LinearIsa>(isa));
}

}  // namespace

void bind_linear_cpu(py::module_& m) {
  m.def("linear_cpu", &linear_cpu_binding, py::arg("x"), py::arg("num_rows"), py::arg("in_features"),
        py::arg("x_row_stride"), py::arg("w"), py::arg("out_features"), py::arg("bias"), py::arg("out"),
        py::arg("out_row_stride"), py::arg("num_threads") = 1, py::arg("isa") = 0,
        "out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) for fp32 x rows (x_row_stride floats apart), "
        "w [N, K] dense, bias [N] (0 for none) and out rows (out_row_stride apart); pointers are integers. Each "
        "element is summed in one fixed order whatever the row count or thread count (see csrc/linear_cpu.h). "
        "isa: 0 the best path the CPU has, 1 AVX-512, 2 AVX2 + FMA, 3 generic. Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("linear_cpu_has", [](int isa) {
          if (isa < 0 || isa > 3) throw py::value_error("isa must be 0 (auto), 1 (avx512), 2 (avx2) or 3 (generic)");
          return linear_cpu_has(static_cast<LinearIsa>(isa));
        }, py::arg("isa"), "Whether this build and CPU can run linear_cpu's path `isa` (see linear_cpu).");
  m.def("linear_quant_cpu", &linear_quant_cpu_binding, py::arg("x"), py::arg("num_rows"), py::arg("in_features"),
        py::arg("x_row_stride"), py::arg("blocks"), py::arg("type"), py::arg("out_features"), py::arg("bias"),
        py::arg("out"), py::arg("out_row_stride"), py::arg("num_threads") = 1, py::arg("isa") = 0,
        "out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]) for fp32 x rows and W [N, K] as GGUF blocks of 32 "
        "weights (type: ggml's id, 2 Q4_0, 3 Q4_1, 8 Q8_0; K a multiple of 32), de-quantised in registers: "
        "linear_cpu's bits on the de-quantised weights (see csrc/linear_quant_cpu.h). Pointers are integers; "
        "bias 0 for none. isa: 0 the best path the CPU has, 1 AVX-512, 2 AVX2 (the same bits). Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("linear_quant_cpu_available", &linear_quant_cpu_available,
        "Whether this build and CPU can run linear_quant_cpu (x86-64 with AVX2, FMA and F16C).");
  m.def("quant_block_bytes", &quant_block_bytes, py::arg("type"),
        "Bytes of one 32-weight block of ggml type `type` (2 Q4_0: 18, 3 Q4_1: 20, 8 Q8_0: 34).");
}

}  // namespace ponder
