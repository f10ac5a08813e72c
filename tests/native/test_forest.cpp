// Native Forest tests: literal cases and a seeded random-operation loop with invariant checks and
// error paths, so AddressSanitizer / UBSan see every code path (growth, release, bad input).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "forest.h"

using ponder::ChildBatch;
using ponder::Forest;
using ponder::NO_NODE;
using ponder::NO_PAGES;
using ponder::NO_PARENT;
using ponder::PathBy;
using ponder::SelectParams;
using ponder::Span;
using ponder::TopKKey;

namespace {

// Owns the arrays of one add_children call.
struct Kids {
  std::vector<int32_t> parents, counts, tokens, page_seqs;
  std::vector<float> priors, rewards;
  std::vector<int64_t> indptr{0};
  std::vector<bool> terminal_flags;
  std::unique_ptr<bool[]> terminal;
  Kids(std::vector<int32_t> p, std::vector<int32_t> c, std::vector<float> pr)
      : parents(std::move(p)), counts(std::move(c)), priors(std::move(pr)) {
    for (size_t i = 0; i < priors.size(); ++i) indptr.push_back(0);
  }
  std::vector<int32_t> add(Forest& f) {
    ChildBatch b;
    b.parents = parents;
    b.counts = counts;
    b.priors = priors;
    b.tokens = tokens;
    b.tokens_indptr = indptr;
    if (!rewards.empty()) b.rewards = Span<float>(rewards);
    if (!page_seqs.empty()) b.page_seqs = Span<int32_t>(page_seqs);
    if (!terminal_flags.empty()) {
      terminal.reset(new bool[terminal_flags.size()]);
      for (size_t i = 0; i < terminal_flags.size(); ++i) terminal[i] = terminal_flags[i];
      b.terminal = Span<bool>(terminal.get(), static_cast<int64_t>(terminal_flags.size()));
    }
    return f.add_children(b);
  }
};

Forest star(const std::vector<float>& priors) {
  Forest f(2);
  const std::vector<int32_t> prompt{1, 2};
  f.add_roots(prompt, std::vector<int64_t>{0, 2});
  Kids k({0}, {static_cast<int32_t>(priors.size())}, priors);
  for (size_t i = 0; i < priors.size(); ++i) {
    k.tokens.push_back(10 + static_cast<int32_t>(i));
    k.indptr[i + 1] = static_cast<int64_t>(i + 1);
  }
  k.add(f);
  return f;
}

std::vector<int32_t> select(Forest& f, std::vector<int32_t> roots, int32_t k, double c_puct = 1.0, double vl = 1.0,
                            double fpu = 0.0, double pw_k = 0.0, double pw_alpha = 0.5) {
  std::vector<int32_t> out(roots.size() * k);
  f.select(roots, SelectParams{k, c_puct, vl, fpu, pw_k, pw_alpha}, out.data());
  return out;
}

using Bytes = std::vector<std::vector<char>>;
Bytes snapshot(const Forest& f) {
  Bytes out;
  for (const auto& c : f.columns()) {
    const char* p = static_cast<const char*>(c.data);
    out.emplace_back(p, p + c.length * c.itemsize);
  }
  return out;
}

using V = std::vector<int32_t>;

}  // namespace

PONDER_TEST(forest_select_puct_and_virtual_loss) {
  Forest f = star({0.5f, 0.3f, 0.2f});
  // root N_eff 0 -> U = priors: 1; then 1 has Q = -1: 2; then sqrt(2): 1 -0.65, 2 -0.79, 3 0.28: 3;
  // then sqrt(3): 1 -0.57 wins but is pending, so the tree stops
  CHECK(select(f, {0}, 4) == (V{1, 2, 3, NO_NODE}));
  CHECK_EQ(f.virtual_loss(0), 3);
  CHECK(f.pending(1) && f.pending(2) && f.pending(3) && !f.pending(0));
  const std::vector<int32_t> nodes{1, 2};
  f.backup(nodes, std::vector<float>{0.4f, 0.9f}, 1.0);
  f.cancel(std::vector<int32_t>{3});
  CHECK_EQ(f.virtual_loss(0), 0);
  CHECK_EQ(f.visits(0), 2);
  // N_eff(root) 2: child 1 0.4 + 0.354, child 2 0.9 + 0.212 (max), child 3 0 + 0.283
  CHECK(select(f, {0}, 1) == V{2});
  f.cancel(std::vector<int32_t>{2});
  CHECK(select(f, {0}, 1, 1.0, 1.0, /*fpu=*/1.0) == V{3});  // 1 + 0.283 beats 1.112
  Forest tie = star({0.25f, 0.25f, 0.25f});
  CHECK(select(tie, {0}, 1) == V{1});  // equal scores: the earliest sibling
}

PONDER_TEST(forest_progressive_widening_and_discount) {
  Forest f = star({1.0f});
  const std::vector<int32_t> one{1};
  CHECK(select(f, {0}, 1, 1, 1, 0, 1.0, 0.5) == V{1});  // N 0: 1 < 1 false
  f.backup(one, std::vector<float>{0.5f}, 1.0);
  f.backup(one, std::vector<float>{0.5f}, 1.0);
  CHECK(select(f, {0}, 1, 1, 1, 0, 1.0, 0.5) == V{0});  // N 2: 1 < 1.414 -> widen the root
  Kids k({1}, {1}, {1.0f});
  k.add(f);  // 1 -> 2
  f.backup(std::vector<int32_t>{2}, std::vector<float>{1.0f}, 0.5);
  CHECK_EQ(f.value_sum(2), 1.0);
  CHECK_EQ(f.value_sum(1), 1.5);   // 0.5 + 0.5 + 1.0 * 0.5
  CHECK_EQ(f.value_sum(0), 1.25);  // 0.5 + 0.5 + 0.25
  CHECK(f.pending(0) && f.virtual_loss(0) == 1);  // the widening leaf is still pending
}

PONDER_TEST(forest_queries_and_release) {
  Forest f = star({0.5f, 0.3f, 0.2f});  // 0 -> 1, 2, 3
  Kids k({2}, {2}, {0.5f, 0.5f});
  k.page_seqs = {7, NO_PAGES};
  k.tokens = {20, 21};
  k.indptr = {0, 2, 2};
  k.add(f);  // 2 -> 4 [20 21], 5
  f.set_page_seqs(std::vector<int32_t>{2}, std::vector<int32_t>{3});
  CHECK(f.path_tokens(4) == (V{1, 2, 11, 20, 21}));
  CHECK(f.frontier(std::vector<int32_t>{0}) == (V{1, 4, 5, 3}));
  f.set_path_scores(std::vector<int32_t>{4, 5, 3}, std::vector<float>{0.2f, 0.9f, 0.9f});
  CHECK(f.top_k(std::vector<int32_t>{4, 5, 3}, 2, TopKKey::kPathScore, true) == (V{3, 5}));  // tie -> lower id
  CHECK(f.best_path(0, PathBy::kScore) == (V{0, 3}));
  f.backup(std::vector<int32_t>{4, 4, 1}, std::vector<float>{1.0f, 1.0f, 0.0f}, 1.0);
  CHECK(f.best_path(0, PathBy::kVisits) == (V{0, 2, 4}));
  CHECK(f.best_path(0, PathBy::kValue) == (V{0, 2, 4}));
  // root sqrt(3): 1 0.43, 2 1 + 0.17 (max), 3 0.35; at 2, sqrt(2): 4 1 + 0.24 beats 5 0 + 0.71 -> 4.
  // then root sqrt(4): 1 0.5, 2 (2 - 1) / 3 + 0.15 = 0.48, 3 0.4 -> 1
  CHECK(select(f, {0}, 2) == (V{4, 1}));
  CHECK_EQ(f.virtual_loss(0), 2);
  CHECK(f.release(2) == (V{3, 7}));
  CHECK_EQ(f.virtual_loss(0), 1);  // pending 4 was in the released subtree
  CHECK(f.children(0) == (V{1, 3}));
  CHECK_EQ(f.num_alive(), 3);
  CHECK_THROWS(f.release(4), std::invalid_argument);
  CHECK_THROWS(f.path_tokens(99), std::out_of_range);
}

PONDER_TEST(forest_column_owners_outlive_growth) {
  Forest f(1);
  f.add_roots(std::vector<int32_t>{5}, std::vector<int64_t>{0, 1});
  f.backup(std::vector<int32_t>{0}, std::vector<float>{1.0f}, 1.0);
  std::vector<ponder::ColumnRef> held = f.columns();  // like numpy views: they keep their buffers
  Kids k({0}, {300}, std::vector<float>(300, 0.5f));
  k.add(f);  // grows every column several times; shared buffers are copied, not reallocated
  f.backup(std::vector<int32_t>{0}, std::vector<float>{1.0f}, 1.0);
  const void* old_visits = nullptr;
  for (const auto& c : held) {
    CHECK_EQ(c.length, 1);
    if (c.name == "visits") old_visits = c.data;
    if (c.name == "visits") CHECK_EQ(*static_cast<const int32_t*>(c.data), 1);  // the old snapshot
    if (c.name == "tokens") CHECK_EQ(*static_cast<const int32_t*>(c.data), 5);
  }
  CHECK_EQ(f.visits(0), 2);
  for (const auto& c : f.columns())
    if (c.name == "visits") CHECK(c.data != old_visits && c.length == 301);
  held.clear();  // the old buffers go now; the next growth reallocates in place
  Kids more({0}, {2000}, std::vector<float>(2000, 0.1f));
  more.add(f);
  CHECK_EQ(f.num_children(0), 2300);
  CHECK_EQ(f.visits(0), 2);
}

PONDER_TEST(forest_errors_leave_forest_unchanged) {
  Forest f = star({0.5f, 0.5f});
  select(f, {0}, 1);
  const Bytes before = snapshot(f);
  const float nan = std::nanf("");
  std::vector<int32_t> out(4);
  CHECK_THROWS(f.select(std::vector<int32_t>{0, 1}, SelectParams{}, out.data()), std::invalid_argument);  // not a root
  CHECK_THROWS(f.select(std::vector<int32_t>{0, 5}, SelectParams{}, out.data()), std::out_of_range);
  CHECK_THROWS(f.select(std::vector<int32_t>{0}, SelectParams{1, -1.0}, out.data()), std::invalid_argument);
  CHECK_THROWS(f.select(std::vector<int32_t>{0}, SelectParams{1, 1, 1, 0, 1, 2.0}, out.data()), std::invalid_argument);
  CHECK_THROWS(f.backup(std::vector<int32_t>{1, 2}, std::vector<float>{0.5f, nan}, 1.0), std::invalid_argument);
  CHECK_THROWS(f.backup(std::vector<int32_t>{1}, std::vector<float>{0.5f}, 0.0), std::invalid_argument);
  CHECK_THROWS(f.backup(std::vector<int32_t>{1}, std::vector<float>{}, 1.0), std::invalid_argument);
  CHECK_THROWS(Kids({1, 2}, {1, 0}, {0.5f}).add(f), std::invalid_argument);
  CHECK_THROWS(Kids({1}, {1}, {-0.5f}).add(f), std::invalid_argument);
  CHECK_THROWS(Kids({1}, {2}, {0.5f}).add(f), std::invalid_argument);  // priors length
  CHECK_THROWS(f.add_roots(std::vector<int32_t>{1}, std::vector<int64_t>{0, 2}), std::invalid_argument);
  CHECK_THROWS(f.add_roots(std::vector<int32_t>{-1}, std::vector<int64_t>{0, 1}), std::invalid_argument);
  CHECK_THROWS(f.set_terminal(std::vector<int32_t>{0}, Span<bool>(nullptr, 0)), std::invalid_argument);
  CHECK_THROWS(f.top_k(std::vector<int32_t>{1, 1}, 1, TopKKey::kValue, true), std::invalid_argument);
  CHECK_THROWS(f.top_k(std::vector<int32_t>{1}, 0, TopKKey::kValue, true), std::invalid_argument);
  CHECK_THROWS(f.set_page_seqs(std::vector<int32_t>{1}, std::vector<int32_t>{-2}), std::invalid_argument);
  CHECK_THROWS(f.is_alive(-1), std::out_of_range);
  CHECK_THROWS(Forest(0), std::invalid_argument);
  CHECK(snapshot(f) == before);
}

namespace {

// Checks the structural invariants; direct[n] counts backups that started at n.
void check_invariants(const Forest& f, const std::vector<int64_t>& direct) {
  const auto n = static_cast<int32_t>(f.num_nodes());
  std::vector<int64_t> through(n, 0), pending_below(n, 0);
  for (int32_t x = n - 1; x >= 0; --x) {  // children always have larger ids than their parent
    through[x] += direct[x];
    if (f.is_alive(x)) pending_below[x] += f.pending(x);
    if (f.parent(x) != NO_PARENT) {
      through[f.parent(x)] += through[x];
      if (f.is_alive(x)) pending_below[f.parent(x)] += pending_below[x];
    }
  }
  int64_t reached = 0, alive = 0;
  for (int32_t x = 0; x < n; ++x) {
    CHECK_EQ(f.visits(x), through[x]);
    if (!f.is_alive(x)) {
      CHECK(!f.pending(x));
      continue;
    }
    ++alive;
    CHECK_EQ(f.virtual_loss(x), pending_below[x]);
    const int32_t p = f.parent(x);
    if (p == NO_PARENT) {
      CHECK(f.depth(x) == 0 && f.tree(x) == x);
      ++reached;
    } else {
      CHECK(f.is_alive(p) && f.depth(x) == f.depth(p) + 1 && f.tree(x) == f.tree(p));
      const std::vector<int32_t> pt = f.path_tokens(p), own = f.node_tokens(x), full = f.path_tokens(x);
      CHECK(full.size() == pt.size() + own.size() && std::equal(pt.begin(), pt.end(), full.begin()));
    }
    int32_t count = 0, prev = -1;
    for (int32_t c = f.first_child(x); c != NO_NODE; c = f.next_sibling(c), ++count) {
      CHECK(f.is_alive(c) && f.parent(c) == x && c > prev);
      prev = c;
      ++reached;
    }
    CHECK_EQ(f.num_children(x), count);
    CHECK(!(f.terminal(x) && count > 0));
  }
  CHECK_EQ(reached, alive);
  CHECK_EQ(f.num_alive(), alive);
}

}  // namespace

PONDER_TEST(forest_random_operations_keep_invariants) {
  std::mt19937 rng(12345);
  const auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto real = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); };
  Forest f(1);
  std::vector<int64_t> direct;
  int64_t errors = 0;
  for (int step = 0; step < 4000; ++step) {
    std::vector<int32_t> alive, roots, open;
    for (int32_t x = 0; x < f.num_nodes(); ++x) {
      if (!f.is_alive(x)) continue;
      alive.push_back(x);
      if (f.parent(x) == NO_PARENT) roots.push_back(x);
      if (!f.terminal(x)) open.push_back(x);
    }
    const auto any = [&](const std::vector<int32_t>& v) { return v[uniform(0, static_cast<int>(v.size()) - 1)]; };
    const int op = roots.empty() ? 0 : (alive.size() > 150 ? 5 : uniform(0, 9));
    if (op == 0) {
      std::vector<int32_t> toks(uniform(0, 2), uniform(0, 9));
      f.add_roots(toks, std::vector<int64_t>{0, static_cast<int64_t>(toks.size())});
      direct.push_back(0);
    } else if (op <= 2 && !open.empty()) {
      const int32_t c = uniform(1, 4);
      Kids k({any(open)}, {c}, {});
      for (int32_t i = 0; i < c; ++i) {
        k.priors.push_back(real(0, 1));
        k.rewards.push_back(real(-1, 1));
        k.terminal_flags.push_back(uniform(0, 5) == 0);
        k.page_seqs.push_back(uniform(-1, 50));
        k.tokens.push_back(uniform(0, 9));
        k.indptr.push_back(static_cast<int64_t>(k.tokens.size()));
      }
      k.add(f);
      direct.resize(f.num_nodes(), 0);
    } else if (op <= 4) {
      const std::vector<int32_t> picked = select(f, {any(roots), any(roots)}, uniform(1, 4), real(0, 3),
                                                 uniform(0, 2), real(-1, 1), uniform(0, 1) * real(0.5, 2), real(0, 1));
      std::vector<int32_t> back, drop;
      std::vector<float> values;
      for (int32_t x : picked) {
        if (x == NO_NODE) continue;
        (uniform(0, 4) == 0 ? drop : back).push_back(x);
        values.push_back(real(-1, 1));
      }
      values.resize(back.size());
      f.backup(back, values, uniform(0, 1) ? 1.0 : 0.9);
      for (int32_t x : back) ++direct[x];
      f.cancel(drop);
    } else if (op == 5) {
      const int32_t x = any(alive);
      if (f.parent(x) != NO_PARENT || uniform(0, 9) == 0) f.release(x);
    } else if (op == 6) {
      const std::vector<int32_t> fr = f.frontier(roots);
      if (!fr.empty()) f.top_k(fr, uniform(1, 3), static_cast<TopKKey>(uniform(0, 4)), uniform(0, 1));
      const std::vector<int32_t> path = f.best_path(any(roots), static_cast<PathBy>(uniform(0, 2)));
      CHECK(!path.empty() && f.parent(path.front()) == NO_PARENT);
      for (size_t i = 1; i < path.size(); ++i) CHECK_EQ(f.parent(path[i]), path[i - 1]);
    } else if (op == 7) {
      const int32_t x = any(alive);
      f.set_path_scores(std::vector<int32_t>{x}, std::vector<float>{real(-1, 1)});
      bool flag = f.num_children(x) == 0 && uniform(0, 3) == 0;
      f.set_terminal(std::vector<int32_t>{x}, Span<bool>(&flag, 1));
    } else {
      // Error paths: each call has one fault and must leave the forest byte-for-byte unchanged.
      const Bytes before = snapshot(f);
      const int32_t bad = uniform(0, 1) ? static_cast<int32_t>(f.num_nodes()) + uniform(0, 3) : -1 - uniform(0, 3);
      std::vector<int32_t> out(2);
      const float nan = std::nanf("");
      switch (uniform(0, 5)) {
        case 0: CHECK_THROWS(f.backup(std::vector<int32_t>{any(alive), bad}, std::vector<float>{1, 1}, 1.0), std::out_of_range); break;
        case 1: CHECK_THROWS(f.backup(std::vector<int32_t>{any(alive)}, std::vector<float>{nan}, 1.0), std::invalid_argument); break;
        case 2: CHECK_THROWS(f.select(std::vector<int32_t>{any(roots), bad}, SelectParams{}, out.data()), std::out_of_range); break;
        case 3: CHECK_THROWS(Kids({any(alive)}, {1}, {nan}).add(f), std::invalid_argument); break;
        case 4: CHECK_THROWS(f.release(bad), std::out_of_range); break;
        default: CHECK_THROWS(f.cancel(std::vector<int32_t>{any(alive), bad}), std::out_of_range); break;
      }
      CHECK(snapshot(f) == before);
      ++errors;
    }
    check_invariants(f, direct);
  }
  CHECK(errors > 100);
  CHECK(f.num_nodes() > 1000);  // growth happened many times from capacity 1
}
