// Paged KV bookkeeping: page ids, refcounts, fork / copy-on-write and a chained prefix cache.
// No KV data lives here; the cache tensor [L, 2, P, S, Hk, D] is owned by Python and indexed by
// the slots this table hands out (slot of token t = pages[t / S] * S + t % S).
//
// Page lifecycle: free -> referenced (refcount >= 1) -> either back to free, or, when the page is
// registered in the prefix cache, evictable (refcount 0, kept in LRU order until reused by a hit
// or evicted for a fresh allocation). free + used + evictable == num_pages at all times.
//
// Every mutating call is all-or-nothing: it validates and computes its page need first, and
// throws (std::invalid_argument / std::out_of_range / KVCacheFull) before touching any state.
// The class is not thread-safe; the Python binding serialises calls.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace ponder {

struct PageTableStats {
  int64_t num_pages = 0;
  int64_t page_size = 0;
  int64_t free = 0;        // pages on the free list
  int64_t used = 0;        // refcount > 0
  int64_t shared = 0;      // refcount > 1
  int64_t cached = 0;      // registered in the prefix cache (referenced or evictable)
  int64_t evictable = 0;   // registered with refcount 0
  int64_t prefix_queries = 0;  // pages looked up by allocate
  int64_t prefix_hits = 0;     // of which reused
  int64_t num_seqs = 0;        // live sequences
  int64_t peak_used = 0;       // largest `used` seen so far
};

// Open-addressing map from a page's chain hash to its page id: linear probing, backward-shift
// deletion (no tombstones). It holds at most one entry per page, so a capacity of at least twice
// the pool keeps probes short and no operation ever allocates.
class PrefixIndex {
 public:
  static constexpr int32_t kEmpty = -1;
  PrefixIndex() = default;
  explicit PrefixIndex(int32_t num_pages);
  int32_t find(uint64_t hash) const;        // kEmpty when absent
  void insert(uint64_t hash, int32_t page);  // hash must be absent
  void erase(uint64_t hash);                 // no-op when absent

 private:
  size_t home(uint64_t hash) const { return static_cast<size_t>((hash * 0x9e3779b97f4a7c15ull) >> shift_); }
  std::vector<uint64_t> hashes_;
  std::vector<int32_t> pages_;  // kEmpty marks a free bucket
  size_t mask_ = 0;
  int shift_ = 63;
};

class PageTable {
 public:
  static constexpr int32_t NO_PAGE = -1;
  static constexpr int32_t NO_SEQ = -1;

  // hash_bits keeps only the low bits of every page hash. 64 in production; tests pass a small
  // value to force collisions and check that a collision never returns a wrong page.
  PageTable(int32_t num_pages, int32_t page_size, bool prefix_cache = true, int hash_bits = 64);

  // New sequence holding tokens[0..n). Full pages of tokens[0..n-1) that are in the prefix cache
  // are reused (the last token is never served from cache: its logits are needed). Returns the
  // new handle and the number of cached tokens k; slots of tokens k..n-1 go to slot_mapping.
  int32_t allocate(const int32_t* tokens, int64_t n, int64_t* num_cached, std::vector<int64_t>& slot_mapping);

  // Child sharing every page of seq (refcount += 1 each). Never allocates a page.
  int32_t fork(int32_t seq);

  // fork(seqs[i]) for every i, in order (a handle may repeat to get several children). All
  // handles are validated before any child is made.
  void fork_many(const int32_t* seqs, int64_t m, std::vector<int32_t>& children);

  // Reserve counts[i] new slots at the end of seqs[i], in input order. A partial last page that
  // is shared is first replaced by a fresh page; the (old, new) pair goes to copy_src / copy_dst.
  // tokens (nullable, sum(counts) ids) are recorded so pages that become full join the prefix
  // cache; without them the touched sequences stop being cacheable from their current page on.
  void append(const int32_t* seqs, const int32_t* counts, int64_t m, const int32_t* tokens,
              int64_t num_tokens, std::vector<int64_t>& slot_mapping, std::vector<int32_t>& copy_src,
              std::vector<int32_t>& copy_dst);

  // Drop seq; its pages lose one reference, last page first (so a cached chain is evicted from
  // its tail). The handle is never reused.
  void free(int32_t seq);

  // free(seqs[i]) for every i, in order; the handles must be live and distinct. All-or-nothing.
  void free_many(const int32_t* seqs, int64_t m);

  // Whether allocate of that many tokens would succeed without any prefix hit (a safe bound).
  bool can_allocate(int64_t n_tokens) const;
  // Exact: accounts for the prefix hits allocate(tokens, n) would get.
  bool can_allocate(const int32_t* tokens, int64_t n) const;
  // Exact: whether append(seqs, counts) would succeed. Throws on invalid input like append.
  bool can_append(const int32_t* seqs, const int32_t* counts, int64_t m) const;

  // Block tables [b, width] (padded with pad) and token counts [b]. width < 0 picks the longest
  // page list; an explicit width must cover it. Returns the width used.
  int64_t batch_tables(const int32_t* seqs, int64_t b, int32_t pad, int64_t width, std::vector<int32_t>& tables,
                       std::vector<int32_t>& lengths) const;

  int64_t num_tokens(int32_t seq) const;
  const std::vector<int32_t>& pages(int32_t seq) const;
  int32_t refcount(int32_t page) const;
  const std::vector<int32_t>& refcounts() const { return refcount_; }
  int64_t slot_of(int32_t seq, int64_t t) const;
  bool is_cached(int32_t page) const;
  std::vector<int32_t> free_pages() const;       // next to be taken first
  std::vector<int32_t> evictable_pages() const;  // next to be evicted first
  std::vector<int32_t> live_seqs() const;        // ascending
  PageTableStats stats() const;

  int32_t num_pages() const { return num_pages_; }
  int32_t page_size() const { return page_size_; }
  bool prefix_cache() const { return prefix_cache_; }

 private:
  struct Seq {
    std::vector<int32_t> pages;
    int64_t num_tokens = 0;
    // The prefix chain stays extendable while every token of the sequence is known.
    bool chain_ok = false;
    uint64_t chain_hash = 0;  // hash of the last full page (kRootHash before any)
    uint64_t chain_uid = 0;   // cache uid of the last full page's content (0 before any)
  };

  static constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;

  // Slots left in the last page (0 when it is full or there is none). Derived from the page
  // count, which always covers num_tokens exactly, to keep integer division off the hot path.
  int64_t free_slots_in_last_page(const Seq& s) const {
    return static_cast<int64_t>(s.pages.size()) * page_size_ - s.num_tokens;
  }

  // Validation and lookups.
  int32_t slot_index(int32_t seq, const char* arg, int64_t index = -1) const;
  Seq& seq_ref(int32_t seq, const char* arg) { return seqs_[slot_index(seq, arg)]; }
  const Seq& seq_ref(int32_t seq, const char* arg) const { return seqs_[slot_index(seq, arg)]; }
  void check_tokens(const int32_t* tokens, int64_t n, const char* arg) const;
  // Validates append's arguments and returns the new pages it needs and sum(counts).
  int64_t plan_append(const int32_t* seqs, const int32_t* counts, int64_t m, int64_t* total) const;
  // Cached pages that allocate would reuse for tokens[0..n); counts how many are evictable.
  int64_t match_prefix(const int32_t* tokens, int64_t n, std::vector<int32_t>* hits, int64_t* evictable_hits,
                       int64_t* queries) const;
  uint64_t page_hash(uint64_t parent, const int32_t* tokens) const;
  bool same_content(int32_t page, uint64_t parent_uid, const int32_t* tokens) const;
  [[noreturn]] void throw_full(const char* op, int64_t need, int64_t evictable_hits) const;

  // State changes.
  void check_handles_left(int64_t m) const;
  int32_t new_seq_id();
  void free_slot(int32_t seq, int32_t slot);
  int32_t take_page();
  void add_ref(int32_t page);
  void release(int32_t page);
  void extend(Seq& s, const int32_t* tokens, int64_t count, int64_t* slots, std::vector<int32_t>* copy_src,
              std::vector<int32_t>* copy_dst);
  void register_full_page(Seq& s, int32_t page);
  void forget(int32_t page);   // drop the cache registration only
  void uncache(int32_t page);  // drop it and move an evictable page to the free list
  void lru_push(int32_t page);
  void lru_remove(int32_t page);

  int32_t num_pages_;
  int32_t page_size_;
  bool prefix_cache_;
  uint64_t hash_mask_;

  std::vector<int32_t> refcount_;
  std::vector<int32_t> free_;  // stack: back() is taken next
  int64_t used_ = 0, shared_ = 0, peak_used_ = 0;

  // Prefix cache: one entry per hash. A page is registered when page_uid_[p] != 0; uids are
  // never reused, so (tokens, parent uid) equal means the whole chain is equal.
  PrefixIndex cache_;
  std::vector<uint64_t> page_hash_, page_uid_, page_parent_uid_;
  // [num_pages, page_size] token ids while prefix_cache: a registered page's row is frozen; a
  // partial page's row fills up as its (only) writer appends, and is copied on copy-on-write.
  std::vector<int32_t> page_tokens_;
  uint64_t next_uid_ = 1;
  int64_t cached_ = 0, queries_ = 0, hits_ = 0;

  // Evictable pages, oldest release first (intrusive doubly linked list over page ids).
  std::vector<int32_t> lru_prev_, lru_next_;
  int32_t lru_head_ = NO_PAGE, lru_tail_ = NO_PAGE;
  int64_t lru_size_ = 0;

  // Sequences: handle -> storage slot (-1 once freed); slots are recycled, handles are not.
  std::vector<int32_t> seq_slot_;
  std::vector<Seq> seqs_;
  std::vector<int32_t> free_slots_;
  int64_t live_seqs_ = 0;

  // Per-call scratch (duplicate detection and copy-on-write simulation in const checks).
  mutable std::vector<uint64_t> slot_stamp_;
  mutable uint64_t stamp_ = 0;
  mutable std::vector<int32_t> ref_drop_, touched_;
};

}  // namespace ponder
