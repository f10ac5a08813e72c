// out = x · Wᵀ (+ bias) on the host; see linear_cpu.h for the contract and the summation order.
//
// Layout: each output element keeps a 16-lane accumulator that walks the shared K axis of its x
// row and its weight row, 16 floats at a time (an "inner product" kernel: neither operand is
// repacked, so the weights are used in place). A tile of MT rows x NT weight rows loads each
// weight vector once for MT rows and each x vector once for NT weight rows. Rows are taken in
// blocks that stay in L2 while the weights stream past once per block; a 1-8 row decode step
// reads every weight exactly once.
//
// The tile shape only decides which outputs are computed together, never how one is computed,
// so AVX-512 (4 x 4 tiles), AVX2 + FMA (4 x 3, each 8-lane half of the accumulators in its own
// pass; see half_columns), the baseline (1 x 2) and any row count give the same bits. The AVX-512
// and AVX2 paths spell their fused multiply-adds out (fused()); the file is compiled with
// -ffp-contract=off, so no other product is fused: the bits never depend on what the compiler
// chooses to contract (GCC 13 left the product of a 1 x 1 tile unfused, one last bit off in
// the last row or column of some shapes). The generic path (x86-64 without FMA, other
// compilers) rounds the products separately and so differs in the last bits from the FMA paths,
// consistently at every row count.
#include "linear_cpu.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_clones.h"
#include "cpu_threads.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PONDER_LINEAR_X86 1
#define PONDER_TARGET(isa) __attribute__((target(isa)))
#else
#define PONDER_LINEAR_X86 0
#endif


namespace ponder {

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

constexpr int64_t kLanes = 16;
// prefetch each strip's successor while the strip's first tile runs (measured: 1-16 rows ~10% faster)
constexpr bool kPrefetch = true;
// rows per block: their x slices fill about this many bytes (a share of L2)
constexpr int64_t kBlockBytes = 256 * 1024;
// below this many multiply-adds a product runs on one thread (waking a pooled helper costs
// ~8 us, starting one ~30 us; a 1-row product of a 1 MB matrix already gains from a second
// core's memory bandwidth)
constexpr int64_t kMinParallelMacs = int64_t(1) << 18;
// column chunks per thread of a split product
constexpr int64_t kChunksPerThread = 4;

// A 16-lane vector held as P native registers of 16 / P floats: one zmm (AVX-512), two ymm (AVX2)
// or four xmm (the baseline). Lane l of part i is lane i * 16 / P + l of the whole, so every lane
// is computed the same way whatever P is; only the register allocation differs. (GCC keeps a
// 64-byte vector type in memory where the CPU's registers are narrower, which made the AVX2 path
// slower than the baseline one.)
template <int P> struct PartOf;
template <> struct PartOf<1> { typedef v16 type; };
template <> struct PartOf<2> { typedef v8 type; };
template <> struct PartOf<4> { typedef v4 type; };

template <int P>
struct Vec {
  typedef typename PartOf<P>::type Part;
  static constexpr int kWidth = kLanes / P;
  Part part[P];
};

template <int P>
PONDER_ALWAYS_INLINE Vec<P> zero() {
  Vec<P> v;
#pragma GCC unroll 4
  for (int i = 0; i < P; ++i) v.part[i] = typename Vec<P>::Part{};
  return v;
}

template <int P>
PONDER_ALWAYS_INLINE Vec<P> load16(const float* p) {
  Vec<P> v;
#pragma GCC unroll 4
  for (int i = 0; i < P; ++i) std::memcpy(&v.part[i], p + i * Vec<P>::kWidth, sizeof v.part[i]);
  return v;
}

#if PONDER_LINEAR_X86
// acc + x * w rounded once, lane by lane: one vfmadd231ps. Spelled as an instruction because
// these helpers carry no target attribute (they are inlined into the AVX-512 / AVX2 functions
// below, where the register operands exist), so neither <immintrin.h> nor the builtins can be
// named here, and a per-lane std::fma loop was vectorised with spills (2.4x slower at 8 rows).
PONDER_ALWAYS_INLINE v16 fused(v16 acc, v16 x, v16 w) {
  asm("vfmadd231ps %2, %1, %0" : "+v"(acc) : "v"(x), "vm"(w));
  return acc;
}
PONDER_ALWAYS_INLINE v8 fused(v8 acc, v8 x, v8 w) {
  asm("vfmadd231ps %2, %1, %0" : "+x"(acc) : "x"(x), "xm"(w));
  return acc;
}
#endif

// acc += x * w lane by lane: the one statement every accumulator goes through. FUSED: one
// rounding per multiply-add (the AVX-512 path); otherwise the product and the sum are rounded separately (the file is built with
// -ffp-contract=off), the same way for every element and every P.
template <int P, bool FUSED>
PONDER_ALWAYS_INLINE void fma16(Vec<P>& acc, const Vec<P>& x, const Vec<P>& w) {
  if constexpr (FUSED) {
#if PONDER_LINEAR_X86
    static_assert(P == 1, "the fused path holds 16 lanes in one zmm register");
    acc.part[0] = fused(acc.part[0], x.part[0], w.part[0]);
#else
    static_assert(!FUSED, "fused multiply-adds are spelled out on x86-64 with GCC only");
#endif
  } else {
#pragma GCC unroll 4
    for (int i = 0; i < P; ++i) acc.part[i] += x.part[i] * w.part[i];
  }
}

// Lanes l and l + 8 added (l < 8): the first level of the fixed pairwise tree.
template <int P>
PONDER_ALWAYS_INLINE v8 halves(const Vec<P>& a) {
  if constexpr (P == 1) {
    return __builtin_shufflevector(a.part[0], a.part[0], 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(a.part[0], a.part[0], 8, 9, 10, 11, 12, 13, 14, 15);
  } else if constexpr (P == 2) {
    return a.part[0] + a.part[1];
  } else {
    const v4 lo = a.part[0] + a.part[2], hi = a.part[1] + a.part[3];
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
  }
}

// The fixed pairwise tree: lanes l and l + 8, then l and l + 4, then (0 + 2) + (1 + 3).
template <int P>
PONDER_ALWAYS_INLINE float reduce16(const Vec<P>& a) {
  const v8 h = halves(a);
  const v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// reduce16 of four accumulators at once; results[j] equals reduce16(a_j) bit for bit. With one
// zmm per accumulator the same additions run shuffled so each step adds two vectors instead of
// eight pairs; with narrower registers the first level is already vector adds.
template <int P>
PONDER_ALWAYS_INLINE v4 reduce4(const Vec<P>& a, const Vec<P>& b, const Vec<P>& c, const Vec<P>& d) {
  if constexpr (P == 1) {
    const v16 &a0 = a.part[0], &b0 = b.part[0], &c0 = c.part[0], &d0 = d.part[0];
    const v16 ab = __builtin_shufflevector(a0, b0, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                   __builtin_shufflevector(a0, b0, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const v16 cd = __builtin_shufflevector(c0, d0, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                   __builtin_shufflevector(c0, d0, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    // lane 4j + l: h_j[l] + h_j[l + 4], l < 4
    const v16 q = __builtin_shufflevector(ab, cd, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                  __builtin_shufflevector(ab, cd, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    // lane 2j: q_j[0] + q_j[2], lane 2j + 1: q_j[1] + q_j[3]
    const v8 t = __builtin_shufflevector(q, q, 0, 1, 4, 5, 8, 9, 12, 13) +
                 __builtin_shufflevector(q, q, 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(t, t, 0, 2, 4, 6) + __builtin_shufflevector(t, t, 1, 3, 5, 7);
  } else {
    // lane 4j + l of (hab, hcd): h_j[l] + h_j[l + 4], l < 4
    const v8 ha = halves(a), hb = halves(b), hc = halves(c), hd = halves(d);
    const v8 qab = __builtin_shufflevector(ha, hb, 0, 1, 2, 3, 8, 9, 10, 11) +
                   __builtin_shufflevector(ha, hb, 4, 5, 6, 7, 12, 13, 14, 15);
    const v8 qcd = __builtin_shufflevector(hc, hd, 0, 1, 2, 3, 8, 9, 10, 11) +
                   __builtin_shufflevector(hc, hd, 4, 5, 6, 7, 12, 13, 14, 15);
    // lane 2j: q_j[0] + q_j[2], lane 2j + 1: q_j[1] + q_j[3]
    const v8 t = __builtin_shufflevector(qab, qcd, 0, 1, 4, 5, 8, 9, 12, 13) +
                 __builtin_shufflevector(qab, qcd, 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(t, t, 0, 2, 4, 6) + __builtin_shufflevector(t, t, 1, 3, 5, 7);
  }
}

struct Problem {
  const float* x;
  int64_t rows, in, x_stride;
  const float* w;
  const float* bias;
  float* out;
  int64_t out_stride;
  int64_t out_features;  // the whole weight's rows (a thread's part of a product may take fewer)
};

// acc[i][j] += x[i] * w[j] over 16 columns: x rows x_stride floats apart, w rows w_stride apart.
// Main loop and tail alike go through it (and fma16).
template <int P, bool FUSED, int MT, int NT, bool PREFETCH = false>
PONDER_ALWAYS_INLINE void step(Vec<P> (&acc)[MT][NT], const float* x, int64_t x_stride, const float* w,
                               int64_t w_stride) {
  if constexpr (PREFETCH) {  // the same columns of the next NT weight rows (the next strip)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) __builtin_prefetch(w + (NT + j) * w_stride, 0, 3);
  }
  Vec<P> wv[NT];
#pragma GCC unroll 8
  for (int j = 0; j < NT; ++j) wv[j] = load16<P>(w + j * w_stride);
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    const Vec<P> xv = load16<P>(x + i * x_stride);
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) fma16<P, FUSED>(acc[i][j], xv, wv[j]);
  }
}

// MT rows from m, NT weight rows from n. PREFETCH: also pull the next NT weight rows into the
// cache, so a strip's weights stream in while the one before it is computed.
template <int P, bool FUSED, int MT, int NT, bool PREFETCH = false>
PONDER_ALWAYS_INLINE void tile(const Problem& p, int64_t m, int64_t n) {
  const int64_t K = p.in;
  const float* x = p.x + m * p.x_stride;
  const float* w = p.w + n * K;
  Vec<P> acc[MT][NT];
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[i][j] = zero<P>();
  const int64_t whole = K - K % kLanes;
  for (int64_t k = 0; k < whole; k += kLanes) step<P, FUSED, MT, NT, PREFETCH>(acc, x + k, p.x_stride, w + k, K);
  if (whole < K) {  // the last K % 16 columns, zero-padded: the same step on copies
    float xt[MT][kLanes] = {}, wt[NT][kLanes] = {};
    for (int i = 0; i < MT; ++i) std::memcpy(xt[i], x + i * p.x_stride + whole, (K - whole) * sizeof(float));
    for (int j = 0; j < NT; ++j) std::memcpy(wt[j], w + j * K + whole, (K - whole) * sizeof(float));
    step<P, FUSED, MT, NT>(acc, xt[0], kLanes, wt[0], kLanes);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    float* o = p.out + (m + i) * p.out_stride + n;
    int j = 0;
#pragma GCC unroll 2
    for (; j + 4 <= NT; j += 4) {
      v4 sums = reduce4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);
      v4 add = {};
      if (p.bias) std::memcpy(&add, p.bias + n + j, sizeof add);
      sums += add;
      std::memcpy(o + j, &sums, sizeof sums);
    }
#pragma GCC unroll 4
    for (; j < NT; ++j) o[j] = reduce16(acc[i][j]) + (p.bias ? p.bias[n + j] : 0.0f);
  }
}

// f(std::integral_constant<int, count>{}) for a count in [1, MAX] (nothing for another count):
// a run-time count of rows or weight rows as a tile size known at compile time.
template <int MAX, typename F>
PONDER_ALWAYS_INLINE void with_count(int64_t count, F&& f) {
  if constexpr (MAX > 0) {
    if (count == MAX) {
      f(std::integral_constant<int, MAX>{});
    } else {
      with_count<MAX - 1>(count, f);
    }
  }
}

// Output columns [n0, n1) of every row: the rows in blocks whose x slices fill about
// kBlockBytes, and for each block strip(m0, m1, n, nt) for the strips of NT_MAX weight rows from
// n0, then one of nt = the remaining count < NT_MAX (nt: an std::integral_constant).
template <int MT_MAX, int NT_MAX, typename Strip>
PONDER_ALWAYS_INLINE void blocks_and_strips(const Problem& p, int64_t n0, int64_t n1, Strip&& strip) {
  int64_t block = kBlockBytes / (p.in * int64_t(sizeof(float)) + 1);
  block = std::max<int64_t>(MT_MAX, block - block % MT_MAX);
  for (int64_t m0 = 0; m0 < p.rows; m0 += block) {
    const int64_t m1 = std::min(p.rows, m0 + block);
    int64_t n = n0;
    for (; n + NT_MAX <= n1; n += NT_MAX) strip(m0, m1, n, std::integral_constant<int, NT_MAX>{});
    with_count<NT_MAX - 1>(n1 - n, [&](auto nt) PONDER_LAMBDA_INLINE { strip(m0, m1, n, nt); });
  }
}

// Rows [m0, m1) of the NT weight rows from n.
template <int P, bool FUSED, int NT, int MT_MAX>
PONDER_ALWAYS_INLINE void strip(const Problem& p, int64_t m0, int64_t m1, int64_t n) {
  int64_t m = m0;
  if (m + MT_MAX <= m1) {
    tile<P, FUSED, MT_MAX, NT, kPrefetch>(p, m, n);
    m += MT_MAX;
  }
  for (; m + MT_MAX <= m1; m += MT_MAX) tile<P, FUSED, MT_MAX, NT>(p, m, n);
  with_count<MT_MAX - 1>(m1 - m, [&](auto mt) PONDER_LAMBDA_INLINE { tile<P, FUSED, decltype(mt)::value, NT>(p, m, n); });
}

// Output columns [n0, n1) of every row, tiles of up to MT_MAX x NT_MAX.
// P: native registers per 16 lanes (see Vec); FUSED: see fma16.
template <int P, bool FUSED, int MT_MAX, int NT_MAX>
PONDER_ALWAYS_INLINE void columns(const Problem& p, int64_t n0, int64_t n1) {
  blocks_and_strips<MT_MAX, NT_MAX>(p, n0, n1, [&](int64_t m0, int64_t m1, int64_t n, auto nt) PONDER_LAMBDA_INLINE {
    strip<P, FUSED, decltype(nt)::value, MT_MAX>(p, m0, m1, n);
  });
}

// ---- AVX2: the two 8-lane halves of the accumulators in separate passes ----
//
// With 16 ymm registers, a tile of whole 16-lane accumulators is at most 2 x 2 outputs (8
// registers for the sums), which loads one vector per fused multiply-add. But lanes 0-7 and 8-15
// of an accumulator never meet before the reduction: lane l only ever sums k = l mod 16. So a
// tile computes lanes 0-7 of every accumulator (the first 8 floats of each 16-float chunk of K),
// then lanes 8-15, each half with one ymm per output: a 4 x 3 tile holds 12 sums and loads 7
// vectors per 12 multiply-adds. Every lane still sees the same multiply-adds in the same order,
// and the reduction starts, as halves() does for two parts, with lane l + lane l + 8: the bits
// of the 2 x 2 path.
//
// K is taken in chunks whose x and weight slices stay in L1 between the two halves' passes; the
// sums wait in memory between chunks.
//
// A decode step of a few rows streams the weights from memory, so the next strip's weight rows
// are prefetched while this strip computes, spread evenly over its passes (tiles x 2 halves):
// issued all at once in the first pass, they left the memory idle for the rest of the strip.

// floats of K per chunk: (4 x rows + 3 weight rows) x 512 x 4 bytes = 14 KiB
constexpr int64_t kHalfChunk = 512;

// sums[i][j] += x_i · w_j over the 16-float chunks in [k0, k1), 8 lanes from each (x and w
// already point at the half). NPF: also prefetch the same columns of NPF weight rows from
// `ahead` (w_stride apart).
template <int MT, int NT, int NPF>
PONDER_ALWAYS_INLINE void half_pass(v8 (&sums)[MT][NT], const float* x, int64_t x_stride, const float* w,
                                    int64_t w_stride, int64_t k0, int64_t k1, const float* ahead) {
  v8 a[MT][NT];
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) a[i][j] = sums[i][j];
  for (int64_t k = k0; k < k1; k += kLanes) {
#pragma GCC unroll 4
    for (int j = 0; j < NPF; ++j) __builtin_prefetch(ahead + j * w_stride + k, 0, 3);
    v8 wv[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) std::memcpy(&wv[j], w + j * w_stride + k, sizeof wv[j]);
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i) {
      v8 xv;
      std::memcpy(&xv, x + i * x_stride + k, sizeof xv);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) a[i][j] = fused(a[i][j], xv, wv[j]);  // as fma16 does for one part
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) sums[i][j] = a[i][j];
}

// half_pass with `count` (0-2) prefetched rows.
template <int MT, int NT>
PONDER_ALWAYS_INLINE void half_pass_ahead(v8 (&sums)[MT][NT], const float* x, int64_t x_stride, const float* w,
                                          int64_t w_stride, int64_t k0, int64_t k1, const float* ahead,
                                          int count) {
  if (count <= 0) {
    half_pass<MT, NT, 0>(sums, x, x_stride, w, w_stride, k0, k1, ahead);
  } else if (count == 1) {
    half_pass<MT, NT, 1>(sums, x, x_stride, w, w_stride, k0, k1, ahead);
  } else {
    half_pass<MT, NT, 2>(sums, x, x_stride, w, w_stride, k0, k1, ahead);
  }
}

// reduce16 of an accumulator given as its two halves (lanes 0-7, lanes 8-15)
PONDER_ALWAYS_INLINE float reduce_halves(const v8& lo, const v8& hi) {
  const v8 h = lo + hi;
  const v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// Which rows of the next strip one pass prefetches: passes share the strip's rows in order.
struct Ahead {
  int64_t next;  // first weight row of the next strip
  int64_t rows;  // its rows (0: nothing to prefetch)
  int64_t passes;  // passes in this strip
  int64_t per_pass;  // rows per pass: ceil(rows / passes), at most 2
};

// MT rows from m, NT weight rows from n, half by half (see above); `pass` is the strip's pass
// number of the first half.
template <int MT, int NT>
PONDER_ALWAYS_INLINE void half_tile(const Problem& p, int64_t m, int64_t n, const Ahead& ahead, int64_t pass) {
  const int64_t K = p.in;
  const float* x = p.x + m * p.x_stride;
  const float* w = p.w + n * K;
  int count[2];
  const float* from[2];
  for (int h = 0; h < 2; ++h) {
    const int64_t first = (pass + h) * ahead.per_pass;
    count[h] = static_cast<int>(std::max<int64_t>(0, std::min(ahead.per_pass, ahead.rows - first)));
    from[h] = count[h] > 0 ? p.w + (ahead.next + first) * K : w;  // never a row past the weight
  }
  v8 sums[2][MT][NT];
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) sums[0][i][j] = sums[1][i][j] = v8{};
  const int64_t whole = K - K % kLanes;
  for (int64_t k0 = 0; k0 < whole; k0 += kHalfChunk) {
    const int64_t k1 = std::min(whole, k0 + kHalfChunk);
    half_pass_ahead<MT, NT>(sums[0], x, p.x_stride, w, K, k0, k1, from[0], count[0]);
    half_pass_ahead<MT, NT>(sums[1], x + 8, p.x_stride, w + 8, K, k0, k1, from[1], count[1]);
  }
  if (whole < K) {  // the last K % 16 columns, zero-padded, as tile() takes them
    float xt[MT][kLanes] = {}, wt[NT][kLanes] = {};
    for (int i = 0; i < MT; ++i) std::memcpy(xt[i], x + i * p.x_stride + whole, (K - whole) * sizeof(float));
    for (int j = 0; j < NT; ++j) std::memcpy(wt[j], w + j * K + whole, (K - whole) * sizeof(float));
    half_pass<MT, NT, 0>(sums[0], xt[0], kLanes, wt[0], kLanes, 0, kLanes, nullptr);
    half_pass<MT, NT, 0>(sums[1], xt[0] + 8, kLanes, wt[0] + 8, kLanes, 0, kLanes, nullptr);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    float* o = p.out + (m + i) * p.out_stride + n;
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) o[j] = reduce_halves(sums[0][i][j], sums[1][i][j]) + (p.bias ? p.bias[n + j] : 0.0f);
  }
}

// Rows [m0, m1) of the NT weight rows from n; the next strip has up to NT_MAX rows.
template <int NT, int MT_MAX, int NT_MAX>
PONDER_ALWAYS_INLINE void half_strip(const Problem& p, int64_t m0, int64_t m1, int64_t n) {
  Ahead ahead;
  ahead.next = n + NT;
  ahead.rows = std::max<int64_t>(0, std::min<int64_t>(NT_MAX, p.out_features - ahead.next));
  ahead.passes = 2 * ((m1 - m0 + MT_MAX - 1) / MT_MAX);
  ahead.per_pass = std::min<int64_t>(2, (ahead.rows + ahead.passes - 1) / ahead.passes);
  int64_t m = m0, pass = 0;
  for (; m + MT_MAX <= m1; m += MT_MAX, pass += 2) half_tile<MT_MAX, NT>(p, m, n, ahead, pass);
  with_count<MT_MAX - 1>(m1 - m, [&](auto mt) PONDER_LAMBDA_INLINE {
    half_tile<decltype(mt)::value, NT>(p, m, n, ahead, pass);
  });
}

// columns() for the half-by-half tiles.
template <int MT_MAX, int NT_MAX>
PONDER_ALWAYS_INLINE void half_columns(const Problem& p, int64_t n0, int64_t n1) {
  blocks_and_strips<MT_MAX, NT_MAX>(p, n0, n1, [&](int64_t m0, int64_t m1, int64_t n, auto nt) PONDER_LAMBDA_INLINE {
    half_strip<decltype(nt)::value, MT_MAX, NT_MAX>(p, m0, m1, n);
  });
}

#if PONDER_LINEAR_X86
PONDER_TARGET("arch=x86-64-v4") void columns_avx512(const Problem& p, int64_t n0, int64_t n1) {
  columns<1, true, 4, 4>(p, n0, n1);  // 16 zmm accumulators
}
PONDER_TARGET("arch=x86-64-v3") void columns_avx2(const Problem& p, int64_t n0, int64_t n1) {
  half_columns<4, 3>(p, n0, n1);  // 12 ymm sums, 3 for the weights, 1 for x
}
#endif
// SSE2: 8 xmm accumulators, 4 for the weights, 4 for x (16 on x86-64)
void columns_generic(const Problem& p, int64_t n0, int64_t n1) { columns<4, false, 1, 2>(p, n0, n1); }

using ColumnsFn = void (*)(const Problem&, int64_t, int64_t);

ColumnsFn pick(LinearIsa isa) {
#if PONDER_LINEAR_X86
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("x86-64-v4");
  const bool has2 = __builtin_cpu_supports("x86-64-v3");
  switch (isa) {
    case LinearIsa::kAuto: return has512 ? columns_avx512 : has2 ? columns_avx2 : columns_generic;
    case LinearIsa::kAvx512:
      if (has512) return columns_avx512;
      break;
    case LinearIsa::kAvx2:
      if (has2) return columns_avx2;
      break;
    case LinearIsa::kGeneric: return columns_generic;
  }
  return nullptr;
#else
  return isa == LinearIsa::kAuto || isa == LinearIsa::kGeneric ? columns_generic : nullptr;
#endif
}

}  // namespace

bool linear_cpu_has(LinearIsa isa) { return pick(isa) != nullptr; }

void linear_cpu(const float* x, int64_t num_rows, int64_t in_features, int64_t x_row_stride, const float* w,
                int64_t out_features, const float* bias, float* out, int64_t out_row_stride, int num_threads,
                LinearIsa isa) {
  detail::check_linear_args("linear_cpu", num_rows, in_features, x_row_stride, out_features, out_row_stride,
                            num_threads);
  const ColumnsFn run = pick(isa);
  if (run == nullptr)
    throw std::invalid_argument("linear_cpu: this CPU or build has no such instruction-set path: " +
                                std::to_string(int(isa)));
  if (num_rows == 0 || out_features == 0) return;
  const Problem p{x, num_rows, in_features, x_row_stride, w, bias, out, out_row_stride, out_features};
  // threads take the output columns in chunks of whole 4-column tiles, a few chunks per thread
  // so that a late helper's share goes to the others (cpu_threads.h)
  const int64_t macs = num_rows * in_features * out_features;
  const int64_t quads = (out_features + 3) / 4;
  const int64_t threads =
      std::min<int64_t>({static_cast<int64_t>(num_threads), std::max<int64_t>(1, macs / kMinParallelMacs), quads});
  if (threads <= 1) {
    run(p, 0, out_features);
    return;
  }
  const int64_t chunks = std::min<int64_t>(quads, threads * kChunksPerThread);
  auto bounds = [&](int64_t c) { return std::min(out_features, 4 * (quads * c / chunks)); };
  run_parts(chunks, static_cast<int>(threads), [&](int64_t c) { run(p, bounds(c), bounds(c + 1)); });
}

namespace detail {
void check_linear_args(const char* kernel, int64_t num_rows, int64_t in_features, int64_t x_row_stride,
                       int64_t out_features, int64_t out_row_stride, int num_threads) {
  auto bad = [&](const std::string& what) { throw std::invalid_argument(std::string(kernel) + ": " + what); };
  if (num_rows < 0 || in_features < 0 || out_features < 0)
    bad("num_rows, in_features and out_features must be >= 0, got " + std::to_string(num_rows) + ", " +
        std::to_string(in_features) + ", " + std::to_string(out_features));
  if (x_row_stride < in_features)
    bad("x_row_stride must be >= in_features = " + std::to_string(in_features) + ", got " +
        std::to_string(x_row_stride));
  if (out_row_stride < out_features)
    bad("out_row_stride must be >= out_features = " + std::to_string(out_features) + ", got " +
        std::to_string(out_row_stride));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
}

void linear_cpu_baseline_parts(int parts, const float* x, int64_t num_rows, int64_t in_features,
                               int64_t x_row_stride, const float* w, int64_t out_features, const float* bias,
                               float* out, int64_t out_row_stride) {
  const Problem p{x, num_rows, in_features, x_row_stride, w, bias, out, out_row_stride, out_features};
  switch (parts) {
    case 1: columns<1, false, 4, 4>(p, 0, out_features); return;
    case 2: columns<2, false, 2, 2>(p, 0, out_features); return;
    case 4: columns<4, false, 1, 2>(p, 0, out_features); return;
    default: throw std::invalid_argument("linear_cpu_baseline_parts: parts must be 1, 2 or 4, got " +
                                         std::to_string(parts));
  }
}
}  // namespace detail

}  // namespace ponder
