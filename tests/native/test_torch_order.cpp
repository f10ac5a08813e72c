// The PyTorch-order rms_norm sum and SiLU (csrc/torch_order_cpu.h) against plain double
// arithmetic: the order changes the rounding, not the value. (Their bits are matched against
// PyTorch itself in tests/models/test_native_decoder.py.) Also DecoderCpu's argument checks.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "decoder_cpu.h"
#include "torch_order_cpu.h"

PONDER_TEST(exp_torch_vector_is_exp_within_an_ulp_and_cuts_off) {
  for (int i = -2000; i <= 2000; ++i) {
    const float x = 104.f * float(i) / 2000.f;
    const double want = std::exp(double(x));
    const float got = ponder::exp_torch_vector(x);
    if (want < 1e-37 || want > 3e38) continue;  // subnormal or past float range
    CHECK_NEAR(got, want, 2.5e-7 * want);
  }
  CHECK_EQ(ponder::exp_torch_vector(-104.5f), 0.f);
  CHECK_EQ(ponder::exp_torch_vector(-1e30f), 0.f);
  CHECK(std::isinf(ponder::exp_torch_vector(104.5f)));
  CHECK(std::isinf(ponder::exp_torch_vector(std::numeric_limits<float>::infinity())));
  CHECK(std::isnan(ponder::exp_torch_vector(std::numeric_limits<float>::quiet_NaN())));
  CHECK_EQ(ponder::exp_torch_vector(0.f), 1.f);
}

PONDER_TEST(sum_squares_in_torch_order_is_the_sum) {
  for (int width : {8, 16}) {
    for (int n : {1, 7, 8, 15, 33, 64, 128, 129, 576, 1000, 4099}) {
      std::vector<float> x(n);
      double want = 0;
      for (int i = 0; i < n; ++i) {
        x[i] = std::sin(0.37f * float(i)) * 3.f;
        want += double(x[i]) * double(x[i]);
      }
      CHECK_NEAR(ponder::sum_squares_torch_order(x.data(), n, width), want, 1e-5 * want + 1e-6);
    }
  }
  std::vector<float> x(4, 1.f);
  CHECK_THROWS(ponder::sum_squares_torch_order(x.data(), 4, 4), std::invalid_argument);
}

PONDER_TEST(rms_norm_and_silu_mul_in_torch_order_are_the_formulas) {
  const int rows = 3, C = 40, I = 37;
  std::vector<float> x(rows * C), w(C), out(rows * C);
  for (int i = 0; i < rows * C; ++i) x[i] = std::cos(0.11f * float(i)) * 2.f;
  for (int c = 0; c < C; ++c) w[c] = 0.5f + 0.01f * float(c);
  ponder::rms_norm_torch_order(x.data(), rows, C, C, w.data(), 1e-6f, 8, out.data(), C);
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += double(x[r * C + c]) * x[r * C + c];
    const double scale = 1.0 / std::sqrt(ss / C + 1e-6);
    for (int c = 0; c < C; ++c) CHECK_NEAR(out[r * C + c], x[r * C + c] * scale * w[c], 1e-5);
  }
  std::vector<float> gu(rows * 2 * I), act(rows * I);
  for (int i = 0; i < rows * 2 * I; ++i) gu[i] = std::sin(0.7f * float(i)) * 6.f;
  for (int width : {8, 16}) {
    ponder::silu_mul_torch_order(gu.data(), gu.data() + I, rows, I, 2 * I, width, act.data(), I);
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < I; ++j) {
        const double g = gu[r * 2 * I + j], u = gu[r * 2 * I + I + j];
        CHECK_NEAR(act[r * I + j], g / (1 + std::exp(-g)) * u, 1e-5 * (1 + std::fabs(g * u)));
      }
    }
  }
  CHECK_THROWS(ponder::rms_norm_torch_order(x.data(), rows, 0, C, w.data(), 1e-6f, 8, out.data(), C),
               std::invalid_argument);
}

PONDER_TEST(decoder_cpu_checks_its_shapes) {
  std::vector<float> w(64 * 32, 0.f);
  ponder::DecoderCpuConfig config;
  config.hidden = 32;
  config.heads = 4;
  config.kv_heads = 2;
  config.head_dim = 8;
  config.intermediate = 48;
  config.eps = 1e-6f;
  ponder::DecoderLayerWeights layer;
  layer.attn_norm = layer.mlp_norm = w.data();
  auto lin = [&](int64_t n, int64_t k) {
    ponder::DecoderLinear l;
    l.weight = w.data();
    l.out_features = n;
    l.in_features = k;
    return l;
  };
  layer.qkv = lin(64, 32);
  layer.o = lin(32, 32);
  layer.gate_up = lin(96, 32);
  layer.down = lin(32, 48);
  ponder::DecoderCpu ok(config, {layer}, w.data());
  CHECK_EQ(ok.num_layers(), 1);
  auto bad = layer;
  bad.down = lin(32, 47);
  CHECK_THROWS(ponder::DecoderCpu(config, {bad}, w.data()), std::invalid_argument);
  bad = layer;
  bad.gate_up.bias = w.data();
  CHECK_THROWS(ponder::DecoderCpu(config, {bad}, w.data()), std::invalid_argument);
  auto odd = config;
  odd.torch_width = 4;
  CHECK_THROWS(ponder::DecoderCpu(odd, {layer}, w.data()), std::invalid_argument);
}
