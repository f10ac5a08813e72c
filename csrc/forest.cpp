// Forest operations. Every public operation validates all of its input before changing
// anything, so a throwing call leaves the forest exactly as it was.
#include "forest.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <unordered_map>

#include "common.h"

namespace ponder {

static_assert(sizeof(bool) == 1, "bool columns are exported as numpy bool (1 byte)");

namespace {

constexpr int64_t kMaxNodes = std::numeric_limits<int32_t>::max();

// "parents[3]" for batch arguments, plain "node" for scalar ones (index < 0).
std::string where(const char* arg, int64_t index) {
  return index < 0 ? std::string(arg) : detail::concat(arg, "[", index, "]");
}

}  // namespace

Forest::Forest(int64_t initial_capacity) {
  PONDER_CHECK_ARG(initial_capacity >= 1 && initial_capacity <= kMaxNodes, "initial_capacity=", initial_capacity,
                   " must lie in [1, ", kMaxNodes, "]");
  reserve_nodes(initial_capacity);
  reserve_tokens(initial_capacity);
}

void Forest::reserve_nodes(int64_t extra) {
  const int64_t need = num_nodes_ + extra;
  if (need <= parent_.capacity()) return;
  int64_t cap = std::max<int64_t>(parent_.capacity(), 1);
  while (cap < need) cap *= 2;
  const int64_t n = num_nodes_;
  for (auto* c : {&parent_, &first_child_, &last_child_, &next_sibling_, &num_children_, &depth_, &visits_,
                  &virtual_loss_, &token_len_, &page_seq_, &tree_})
    c->grow(cap, n);
  value_sum_.grow(cap, n);
  for (auto* c : {&prior_, &reward_, &path_score_}) c->grow(cap, n);
  token_offset_.grow(cap, n);
  for (auto* c : {&terminal_, &alive_, &pending_}) c->grow(cap, n);
}

void Forest::reserve_tokens(int64_t extra) {
  const int64_t need = num_tokens_ + extra;
  if (need <= tokens_.capacity()) return;
  int64_t cap = std::max<int64_t>(tokens_.capacity(), 1);
  while (cap < need) cap *= 2;
  tokens_.grow(cap, num_tokens_);
}

bool Forest::is_alive(int32_t node) const {
  check_node_range("node", -1, node);
  return alive_[node];
}

void Forest::check_node_range(const char* arg, int64_t index, int32_t node) const {
  PONDER_CHECK_RANGE(node >= 0 && node < num_nodes_, where(arg, index), "=", node, " is out of range [0, ",
                     num_nodes_, ")");
}

void Forest::check_node(const char* arg, int64_t index, int32_t node) const {
  check_node_range(arg, index, node);
  PONDER_CHECK_ARG(alive_[node], where(arg, index), ": node ", node, " was released");
}

void Forest::check_root(const char* arg, int64_t index, int32_t node) const {
  check_node(arg, index, node);
  PONDER_CHECK_ARG(parent_[node] == NO_PARENT, where(arg, index), ": node ", node,
                   " is not a root (its parent is ", parent_[node], ")");
}

void Forest::check_finite(const char* arg, Span<float> xs) {
  for (int64_t i = 0; i < xs.size; ++i)
    PONDER_CHECK_ARG(std::isfinite(xs[i]), arg, "[", i, "]=", xs[i], " is not finite; expected a finite number");
}

void Forest::check_len(const char* arg, int64_t got, const char* what, int64_t want) {
  PONDER_CHECK_ARG(got == want, arg, " has length ", got, " but ", what, " is ", want);
}

void Forest::check_nodes(const char* arg, Span<int32_t> nodes) const {
  for (int64_t i = 0; i < nodes.size; ++i) {
    if (i + kLookahead < nodes.size && nodes[i + kLookahead] >= 0 && nodes[i + kLookahead] < num_nodes_)
      PONDER_PREFETCH(&alive_[nodes[i + kLookahead]]);  // batches of scattered leaves
    check_node(arg, i, nodes[i]);
  }
}

void Forest::check_indptr(const char* arg, Span<int64_t> indptr, int64_t rows, int64_t num_tokens) const {
  check_len(arg, indptr.size, "rows + 1", rows + 1);
  PONDER_CHECK_ARG(indptr[0] == 0, arg, "[0]=", indptr[0], " must be 0");
  for (int64_t i = 0; i < rows; ++i)
    PONDER_CHECK_ARG(indptr[i + 1] >= indptr[i], arg, " must be non-decreasing, got ", arg, "[", i, "]=", indptr[i],
                     " > ", arg, "[", i + 1, "]=", indptr[i + 1]);
  PONDER_CHECK_ARG(indptr[rows] == num_tokens, arg, "[-1]=", indptr[rows], " must equal the number of tokens (",
                   num_tokens, ")");
}

namespace {
void check_tokens(Span<int32_t> tokens) {
  for (int64_t i = 0; i < tokens.size; ++i)
    PONDER_CHECK_ARG(tokens[i] >= 0, "tokens[", i, "]=", tokens[i], " is negative; expected a token id >= 0");
}
}  // namespace

int32_t Forest::new_node(int32_t parent, const int32_t* toks, int64_t ntok) {
  const auto id = static_cast<int32_t>(num_nodes_++);
  ++num_alive_;
  parent_[id] = parent;
  first_child_[id] = NO_NODE;
  last_child_[id] = NO_NODE;
  next_sibling_[id] = NO_NODE;
  num_children_[id] = 0;
  depth_[id] = parent == NO_PARENT ? 0 : depth_[parent] + 1;
  visits_[id] = 0;
  virtual_loss_[id] = 0;
  value_sum_[id] = 0.0;
  prior_[id] = 1.0f;
  reward_[id] = 0.0f;
  path_score_[id] = 0.0f;
  terminal_[id] = false;
  alive_[id] = true;
  pending_[id] = false;
  page_seq_[id] = NO_PAGES;
  tree_[id] = parent == NO_PARENT ? id : tree_[parent];
  token_offset_[id] = num_tokens_;
  token_len_[id] = static_cast<int32_t>(ntok);
  std::copy(toks, toks + ntok, tokens_.data() + num_tokens_);
  num_tokens_ += ntok;
  if (parent != NO_PARENT) {
    if (last_child_[parent] == NO_NODE)
      first_child_[parent] = id;
    else
      next_sibling_[last_child_[parent]] = id;
    last_child_[parent] = id;
    ++num_children_[parent];
  }
  return id;
}

std::vector<int32_t> Forest::add_roots(Span<int32_t> tokens, Span<int64_t> tokens_indptr) {
  PONDER_CHECK_ARG(tokens_indptr.size >= 1, "tokens_indptr must have at least one entry (0), got none");
  const int64_t r = tokens_indptr.size - 1;
  check_indptr("tokens_indptr", tokens_indptr, r, tokens.size);
  check_tokens(tokens);
  for (int64_t i = 0; i < r; ++i)
    PONDER_CHECK_ARG(tokens_indptr[i + 1] - tokens_indptr[i] <= std::numeric_limits<int32_t>::max(), "root ", i,
                     " has too many tokens");
  PONDER_CHECK_ARG(num_nodes_ + r <= kMaxNodes, "adding ", r, " roots exceeds the node limit ", kMaxNodes);
  reserve_nodes(r);
  reserve_tokens(tokens.size);
  std::vector<int32_t> ids(r);
  for (int64_t i = 0; i < r; ++i)
    ids[i] = new_node(NO_PARENT, tokens.data + tokens_indptr[i], tokens_indptr[i + 1] - tokens_indptr[i]);
  return ids;
}

std::vector<int32_t> Forest::add_children(const ChildBatch& b) {
  const int64_t m = b.parents.size;
  check_len("counts", b.counts.size, "len(parents)", m);
  int64_t c = 0;
  for (int64_t i = 0; i < m; ++i) {
    PONDER_CHECK_ARG(b.counts[i] >= 1, "counts[", i, "]=", b.counts[i], " must be >= 1");
    c += b.counts[i];
  }
  PONDER_CHECK_ARG(num_nodes_ + c <= kMaxNodes, "adding ", c, " children exceeds the node limit ", kMaxNodes);
  check_nodes("parents", b.parents);
  for (int64_t i = 0; i < m; ++i) {
    PONDER_CHECK_ARG(!terminal_[b.parents[i]], "parents[", i, "]: node ", b.parents[i],
                     " is terminal and cannot get children");
  }
  check_len("priors", b.priors.size, "sum(counts)", c);
  check_finite("priors", b.priors);
  for (int64_t i = 0; i < c; ++i)
    PONDER_CHECK_ARG(b.priors[i] >= 0.0f, "priors[", i, "]=", b.priors[i], " is negative; expected >= 0");
  check_indptr("tokens_indptr", b.tokens_indptr, c, b.tokens.size);
  check_tokens(b.tokens);
  for (int64_t i = 0; i < c; ++i)
    PONDER_CHECK_ARG(b.tokens_indptr[i + 1] - b.tokens_indptr[i] <= std::numeric_limits<int32_t>::max(), "child ",
                     i, " has too many tokens");
  if (b.rewards) {
    check_len("rewards", b.rewards->size, "sum(counts)", c);
    check_finite("rewards", *b.rewards);
  }
  if (b.terminal) check_len("terminal", b.terminal->size, "sum(counts)", c);
  if (b.path_scores) {
    check_len("path_scores", b.path_scores->size, "sum(counts)", c);
    check_finite("path_scores", *b.path_scores);
  }
  if (b.page_seqs) {
    check_len("page_seqs", b.page_seqs->size, "sum(counts)", c);
    for (int64_t i = 0; i < c; ++i)
      PONDER_CHECK_ARG((*b.page_seqs)[i] >= NO_PAGES, "page_seqs[", i, "]=", (*b.page_seqs)[i],
                       " must be a page sequence handle >= 0 or NO_PAGES (", NO_PAGES, ")");
  }

  reserve_nodes(c);
  reserve_tokens(b.tokens.size);
  // Children take ids base .. base + c - 1 in order. Fields are written column by column (one
  // sequential stream at a time), then each parent's group is linked in.
  const int64_t base = num_nodes_, end = base + c;
  const auto fill = [&](auto& col, auto value) { std::fill(col.data() + base, col.data() + end, value); };
  const auto copy = [&](auto& col, const auto* src) { std::copy(src, src + c, col.data() + base); };
  fill(first_child_, NO_NODE);
  fill(last_child_, NO_NODE);
  fill(num_children_, 0);
  fill(visits_, 0);
  fill(virtual_loss_, 0);
  fill(value_sum_, 0.0);
  fill(alive_, true);
  fill(pending_, false);
  copy(prior_, b.priors.data);
  b.rewards ? copy(reward_, b.rewards->data) : fill(reward_, 0.0f);
  copy(path_score_, b.path_scores ? b.path_scores->data : reward_.data() + base);
  b.terminal ? copy(terminal_, b.terminal->data) : fill(terminal_, false);
  b.page_seqs ? copy(page_seq_, b.page_seqs->data) : fill(page_seq_, NO_PAGES);
  for (int64_t j = 0; j < c; ++j) {
    token_offset_[base + j] = num_tokens_ + b.tokens_indptr[j];
    token_len_[base + j] = static_cast<int32_t>(b.tokens_indptr[j + 1] - b.tokens_indptr[j]);
  }
  std::copy(b.tokens.data, b.tokens.data + b.tokens.size, tokens_.data() + num_tokens_);
  num_tokens_ += b.tokens.size;

  auto id = static_cast<int32_t>(base);
  for (int64_t i = 0; i < m; ++i) {
    if (i + kLookahead < m) {  // parents are scattered: fetch what linking a group touches ahead
      const int32_t ahead = b.parents[i + kLookahead];
      PONDER_PREFETCH(&last_child_[ahead]);
      PONDER_PREFETCH(&depth_[ahead]);
      PONDER_PREFETCH(&tree_[ahead]);
      PONDER_PREFETCH(&num_children_[ahead]);
    }
    const int32_t p = b.parents[i], n = b.counts[i], last = id + n - 1;
    std::fill(parent_.data() + id, parent_.data() + id + n, p);
    std::fill(depth_.data() + id, depth_.data() + id + n, depth_[p] + 1);
    std::fill(tree_.data() + id, tree_.data() + id + n, tree_[p]);
    for (int32_t x = id; x < last; ++x) next_sibling_[x] = x + 1;
    next_sibling_[last] = NO_NODE;
    if (last_child_[p] == NO_NODE)
      first_child_[p] = id;
    else
      next_sibling_[last_child_[p]] = id;
    last_child_[p] = last;
    num_children_[p] += n;
    id = last + 1;
  }
  num_nodes_ = end;
  num_alive_ += c;
  std::vector<int32_t> ids(c);
  for (int64_t j = 0; j < c; ++j) ids[j] = static_cast<int32_t>(base + j);
  return ids;
}

std::vector<int32_t> Forest::release(int32_t node) {
  check_node("node", -1, node);
  std::vector<int32_t> pages;
  int64_t dead = 0;
  preorder(node, [&](int32_t n) {
    if (page_seq_[n] != NO_PAGES) pages.push_back(page_seq_[n]);
    alive_[n] = false;
    pending_[n] = false;
    ++dead;
  });
  num_alive_ -= dead;
  const int32_t p = parent_[node];
  if (p != NO_PARENT) {
    // The subtree's pending leaves are exactly virtual_loss[node]; take them off the survivors.
    for (int32_t a = p; a != NO_PARENT; a = parent_[a]) virtual_loss_[a] -= virtual_loss_[node];
    if (first_child_[p] == node) {
      first_child_[p] = next_sibling_[node];
      if (last_child_[p] == node) last_child_[p] = NO_NODE;
    } else {
      int32_t prev = first_child_[p];
      while (next_sibling_[prev] != node) prev = next_sibling_[prev];
      next_sibling_[prev] = next_sibling_[node];
      if (last_child_[p] == node) last_child_[p] = prev;
    }
    next_sibling_[node] = NO_NODE;
    --num_children_[p];
  }
  return pages;
}

void Forest::set_path_scores(Span<int32_t> nodes, Span<float> values) {
  check_len("values", values.size, "len(nodes)", nodes.size);
  check_nodes("nodes", nodes);
  check_finite("values", values);
  for (int64_t i = 0; i < nodes.size; ++i) path_score_[nodes[i]] = values[i];
}

void Forest::set_rewards(Span<int32_t> nodes, Span<float> values) {
  check_len("values", values.size, "len(nodes)", nodes.size);
  check_nodes("nodes", nodes);
  check_finite("values", values);
  for (int64_t i = 0; i < nodes.size; ++i) reward_[nodes[i]] = values[i];
}

void Forest::set_priors(Span<int32_t> nodes, Span<float> values) {
  check_len("values", values.size, "len(nodes)", nodes.size);
  check_nodes("nodes", nodes);
  check_finite("values", values);
  for (int64_t i = 0; i < nodes.size; ++i)
    PONDER_CHECK_ARG(values[i] >= 0.0f, "values[", i, "]=", values[i], " is a negative prior; expected >= 0");
  for (int64_t i = 0; i < nodes.size; ++i) prior_[nodes[i]] = values[i];
}

void Forest::set_page_seqs(Span<int32_t> nodes, Span<int32_t> seqs) {
  check_len("seqs", seqs.size, "len(nodes)", nodes.size);
  check_nodes("nodes", nodes);
  for (int64_t i = 0; i < nodes.size; ++i)
    PONDER_CHECK_ARG(seqs[i] >= NO_PAGES, "seqs[", i, "]=", seqs[i],
                     " must be a page sequence handle >= 0 or NO_PAGES (", NO_PAGES, ")");
  for (int64_t i = 0; i < nodes.size; ++i) page_seq_[nodes[i]] = seqs[i];
}

void Forest::set_terminal(Span<int32_t> nodes, Span<bool> flags) {
  check_len("flags", flags.size, "len(nodes)", nodes.size);
  check_nodes("nodes", nodes);
  for (int64_t i = 0; i < nodes.size; ++i)
    PONDER_CHECK_ARG(!flags[i] || num_children_[nodes[i]] == 0, "nodes[", i, "]: node ", nodes[i], " has ",
                     num_children_[nodes[i]], " children; only a leaf can be marked terminal");
  for (int64_t i = 0; i < nodes.size; ++i) terminal_[nodes[i]] = flags[i];
}

std::vector<ColumnRef> Forest::columns() const {
  std::vector<ColumnRef> out;
  const auto add = [&](const char* name, const auto& col, char kind, int64_t len) {
    using T = std::remove_const_t<std::remove_reference_t<decltype(col[0])>>;
    out.push_back({name, col.owner(), col.data(), kind, static_cast<int>(sizeof(T)), len});
  };
  const int64_t n = num_nodes_;
  add("parent", parent_, 'i', n);
  add("first_child", first_child_, 'i', n);
  add("last_child", last_child_, 'i', n);
  add("next_sibling", next_sibling_, 'i', n);
  add("num_children", num_children_, 'i', n);
  add("depth", depth_, 'i', n);
  add("visits", visits_, 'i', n);
  add("value_sum", value_sum_, 'f', n);
  add("virtual_loss", virtual_loss_, 'i', n);
  add("prior", prior_, 'f', n);
  add("reward", reward_, 'f', n);
  add("path_score", path_score_, 'f', n);
  add("terminal", terminal_, 'b', n);
  add("token_offset", token_offset_, 'i', n);
  add("token_len", token_len_, 'i', n);
  add("page_seq", page_seq_, 'i', n);
  add("tree", tree_, 'i', n);
  add("alive", alive_, 'b', n);
  add("pending", pending_, 'b', n);
  add("tokens", tokens_, 'i', num_tokens_);
  return out;
}

}  // namespace ponder
