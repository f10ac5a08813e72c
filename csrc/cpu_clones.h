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
#else
#define PONDER_ALWAYS_INLINE inline
#endif
