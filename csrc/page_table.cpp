#include "page_table.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace ponder {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Formats "name=value" or "name[index]=value" for error messages, built only on the error path.
std::string arg_desc(const char* name, int64_t index, int64_t value) {
  return index < 0 ? detail::concat(name, "=", value) : detail::concat(name, "[", index, "]=", value);
}

}  // namespace

PrefixIndex::PrefixIndex(int32_t num_pages) {
  size_t capacity = 2;
  shift_ = 63;
  while (capacity < 2 * static_cast<size_t>(num_pages)) capacity *= 2, --shift_;
  hashes_.assign(capacity, 0);
  pages_.assign(capacity, kEmpty);
  mask_ = capacity - 1;
}

// Probe loops are bounded by the capacity: the table is never more than half full, so the
// bound is never reached, but a broken invariant must not turn into an endless loop.
int32_t PrefixIndex::find(uint64_t hash) const {
  size_t i = home(hash);
  for (size_t n = 0; n <= mask_; ++n, i = (i + 1) & mask_) {
    if (pages_[i] == kEmpty || hashes_[i] == hash) return pages_[i];
  }
  return kEmpty;
}

void PrefixIndex::insert(uint64_t hash, int32_t page) {
  size_t i = home(hash);
  for (size_t n = 0; pages_[i] != kEmpty; ++n, i = (i + 1) & mask_) {
    if (n == mask_) throw std::logic_error("PrefixIndex: no free bucket left");
  }
  hashes_[i] = hash;
  pages_[i] = page;
}

void PrefixIndex::erase(uint64_t hash) {
  size_t hole = home(hash);
  for (size_t n = 0;; ++n, hole = (hole + 1) & mask_) {
    if (pages_[hole] == kEmpty || n > mask_) return;
    if (hashes_[hole] == hash) break;
  }
  // Pull later entries of the probe run back into the hole unless their home lies cyclically in
  // (hole, j]: then moving them would put them before their home, where find cannot reach them.
  size_t j = hole;
  for (size_t n = 0; n < mask_; ++n) {
    j = (j + 1) & mask_;
    if (pages_[j] == kEmpty) break;
    const size_t k = home(hashes_[j]);
    const bool stays = hole <= j ? (hole < k && k <= j) : (hole < k || k <= j);
    if (stays) continue;
    hashes_[hole] = hashes_[j];
    pages_[hole] = pages_[j];
    hole = j;
  }
  pages_[hole] = kEmpty;
}

PageTable::PageTable(int32_t num_pages, int32_t page_size, bool prefix_cache, int hash_bits)
    : num_pages_(num_pages), page_size_(page_size), prefix_cache_(prefix_cache) {
  PONDER_CHECK_ARG(num_pages >= 1, "num_pages must be >= 1, got ", num_pages);
  PONDER_CHECK_ARG(page_size >= 1, "page_size must be >= 1, got ", page_size);
  PONDER_CHECK_ARG(hash_bits >= 0 && hash_bits <= 64, "hash_bits must lie in [0, 64], got ", hash_bits);
  hash_mask_ = hash_bits == 64 ? ~uint64_t{0} : ((uint64_t{1} << hash_bits) - 1);
  refcount_.assign(num_pages, 0);
  ref_drop_.assign(num_pages, 0);
  lru_prev_.assign(num_pages, NO_PAGE);
  lru_next_.assign(num_pages, NO_PAGE);
  // Reversed so that fresh pages come out in ascending order: 0, 1, 2, ...
  free_.reserve(num_pages);
  for (int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
  if (prefix_cache_) {
    page_hash_.assign(num_pages, 0);
    page_uid_.assign(num_pages, 0);
    page_parent_uid_.assign(num_pages, 0);
    page_tokens_.assign(static_cast<size_t>(num_pages) * page_size, 0);
    cache_ = PrefixIndex(num_pages);
  }
}

// ---------------------------------------------------------------- validation and lookups ------

int32_t PageTable::slot_index(int32_t seq, const char* arg, int64_t index) const {
  if (seq < 0 || static_cast<size_t>(seq) >= seq_slot_.size()) {
    throw_invalid(arg_desc(arg, index, seq), " is not a sequence of this page table (handles issued: ",
                  seq_slot_.size(), ")");
  }
  const int32_t slot = seq_slot_[seq];
  if (slot < 0) throw_invalid(arg_desc(arg, index, seq), " was already freed");
  return slot;
}

void PageTable::check_tokens(const int32_t* tokens, int64_t n, const char* arg) const {
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0) throw_invalid(arg_desc(arg, i, tokens[i]), " is negative; token ids must be >= 0");
  }
}

int64_t PageTable::plan_append(const int32_t* seqs, const int32_t* counts, int64_t m, int64_t* total) const {
  PONDER_CHECK_ARG(m >= 0, "the number of sequences must be >= 0, got ", m);
  // Copy-on-write is simulated with ref_drop_: once earlier siblings in this call have copied a
  // shared partial page away, the last holder writes into it in place and needs no copy. The
  // guard clears the simulation on every exit, validation errors included.
  struct ClearDrops {
    const PageTable& pt;
    ~ClearDrops() {
      for (int32_t p : pt.touched_) pt.ref_drop_[p] = 0;
      pt.touched_.clear();
    }
  } clear_drops{*this};
  ++stamp_;
  int64_t need = 0, sum = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int32_t slot = slot_index(seqs[i], "seqs", i);
    if (slot_stamp_[slot] == stamp_) throw_invalid(arg_desc("seqs", i, seqs[i]), " is listed more than once");
    slot_stamp_[slot] = stamp_;
    const int32_t count = counts[i];
    if (count < 0) throw_invalid(arg_desc("counts", i, count), " must be >= 0");
    if (count == 0) continue;
    sum += count;
    const Seq& s = seqs_[slot];
    const int64_t room = free_slots_in_last_page(s);
    if (count > room) need += ceil_div(count - room, page_size_);  // the only division, once a page
    if (room != 0) {
      const int32_t last = s.pages.back();
      if (refcount_[last] - ref_drop_[last] > 1) {
        ++need;
        if (ref_drop_[last]++ == 0) touched_.push_back(last);
      }
    }
  }
  *total = sum;
  return need;
}

uint64_t PageTable::page_hash(uint64_t parent, const int32_t* tokens) const {
  uint64_t h = parent ^ (0x9e3779b97f4a7c15ull * static_cast<uint64_t>(page_size_));
  for (int32_t i = 0; i < page_size_; ++i) {
    h = (h ^ static_cast<uint32_t>(tokens[i])) * 0xff51afd7ed558ccdull;
    h ^= h >> 29;
  }
  // splitmix64 finaliser: every input bit reaches every output bit before masking.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h & hash_mask_;
}

bool PageTable::same_content(int32_t page, uint64_t parent_uid, const int32_t* tokens) const {
  return page_parent_uid_[page] == parent_uid &&
         std::memcmp(&page_tokens_[static_cast<size_t>(page) * page_size_], tokens,
                     sizeof(int32_t) * page_size_) == 0;
}

int64_t PageTable::match_prefix(const int32_t* tokens, int64_t n, std::vector<int32_t>* hits,
                                int64_t* evictable_hits, int64_t* queries) const {
  *evictable_hits = 0;
  *queries = 0;
  if (!prefix_cache_) return 0;
  // Only pages entirely inside tokens[0..n-1) may hit: the last token must be computed.
  const int64_t max_hits = (n - 1) / page_size_;
  uint64_t hash = kRootHash, uid = 0;
  int64_t k = 0;
  for (; k < max_hits; ++k) {
    const int32_t* page_tokens = tokens + k * page_size_;
    hash = page_hash(hash, page_tokens);
    ++*queries;
    const int32_t page = cache_.find(hash);
    if (page == PrefixIndex::kEmpty || !same_content(page, uid, page_tokens)) break;
    if (hits) hits->push_back(page);
    if (refcount_[page] == 0) ++*evictable_hits;
    uid = page_uid_[page];
  }
  return k;
}

void PageTable::throw_full(const char* op, int64_t need, int64_t evictable_hits) const {
  throw KVCacheFull(detail::concat(op, " needs ", need, " new pages but only ", free_.size(), " free + ",
                                   lru_size_ - evictable_hits, " evictable pages are available (", num_pages_,
                                   " pages in total, ", used_, " in use)"));
}

// ------------------------------------------------------------------------- public API ---------

int32_t PageTable::allocate(const int32_t* tokens, int64_t n, int64_t* num_cached, std::vector<int64_t>& slot_mapping) {
  PONDER_CHECK_ARG(n >= 1, "tokens must hold at least one token, got ", n);
  check_tokens(tokens, n, "tokens");
  std::vector<int32_t> hits;
  int64_t evictable_hits = 0, queries = 0;
  const int64_t k = match_prefix(tokens, n, &hits, &evictable_hits, &queries);
  const int64_t need = ceil_div(n, page_size_) - k;
  const int64_t available = static_cast<int64_t>(free_.size()) + lru_size_ - evictable_hits;
  if (need > available) throw_full("allocate", need, evictable_hits);

  const int32_t id = new_seq_id();
  Seq& s = seqs_[seq_slot_[id]];
  s.chain_ok = prefix_cache_;
  queries_ += queries;
  hits_ += k;
  for (int32_t page : hits) {
    add_ref(page);
    s.pages.push_back(page);
    s.chain_hash = page_hash_[page];
    s.chain_uid = page_uid_[page];
  }
  const int64_t cached = k * page_size_;
  s.num_tokens = cached;
  slot_mapping.resize(n - cached);
  extend(s, tokens + cached, n - cached, slot_mapping.data(), nullptr, nullptr);
  *num_cached = cached;
  return id;
}

int32_t PageTable::fork(int32_t seq) {
  const int32_t parent_slot = slot_index(seq, "seq");
  const int32_t id = new_seq_id();  // may grow seqs_: take references afterwards
  Seq& child = seqs_[seq_slot_[id]];
  child = seqs_[parent_slot];
  for (int32_t page : child.pages) add_ref(page);
  return id;
}

void PageTable::fork_many(const int32_t* seqs, int64_t m, std::vector<int32_t>& children) {
  PONDER_CHECK_ARG(m >= 0, "the number of sequences must be >= 0, got ", m);
  for (int64_t i = 0; i < m; ++i) slot_index(seqs[i], "seqs", i);
  check_handles_left(m);
  children.resize(m);
  for (int64_t i = 0; i < m; ++i) children[i] = fork(seqs[i]);
}

void PageTable::append(const int32_t* seqs, const int32_t* counts, int64_t m, const int32_t* tokens,
                       int64_t num_tokens, std::vector<int64_t>& slot_mapping, std::vector<int32_t>& copy_src,
                       std::vector<int32_t>& copy_dst) {
  int64_t total = 0;
  const int64_t need = plan_append(seqs, counts, m, &total);
  if (tokens != nullptr) {
    PONDER_CHECK_ARG(num_tokens == total, "tokens must hold sum(counts)=", total, " ids, got ", num_tokens);
    check_tokens(tokens, num_tokens, "tokens");
  }
  if (need > static_cast<int64_t>(free_.size()) + lru_size_) throw_full("append", need, 0);

  slot_mapping.resize(total);
  copy_src.clear();
  copy_dst.clear();
  int64_t offset = 0;
  for (int64_t i = 0; i < m; ++i) {
    Seq& s = seqs_[seq_slot_[seqs[i]]];
    extend(s, tokens ? tokens + offset : nullptr, counts[i], slot_mapping.data() + offset, &copy_src, &copy_dst);
    offset += counts[i];
  }
}

void PageTable::free(int32_t seq) { free_slot(seq, slot_index(seq, "seq")); }

void PageTable::free_many(const int32_t* seqs, int64_t m) {
  PONDER_CHECK_ARG(m >= 0, "the number of sequences must be >= 0, got ", m);
  ++stamp_;
  for (int64_t i = 0; i < m; ++i) {
    const int32_t slot = slot_index(seqs[i], "seqs", i);
    if (slot_stamp_[slot] == stamp_) throw_invalid(arg_desc("seqs", i, seqs[i]), " is listed more than once");
    slot_stamp_[slot] = stamp_;
  }
  for (int64_t i = 0; i < m; ++i) free_slot(seqs[i], seq_slot_[seqs[i]]);
}

void PageTable::free_slot(int32_t seq, int32_t slot) {
  Seq& s = seqs_[slot];
  for (auto it = s.pages.rbegin(); it != s.pages.rend(); ++it) release(*it);
  s.pages.clear();
  s.num_tokens = 0;
  seq_slot_[seq] = -1;
  free_slots_.push_back(slot);
  --live_seqs_;
}

bool PageTable::can_allocate(int64_t n_tokens) const {
  PONDER_CHECK_ARG(n_tokens >= 1, "n_tokens must be >= 1, got ", n_tokens);
  return ceil_div(n_tokens, page_size_) <= static_cast<int64_t>(free_.size()) + lru_size_;
}

bool PageTable::can_allocate(const int32_t* tokens, int64_t n) const {
  PONDER_CHECK_ARG(n >= 1, "tokens must hold at least one token, got ", n);
  check_tokens(tokens, n, "tokens");
  int64_t evictable_hits = 0, queries = 0;
  const int64_t k = match_prefix(tokens, n, nullptr, &evictable_hits, &queries);
  return ceil_div(n, page_size_) - k <= static_cast<int64_t>(free_.size()) + lru_size_ - evictable_hits;
}

bool PageTable::can_append(const int32_t* seqs, const int32_t* counts, int64_t m) const {
  int64_t total = 0;
  return plan_append(seqs, counts, m, &total) <= static_cast<int64_t>(free_.size()) + lru_size_;
}

int64_t PageTable::batch_tables(const int32_t* seqs, int64_t b, int32_t pad, int64_t width, std::vector<int32_t>& tables,
                                std::vector<int32_t>& lengths) const {
  PONDER_CHECK_ARG(b >= 0, "the number of sequences must be >= 0, got ", b);
  int64_t longest = 0;
  for (int64_t i = 0; i < b; ++i) {
    const Seq& s = seqs_[slot_index(seqs[i], "seqs", i)];
    longest = std::max<int64_t>(longest, static_cast<int64_t>(s.pages.size()));
    PONDER_CHECK_RANGE(s.num_tokens <= std::numeric_limits<int32_t>::max(), arg_desc("seqs", i, seqs[i]),
                       " holds ", s.num_tokens, " tokens, more than an int32 length can express");
  }
  if (width < 0) {
    width = longest;
  } else {
    PONDER_CHECK_ARG(width >= longest, "max_pages=", width, " is smaller than the longest page list (", longest,
                     " pages)");
  }
  tables.assign(static_cast<size_t>(b * width), pad);
  lengths.resize(b);
  for (int64_t i = 0; i < b; ++i) {
    const Seq& s = seqs_[seq_slot_[seqs[i]]];
    std::copy(s.pages.begin(), s.pages.end(), tables.begin() + i * width);
    lengths[i] = static_cast<int32_t>(s.num_tokens);
  }
  return width;
}

int64_t PageTable::num_tokens(int32_t seq) const { return seq_ref(seq, "seq").num_tokens; }

const std::vector<int32_t>& PageTable::pages(int32_t seq) const { return seq_ref(seq, "seq").pages; }

int32_t PageTable::refcount(int32_t page) const {
  PONDER_CHECK_RANGE(page >= 0 && page < num_pages_, "page=", page, " is out of range [0, ", num_pages_, ")");
  return refcount_[page];
}

bool PageTable::is_cached(int32_t page) const {
  PONDER_CHECK_RANGE(page >= 0 && page < num_pages_, "page=", page, " is out of range [0, ", num_pages_, ")");
  return prefix_cache_ && page_uid_[page] != 0;
}

int64_t PageTable::slot_of(int32_t seq, int64_t t) const {
  const Seq& s = seq_ref(seq, "seq");
  PONDER_CHECK_RANGE(t >= 0 && t < s.num_tokens, "t=", t, " is out of range [0, ", s.num_tokens, ") for seq=", seq);
  return static_cast<int64_t>(s.pages[t / page_size_]) * page_size_ + t % page_size_;
}

std::vector<int32_t> PageTable::free_pages() const { return std::vector<int32_t>(free_.rbegin(), free_.rend()); }

std::vector<int32_t> PageTable::evictable_pages() const {
  std::vector<int32_t> out;
  out.reserve(lru_size_);
  for (int32_t p = lru_head_; p != NO_PAGE; p = lru_next_[p]) out.push_back(p);
  return out;
}

std::vector<int32_t> PageTable::live_seqs() const {
  std::vector<int32_t> out;
  out.reserve(live_seqs_);
  for (size_t id = 0; id < seq_slot_.size(); ++id) {
    if (seq_slot_[id] >= 0) out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

PageTableStats PageTable::stats() const {
  PageTableStats st;
  st.num_pages = num_pages_;
  st.page_size = page_size_;
  st.free = static_cast<int64_t>(free_.size());
  st.used = used_;
  st.shared = shared_;
  st.cached = cached_;
  st.evictable = lru_size_;
  st.prefix_queries = queries_;
  st.prefix_hits = hits_;
  st.num_seqs = live_seqs_;
  st.peak_used = peak_used_;
  return st;
}

// ----------------------------------------------------------------------- state changes --------

void PageTable::check_handles_left(int64_t m) const {
  if (static_cast<int64_t>(seq_slot_.size()) + m > std::numeric_limits<int32_t>::max()) {
    throw std::overflow_error("all 2^31-1 sequence handles of this page table have been issued");
  }
}

int32_t PageTable::new_seq_id() {
  check_handles_left(1);
  int32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<int32_t>(seqs_.size());
    seqs_.emplace_back();
    slot_stamp_.push_back(0);
  }
  Seq& s = seqs_[slot];
  s.num_tokens = 0;
  s.chain_ok = false;
  s.chain_hash = kRootHash;
  s.chain_uid = 0;
  const int32_t id = static_cast<int32_t>(seq_slot_.size());
  seq_slot_.push_back(slot);
  ++live_seqs_;
  return id;
}

int32_t PageTable::take_page() {
  int32_t page;
  if (!free_.empty()) {
    page = free_.back();
    free_.pop_back();
  } else {
    page = lru_head_;
    if (page == NO_PAGE) throw std::logic_error("PageTable: page pool exhausted after a passed capacity check");
    lru_remove(page);
    forget(page);
  }
  refcount_[page] = 1;
  peak_used_ = std::max(peak_used_, ++used_);
  return page;
}

void PageTable::add_ref(int32_t page) {
  const int32_t rc = refcount_[page]++;
  if (rc == 0) {
    lru_remove(page);  // only cached pages are ever revived from refcount 0
    peak_used_ = std::max(peak_used_, ++used_);
  } else if (rc == 1) {
    ++shared_;
  }
}

void PageTable::release(int32_t page) {
  const int32_t rc = --refcount_[page];
  if (rc == 1) {
    --shared_;
  } else if (rc == 0) {
    --used_;
    if (prefix_cache_ && page_uid_[page] != 0) {
      lru_push(page);
    } else {
      free_.push_back(page);
    }
  }
}

void PageTable::extend(Seq& s, const int32_t* tokens, int64_t count, int64_t* slots, std::vector<int32_t>* copy_src,
                       std::vector<int32_t>* copy_dst) {
  if (count == 0) return;
  const int64_t len = s.num_tokens;
  const int64_t room = free_slots_in_last_page(s);
  int64_t offset = room == 0 ? 0 : page_size_ - room;
  if (offset != 0 && refcount_[s.pages.back()] > 1) {
    const int32_t old_page = s.pages.back();
    const int32_t new_page = take_page();
    release(old_page);
    copy_src->push_back(old_page);
    copy_dst->push_back(new_page);
    s.pages.back() = new_page;
    if (s.chain_ok) {
      std::memcpy(&page_tokens_[static_cast<size_t>(new_page) * page_size_],
                  &page_tokens_[static_cast<size_t>(old_page) * page_size_], sizeof(int32_t) * offset);
    }
  }
  if (tokens == nullptr) s.chain_ok = false;
  const bool record = s.chain_ok;  // implies tokens != nullptr and prefix_cache_
  int32_t page = offset == 0 ? NO_PAGE : s.pages.back();
  for (int64_t i = 0; i < count; ++i, ++offset) {
    if (offset == page_size_) offset = 0;
    if (offset == 0) {
      page = take_page();
      s.pages.push_back(page);
    }
    const int64_t base = static_cast<int64_t>(page) * page_size_;
    slots[i] = base + offset;
    if (record) {
      page_tokens_[base + offset] = tokens[i];
      if (offset == page_size_ - 1) register_full_page(s, page);
    }
  }
  s.num_tokens = len + count;
}

void PageTable::register_full_page(Seq& s, int32_t page) {
  const int32_t* tokens = &page_tokens_[static_cast<size_t>(page) * page_size_];
  const uint64_t hash = page_hash(s.chain_hash, tokens);
  const int32_t existing = cache_.find(hash);
  if (existing != PrefixIndex::kEmpty) {
    if (same_content(existing, s.chain_uid, tokens)) {
      // Same content already cached (a sibling wrote it too): later pages chain onto that entry.
      s.chain_hash = hash;
      s.chain_uid = page_uid_[existing];
      return;
    }
    uncache(existing);  // a different chain under the same hash: the newer page wins
  }
  cache_.insert(hash, page);
  page_hash_[page] = hash;
  page_uid_[page] = next_uid_++;
  page_parent_uid_[page] = s.chain_uid;
  ++cached_;
  s.chain_hash = hash;
  s.chain_uid = page_uid_[page];
}

void PageTable::forget(int32_t page) {
  cache_.erase(page_hash_[page]);
  page_uid_[page] = 0;
  --cached_;
}

void PageTable::uncache(int32_t page) {
  forget(page);
  if (refcount_[page] == 0) {
    lru_remove(page);
    free_.push_back(page);
  }
}

void PageTable::lru_push(int32_t page) {
  lru_prev_[page] = lru_tail_;
  lru_next_[page] = NO_PAGE;
  if (lru_tail_ != NO_PAGE) {
    lru_next_[lru_tail_] = page;
  } else {
    lru_head_ = page;
  }
  lru_tail_ = page;
  ++lru_size_;
}

void PageTable::lru_remove(int32_t page) {
  const int32_t prev = lru_prev_[page], next = lru_next_[page];
  if (prev != NO_PAGE) {
    lru_next_[prev] = next;
  } else {
    lru_head_ = next;
  }
  if (next != NO_PAGE) {
    lru_prev_[next] = prev;
  } else {
    lru_tail_ = prev;
  }
  lru_prev_[page] = lru_next_[page] = NO_PAGE;
  --lru_size_;
}

}  // namespace ponder
