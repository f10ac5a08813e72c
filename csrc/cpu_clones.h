// Portable wide vectors for the host kernels. On x86-64 with GCC a function marked
// PONDER_CPU_CLONES is compiled three times (AVX-512, AVX2 + FMA and the baseline) and the loader
// picks the best one the CPU has, so one portable wheel still uses wide vectors. Helpers called
// from such a function are PONDER_ALWAYS_INLINE, so each clone gets them in its own instruction
// set. Sanitizer builds compile one version.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define PONDER_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PONDER_CPU_CLONES
#endif

#if defined(__GNUC__)
#define PONDER_ALWAYS_INLINE inline __attribute__((always_inline))
// after a lambda's parameter list: inlined into its caller (so into the caller's ISA clone)
#define PONDER_LAMBDA_INLINE __attribute__((always_inline))
#else
#define PONDER_ALWAYS_INLINE inline
#define PONDER_LAMBDA_INLINE
#endif

#include <cstdint>
#include <type_traits>

namespace ponder {

// f(std::integral_constant<int, D>) for the head dims the host kernels compile a fixed-size
// path for (32, 64, 128), else f(std::integral_constant<int, 0>) for the run-time path. The one
// list of fixed head dims for every host attention kernel.
template <typename F>
auto dispatch_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

}  // namespace ponder
