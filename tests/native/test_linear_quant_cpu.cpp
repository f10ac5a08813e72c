// linear_quant_cpu against linear_cpu on weights de-quantised here (d * q (+ m), the file
// format's arithmetic): the same bits for every block type, row count, bias and thread count;
// and its refusals.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "linear_cpu.h"
#include "linear_quant_cpu.h"

namespace {

float half_to_float(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

struct Quantised {
  std::vector<uint8_t> blocks;
  std::vector<float> w;  // [N, K] de-quantised
};

// Random blocks (scales drawn as finite fp16 of moderate size) and their weights.
Quantised make(int type, int64_t N, int64_t K, std::mt19937& gen) {
  const int64_t bytes = ponder::quant_block_bytes(type), nb = N * K / 32;
  Quantised q;
  q.blocks.resize(static_cast<size_t>(nb * bytes));
  q.w.resize(static_cast<size_t>(N * K));
  std::uniform_int_distribution<int> byte(0, 255), exponent(5, 16);
  auto scale = [&]() {
    return static_cast<uint16_t>((byte(gen) & 1) << 15 | exponent(gen) << 10 | (byte(gen) << 2 & 0x3FF));
  };
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* blk = q.blocks.data() + b * bytes;
    for (int64_t i = 0; i < bytes; ++i) blk[i] = static_cast<uint8_t>(byte(gen));
    const uint16_t d = scale(), m = scale();
    std::memcpy(blk, &d, 2);
    float* w = q.w.data() + b * 32;
    const float fd = half_to_float(d);
    if (type == static_cast<int>(ponder::QuantType::kQ8_0)) {
      for (int j = 0; j < 32; ++j) w[j] = fd * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
    } else {
      const bool q41 = type == static_cast<int>(ponder::QuantType::kQ4_1);
      if (q41) std::memcpy(blk + 2, &m, 2);
      const uint8_t* qs = blk + (q41 ? 4 : 2);
      for (int j = 0; j < 16; ++j) {
        const float lo = static_cast<float>(qs[j] & 0x0F), hi = static_cast<float>(qs[j] >> 4);
        if (q41) {
          volatile float a = fd * lo, c = fd * hi;  // two roundings, as the file format's de-quantiser
          w[j] = a + half_to_float(m);
          w[j + 16] = c + half_to_float(m);
        } else {
          w[j] = fd * (lo - 8.0f);
          w[j + 16] = fd * (hi - 8.0f);
        }
      }
    }
  }
  return q;
}

}  // namespace

PONDER_TEST(linear_quant_cpu_is_linear_cpu_on_the_dequantised_weights) {
  if (!ponder::linear_quant_cpu_available()) return;  // nothing to compare on this CPU
  std::mt19937 gen(7);
  for (int type : {2, 3, 8}) {
    for (int64_t M : {1, 2, 3, 4, 5, 9}) {
      for (int64_t N : {1, 5, 64}) {
        for (int64_t K : {32, 96, 576}) {
          for (int threads : {1, 3}) {
            const Quantised q = make(type, N, K, gen);
            const std::vector<float> x = ponder_test::normal_floats(static_cast<size_t>(M * (K + 8)), gen);
            const std::vector<float> bias = ponder_test::normal_floats(static_cast<size_t>(N), gen);
            const float* b = (M + N) % 2 ? bias.data() : nullptr;
            std::vector<float> want(static_cast<size_t>(M * N)), got(static_cast<size_t>(M * N), -1.0f);
            ponder::linear_cpu(x.data(), M, K, K + 8, q.w.data(), N, b, want.data(), N, 1);
            ponder::linear_quant_cpu(x.data(), M, K, K + 8, q.blocks.data(), type, N, b, got.data(), N, threads);
            CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
          }
        }
      }
    }
  }
}

PONDER_TEST(linear_quant_cpu_refuses_bad_arguments) {
  std::vector<float> x(64, 1.0f), out(4, 0.0f);
  std::vector<uint8_t> blocks(4 * 2 * 20, 0);
  CHECK_THROWS(ponder::quant_block_bytes(7), std::invalid_argument);
  CHECK_THROWS(ponder::linear_quant_cpu(x.data(), 1, 48, 64, blocks.data(), 3, 4, nullptr, out.data(), 4, 1),
               std::invalid_argument);
  CHECK_THROWS(ponder::linear_quant_cpu(x.data(), 1, 64, 64, blocks.data(), 1, 4, nullptr, out.data(), 4, 1),
               std::invalid_argument);
  CHECK_THROWS(ponder::linear_quant_cpu(x.data(), 1, 64, 64, blocks.data(), 3, 4, nullptr, out.data(), 3, 1),
               std::invalid_argument);
  CHECK_THROWS(ponder::linear_quant_cpu(x.data(), -1, 64, 64, blocks.data(), 3, 4, nullptr, out.data(), 4, 1),
               std::invalid_argument);
  for (float v : out) CHECK_EQ(v, 0.0f);
}
