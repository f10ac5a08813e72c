// Host sampling; see sample.h for the contract and ponder.ops.sample for the definition.
#include "sample.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "common.h"
#include "cpu_threads.h"

namespace ponder {

namespace {

constexpr uint32_t kRowInit = 0x9E3779B9u;
constexpr uint32_t kVocabSalt = 0x632BE5ABu;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kLn2 = 0.693147182f;

// Gumbel noise -log(-log u) for u in [2**-24, 1 - 2**-24] lies in [-2.81, 16.64]: a token whose
// scaled logit is more than 19.45 below the best allowed one never wins the draw (the extra
// 1.0 is the reference's margin for float rounding).
constexpr float kGumbelSpread = 19.45f + 1.0f;

// Gumbel argmax margin. The reference computes each perturbed score s - log(-log u) with three
// float32 roundings of values below |score| + 17 (PyTorch's vectorised log: <= 1 ulp each);
// this code does the same with logf. Either side's error is < 1e-6 + 2 ulp(|score|), so a
// winner ahead of the runner-up by more than 1e-5 (1 + |score|) (> 8x both errors) is the
// reference's winner too; closer calls are deferred to the reference.
constexpr float kGumbelTol = 1e-5f;

// Covers float rounding of s + noise bound (|s| < 2**20 keeps it below 0.1).
constexpr float kBoundSlack = 0.125f;

// top-k thresholds up to this k come from a heap pass (V log k, ~1 compare per token), larger
// ones from nth_element (linear but ~10x the constant).
constexpr int32_t kHeapTopK = 1024;

// Tokens per block of the Gumbel pass: its three scratch arrays (6 KiB) stay in L1.
constexpr int64_t kBlock = 512;
// Tokens per chunk of a block whose score bounds are compared with the runner-up at once (a
// multiple of 8; kBlock is a multiple of it).
constexpr int64_t kChunk = 16;

// Below this many logits a call runs on one thread (a row costs a few ns per logit; waking a
// pooled helper costs ~8 us, starting one ~30 us); above it, kPartsPerThread blocks of rows
// per thread.
constexpr int64_t kMinParallelLogits = int64_t(1) << 16;
constexpr int64_t kPartsPerThread = 4;

// The row loops below are written to vectorise (no branches, independent lanes); wheels are
// built for baseline x86-64, so GCC also emits an AVX2 clone chosen at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define PONDER_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PONDER_SIMD_CLONES
#endif

inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

inline uint32_t vocab_hash(int64_t v) { return mix32(static_cast<uint32_t>(v) + kVocabSalt); }

// Eight floats / their comparison masks (GCC vector extensions: one ymm register in the AVX2
// clone, two xmm in the baseline one).
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

// Largest logit of a row; `bad` is set when the row holds a NaN or +inf.
PONDER_SIMD_CLONES
float row_max(const float* z, int64_t V, bool& bad) {
  const f8 inf = {kInf, kInf, kInf, kInf, kInf, kInf, kInf, kInf};
  f8 lane = -inf;
  i8 flags = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t v = 0;
  for (; v + 8 <= V; v += 8) {
    f8 x;
    std::memcpy(&x, z + v, sizeof x);
    lane = x > lane ? x : lane;
    flags |= (x != x) | (x == inf);
  }
  float m = -kInf;
  bool any = false;
  for (int j = 0; j < 8; ++j) {
    m = lane[j] > m ? lane[j] : m;
    any |= flags[j] != 0;
  }
  for (; v < V; ++v) {
    const float x = z[v];
    m = x > m ? x : m;
    any |= x != x || x == kInf;
  }
  bad = any;
  return m;
}

PONDER_SIMD_CLONES
void fill_vocab_hashes(uint32_t* out, int64_t n) {
  for (int64_t v = 0; v < n; ++v) out[v] = vocab_hash(v);
}

// vocab_hash(v) for v in [0, V) or more: a token's half of the hash does not depend on the row,
// so it is computed once per process (and vocabulary size) instead of once per row and token.
// A table is never changed once published; a larger vocabulary publishes a new one, and callers
// keep the table they hold alive.
std::shared_ptr<const std::vector<uint32_t>> vocab_hash_table(int64_t V) {
  static std::mutex mutex;
  static std::shared_ptr<const std::vector<uint32_t>> table;
  std::lock_guard<std::mutex> lock(mutex);
  if (!table || static_cast<int64_t>(table->size()) < V) {
    auto fresh = std::make_shared<std::vector<uint32_t>>(static_cast<size_t>(V));
    fill_vocab_hashes(fresh->data(), V);
    table = std::move(fresh);
  }
  return table;
}

// For tokens [v0, v0 + n) of a row: scaled logit s, hash integer q (u = q 2**-24) and an upper
// bound of the perturbed score (s + the largest noise q allows). vh holds vocab_hash(v0 + i).
// Reach and the allowed set are applied afterwards so that this loop has no branches and
// vectorises.
PONDER_SIMD_CLONES
void gumbel_bounds(const float* z, int64_t v0, int64_t n, float temp, uint32_t row_hash, const uint32_t* vh,
                   float* s_out, uint32_t* q_out, float* upper) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = z[v0 + i] / temp;
    const uint32_t q = (mix32(row_hash ^ vh[i]) >> 8) | 1u;
    // -log u >= 1 - u, so the noise -log(-log u) is <= -log(1 - u) = (24 - log2 r) ln 2 with
    // r = 2**24 - q >= 1; floor(log2 r), read from r's float exponent, only loosens it.
    const float r = static_cast<float>(static_cast<int32_t>((1u << 24) - q));
    uint32_t r_bits;
    std::memcpy(&r_bits, &r, sizeof r_bits);
    const float bound = static_cast<float>(151 - static_cast<int32_t>(r_bits >> 23)) * kLn2;  // 24 - (e - 127)
    s_out[i] = s;
    q_out[i] = q;
    upper[i] = s + bound;
  }
}

// The largest of each kChunk consecutive bounds (the last chunk may be short): a chunk whose
// largest bound is below the runner-up holds no candidate and is passed over whole.
PONDER_SIMD_CLONES
void chunk_maxima(const float* upper, int64_t n, float* out) {
  int64_t c = 0;
  for (; (c + 1) * kChunk <= n; ++c) {
    f8 a, b;
    std::memcpy(&a, upper + c * kChunk, sizeof a);
    std::memcpy(&b, upper + c * kChunk + 8, sizeof b);
    a = a > b ? a : b;
    float m = a[0];
    for (int j = 1; j < 8; ++j) m = a[j] > m ? a[j] : m;
    out[c] = m;
  }
  if (c * kChunk < n) {
    float m = -kInf;
    for (int64_t i = c * kChunk; i < n; ++i) m = upper[i] > m ? upper[i] : m;
    out[c] = m;
  }
}

struct Scratch {
  std::vector<float> values;
};

// Gumbel draw of one non-greedy row over its allowed tokens: those with mask[v] != 0 when a
// mask is given, else the top-k set (k in (0, V): raw logit >= the k-th largest, ties kept;
// otherwise every token). Returns false when the row must be deferred.
bool draw_row(const float* z, int64_t V, float temp, int32_t k, const uint8_t* mask, uint32_t row_hash,
              const uint32_t* vocab_hashes, float z_max, Scratch& scratch, int64_t& token) {
  float z_floor = -kInf;
  if (!mask && k > 0 && k < V) {
    auto& vals = scratch.values;
    if (k <= kHeapTopK) {
      // min-heap of the k largest so far: most tokens fail one comparison with its top
      vals.assign(z, z + k);
      std::make_heap(vals.begin(), vals.end(), std::greater<float>());
      for (int64_t v = k; v < V; ++v) {
        if (z[v] > vals.front()) {
          std::pop_heap(vals.begin(), vals.end(), std::greater<float>());
          vals.back() = z[v];
          std::push_heap(vals.begin(), vals.end(), std::greater<float>());
        }
      }
      z_floor = vals.front();
    } else {
      vals.assign(z, z + V);
      std::nth_element(vals.begin(), vals.begin() + (k - 1), vals.end(), std::greater<float>());
      z_floor = vals[k - 1];
    }
  }
  float s_max = -kInf;  // the best allowed scaled logit
  if (mask) {
    for (int64_t v = 0; v < V; ++v) {
      if (mask[v]) s_max = std::max(s_max, z[v] / temp);
    }
    if (s_max == -kInf) return false;  // nothing finite allowed: the reference's conventions apply
  } else {
    s_max = z_max / temp;  // division is monotone and the argmax is always in the top-k set
  }
  // Gumbel-max over the allowed tokens; the two logarithms are taken only for tokens whose
  // score bound reaches the current runner-up (a few per block on wide rows).
  const float reach = s_max - kGumbelSpread;
  float best = -kInf, second = -kInf;
  int64_t best_v = -1;
  float s_blk[kBlock], upper[kBlock], chunk_upper[kBlock / kChunk];
  uint32_t q_blk[kBlock];
  for (int64_t v0 = 0; v0 < V; v0 += kBlock) {
    const int64_t n = std::min(kBlock, V - v0);
    gumbel_bounds(z, v0, n, temp, row_hash, vocab_hashes + v0, s_blk, q_blk, upper);
    chunk_maxima(upper, n, chunk_upper);
    for (int64_t i = 0; i < n; ++i) {
      // a whole chunk below the runner-up: each of its tokens would fail the first test below
      if (i % kChunk == 0 && chunk_upper[i / kChunk] + kBoundSlack < second) {
        i += kChunk - 1;
        continue;
      }
      if (upper[i] + kBoundSlack < second || s_blk[i] < reach) continue;
      if (mask ? !mask[v0 + i] : !(z[v0 + i] >= z_floor)) continue;
      const float u = static_cast<float>(q_blk[i]) * (1.0f / 16777216.0f);
      const float score = s_blk[i] - std::log(-std::log(u));
      if (score > best) {
        second = best;
        best = score;
        best_v = v0 + i;
      } else if (score > second) {
        second = score;
      }
    }
  }
  if (best_v < 0) return false;
  if (best - second <= kGumbelTol * (1.0f + std::fabs(best))) return false;
  token = best_v;
  return true;
}

}  // namespace

uint32_t fmix32(uint32_t h) { return mix32(h); }

uint32_t sampling_row_hash(const int64_t* key) {
  uint32_t h = kRowInit;
  for (int i = 0; i < 4; ++i) {
    const uint64_t word = static_cast<uint64_t>(key[i]);  // two's complement of negative keys
    h = mix32(h ^ static_cast<uint32_t>(word));
    h = mix32(h ^ static_cast<uint32_t>(word >> 32));
  }
  return h;
}

float sampling_uniform(uint32_t row_hash, int64_t v) {
  const uint32_t bits = mix32(row_hash ^ vocab_hash(v));
  return static_cast<float>((bits >> 8) | 1u) * (1.0f / 16777216.0f);
}

void sample_cpu(const float* logits, int64_t batch, int64_t vocab, int64_t row_stride, const int64_t* keys,
                const float* temperature, const int32_t* top_k, const float* top_p, const uint8_t* allowed,
                const int64_t* allowed_row, int64_t* tokens, uint8_t* deferred, int num_threads,
                const int64_t* logit_rows, int64_t num_logit_rows) {
  PONDER_CHECK_ARG(batch >= 0, "batch must be >= 0, got ", batch);
  PONDER_CHECK_ARG(num_threads >= 1, "num_threads must be >= 1, got ", num_threads);
  PONDER_CHECK_ARG(vocab > 0 && vocab <= std::numeric_limits<int32_t>::max(), "vocab must lie in [1, 2**31 - 1], got ",
                   vocab);
  PONDER_CHECK_ARG(row_stride >= vocab, "row_stride (", row_stride, ") must be >= vocab (", vocab, ")");
  if (batch == 0) return;
  PONDER_CHECK_ARG(logits && keys && temperature && top_k && top_p && tokens && deferred,
                   "sample_cpu got a null pointer");
  int64_t num_masks = 0;
  bool any_draw = false;
  for (int64_t b = 0; b < batch; ++b) {
    PONDER_CHECK_ARG(!logit_rows || (logit_rows[b] >= 0 && logit_rows[b] < num_logit_rows), "logit_rows[", b,
                     "] = ", logit_rows ? logit_rows[b] : 0, " must lie in [0, ", num_logit_rows,
                     ") (num_logit_rows)");
    PONDER_CHECK_ARG(temperature[b] >= 0.0f && std::isfinite(temperature[b]), "temperature[", b, "] = ",
                     temperature[b], " must be a finite value >= 0");
    PONDER_CHECK_ARG(top_k[b] >= 0 && top_k[b] <= vocab, "top_k[", b, "] = ", top_k[b], " must lie in [0, ", vocab,
                     "]");
    PONDER_CHECK_ARG(top_p[b] > 0.0f && top_p[b] <= 1.0f, "top_p[", b, "] = ", top_p[b], " must lie in (0, 1]");
    const int64_t row = allowed_row ? allowed_row[b] : -1;
    PONDER_CHECK_ARG(row == -1 || (row == num_masks && allowed), "allowed_row[", b, "] = ", row,
                     " must be -1 or the next mask row (", num_masks, ")");
    num_masks += row >= 0;
    const bool greedy = temperature[b] <= 0.0f || top_k[b] == 1;
    PONDER_CHECK_ARG(greedy || top_p[b] == 1.0f || row >= 0, "row ", b, " has top_p = ", top_p[b],
                     " but no allowed mask: nucleus sets come from the caller");
    any_draw |= !greedy;
  }
  const auto vocab_hashes = any_draw ? vocab_hash_table(vocab) : nullptr;
  auto rows = [&](int64_t b0, int64_t b1) {
    Scratch scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const float* z = logits + (logit_rows ? logit_rows[b] : b) * row_stride;
      deferred[b] = 1;
      bool bad = false;
      const float z_max = row_max(z, vocab, bad);
      if (bad || z_max == -kInf) continue;  // NaN / +inf / all -inf: the reference's conventions apply
      const bool greedy = temperature[b] <= 0.0f || top_k[b] == 1;
      int64_t token = -1;
      if (greedy) token = std::find(z, z + vocab, z_max) - z;  // first argmax: ties go to the lowest id
      const uint8_t* mask = allowed_row && allowed_row[b] >= 0 ? allowed + allowed_row[b] * vocab : nullptr;
      if (!greedy && !draw_row(z, vocab, temperature[b], top_k[b], mask, sampling_row_hash(keys + 4 * b),
                               vocab_hashes->data(), z_max, scratch, token)) {
        continue;
      }
      tokens[b] = token;
      deferred[b] = 0;
    }
  };
  const int64_t threads =
      std::min<int64_t>({static_cast<int64_t>(num_threads), std::max<int64_t>(1, batch * vocab / kMinParallelLogits),
                         batch});
  if (threads <= 1) {
    rows(0, batch);
    return;
  }
  // a few blocks of rows per thread, so that a late helper's share goes to the others; a part
  // must not throw (cpu_threads.h), so the first error (a failed scratch allocation) is kept and
  // raised once every part has returned
  const int64_t parts = std::min<int64_t>(batch, threads * kPartsPerThread);
  std::exception_ptr error;
  std::mutex error_mutex;
  run_parts(parts, static_cast<int>(threads), [&](int64_t i) {
    try {
      rows(batch * i / parts, batch * (i + 1) / parts);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

}  // namespace ponder
