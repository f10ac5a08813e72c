// Forest search and query operations: select / backup / cancel and the read-only queries.
// Like every Forest operation they validate all input before changing anything.
#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "common.h"
#include "forest.h"

namespace ponder {

// The documented PUCT formula, evaluated in this order in double precision; tests/forest_model.py
// and benchmarks/py_forest.py repeat the order so all three pick the same child even on near ties.
// (Where a compiler fuses value_sum - virtual_loss * count into one FMA, the last bit can differ,
// but only when that product is inexact, i.e. for a non-integral virtual_loss.)
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

bool Forest::is_leaf(int32_t n, const SelectParams& p) const {
  if (terminal_[n] || num_children_[n] == 0) return true;
  // progressive widening: n may take another child before it is descended
  return p.pw_k > 0 &&
         num_children_[n] < p.pw_k * std::pow(static_cast<double>(std::max(visits_[n], 1)), p.pw_alpha);
}

// What a descent reads at node n to decide whether n is a leaf.
void Forest::prefetch_node(int32_t n) const {
  PONDER_PREFETCH(&terminal_[n]);
  PONDER_PREFETCH(&num_children_[n]);
  PONDER_PREFETCH(&first_child_[n]);
  PONDER_PREFETCH(&pending_[n]);
}

// What best_child_puct reads; children added in one call are adjacent, so this covers most of them.
void Forest::prefetch_children(int32_t n) const {
  const int32_t c = first_child_[n];
  PONDER_PREFETCH(&visits_[c]);
  PONDER_PREFETCH(&virtual_loss_[c]);
  PONDER_PREFETCH(&value_sum_[c]);
  PONDER_PREFETCH(&prior_[c]);
  PONDER_PREFETCH(&next_sibling_[c]);
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

  // Descents are sequential within a tree but independent across trees, so up to kLanes rows
  // (each a different tree) run interleaved: a lane advances one step per turn and prefetches what
  // its next step reads, so one lane's cache misses overlap the other lanes' work (in
  // benchmarks/bench_forest.py select took 18-19 ms instead of 39-41 ms one descent at a time). A row
  // whose tree is still in a lane waits (rows start in order), so every tree sees its rows, and
  // each row its descents, in exactly the sequential order.
  constexpr int kLanes = 16;
  struct Lane {
    int64_t row = -1;  // -1: idle
    int32_t found = 0;
    int32_t node = NO_NODE;
    bool scan = false;  // next step: pick the best child of node (else: test whether node is a leaf)
  };
  Lane lanes[kLanes];
  // Each lane's root..node path: virtual loss then lands on lines the descent just read instead
  // of chasing parent pointers through lines it never touched.
  std::vector<int32_t> paths[kLanes];
  const int32_t k = p.leaves_per_tree;
  std::fill(out, out + roots.size * k, NO_NODE);
  int64_t next_row = 0;
  int busy = 0;
  while (true) {
    for (int i = 0; i < kLanes && next_row < roots.size; ++i) {
      if (lanes[i].row >= 0) continue;
      const int32_t root = roots[next_row];
      bool tree_busy = false;
      for (const Lane& o : lanes) tree_busy |= o.row >= 0 && roots[o.row] == root;
      if (tree_busy) break;
      lanes[i] = Lane{next_row++, 0, root, false};
      paths[i].assign(1, root);
      prefetch_node(root);
      ++busy;
    }
    if (busy == 0) return;
    for (int i = 0; i < kLanes; ++i) {
      Lane& l = lanes[i];
      if (l.row < 0) continue;
      const int32_t n = l.node;
      if (l.scan) {
        l.node = best_child_puct(n, p);
        l.scan = false;
        paths[i].push_back(l.node);
        prefetch_node(l.node);
      } else if (!is_leaf(n, p)) {
        l.scan = true;
        prefetch_children(n);
      } else if (pending_[n]) {  // the tree has no distinct leaf left for this call
        l.row = -1;
        --busy;
      } else {
        pending_[n] = true;
        for (const int32_t a : paths[i]) ++virtual_loss_[a];
        out[l.row * k + l.found] = n;
        if (++l.found == k) {
          l.row = -1;
          --busy;
        } else {
          l.node = roots[l.row];
          paths[i].assign(1, l.node);
        }
      }
    }
  }
}

void Forest::backup(Span<int32_t> nodes, Span<float> values, double discount) {
  check_len("values", values.size, "len(nodes)", nodes.size);
  PONDER_CHECK_ARG(discount > 0 && discount <= 1, "discount=", discount, " must lie in (0, 1]");
  check_nodes("nodes", nodes);
  check_finite("values", values);
  for (int64_t i = 0; i < nodes.size; ++i) {
    if (i + kLookahead < nodes.size) {  // leaves are scattered: fetch them ahead of their turn
      const int32_t ahead = nodes[i + kLookahead];
      PONDER_PREFETCH(&visits_[ahead]);
      PONDER_PREFETCH(&value_sum_[ahead]);
      PONDER_PREFETCH(&parent_[ahead]);
      PONDER_PREFETCH(&pending_[ahead]);
    }
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

}  // namespace ponder
