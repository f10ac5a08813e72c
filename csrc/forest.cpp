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

template <typename T>
void check_finite(const char* arg, Span<T> xs) {
  for (int64_t i = 0; i < xs.size; ++i)
    PONDER_CHECK_ARG(std::isfinite(xs[i]), arg, "[", i, "]=", xs[i], " is not finite; expected a finite number");
}

void check_len(const char* arg, int64_t got, const char* what, int64_t want) {
  PONDER_CHECK_ARG(got == want, arg, " has length ", got, " but ", what, " is ", want);
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

void Forest::check_nodes(const char* arg, Span<int32_t> nodes) const {
  for (int64_t i = 0; i < nodes.size; ++i) check_node(arg, i, nodes[i]);
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
  for (int64_t i = 0; i < m; ++i) {
    check_node("parents", i, b.parents[i]);
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
  std::vector<int32_t> ids(c);
  int64_t j = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int32_t k = 0; k < b.counts[i]; ++k, ++j) {
      const int64_t lo = b.tokens_indptr[j];
      const int32_t id = new_node(b.parents[i], b.tokens.data + lo, b.tokens_indptr[j + 1] - lo);
      prior_[id] = b.priors[j];
      const float reward = b.rewards ? (*b.rewards)[j] : 0.0f;
      reward_[id] = reward;
      path_score_[id] = b.path_scores ? (*b.path_scores)[j] : reward;
      terminal_[id] = b.terminal ? (*b.terminal)[j] : false;
      page_seq_[id] = b.page_seqs ? (*b.page_seqs)[j] : NO_PAGES;
      ids[j] = id;
    }
  }
  return ids;
}

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

int32_t Forest::best_child_puct(int32_t n, const SelectParams& p) const {
  const double sqrt_parent = std::sqrt(static_cast<double>(std::max(visits_[n] + virtual_loss_[n], 1)));
  int32_t best = NO_NODE;
  double best_score = 0.0;
  for (int32_t c = first_child_[n]; c != NO_NODE; c = next_sibling_[c]) {
    const int32_t n_eff = visits_[c] + virtual_loss_[c];
    const double q = n_eff > 0 ? (value_sum_[c] - p.virtual_loss * virtual_loss_[c]) / n_eff : p.fpu;
    const double u = p.c_puct * static_cast<double>(prior_[c]) * sqrt_parent / (1.0 + n_eff);
    const double score = q + u;
    if (best == NO_NODE || score > best_score) {
      best = c;
      best_score = score;
    }
  }
  return best;
}

void Forest::add_virtual_loss(int32_t leaf, int32_t delta) {
  for (int32_t a = leaf; a != NO_PARENT; a = parent_[a]) virtual_loss_[a] += delta;
}

void Forest::select(Span<int32_t> roots, const SelectParams& p, int32_t* out) {
  PONDER_CHECK_ARG(p.leaves_per_tree >= 1, "leaves_per_tree=", p.leaves_per_tree, " must be >= 1");
  PONDER_CHECK_ARG(std::isfinite(p.c_puct) && p.c_puct >= 0, "c_puct=", p.c_puct, " must be finite and >= 0");
  PONDER_CHECK_ARG(std::isfinite(p.virtual_loss) && p.virtual_loss >= 0, "virtual_loss=", p.virtual_loss,
                   " must be finite and >= 0");
  PONDER_CHECK_ARG(std::isfinite(p.fpu), "fpu=", p.fpu, " must be finite");
  PONDER_CHECK_ARG(std::isfinite(p.pw_k) && p.pw_k >= 0, "pw_k=", p.pw_k, " must be finite and >= 0");
  PONDER_CHECK_ARG(p.pw_alpha >= 0 && p.pw_alpha <= 1, "pw_alpha=", p.pw_alpha, " must lie in [0, 1]");
  for (int64_t i = 0; i < roots.size; ++i) check_root("roots", i, roots[i]);

  const int32_t k = p.leaves_per_tree;
  std::fill(out, out + roots.size * k, NO_NODE);
  for (int64_t r = 0; r < roots.size; ++r) {
    for (int32_t j = 0; j < k; ++j) {
      int32_t n = roots[r];
      while (!terminal_[n] && num_children_[n] > 0) {
        if (p.pw_k > 0 &&
            num_children_[n] < p.pw_k * std::pow(static_cast<double>(std::max(visits_[n], 1)), p.pw_alpha))
          break;  // progressive widening: n may take another child before it is descended
        n = best_child_puct(n, p);
      }
      if (pending_[n]) break;  // the tree has no distinct leaf left for this call
      pending_[n] = true;
      add_virtual_loss(n, 1);
      out[r * k + j] = n;
    }
  }
}

void Forest::backup(Span<int32_t> nodes, Span<float> values, double discount) {
  check_len("values", values.size, "len(nodes)", nodes.size);
  PONDER_CHECK_ARG(discount > 0 && discount <= 1, "discount=", discount, " must lie in (0, 1]");
  check_nodes("nodes", nodes);
  check_finite("values", values);
  for (int64_t i = 0; i < nodes.size; ++i) {
    const int32_t n = nodes[i];
    const int32_t vl = pending_[n] ? 1 : 0;
    pending_[n] = false;
    double v = values[i];
    for (int32_t a = n; a != NO_PARENT; a = parent_[a]) {
      visits_[a] += 1;
      value_sum_[a] += v;
      virtual_loss_[a] -= vl;
      v *= discount;
    }
  }
}

void Forest::cancel(Span<int32_t> nodes) {
  check_nodes("nodes", nodes);
  for (int64_t i = 0; i < nodes.size; ++i) {
    const int32_t n = nodes[i];
    if (!pending_[n]) continue;
    pending_[n] = false;
    add_virtual_loss(n, -1);
  }
}

double Forest::key_of(int32_t n, TopKKey key) const {
  switch (key) {
    case TopKKey::kPathScore: return path_score_[n];
    case TopKKey::kReward: return reward_[n];
    case TopKKey::kPrior: return prior_[n];
    case TopKKey::kVisits: return visits_[n];
    case TopKKey::kValue:
      return visits_[n] > 0 ? value_sum_[n] / visits_[n] : -std::numeric_limits<double>::infinity();
  }
  throw_invalid("unknown top_k key");
}

std::vector<int32_t> Forest::top_k(Span<int32_t> frontier, int32_t k, TopKKey key, bool by_tree) const {
  PONDER_CHECK_ARG(k >= 1, "k=", k, " must be >= 1");
  check_nodes("frontier", frontier);
  {
    std::vector<int32_t> sorted(frontier.data, frontier.data + frontier.size);
    std::sort(sorted.begin(), sorted.end());
    const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    PONDER_CHECK_ARG(dup == sorted.end(), "frontier contains node ", dup == sorted.end() ? 0 : *dup,
                     " more than once");
  }
  struct Item {
    double key;
    int32_t node;
  };
  // Groups in order of first appearance; a single group when not by_tree.
  std::unordered_map<int32_t, int32_t> group_of;
  std::vector<std::vector<Item>> groups;
  for (int64_t i = 0; i < frontier.size; ++i) {
    const int32_t n = frontier[i];
    const int32_t t = by_tree ? tree_[n] : 0;
    auto it = group_of.find(t);
    if (it == group_of.end()) {
      it = group_of.emplace(t, static_cast<int32_t>(groups.size())).first;
      groups.emplace_back();
    }
    groups[it->second].push_back({key_of(n, key), n});
  }
  const auto better = [](const Item& a, const Item& b) {
    return a.key > b.key || (a.key == b.key && a.node < b.node);
  };
  std::vector<int32_t> out;
  for (auto& g : groups) {
    const auto take = std::min<size_t>(g.size(), static_cast<size_t>(k));
    std::partial_sort(g.begin(), g.begin() + take, g.end(), better);
    for (size_t i = 0; i < take; ++i) out.push_back(g[i].node);
  }
  return out;
}

std::vector<int32_t> Forest::best_path(int32_t root, PathBy by) const {
  check_root("root", -1, root);
  std::vector<int32_t> path;
  if (by == PathBy::kScore) {
    int32_t best_terminal = NO_NODE, best_leaf = NO_NODE;
    const auto better = [&](int32_t a, int32_t b) {  // b is NO_NODE or an earlier candidate
      return b == NO_NODE || path_score_[a] > path_score_[b] || (path_score_[a] == path_score_[b] && a < b);
    };
    preorder(root, [&](int32_t n) {
      if (terminal_[n] && better(n, best_terminal)) best_terminal = n;
      if (num_children_[n] == 0 && better(n, best_leaf)) best_leaf = n;
    });
    for (int32_t n = best_terminal != NO_NODE ? best_terminal : best_leaf; n != NO_PARENT; n = parent_[n])
      path.push_back(n);
    std::reverse(path.begin(), path.end());
    return path;
  }
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const auto mean = [&](int32_t c) { return visits_[c] > 0 ? value_sum_[c] / visits_[c] : neg_inf; };
  int32_t n = root;
  path.push_back(n);
  while (first_child_[n] != NO_NODE) {
    int32_t best = first_child_[n];
    for (int32_t c = next_sibling_[best]; c != NO_NODE; c = next_sibling_[c]) {
      if (by == PathBy::kVisits) {
        if (visits_[c] > visits_[best] || (visits_[c] == visits_[best] && mean(c) > mean(best))) best = c;
      } else if (visits_[c] > 0 && (visits_[best] == 0 || mean(c) > mean(best))) {
        best = c;
      }
    }
    n = best;
    path.push_back(n);
  }
  return path;
}

std::vector<int32_t> Forest::frontier(Span<int32_t> roots) const {
  for (int64_t i = 0; i < roots.size; ++i) check_root("roots", i, roots[i]);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < roots.size; ++i)
    preorder(roots[i], [&](int32_t n) {
      if (num_children_[n] == 0 && !terminal_[n]) out.push_back(n);
    });
  return out;
}

std::vector<int32_t> Forest::node_tokens(int32_t node) const {
  check_node("node", -1, node);
  const int32_t* t = tokens_.data() + token_offset_[node];
  return std::vector<int32_t>(t, t + token_len_[node]);
}

std::vector<int32_t> Forest::path_tokens(int32_t node) const {
  check_node("node", -1, node);
  int64_t total = 0;
  for (int32_t a = node; a != NO_PARENT; a = parent_[a]) total += token_len_[a];
  std::vector<int32_t> out(total);
  int64_t end = total;  // fill back to front: the walk visits node first, root last
  for (int32_t a = node; a != NO_PARENT; a = parent_[a]) {
    end -= token_len_[a];
    std::copy(tokens_.data() + token_offset_[a], tokens_.data() + token_offset_[a] + token_len_[a],
              out.begin() + end);
  }
  return out;
}

std::vector<int32_t> Forest::children(int32_t node) const {
  check_node("node", -1, node);
  std::vector<int32_t> out;
  for (int32_t c = first_child_[node]; c != NO_NODE; c = next_sibling_[c]) out.push_back(c);
  return out;
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
