// Forest: many search trees (one per problem) in one struct of arrays, with batched operations
// that each handle all trees in one call. Node ids are dense int32, assigned in creation order
// and never reused, so a released id is always recognised as released.
//
// Each field lives in its own Column: a buffer owned by a shared_ptr that is replaced (never
// resized in place) when the forest grows. A reader that holds the old shared_ptr (a numpy
// view) keeps the old buffer alive: after growth such a view is a stale snapshot, never a
// dangling pointer.
//
// Not thread-safe: callers serialise access (the Python binding holds a mutex per forest).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define PONDER_PREFETCH(addr) __builtin_prefetch(addr)
#else
#define PONDER_PREFETCH(addr) ((void)(addr))
#endif

namespace ponder {

constexpr int32_t NO_NODE = -1;     // absent node: select padding, end of a child list
constexpr int32_t NO_PARENT = -1;   // parent of a root
constexpr int32_t NO_PAGES = -1;    // page_seq of a node that owns no KV pages

// A read-only view of caller memory (numpy buffers in the binding, vectors in tests).
template <typename T>
struct Span {
  const T* data = nullptr;
  int64_t size = 0;
  Span() = default;
  Span(const T* d, int64_t n) : data(d), size(n) {}
  Span(const std::vector<T>& v) : data(v.data()), size(static_cast<int64_t>(v.size())) {}  // NOLINT
  const T& operator[](int64_t i) const { return data[i]; }
};

// Growable array in a shared buffer. A buffer no view shares grows in place (realloc, which can
// remap pages instead of copying); a shared one is copied into a new buffer and left to its views.
template <typename T>
class Column {
  static_assert(std::is_trivially_copyable<T>::value, "columns hold plain values");
  struct Block {
    T* data = nullptr;
    ~Block() { std::free(data); }
  };

 public:
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  T& operator[](int64_t i) { return ptr_[i]; }
  const T& operator[](int64_t i) const { return ptr_[i]; }
  int64_t capacity() const { return cap_; }
  std::shared_ptr<const void> owner() const { return buf_; }
  void grow(int64_t new_cap, int64_t used) {
    const size_t bytes = static_cast<size_t>(new_cap) * sizeof(T);
    if (buf_ && buf_.use_count() == 1) {
      T* p = static_cast<T*>(std::realloc(buf_->data, bytes));
      if (p == nullptr) throw std::bad_alloc();
      buf_->data = p;
    } else {
      auto fresh = std::make_shared<Block>();
      fresh->data = static_cast<T*>(std::malloc(bytes));
      if (fresh->data == nullptr) throw std::bad_alloc();
      if (used > 0) std::memcpy(fresh->data, ptr_, static_cast<size_t>(used) * sizeof(T));
      buf_ = std::move(fresh);
    }
    ptr_ = buf_->data;
    cap_ = new_cap;
  }

 private:
  std::shared_ptr<Block> buf_;
  T* ptr_ = nullptr;
  int64_t cap_ = 0;
};

// Describes one exported array: the binding turns it into a numpy view whose base holds owner.
struct ColumnRef {
  std::string name;
  std::shared_ptr<const void> owner;
  const void* data;
  char kind;  // numpy kind: 'i' signed int, 'f' float, 'b' bool
  int itemsize;
  int64_t length;
};

enum class TopKKey { kPathScore, kValue, kReward, kVisits, kPrior };
enum class PathBy { kVisits, kValue, kScore };

struct SelectParams {
  int32_t leaves_per_tree = 1;
  double c_puct = 1.0;
  double virtual_loss = 1.0;  // value subtracted per pending virtual visit
  double fpu = 0.0;           // Q of a child with no real or virtual visits
  double pw_k = 0.0;          // progressive widening off when 0
  double pw_alpha = 0.5;
};

struct ChildBatch {
  Span<int32_t> parents;      // [M]
  Span<int32_t> counts;       // [M], each >= 1; C = sum(counts)
  Span<float> priors;         // [C]
  Span<int32_t> tokens;       // [tokens_indptr[C]]
  Span<int64_t> tokens_indptr;  // [C + 1]
  std::optional<Span<float>> rewards;      // [C], default 0
  std::optional<Span<bool>> terminal;      // [C], default false
  std::optional<Span<float>> path_scores;  // [C], default = rewards
  std::optional<Span<int32_t>> page_seqs;  // [C], default NO_PAGES
};

class Forest {
 public:
  explicit Forest(int64_t initial_capacity = 1024);

  // Structure.
  std::vector<int32_t> add_roots(Span<int32_t> tokens, Span<int64_t> tokens_indptr);
  std::vector<int32_t> add_children(const ChildBatch& batch);
  std::vector<int32_t> release(int32_t node);

  // Search. select writes roots.size * leaves_per_tree ids (row-major, NO_NODE padded) to out.
  void select(Span<int32_t> roots, const SelectParams& params, int32_t* out);
  void backup(Span<int32_t> nodes, Span<float> values, double discount);
  void cancel(Span<int32_t> nodes);

  // Queries.
  std::vector<int32_t> top_k(Span<int32_t> frontier, int32_t k, TopKKey key, bool by_tree) const;
  std::vector<int32_t> best_path(int32_t root, PathBy by) const;
  std::vector<int32_t> frontier(Span<int32_t> roots) const;
  std::vector<int32_t> path_tokens(int32_t node) const;
  std::vector<int32_t> node_tokens(int32_t node) const;
  std::vector<int32_t> children(int32_t node) const;

  // Batched setters.
  void set_path_scores(Span<int32_t> nodes, Span<float> values);
  void set_rewards(Span<int32_t> nodes, Span<float> values);
  void set_priors(Span<int32_t> nodes, Span<float> values);
  void set_page_seqs(Span<int32_t> nodes, Span<int32_t> seqs);
  void set_terminal(Span<int32_t> nodes, Span<bool> flags);

  int64_t num_nodes() const { return num_nodes_; }
  int64_t num_alive() const { return num_alive_; }
  int64_t num_tokens() const { return num_tokens_; }
  bool is_alive(int32_t node) const;  // throws std::out_of_range for ids never created

  // Every node field plus the token arena ("tokens"), each of its current length.
  std::vector<ColumnRef> columns() const;

  // Raw field access (read-only) for tests and the binding.
  int32_t parent(int32_t n) const { return parent_[n]; }
  int32_t first_child(int32_t n) const { return first_child_[n]; }
  int32_t next_sibling(int32_t n) const { return next_sibling_[n]; }
  int32_t num_children(int32_t n) const { return num_children_[n]; }
  int32_t depth(int32_t n) const { return depth_[n]; }
  int32_t visits(int32_t n) const { return visits_[n]; }
  double value_sum(int32_t n) const { return value_sum_[n]; }
  int32_t virtual_loss(int32_t n) const { return virtual_loss_[n]; }
  float prior(int32_t n) const { return prior_[n]; }
  float reward(int32_t n) const { return reward_[n]; }
  float path_score(int32_t n) const { return path_score_[n]; }
  bool terminal(int32_t n) const { return terminal_[n]; }
  bool pending(int32_t n) const { return pending_[n]; }
  int32_t page_seq(int32_t n) const { return page_seq_[n]; }
  int32_t tree(int32_t n) const { return tree_[n]; }

 private:
  // How many items ahead batched loops prefetch: enough to cover a miss (~100 ns) at ~10-20 ns per item.
  static constexpr int64_t kLookahead = 8;

  static void check_finite(const char* arg, Span<float> xs);
  static void check_len(const char* arg, int64_t got, const char* what, int64_t want);
  void reserve_nodes(int64_t extra);
  void reserve_tokens(int64_t extra);
  int32_t new_node(int32_t parent, const int32_t* toks, int64_t ntok);
  void check_node_range(const char* arg, int64_t index, int32_t node) const;
  void check_node(const char* arg, int64_t index, int32_t node) const;
  void check_root(const char* arg, int64_t index, int32_t node) const;
  void check_nodes(const char* arg, Span<int32_t> nodes) const;
  void check_indptr(const char* arg, Span<int64_t> indptr, int64_t rows, int64_t num_tokens) const;
  int32_t best_child_puct(int32_t n, const SelectParams& p) const;
  bool is_leaf(int32_t n, const SelectParams& p) const;
  void prefetch_node(int32_t n) const;
  void prefetch_children(int32_t n) const;
  void add_virtual_loss(int32_t leaf, int32_t delta);
  double key_of(int32_t n, TopKKey key) const;
  template <typename F>
  void preorder(int32_t start, F&& visit) const;

  int64_t num_nodes_ = 0;
  int64_t num_alive_ = 0;
  int64_t num_tokens_ = 0;

  Column<int32_t> parent_, first_child_, last_child_, next_sibling_, num_children_, depth_;
  Column<int32_t> visits_, virtual_loss_, token_len_, page_seq_, tree_;
  Column<double> value_sum_;
  Column<float> prior_, reward_, path_score_;
  Column<int64_t> token_offset_;
  Column<bool> terminal_, alive_, pending_;
  Column<int32_t> tokens_;
};

// Depth-first preorder over the subtree at start, children in sibling order, without a stack:
// after a node's subtree, continue at its next sibling or at the next sibling of an ancestor.
template <typename F>
void Forest::preorder(int32_t start, F&& visit) const {
  int32_t n = start;
  while (true) {
    visit(n);
    if (first_child_[n] != NO_NODE) {
      n = first_child_[n];
      continue;
    }
    while (n != start && next_sibling_[n] == NO_NODE) n = parent_[n];
    if (n == start) return;
    n = next_sibling_[n];
  }
}

}  // namespace ponder
