// ponder._core.linear_blocked_cpu: the host fp32 linear layer for small matrices, summed in
// BLAS order (csrc/linear_blocked_cpu.h), on raw tensor pointers (integers from data_ptr()).
// ponder.ops.linear checks dtypes, devices, shapes and contiguity before calling.
#include <cstdint>

#include "bindings.h"
#include "linear_blocked_cpu.h"

namespace py = pybind11;

namespace ponder {

namespace {

void linear_blocked_cpu_binding(uintptr_t x, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                                uintptr_t wt, int64_t out_features, int64_t wt_row_stride, uintptr_t bias,
                                bool bias_first, int64_t block, uintptr_t out, int64_t out_row_stride,
                                bool scalar, int64_t wt_strip_stride) {
  linear_blocked_cpu(as_ptr<const float>(x), num_rows, in_features, x_row_stride, as_ptr<const float>(wt),
                     out_features, wt_row_stride, as_ptr<const float>(bias), bias_first, block, as_ptr<float>(out),
                     out_row_stride, !scalar, wt_strip_stride);
}

}  // namespace

void bind_linear_blocked_cpu(py::module_& m) {
  m.def("linear_blocked_cpu", &linear_blocked_cpu_binding, py::arg("x"), py::arg("num_rows"),
        py::arg("in_features"), py::arg("x_row_stride"), py::arg("wt"), py::arg("out_features"),
        py::arg("wt_row_stride"), py::arg("bias"), py::arg("bias_first"), py::arg("block"), py::arg("out"),
        py::arg("out_row_stride"), py::arg("scalar") = false, py::arg("wt_strip_stride") = 16,
        "out[m, n] = sum_k x[m, k] * wt[k, n] (+ bias[n]) for fp32 x rows (x_row_stride floats apart), the "
        "transposed weight wt, element (k, n) at wt[(n // 16) * wt_strip_stride + k * wt_row_stride + n % 16]: "
        "rows [K, wt_row_stride] (wt_strip_stride 16, wt_row_stride >= N rounded up to 16) or strips "
        "[N / 16, K, 16] (wt_row_stride 16, wt_strip_stride >= 16 K), bias [N] (0 for none) and out rows "
        "(out_row_stride apart); pointers are integers. Each element is a fused multiply-add "
        "chain over ascending k, cut into blocks of `block` k's added in order, the bias added before the "
        "first block (bias_first) or after the last (see csrc/linear_blocked_cpu.h). scalar: the "
        "one-element-at-a-time path whatever the CPU has. Releases the GIL.",
        py::call_guard<py::gil_scoped_release>());
  m.def("linear_blocked_cpu_fast", &linear_blocked_cpu_fast,
        "Whether linear_blocked_cpu has a vector fused-multiply-add path on this build and CPU.");
}

}  // namespace ponder
