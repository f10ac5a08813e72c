// ponder._core.Forest: numpy in, numpy out. The core validates values; this layer checks array
// rank (TypeError), serialises access with a per-forest mutex and drops the GIL around batched
// work. The mutex is always taken after the GIL is released (or while holding it without ever
// waiting for it again), so the two locks cannot deadlock.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "common.h"
#include "forest.h"

namespace py = pybind11;

namespace ponder {
namespace {

struct PyForest {
  explicit PyForest(int64_t capacity) : forest(capacity) {}
  Forest forest;
  std::mutex mu;
};

template <typename T>
using Arr = py::array_t<T, py::array::c_style>;
template <typename T>
using OptArr = std::optional<Arr<T>>;

template <typename T>
Span<T> span(const char* name, const Arr<T>& a) {
  if (a.ndim() != 1) throw py::type_error(detail::concat(name, " must be a 1-D array, got ", a.ndim(), "-D"));
  return Span<T>(a.data(), a.shape(0));
}

template <typename T>
std::optional<Span<T>> opt_span(const char* name, const OptArr<T>& a) {
  if (!a) return std::nullopt;
  return span(name, *a);
}

py::array_t<int32_t> to_numpy(const std::vector<int32_t>& v) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// Runs fn on the forest with the GIL released and the forest's mutex held.
template <typename F>
auto unlocked(PyForest& self, F&& fn) {
  py::gil_scoped_release nogil;
  std::lock_guard<std::mutex> lock(self.mu);
  return fn(self.forest);
}

// Runs fn on the forest with the GIL held (short calls, or calls that build Python objects).
template <typename F>
auto locked(PyForest& self, F&& fn) {
  std::lock_guard<std::mutex> lock(self.mu);
  return fn(self.forest);
}

TopKKey parse_key(const std::string& key) {
  if (key == "path_score") return TopKKey::kPathScore;
  if (key == "value") return TopKKey::kValue;
  if (key == "reward") return TopKKey::kReward;
  if (key == "visits") return TopKKey::kVisits;
  if (key == "prior") return TopKKey::kPrior;
  throw_invalid("key='", key, "' is not one of 'path_score', 'value', 'reward', 'visits', 'prior'");
}

PathBy parse_by(const std::string& by) {
  if (by == "visits") return PathBy::kVisits;
  if (by == "value") return PathBy::kValue;
  if (by == "score") return PathBy::kScore;
  throw_invalid("by='", by, "' is not one of 'visits', 'value', 'score'");
}

py::dtype dtype_of(const ColumnRef& c) {
  switch (c.kind) {
    case 'b': return py::dtype::of<bool>();
    case 'f': return c.itemsize == 8 ? py::dtype::of<double>() : py::dtype::of<float>();
    default: return c.itemsize == 8 ? py::dtype::of<int64_t>() : py::dtype::of<int32_t>();
  }
}

// A read-only numpy array over the column's buffer whose base owns that buffer.
py::array view_of(const ColumnRef& c) {
  auto* holder = new std::shared_ptr<const void>(c.owner);
  py::capsule base(holder, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); });
  py::array a(dtype_of(c), {static_cast<py::ssize_t>(c.length)}, {static_cast<py::ssize_t>(c.itemsize)},
              c.data, base);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

}  // namespace

void bind_forest(py::module_& m) {
  py::class_<PyForest> cls(m, "Forest",
                           "Struct-of-arrays search forest (native core). Use ponder.forest.Forest, which "
                           "converts and validates inputs and documents every operation.");
  cls.attr("NO_NODE") = NO_NODE;
  cls.attr("NO_PARENT") = NO_PARENT;
  cls.attr("NO_PAGES") = NO_PAGES;
  cls.def(py::init<int64_t>(), py::arg("capacity") = 1024)
      .def_property_readonly("num_nodes", [](PyForest& s) { return locked(s, [](Forest& f) { return f.num_nodes(); }); })
      .def_property_readonly("num_alive", [](PyForest& s) { return locked(s, [](Forest& f) { return f.num_alive(); }); })
      .def_property_readonly("num_tokens",
                             [](PyForest& s) { return locked(s, [](Forest& f) { return f.num_tokens(); }); })
      .def("is_alive", [](PyForest& s, int32_t n) { return locked(s, [&](Forest& f) { return f.is_alive(n); }); })
      .def("add_roots",
           [](PyForest& s, const Arr<int32_t>& tokens, const Arr<int64_t>& indptr) {
             auto t = span("tokens", tokens);
             auto ip = span("tokens_indptr", indptr);
             return to_numpy(unlocked(s, [&](Forest& f) { return f.add_roots(t, ip); }));
           },
           py::arg("tokens"), py::arg("tokens_indptr"))
      .def("add_children",
           [](PyForest& s, const Arr<int32_t>& parents, const Arr<int32_t>& counts, const Arr<float>& priors,
              const Arr<int32_t>& tokens, const Arr<int64_t>& indptr, const OptArr<float>& rewards,
              const OptArr<bool>& terminal, const OptArr<float>& path_scores, const OptArr<int32_t>& page_seqs) {
             ChildBatch b;
             b.parents = span("parents", parents);
             b.counts = span("counts", counts);
             b.priors = span("priors", priors);
             b.tokens = span("tokens", tokens);
             b.tokens_indptr = span("tokens_indptr", indptr);
             b.rewards = opt_span("rewards", rewards);
             b.terminal = opt_span("terminal", terminal);
             b.path_scores = opt_span("path_scores", path_scores);
             b.page_seqs = opt_span("page_seqs", page_seqs);
             return to_numpy(unlocked(s, [&](Forest& f) { return f.add_children(b); }));
           },
           py::arg("parents"), py::arg("counts"), py::arg("priors"), py::arg("tokens"), py::arg("tokens_indptr"),
           py::arg("rewards") = py::none(), py::arg("terminal") = py::none(), py::arg("path_scores") = py::none(),
           py::arg("page_seqs") = py::none())
      .def("select",
           [](PyForest& s, const Arr<int32_t>& roots, int32_t k, double c_puct, double virtual_loss, double fpu,
              double pw_k, double pw_alpha) {
             auto r = span("roots", roots);
             PONDER_CHECK_ARG(k >= 1, "leaves_per_tree=", k, " must be >= 1");
             Arr<int32_t> out({static_cast<py::ssize_t>(r.size), static_cast<py::ssize_t>(k)});
             int32_t* o = out.mutable_data();
             const SelectParams p{k, c_puct, virtual_loss, fpu, pw_k, pw_alpha};
             unlocked(s, [&](Forest& f) { f.select(r, p, o); return 0; });
             return out;
           },
           py::arg("roots"), py::arg("leaves_per_tree"), py::arg("c_puct"), py::arg("virtual_loss"), py::arg("fpu"),
           py::arg("pw_k") = 0.0, py::arg("pw_alpha") = 0.5)
      .def("backup",
           [](PyForest& s, const Arr<int32_t>& nodes, const Arr<float>& values, double discount) {
             auto n = span("nodes", nodes);
             auto v = span("values", values);
             unlocked(s, [&](Forest& f) { f.backup(n, v, discount); return 0; });
           },
           py::arg("nodes"), py::arg("values"), py::arg("discount") = 1.0)
      .def("cancel",
           [](PyForest& s, const Arr<int32_t>& nodes) {
             auto n = span("nodes", nodes);
             unlocked(s, [&](Forest& f) { f.cancel(n); return 0; });
           },
           py::arg("nodes"))
      .def("top_k",
           [](PyForest& s, const Arr<int32_t>& frontier, int32_t k, const std::string& key, bool by_tree) {
             auto fr = span("frontier", frontier);
             const TopKKey kk = parse_key(key);
             return to_numpy(unlocked(s, [&](Forest& f) { return f.top_k(fr, k, kk, by_tree); }));
           },
           py::arg("frontier"), py::arg("k"), py::arg("key") = "path_score", py::arg("by_tree") = true)
      .def("best_path",
           [](PyForest& s, int32_t root, const std::string& by) {
             const PathBy b = parse_by(by);
             return to_numpy(unlocked(s, [&](Forest& f) { return f.best_path(root, b); }));
           },
           py::arg("root"), py::arg("by") = "visits")
      .def("frontier",
           [](PyForest& s, const Arr<int32_t>& roots) {
             auto r = span("roots", roots);
             return to_numpy(unlocked(s, [&](Forest& f) { return f.frontier(r); }));
           },
           py::arg("roots"))
      .def("release",
           [](PyForest& s, int32_t node) { return to_numpy(unlocked(s, [&](Forest& f) { return f.release(node); })); },
           py::arg("node"))
      .def("path_tokens",
           [](PyForest& s, int32_t n) { return to_numpy(locked(s, [&](Forest& f) { return f.path_tokens(n); })); },
           py::arg("node"))
      .def("node_tokens",
           [](PyForest& s, int32_t n) { return to_numpy(locked(s, [&](Forest& f) { return f.node_tokens(n); })); },
           py::arg("node"))
      .def("children",
           [](PyForest& s, int32_t n) { return to_numpy(locked(s, [&](Forest& f) { return f.children(n); })); },
           py::arg("node"))
      .def("set_path_scores",
           [](PyForest& s, const Arr<int32_t>& nodes, const Arr<float>& values) {
             auto n = span("nodes", nodes);
             auto v = span("values", values);
             unlocked(s, [&](Forest& f) { f.set_path_scores(n, v); return 0; });
           },
           py::arg("nodes"), py::arg("values"))
      .def("set_rewards",
           [](PyForest& s, const Arr<int32_t>& nodes, const Arr<float>& values) {
             auto n = span("nodes", nodes);
             auto v = span("values", values);
             unlocked(s, [&](Forest& f) { f.set_rewards(n, v); return 0; });
           },
           py::arg("nodes"), py::arg("values"))
      .def("set_priors",
           [](PyForest& s, const Arr<int32_t>& nodes, const Arr<float>& values) {
             auto n = span("nodes", nodes);
             auto v = span("values", values);
             unlocked(s, [&](Forest& f) { f.set_priors(n, v); return 0; });
           },
           py::arg("nodes"), py::arg("values"))
      .def("set_page_seqs",
           [](PyForest& s, const Arr<int32_t>& nodes, const Arr<int32_t>& seqs) {
             auto n = span("nodes", nodes);
             auto q = span("seqs", seqs);
             unlocked(s, [&](Forest& f) { f.set_page_seqs(n, q); return 0; });
           },
           py::arg("nodes"), py::arg("seqs"))
      .def("set_terminal",
           [](PyForest& s, const Arr<int32_t>& nodes, const Arr<bool>& flags) {
             auto n = span("nodes", nodes);
             auto fl = span("flags", flags);
             unlocked(s, [&](Forest& f) { f.set_terminal(n, fl); return 0; });
           },
           py::arg("nodes"), py::arg("flags"))
      .def("views",
           [](PyForest& s) {
             py::dict out;
             for (const auto& c : locked(s, [](Forest& f) { return f.columns(); })) out[py::str(c.name)] = view_of(c);
             return out;
           },
           "Every array as a read-only zero-copy view (see view), in one call.")
      .def("view",
           [](PyForest& s, const std::string& name) {
             for (const auto& c : locked(s, [](Forest& f) { return f.columns(); }))
               if (c.name == name) return view_of(c);
             throw_invalid("no forest array named '", name, "'");
           },
           py::arg("name"),
           "Read-only zero-copy numpy view of one array, of its current length. The view owns a reference to "
           "the buffer: after the forest grows it keeps showing the old buffer (a stale snapshot).");
}

}  // namespace ponder
