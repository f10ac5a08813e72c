// CUDA launchers, exposed only when the extension was built with PONDER_WITH_CUDA. The module
// always carries CUDA_BUILT so Python can tell without trying a launch.
#include "bindings.h"

#ifdef PONDER_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace ponder {

void bind_cuda(py::module_& m) {
#ifdef PONDER_WITH_CUDA
  m.attr("CUDA_BUILT") = true;
  m.def("cuda_device_count", &cuda_device_count,
        "Visible CUDA devices as seen by the statically linked CUDA runtime (0 without a driver).");
  m.def("copy_pages", &copy_pages_cuda, py::arg("kv"), py::arg("src_pages"), py::arg("dst_pages"),
        py::arg("num_pairs"), py::arg("num_planes"), py::arg("num_pages"), py::arg("page_bytes"),
        py::arg("stream"),
        "Launch CopyPagesKernel: copy page src_pages[i] -> dst_pages[i] in every plane of a KV "
        "cache viewed as [num_planes, num_pages, page_bytes] bytes. Pointers and the stream are "
        "integers; releases the GIL while launching.",
        py::call_guard<py::gil_scoped_release>());
#else
  m.attr("CUDA_BUILT") = false;
#endif
}

}  // namespace ponder
