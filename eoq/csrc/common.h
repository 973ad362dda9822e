// Helpers shared by the EOQ kernels: the counter hash of eoq/quant/rng.py, the exact round(log2),
// and the generator key draw of eoq.quant.rng.draw_key.
#pragma once
#include <torch/extension.h>
#include <ATen/CPUGeneratorImpl.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

namespace eoqk {

// Columns of the fused optimizer's per-tensor plan row (float64), written by eoq/training/
// optimizer.py (class PlanCol, the same names and numbers; tests/test_optimizer.py checks that
// the two agree) and read by grid_step in quant.cpp.
enum PlanCol : int {
  PLAN_LR = 0,        // effective learning rate of the tensor (lr * lr_scale, in its format)
  PLAN_BITS = 1,      // bits of the stored weight codes
  PLAN_U_BITS = 2,    // bits of the update codes
  PLAN_U_MODE = 3,    // rounding of the update (0 nearest, 1 stochastic)
  PLAN_G_BITS = 4,    // bits of G when the optimizer quantizes it (0: the layer did)
  PLAN_G_MODE = 5,    // rounding of G
  PLAN_M_BITS = 6,    // bits of the momentum buffer (0: float)
  PLAN_M_MODE = 7,    // rounding of the momentum buffer
  PLAN_SAT_NUM = 8,   // exponent policy: saturate_frac = num / den; count * den > num * n moves it up
  PLAN_SHRINK = 9,    // exponent policy: max|code| < 2^(k-1-shrink) moves it down
  PLAN_READY = 10,    // 1 once the momentum buffer holds values
  PLAN_EXACT_LR = 11, // 1 for a fixed-point lr: lr * v / 2^e formed exactly, in double
  PLAN_MIN_EXP = 12,  // exponent policy: the exponent goes down no further
  PLAN_SAT_DEN = 13,  // (the denominator of saturate_frac)
  PLAN_INT_UPDATE = 14,  // 1: the all-integer update (eoq/training/int_update.py), the columns below
  PLAN_LR_MANT = 15,  // lr = L * 2^-s_l: L
  PLAN_LR_SHIFT = 16, // s_l
  PLAN_WD_MANT = 17,  // wd = Lw * 2^-s_w: Lw (0: no weight decay for this tensor)
  PLAN_WD_SHIFT = 18, // s_w
  PLAN_MU_SHIFT = 19, // mu = 1 - 2^-s: s (0: no momentum)
  PLAN_COLUMNS = 20
};

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
  return x;
}

// One keyed hash gives the 16-bit numbers of two neighbouring elements: i = 2m -> high half,
// i = 2m + 1 -> low half of lowbias32(lowbias32(m + k0) ^ k1).
inline uint32_t pair_hash(uint32_t m, uint32_t k0, uint32_t k1) {
  return lowbias32(lowbias32(m + k0) ^ k1);
}

inline uint32_t rbits32(uint32_t i, uint32_t k0, uint32_t k1) {
  const uint32_t h = pair_hash(i >> 1, k0, k1);
  return (i & 1u) ? (h & 0xffffu) : (h >> 16);
}

// bits[l] for the logical indices i0, i0 + di, ...; contiguous even runs hash once per pair.
inline void fill_bits(uint32_t* bits, int64_t len, uint32_t i0, uint32_t di, uint32_t k0, uint32_t k1) {
  if (di == 1 && (i0 & 1u) == 0) {
    const int64_t pairs = len / 2;
    const uint32_t m0 = i0 >> 1;
    for (int64_t q = 0; q < pairs; ++q) {
      const uint32_t h = pair_hash(m0 + static_cast<uint32_t>(q), k0, k1);
      bits[2 * q] = h >> 16;
      bits[2 * q + 1] = h & 0xffffu;
    }
    if (len & 1) bits[len - 1] = rbits32(i0 + static_cast<uint32_t>(len - 1), k0, k1);
    return;
  }
  for (int64_t l = 0; l < len; ++l) bits[l] = rbits32(i0 + static_cast<uint32_t>(l) * di, k0, k1);
}

// Row r of a padded input uint8 [N, H+2 pad, W+2 pad, cp] (the direct kernels' operand, code +
// 128): a border row is set to 128 (the code 0) and nullptr returned; else its border columns are,
// (n, y) is the source row and the row's first interior byte is returned.
inline uint8_t* padded_row(uint8_t* dst, int64_t r, int64_t H, int64_t W, int64_t pad, int64_t cp, int64_t& n,
                           int64_t& y) {
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad;
  n = r / Hp, y = r % Hp - pad;
  uint8_t* d = dst + r * Wp * cp;
  if (y < 0 || y >= H) {
    std::memset(d, 128, Wp * cp);
    return nullptr;
  }
  std::memset(d, 128, pad * cp);
  std::memset(d + (pad + W) * cp, 128, pad * cp);
  return d + pad * cp;
}

// v rounded once to float32, as the one-element tensor a Fixup scalar's gradient is.
inline at::Tensor f32(double v) {
  at::Tensor t = at::empty({1}, at::TensorOptions().dtype(at::kFloat));
  *t.data_ptr<float>() = static_cast<float>(v);
  return t;
}

// A double's bits as an order key (negative values flipped): unsigned integer order is the values'
// order (a min or max over keys vectorizes), and back.
constexpr uint64_t ABS64 = 0x7fffffffffffffffull, SIGN64 = 0x8000000000000000ull;
inline uint64_t order_key64(uint64_t u) { return u ^ (static_cast<uint64_t>(static_cast<int64_t>(u) >> 63) | SIGN64); }
inline double from_key64(uint64_t k) {
  const uint64_t u = (k & SIGN64) ? (k & ABS64) : ~k;
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
}

// The double whose bits are r (a max of the bits of |v|), or +inf when r is NaN/Inf.
inline double from_abs_bits64(uint64_t r) {
  if (r >= 0x7ff0000000000000ull) return std::numeric_limits<double>::infinity();
  double d;
  std::memcpy(&d, &r, sizeof d);
  return d;
}

// The bits of |v| as an unsigned integer: they order as the magnitudes do, NaN and Inf above every
// finite value, so a max over them is an integer reduction that vectorizes.
inline uint32_t abs_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u & 0x7fffffffu;
}

// The float whose bits are r (a max of abs_bits), or +inf when r is NaN/Inf.
inline double from_abs_bits(uint32_t r) {
  if (r >= 0x7f800000u) return std::numeric_limits<double>::infinity();
  float f;
  std::memcpy(&f, &r, sizeof f);
  return f;
}

// round(log2 a) exactly (frexp + compare with 2^-1/2), 0 for a = 0, floored at -100.
inline int exponent_of(double a) {
  if (a <= 0) return 0;
  int p;
  const double f = std::frexp(a, &p);
  return std::max(f >= std::sqrt(0.5) ? p : p - 1, -100);
}

// The key draw of eoq.quant.rng.draw_key: torch.randint(0, 2^32, (2,)) takes the low 32 bits of two
// random64() draws of the CPU generator.
inline std::pair<uint32_t, uint32_t> draw_key(c10::optional<at::Generator> gen_) {
  auto gen = at::get_generator_or_default<at::CPUGeneratorImpl>(gen_, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  const uint32_t k0 = static_cast<uint32_t>(gen->random64());
  const uint32_t k1 = static_cast<uint32_t>(gen->random64());
  return {k0, k1};
}

}  // namespace eoqk
