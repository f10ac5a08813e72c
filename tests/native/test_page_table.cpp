// PageTable: literal cases, error paths, and a seeded random-operation loop that simulates the KV
// cache (slot -> identity of the token prefix written there) and checks invariants every step.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "page_table.h"

using ponder::KVCacheFull;
using ponder::PageTable;
using Ints = std::vector<int32_t>;
using Slots = std::vector<int64_t>;

namespace {

struct Alloc {
  int32_t seq;
  int64_t cached;
  Slots slots;
};

Alloc allocate(PageTable& pt, const Ints& tokens) {
  Alloc a{};
  a.seq = pt.allocate(tokens.data(), static_cast<int64_t>(tokens.size()), &a.cached, a.slots);
  return a;
}

struct Appended {
  Slots slots;
  Ints src, dst;
};

Appended append(PageTable& pt, const Ints& seqs, const Ints& counts, const Ints* tokens = nullptr) {
  Appended r;
  pt.append(seqs.data(), counts.data(), static_cast<int64_t>(seqs.size()), tokens ? tokens->data() : nullptr,
            tokens ? static_cast<int64_t>(tokens->size()) : 0, r.slots, r.src, r.dst);
  return r;
}

Ints iota_tokens(int32_t n, int32_t start = 0) {
  Ints t(n);
  for (int32_t i = 0; i < n; ++i) t[i] = start + i;
  return t;
}

// Everything observable, for "state unchanged" checks.
struct Snapshot {
  ponder::PageTableStats stats;
  Ints refcounts, free, evictable, seqs;
  std::vector<Ints> pages;
  bool operator==(const Snapshot& o) const {
    const auto& a = stats;
    const auto& b = o.stats;
    return a.free == b.free && a.used == b.used && a.shared == b.shared && a.cached == b.cached &&
           a.evictable == b.evictable && a.prefix_queries == b.prefix_queries && a.prefix_hits == b.prefix_hits &&
           a.num_seqs == b.num_seqs && a.peak_used == b.peak_used && refcounts == o.refcounts && free == o.free &&
           evictable == o.evictable && seqs == o.seqs && pages == o.pages;
  }
};

Snapshot snapshot(const PageTable& pt) {
  Snapshot s{pt.stats(), pt.refcounts(), pt.free_pages(), pt.evictable_pages(), pt.live_seqs(), {}};
  for (int32_t q : s.seqs) s.pages.push_back(pt.pages(q));
  return s;
}

}  // namespace

PONDER_TEST(page_table_allocate_hands_out_pages_in_order) {
  PageTable pt(8, 4);
  const Alloc a = allocate(pt, iota_tokens(10));
  CHECK_EQ(a.seq, 0);
  CHECK_EQ(a.cached, 0);
  CHECK(a.slots == Slots({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  CHECK(pt.pages(a.seq) == Ints({0, 1, 2}));
  const Alloc b = allocate(pt, {7, 7, 7});
  CHECK_EQ(b.seq, 1);
  CHECK(b.slots == Slots({12, 13, 14}));
  CHECK_EQ(pt.slot_of(b.seq, 2), 14);
  CHECK_EQ(pt.num_tokens(a.seq), 10);
}

PONDER_TEST(page_table_fork_and_copy_on_write) {
  PageTable pt(8, 4);
  const Alloc a = allocate(pt, {5, 6, 7, 8, 9, 10});
  const int32_t b = pt.fork(a.seq);
  CHECK(pt.pages(b) == Ints({0, 1}));
  CHECK_EQ(pt.refcount(0), 2);
  CHECK_EQ(pt.stats().shared, 2);
  const Ints toks{11, 12};
  const Appended r = append(pt, {a.seq, b}, {1, 1}, &toks);
  CHECK(r.slots == Slots({10, 6}));
  CHECK(r.src == Ints({1}));
  CHECK(r.dst == Ints({2}));
  CHECK(pt.pages(a.seq) == Ints({0, 2}));
  CHECK(pt.pages(b) == Ints({0, 1}));
  CHECK_EQ(pt.refcount(1), 1);
}

PONDER_TEST(page_table_fork_many_and_free_many) {
  PageTable pt(8, 4);
  const Alloc a = allocate(pt, {1, 2, 3, 4, 5});
  const Ints parents{a.seq, a.seq};
  Ints children;
  pt.fork_many(parents.data(), 2, children);
  CHECK(children == Ints({1, 2}));
  CHECK_EQ(pt.refcount(1), 3);
  const Snapshot before = snapshot(pt);
  const Ints twice{1, 1}, bad{1, 9};
  CHECK_THROWS(pt.free_many(twice.data(), 2), std::invalid_argument);
  CHECK_THROWS(pt.fork_many(bad.data(), 2, children), std::invalid_argument);
  CHECK(snapshot(pt) == before);
  pt.free_many(children.data(), 2);
  CHECK_EQ(pt.refcount(1), 1);
  CHECK_EQ(pt.stats().num_seqs, 1);
}

PONDER_TEST(page_table_no_copy_for_full_or_unshared_last_page) {
  PageTable pt(8, 4);
  const Alloc a = allocate(pt, iota_tokens(8));
  const int32_t b = pt.fork(a.seq);
  const Appended r = append(pt, {a.seq, b}, {1, 1});
  CHECK(r.slots == Slots({8, 12}));
  CHECK(r.src.empty());
  const Alloc c = allocate(pt, {1, 2, 3});
  const Appended r2 = append(pt, {c.seq}, {2});
  CHECK(r2.slots == Slots({19, 20}));
  CHECK(r2.src.empty());
}

PONDER_TEST(page_table_prefix_hit_after_free_and_last_token_rule) {
  PageTable pt(8, 4);
  const Ints tokens = iota_tokens(10, 10);
  const Alloc a = allocate(pt, tokens);
  pt.free(a.seq);
  CHECK(pt.evictable_pages() == Ints({1, 0}));
  const Alloc b = allocate(pt, tokens);
  CHECK_EQ(b.cached, 8);
  CHECK(b.slots == Slots({8, 9}));
  CHECK_EQ(pt.stats().prefix_hits, 2);
  pt.free(b.seq);
  const Ints eight(tokens.begin(), tokens.begin() + 8);
  CHECK_EQ(allocate(pt, eight).cached, 4);  // page 1 holds the last token: never served from cache
}

PONDER_TEST(page_table_lru_evicts_oldest_release_first) {
  PageTable pt(4, 2);
  const Alloc a = allocate(pt, {1, 2, 3});
  const Alloc b = allocate(pt, {5, 6, 7});
  pt.free(a.seq);
  pt.free(b.seq);
  CHECK(pt.evictable_pages() == Ints({0, 2}));
  const Alloc c = allocate(pt, {9, 9, 9, 9, 9});
  CHECK(c.slots == Slots({6, 7, 2, 3, 0}));
  CHECK(!pt.is_cached(0));
  pt.free(c.seq);
  CHECK_EQ(allocate(pt, {5, 6, 8}).cached, 2);
  CHECK_EQ(allocate(pt, {1, 2, 3}).cached, 0);
}

PONDER_TEST(page_table_full_pool_leaves_state_unchanged) {
  PageTable pt(4, 2);
  const Alloc a = allocate(pt, {1, 2, 3, 4, 5});
  const int32_t b = pt.fork(a.seq);
  const Snapshot before = snapshot(pt);
  CHECK_THROWS(allocate(pt, {7, 8, 9}), KVCacheFull);
  CHECK(snapshot(pt) == before);
  CHECK_THROWS(append(pt, {a.seq, b}, {1, 2}), KVCacheFull);
  CHECK(snapshot(pt) == before);
  const Ints seqs{a.seq, b}, two{1, 2}, one{1, 1};
  CHECK(!pt.can_append(seqs.data(), two.data(), 2));
  CHECK(pt.can_append(seqs.data(), one.data(), 2));
  const Appended r = append(pt, seqs, one);
  CHECK(r.src == Ints({2}));
  CHECK(r.dst == Ints({3}));
}

PONDER_TEST(page_table_bad_input_throws_and_keeps_state) {
  CHECK_THROWS(PageTable(0, 4), std::invalid_argument);
  CHECK_THROWS(PageTable(4, 0), std::invalid_argument);
  CHECK_THROWS(PageTable(4, 4, true, 65), std::invalid_argument);
  PageTable pt(8, 4);
  const Alloc a = allocate(pt, {1, 2, 3, 4, 5});
  const Alloc gone = allocate(pt, {9});
  pt.free(gone.seq);
  const Snapshot before = snapshot(pt);
  CHECK_THROWS(allocate(pt, {}), std::invalid_argument);
  CHECK_THROWS(allocate(pt, {1, -1}), std::invalid_argument);
  CHECK_THROWS(pt.free(gone.seq), std::invalid_argument);
  CHECK_THROWS(pt.fork(gone.seq), std::invalid_argument);
  CHECK_THROWS(pt.fork(77), std::invalid_argument);
  CHECK_THROWS(pt.fork(-1), std::invalid_argument);
  CHECK_THROWS(append(pt, {a.seq, a.seq}, {1, 1}), std::invalid_argument);
  CHECK_THROWS(append(pt, {a.seq}, {-1}), std::invalid_argument);
  CHECK_THROWS(append(pt, {a.seq, gone.seq}, {1, 1}), std::invalid_argument);
  const Ints short_tokens{1}, negative{-3};
  CHECK_THROWS(append(pt, {a.seq}, {2}, &short_tokens), std::invalid_argument);
  CHECK_THROWS(append(pt, {a.seq}, {1}, &negative), std::invalid_argument);
  CHECK_THROWS(pt.refcount(8), std::out_of_range);
  CHECK_THROWS(pt.is_cached(-1), std::out_of_range);
  CHECK_THROWS(pt.slot_of(a.seq, 5), std::out_of_range);
  CHECK_THROWS(pt.num_tokens(gone.seq), std::invalid_argument);
  CHECK_THROWS(pt.can_allocate(int64_t{0}), std::invalid_argument);
  Ints tables, lengths;
  const Ints batch{a.seq};
  CHECK_THROWS(pt.batch_tables(batch.data(), 1, -1, 1, tables, lengths), std::invalid_argument);
  CHECK(snapshot(pt) == before);
  const Appended r = append(pt, {a.seq}, {1});
  CHECK(r.slots == Slots({5}));
}

PONDER_TEST(page_table_batch_tables_pads) {
  PageTable pt(8, 4);
  const Alloc a = allocate(pt, {1, 2});
  const Alloc b = allocate(pt, iota_tokens(9));
  const Ints seqs{b.seq, a.seq};
  Ints tables, lengths;
  CHECK_EQ(pt.batch_tables(seqs.data(), 2, -1, -1, tables, lengths), 3);
  CHECK(tables == Ints({1, 2, 3, 0, -1, -1}));
  CHECK(lengths == Ints({9, 2}));
  CHECK_EQ(pt.batch_tables(seqs.data(), 2, 9, 4, tables, lengths), 4);
  CHECK(tables == Ints({1, 2, 3, 9, 0, 9, 9, 9}));
}

PONDER_TEST(page_table_hash_collisions_are_verified) {
  PageTable pt(8, 2, true, 0);  // every page hashes to 0
  const Alloc a = allocate(pt, {1, 2, 3});
  pt.free(a.seq);
  const Alloc b = allocate(pt, {5, 6, 7});
  CHECK_EQ(b.cached, 0);
  CHECK(pt.pages(b.seq) == Ints({1, 0}));
  CHECK_EQ(allocate(pt, {1, 2, 3}).cached, 0);
}

PONDER_TEST(prefix_index_matches_a_reference_map) {
  // Few distinct hashes in a small table: long probe runs that wrap around the end, so
  // backward-shift deletion is exercised on every path.
  std::mt19937 rng(7);
  for (int32_t pages : {1, 3, 8}) {
    ponder::PrefixIndex index(pages);
    std::map<uint64_t, int32_t> ref;
    for (int step = 0; step < 20000; ++step) {
      const uint64_t hash = rng() % 13;
      const auto it = ref.find(hash);
      if (it != ref.end() && rng() % 2) {
        index.erase(hash);
        ref.erase(it);
      } else if (it == ref.end() && static_cast<int32_t>(ref.size()) < pages) {
        const int32_t page = static_cast<int32_t>(rng() % 1000);
        index.insert(hash, page);
        ref[hash] = page;
      }
      for (uint64_t h = 0; h < 13; ++h) {
        const auto r = ref.find(h);
        CHECK_EQ(index.find(h), r == ref.end() ? ponder::PrefixIndex::kEmpty : r->second);
      }
    }
  }
}

namespace {

// Simulated KV cache plus the expected prefix identity of every position of every live sequence.
struct Oracle {
  std::map<std::pair<int64_t, int32_t>, int64_t> ids;  // (parent prefix id, token) -> prefix id
  std::vector<int64_t> kv;                             // slot -> prefix id written (0: never)
  std::map<int32_t, std::vector<int64_t>> content;     // live seq -> prefix id per position

  int64_t extend(int64_t parent, int32_t token) {
    return ids.emplace(std::make_pair(parent, token), static_cast<int64_t>(ids.size()) + 1).first->second;
  }
};

void check_invariants(const PageTable& pt, const Oracle& o, int step) {
  const int32_t P = pt.num_pages(), S = pt.page_size();
  const auto st = pt.stats();
  const Ints& rc = pt.refcounts();
  std::vector<int32_t> holders(P, 0);
  std::set<int64_t> exclusive;
  for (const auto& [seq, ids] : o.content) {
    const Ints& pages = pt.pages(seq);
    CHECK_EQ(static_cast<int64_t>(pages.size()), (static_cast<int64_t>(ids.size()) + S - 1) / S);
    CHECK_EQ(std::set<int32_t>(pages.begin(), pages.end()).size(), pages.size());
    for (int32_t p : pages) ++holders[p];
    for (size_t t = 0; t < ids.size(); ++t) {
      const int64_t slot = pt.slot_of(seq, static_cast<int64_t>(t));
      if (o.kv[slot] != ids[t]) {
        CHECK_EQ(o.kv[slot], ids[t]);
        std::cerr << "  step " << step << ": seq " << seq << " position " << t << " reads wrong K/V\n";
        return;
      }
      if (rc[pages[t / S]] == 1) CHECK(exclusive.insert(slot).second);
    }
  }
  const Ints free = pt.free_pages(), evictable = pt.evictable_pages();
  int64_t used = 0;
  for (int32_t p = 0; p < P; ++p) {
    CHECK(rc[p] >= 0);
    CHECK_EQ(rc[p], holders[p]);
    used += rc[p] > 0;
  }
  std::vector<int> seen(P, 0);
  for (int32_t p : free) {
    seen[p] += 1;
    CHECK_EQ(rc[p], 0);
  }
  for (int32_t p : evictable) {
    seen[p] += 1;
    CHECK_EQ(rc[p], 0);
    CHECK(pt.is_cached(p));
  }
  for (int32_t p = 0; p < P; ++p) CHECK_EQ(seen[p] + (rc[p] > 0 ? 1 : 0), 1);
  CHECK_EQ(st.used, used);
  CHECK_EQ(st.free + st.used + st.evictable, static_cast<int64_t>(P));
  CHECK_EQ(st.num_seqs, static_cast<int64_t>(o.content.size()));
}

void random_run(uint32_t seed, int steps, int hash_bits) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int32_t P = uniform(1, 32), S = uniform(1, 5);
  PageTable pt(P, S, uniform(0, 4) > 0, hash_bits);
  Oracle o;
  o.kv.assign(static_cast<size_t>(P) * S, 0);
  std::vector<int32_t> live;
  for (int step = 0; step < steps; ++step) {
    const int op = uniform(0, 9);
    if (live.empty() || (op <= 2 && live.size() < 12)) {
      Ints tokens(uniform(0, 16) / S * S + uniform(1, 5));
      const int stem = uniform(0, 2);
      for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = i < 12 ? (stem + 3 * static_cast<int>(i)) % 4 : uniform(0, 3);
      std::vector<int64_t> ids;
      for (int32_t tok : tokens) ids.push_back(o.extend(ids.empty() ? 0 : ids.back(), tok));
      try {
        const Alloc a = allocate(pt, tokens);
        for (size_t i = 0; i < a.slots.size(); ++i) o.kv[a.slots[i]] = ids[a.cached + i];
        o.content[a.seq] = ids;
        live.push_back(a.seq);
      } catch (const KVCacheFull&) {
        CHECK(!pt.can_allocate(tokens.data(), static_cast<int64_t>(tokens.size())));
      }
    } else if (op <= 4 && live.size() < 12) {
      const int32_t parent = live[uniform(0, static_cast<int>(live.size()) - 1)];
      const int32_t child = pt.fork(parent);
      o.content[child] = o.content[parent];
      live.push_back(child);
    } else if (op <= 7) {
      std::vector<int32_t> seqs = live;
      std::shuffle(seqs.begin(), seqs.end(), rng);
      seqs.resize(uniform(1, static_cast<int>(seqs.size())));
      Ints counts, tokens;
      for (size_t i = 0; i < seqs.size(); ++i) {
        counts.push_back(uniform(0, 4));
        for (int c = 0; c < counts.back(); ++c) tokens.push_back(uniform(0, 2));
      }
      const bool with_tokens = uniform(0, 3) > 0;
      const bool can = pt.can_append(seqs.data(), counts.data(), static_cast<int64_t>(seqs.size()));
      try {
        const Appended r = append(pt, seqs, counts, with_tokens ? &tokens : nullptr);
        CHECK(can);
        for (size_t i = 0; i < r.src.size(); ++i) {
          std::copy_n(o.kv.begin() + static_cast<int64_t>(r.src[i]) * S, S, o.kv.begin() + static_cast<int64_t>(r.dst[i]) * S);
        }
        size_t at = 0;
        for (size_t i = 0; i < seqs.size(); ++i) {
          auto& ids = o.content[seqs[i]];
          for (int c = 0; c < counts[i]; ++c, ++at) {
            ids.push_back(o.extend(ids.back(), tokens[at]));
            o.kv[r.slots[at]] = ids.back();
          }
        }
      } catch (const KVCacheFull&) {
        CHECK(!can);
      }
    } else {
      const size_t i = static_cast<size_t>(uniform(0, static_cast<int>(live.size()) - 1));
      pt.free(live[i]);
      CHECK_THROWS(pt.free(live[i]), std::invalid_argument);
      o.content.erase(live[i]);
      live.erase(live.begin() + static_cast<int64_t>(i));
    }
    check_invariants(pt, o, step);
  }
  for (int32_t seq : live) pt.free(seq);
  CHECK_EQ(pt.stats().used, 0);
  CHECK_EQ(pt.stats().free + pt.stats().evictable, static_cast<int64_t>(P));
}

}  // namespace

PONDER_TEST(page_table_random_operations_keep_invariants) {
  for (uint32_t seed = 0; seed < 40; ++seed) random_run(seed, 400, 64);
}

PONDER_TEST(page_table_random_operations_with_colliding_hashes) {
  for (uint32_t seed = 100; seed < 120; ++seed) random_run(seed, 400, static_cast<int>(seed % 3));
}
