// The ponder._core extension: torch-free host structures and CUDA launchers. Tensors cross this
// boundary as raw pointers + shapes; host arrays as numpy.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "common.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "ponder native core: search forest, KV page table, host attention, linear layers, a whole decode step and sampling, token tries, CUDA launchers";
  py::register_exception<ponder::KVCacheFull>(m, "KVCacheFull", PyExc_RuntimeError);
  ponder::bind_cuda(m);
  ponder::bind_forest(m);
  ponder::bind_page_table(m);
  ponder::bind_attention_plan(m);
  ponder::bind_attention_cpu(m);
  ponder::bind_sample(m);
  ponder::bind_token_trie(m);
  ponder::bind_linear_cpu(m);
  ponder::bind_linear_blocked_cpu(m);
  ponder::bind_decoder_cpu(m);
}
