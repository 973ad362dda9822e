// Fused EOQ quantizer kernels (CPU). Bit-identical to the torch reference in eoq/quant/quantizers.py
// and eoq/quant/rng.py; see eoq/kernels.py for how this file is compiled and when it is used.
//
//   amax(x)                          max|x| in one pass; NaN/Inf give a non-finite result
//   round_scaled(x, e, m, r, k0, k1, codes)
//       c = clamp(x * 2^-e, -m, m) rounded: r = 0 half-to-even, r = 1 stochastic,
//       SR(y) = floor((floor(y * 2^16) + b) / 2^16) with b the 16 random bits of element i;
//       returns c * 2^e (float32, same layout) or c as integer codes.
//   sq(x, bits, mode, generator, codes, bias, mult, relu, pre, known, known_v, pad, cp)
//       SQ of x + bias, x * mult or (relu) max(x + pre, 0) + bias in one call, the affine value
//       formed exactly (in double) before its rounding; pad >= 0: nearest codes written as the
//       direct kernels' padded input (code + 128, border 128; round_padded)
//   grid_step(...)                   the integer-weight optimizer step (see eoq/training/optimizer.py)
//   random_bits(n, k0, k1)           the 16-bit random numbers b_0 .. b_{n-1} (for tests)
// Element i is the row-major index in the *logical* shape (mod 2^32), so NCHW and channels-last
// tensors get the same random bits for the same element.
#include <torch/extension.h>
#include <atomic>
#include "common.h"
#include <ATen/Parallel.h>
#include <ATen/CPUGeneratorImpl.h>
#include <mutex>
#include <string>
#include <vector>
#include <type_traits>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {
using eoqk::draw_key;
using eoqk::exponent_of;
using eoqk::pair_hash;
using eoqk::rbits32;
using eoqk::fill_bits;
using eoqk::from_abs_bits;

double abs_max_affine(const at::Tensor& x_, float mult, float bias, bool relu = false, float pre = 0.0f);

double abs_max(const at::Tensor& x_) {
  at::Tensor x = x_.contiguous(x_.suggest_memory_format());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "amax: float32 only");
  const uint32_t* p = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  const int64_t n = x.numel();
  // |x| ordered as the integer x_bits & 0x7fffffff (an integer max vectorizes); NaN and Inf have
  // all exponent bits set, so they land above every finite value and the result is non-finite.
  uint32_t r = at::parallel_reduce(0, n, 1 << 15, 0u, [&](int64_t b, int64_t e, uint32_t acc) {
    uint32_t m = acc;
    for (int64_t i = b; i < e; ++i) m = std::max(m, p[i] & 0x7fffffffu);
    return m;
  }, [](uint32_t a, uint32_t b) { return std::max(a, b); });
  return from_abs_bits(r);
}

// The float32 ordered as an unsigned integer (negative values flipped): a min/max over these keys
// vectorizes. NaN and Inf land at or beyond the keys of -inf and +inf.
inline uint32_t order_key(uint32_t u) { return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u); }
inline float from_key(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// max|v| of v = x + bias, x * mult or (relu) max(x + pre, 0) + bias, each operation exact: in
// double, which holds the sum or product of a float32 x and an 8-bit scalar exactly as long as
// their binary exponents are less than 29 bits apart. v is monotone in x, so max|v| is reached at
// min x or max x: one pass for the range of x (integer keys), then the formula at both ends.
// NaN or Inf in x give +inf.
double abs_max_affine(const at::Tensor& x_, float mult, float bias, bool relu, float pre) {
  if (bias == 0.0f && mult == 1.0f && !relu) return abs_max(x_);
  at::Tensor x = x_.contiguous(x_.suggest_memory_format());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "amax: float32 only");
  const uint32_t* p = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  using R = std::pair<uint32_t, uint32_t>;    // (min key, max key)
  const R r = at::parallel_reduce(0, x.numel(), 1 << 15, R(~0u, 0u), [&](int64_t lo, int64_t hi, R acc) {
    uint32_t kl = acc.first, kh = acc.second;
    for (int64_t i = lo; i < hi; ++i) {
      const uint32_t k = order_key(p[i]);
      kl = std::min(kl, k);
      kh = std::max(kh, k);
    }
    return R(kl, kh);
  }, [](R a, R c) { return R(std::min(a.first, c.first), std::max(a.second, c.second)); });
  if (x.numel() == 0) return 0.0;
  if (r.second >= order_key(0x7f800000u) || r.first <= order_key(0xff800000u)) {
    return std::numeric_limits<double>::infinity();
  }
  double lo = from_key(r.first), hi = from_key(r.second);
  if (mult != 1.0f) return std::fabs(static_cast<double>(mult)) * std::max(std::fabs(lo), std::fabs(hi));
  if (relu) lo = std::max(lo + pre, 0.0), hi = std::max(hi + pre, 0.0);
  return std::max(std::fabs(lo + bias), std::fabs(hi + bias));
}

constexpr int64_t BLK = 512;

// Quantize len elements s[0..len) whose logical indices are i0, i0 + di, i0 + 2 di, ...
// ``inv`` is float, or double where s * inv must be exact (a fixed-point learning rate).
template <typename T, typename OUT, typename INV = float>
inline void quant_block(const float* s, OUT* d, int64_t len, uint32_t i0, uint32_t di, INV inv,
                        float scale, T m, int64_t mode, uint32_t k0, uint32_t k1, bool codes,
                        float bias = 0.0f, float mult = 1.0f, bool relu = false, float pre = 0.0f,
                        const uint32_t* given_bits = nullptr) {
  T c[BLK];
  if constexpr (std::is_same<T, float>::value && std::is_same<INV, float>::value) {
    if (mult != 1.0f && !relu && bias == 0.0f) {
      // x * mult in float32 when every product is exact (an FMA finds its rounding error 0), as
      // the error of the residual stream times a Fixup multiplier always is (a 16-bit value times
      // an 8-bit one): the rounding below then sees the double path's values exactly, in twice the
      // lanes. A block with one inexact product (or NaN, Inf) takes the double path.
      float v[BLK];
      uint32_t inexact = 0;
      for (int64_t l = 0; l < len; ++l) {
        v[l] = s[l] * mult;
        inexact |= static_cast<uint32_t>(std::fma(s[l], mult, -v[l]) != 0.0f);
      }
      if (!inexact) {
        quant_block<T, OUT, INV>(v, d, len, i0, di, inv, scale, m, mode, k0, k1, codes, 0.0f, 1.0f, false, 0.0f,
                                 given_bits);
        return;
      }
    } else if (mult == 1.0f && (relu || bias != 0.0f)) {
      // x + bias and relu(x + pre) + bias the same way: each float32 sum checked exact by its
      // error term (TwoSum: exact for any two floats without overflow), a stream value plus a Fixup
      // bias usually is
      float v[BLK];
      uint32_t inexact = 0;
      for (int64_t l = 0; l < len; ++l) {
        float t = s[l];
        if (relu) {
          const float u = t + pre, bv = u - t;
          inexact |= static_cast<uint32_t>(((t - (u - bv)) + (pre - bv)) != 0.0f);
          t = u > 0.0f ? u : 0.0f;
          inexact |= static_cast<uint32_t>(u != u);          // NaN: the double path decides
        }
        const float w = t + bias, bw = w - t;
        inexact |= static_cast<uint32_t>(((t - (w - bw)) + (bias - bw)) != 0.0f);
        v[l] = w;
      }
      if (!inexact) {
        quant_block<T, OUT, INV>(v, d, len, i0, di, inv, scale, m, mode, k0, k1, codes, 0.0f, 1.0f, false, 0.0f,
                                 given_bits);
        return;
      }
    }
  }
  if (relu || mult != 1.0f || bias != 0.0f) {
    // the affine value and its rounding in double: exact (see abs_max_affine), then the same
    // nearest / stochastic rounding as below on the exact value
    double v[BLK];
    const double b = bias, sc = mult, q = pre, dinv = static_cast<double>(inv), dm = static_cast<double>(m);
    if (relu) {
      for (int64_t l = 0; l < len; ++l) v[l] = std::max(s[l] + q, 0.0) + b;
    } else if (mult != 1.0f) {
      for (int64_t l = 0; l < len; ++l) v[l] = s[l] * sc;
    } else {
      for (int64_t l = 0; l < len; ++l) v[l] = s[l] + b;
    }
    uint32_t own[BLK];
    const uint32_t* bits = given_bits;
    if (mode != 0 && bits == nullptr) {
      fill_bits(own, len, i0, di, k0, k1);
      bits = own;
    }
    if (mode == 0) {
      for (int64_t l = 0; l < len; ++l) {
        const double y = std::min(std::max(v[l] * dinv, -dm), dm);
        c[l] = static_cast<T>(std::nearbyint(y));
      }
    } else {
      for (int64_t l = 0; l < len; ++l) {
        const double y = std::min(std::max(v[l] * dinv, -dm), dm);
        c[l] = static_cast<T>(std::floor((std::floor(y * 65536.0) + static_cast<double>(bits[l])) * (1.0 / 65536.0)));
      }
    }
  } else if (mode == 0) {
    for (int64_t l = 0; l < len; ++l) {
      T y = static_cast<T>(s[l] * inv);
      y = y < -m ? -m : (y > m ? m : y);
      c[l] = std::nearbyint(y);
    }
  } else {
    uint32_t own[BLK];
    const uint32_t* bits = given_bits;
    if (bits == nullptr) {
      fill_bits(own, len, i0, di, k0, k1);
      bits = own;
    }
    for (int64_t l = 0; l < len; ++l) {
      T y = static_cast<T>(s[l] * inv);
      y = y < -m ? -m : (y > m ? m : y);
      T t = std::floor(y * static_cast<T>(65536)) + static_cast<T>(static_cast<int32_t>(bits[l]));
      c[l] = std::floor(t * static_cast<T>(1.0 / 65536));
    }
  }
  if (codes) {
    for (int64_t l = 0; l < len; ++l) d[l] = static_cast<OUT>(c[l]);
  } else {
    for (int64_t l = 0; l < len; ++l) d[l] = static_cast<OUT>(static_cast<float>(c[l]) * scale);
  }
}

template <typename T, typename OUT>
void run(const float* src, OUT* dst, const at::Tensor& x, bool cl, float inv, float scale, T m,
         int64_t mode, uint32_t k0, uint32_t k1, bool codes, float bias, float mult,
         uint32_t off = 0, bool relu = false, float pre = 0.0f) {
  const int64_t n = x.numel();
  // nearest rounding uses no random bits: any layout runs as one flat pass over memory
  if (!cl || mode == 0) {
    at::parallel_for(0, (n + BLK - 1) / BLK, 16, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t i = blk * BLK, len = std::min(BLK, n - i);
        quant_block<T, OUT>(src + i, dst + i, len, static_cast<uint32_t>(i) + off, 1u, inv, scale, m,
                            mode, k0, k1, codes, bias, mult, relu, pre);
      }
    });
    return;
  }
  // channels-last 4-D: memory order (n, h, w, c); logical index ((n*C + c)*H + h)*W + w
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  if (HW % 2 == 0 && off % 2 == 0 && 2 * C <= BLK) {
    // pixels 2q and 2q + 1 of an image: their channel c has logical indices 2m and 2m + 1 with
    // m = (base + c*HW)/2 + q', so one pair hash per channel serves both pixels. A run of P pairs
    // of one image is 2 P C elements in a row of memory: their bits are laid out in that order and
    // quantized in one block (a block per pixel pair cost 4-10x more for 16 channels)
    const uint32_t hh = static_cast<uint32_t>(HW / 2);
    const int64_t P = BLK / (2 * C), pairs_per_image = HW / 2;
    at::parallel_for(0, N * HW / 2, std::max<int64_t>(1, (1 << 13) / std::max<int64_t>(C, 1)),
                     [&](int64_t b, int64_t e) {
      uint32_t bits[BLK];
      for (int64_t q = b; q < e;) {
        const int64_t nn = q / pairs_per_image;
        const int64_t qe = std::min({q + P, e, (nn + 1) * pairs_per_image}), np = qe - q;
        const uint32_t m0 = static_cast<uint32_t>((nn * C * HW) / 2 + (q - nn * pairs_per_image)) + off / 2;
        for (int64_t p = 0; p < np; ++p) {
          uint32_t* even = bits + 2 * p * C;
          uint32_t* odd = even + C;
          const uint32_t mp = m0 + static_cast<uint32_t>(p);
          for (int64_t c = 0; c < C; ++c) {
            const uint32_t h = pair_hash(mp + static_cast<uint32_t>(c) * hh, k0, k1);
            even[c] = h >> 16;
            odd[c] = h & 0xffffu;
          }
        }
        quant_block<T, OUT>(src + 2 * q * C, dst + 2 * q * C, 2 * np * C, 0, 0, inv, scale, m, mode, k0, k1,
                            codes, bias, mult, relu, pre, bits);
        q = qe;
      }
    });
    return;
  }
  if (HW % 2 == 0 && off % 2 == 0) {
    // as above, one pixel pair at a time (more than BLK / 2 channels)
    const uint32_t hh = static_cast<uint32_t>(HW / 2);
    at::parallel_for(0, N * HW / 2, std::max<int64_t>(1, (1 << 13) / std::max<int64_t>(C, 1)),
                     [&](int64_t b, int64_t e) {
      uint32_t hi[BLK], lo[BLK];
      for (int64_t q = b; q < e; ++q) {
        const int64_t pix = 2 * q, nn = pix / HW, hw = pix % HW;
        const uint32_t m0 = static_cast<uint32_t>((nn * C * HW + hw) / 2) + off / 2;
        for (int64_t c0 = 0; c0 < C; c0 += BLK) {
          const int64_t len = std::min(BLK, C - c0);
          const uint32_t mc = m0 + static_cast<uint32_t>(c0) * hh;
          for (int64_t l = 0; l < len; ++l) {
            const uint32_t h = pair_hash(mc + static_cast<uint32_t>(l) * hh, k0, k1);
            hi[l] = h >> 16;
            lo[l] = h & 0xffffu;
          }
          quant_block<T, OUT>(src + pix * C + c0, dst + pix * C + c0, len, 0, 0, inv, scale, m, mode, k0,
                              k1, codes, bias, mult, relu, pre, hi);
          quant_block<T, OUT>(src + (pix + 1) * C + c0, dst + (pix + 1) * C + c0, len, 0, 0, inv, scale, m,
                              mode, k0, k1, codes, bias, mult, relu, pre, lo);
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * HW, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(C, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t pix = b; pix < e; ++pix) {
      const int64_t nn = pix / HW, hw = pix % HW;
      const uint32_t base = static_cast<uint32_t>(nn * C * HW + hw) + off;
      for (int64_t c0 = 0; c0 < C; c0 += BLK) {
        const int64_t len = std::min(BLK, C - c0);
        quant_block<T, OUT>(src + pix * C + c0, dst + pix * C + c0, len,
                            base + static_cast<uint32_t>(c0 * HW), static_cast<uint32_t>(HW),
                            inv, scale, m, mode, k0, k1, codes, bias, mult, relu, pre);
      }
    }
  });
}

at::Tensor round_scaled(const at::Tensor& x_, int64_t exponent, int64_t max_code, int64_t mode,
                        int64_t k0, int64_t k1, bool codes, double bias_ = 0.0, double mult_ = 1.0,
                        int64_t offset = 0, bool relu = false, double pre_ = 0.0) {
  const float bias = static_cast<float>(bias_), mult = static_cast<float>(mult_);
  const float pre = static_cast<float>(pre_);
  TORCH_CHECK(bias == 0.0f || mult == 1.0f, "round_scaled: bias and mult cannot both be set");
  TORCH_CHECK(!relu || mult == 1.0f, "round_scaled: relu and mult cannot both be set");
  TORCH_CHECK(x_.scalar_type() == at::kFloat, "round_scaled: float32 only");
  const bool cl = x_.dim() == 4 && !x_.is_contiguous() && x_.is_contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor x = cl ? x_ : x_.contiguous();
  const float scale = std::ldexp(1.0f, static_cast<int>(exponent));
  const float inv = std::ldexp(1.0f, static_cast<int>(-exponent));
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const uint32_t u0 = static_cast<uint32_t>(k0), u1 = static_cast<uint32_t>(k1);
  const uint32_t off = static_cast<uint32_t>(offset);   // logical index of element 0 (data-parallel shards)
  const float* src = x.data_ptr<float>();
  at::Tensor out;
  if (codes) {
    auto dt = max_code <= 127 ? at::kChar : (max_code <= 32767 ? at::kShort : at::kInt);
    out = at::empty(x.sizes(), x.options().dtype(dt), fmt);
    if (dt == at::kChar)
      run<float, int8_t>(src, out.data_ptr<int8_t>(), x, cl, inv, scale, float(max_code), mode, u0, u1, true, bias, mult, off, relu, pre);
    else if (dt == at::kShort)
      run<double, int16_t>(src, out.data_ptr<int16_t>(), x, cl, inv, scale, double(max_code), mode, u0, u1, true, bias, mult, off, relu, pre);
    else
      run<double, int32_t>(src, out.data_ptr<int32_t>(), x, cl, inv, scale, double(max_code), mode, u0, u1, true, bias, mult, off, relu, pre);
  } else {
    out = at::empty(x.sizes(), x.options(), fmt);
    if (max_code <= 127)
      run<float, float>(src, out.data_ptr<float>(), x, cl, inv, scale, float(max_code), mode, u0, u1, false, bias, mult, off, relu, pre);
    else
      run<double, float>(src, out.data_ptr<float>(), x, cl, inv, scale, double(max_code), mode, u0, u1, false, bias, mult, off, relu, pre);
  }
  return out;
}

// SQ(x, bits) in one call: max|x|, exponent, key draw (stochastic only), round. Returns
// (values or codes, lsb exponent); raises on NaN/Inf. ``known`` >= 0: max|x| as abs_max gives it,
// found by the kernel that wrote x (no max pass here); only for x or x * mult, whose max|v| it
// fixes (a bias or ReLU needs the range of x, not its largest magnitude). ``known_v`` >= 0: max|v|
// of the affine value v itself, as abs_max_affine gives it (found from x's known range).
// Nearest codes of a channels-last float32 x (N, C, H, W) written as the direct kernels' padded
// input (direct.cpp pad_u8): uint8 [N, H+2p, W+2p, cp] holding code + 128, 128 in the border and in
// channels C..cp-1, 256 readable bytes past the end; each row quantized in blocks of BLK as
// round_scaled does (the same codes) and offset on its way out.
at::Tensor round_padded(const at::Tensor& x, int64_t exponent, int64_t max_code, float bias, float mult, bool relu,
                        float pre, int64_t pad, int64_t cp) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(cp >= C && cp % 4 == 0 && pad >= 0 && max_code <= 127, "sq: padded codes need cp >= C, cp % 4 == 0, <= 8 bits");
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad;
  at::Tensor out = at::empty({N * Hp * Wp * cp + 256}, x.options().dtype(at::kByte)).narrow(0, 0, N * Hp * Wp * cp)
                       .view({N, Hp, Wp, cp});
  const float* src = x.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const float inv = std::ldexp(1.0f, static_cast<int>(-exponent)), scale = std::ldexp(1.0f, static_cast<int>(exponent));
  const float m = static_cast<float>(max_code);
  at::parallel_for(0, N * Hp, 4, [&](int64_t b, int64_t e) {
    int8_t tmp[BLK];
    for (int64_t r = b; r < e; ++r) {
      int64_t n, y;
      uint8_t* dd = eoqk::padded_row(dst, r, H, W, pad, cp, n, y);
      if (dd == nullptr) continue;
      const float* s = src + (n * H + y) * W * C;           // channels-last: a row is W * C values
      for (int64_t i = 0; i < W * C; i += BLK) {
        const int64_t len = std::min<int64_t>(BLK, W * C - i);
        quant_block<float, int8_t>(s + i, tmp, len, 0, 0, inv, scale, m, 0, 0, 0, true, bias, mult, relu, pre);
        if (cp == C) {
          for (int64_t l = 0; l < len; ++l) dd[i + l] = static_cast<uint8_t>(tmp[l]) ^ 0x80u;
        } else {
          for (int64_t l = 0; l < len; ++l) dd[((i + l) / C) * cp + (i + l) % C] = static_cast<uint8_t>(tmp[l]) ^ 0x80u;
        }
      }
      if (cp != C)
        for (int64_t px = 0; px < W; ++px) std::memset(dd + px * cp + C, 128, cp - C);
    }
  });
  return out;
}

std::tuple<at::Tensor, int64_t> sq(const at::Tensor& x, int64_t bits, int64_t mode,
                                   c10::optional<at::Generator> gen, bool codes, double bias,
                                   double mult, bool relu, double pre, double known, double known_v,
                                   int64_t pad, int64_t cp) {
  TORCH_CHECK(known < 0.0 || (float(bias) == 0.0f && !relu), "sq: a known max|x| with a bias or ReLU");
  double a = 0.0;
  if (known_v >= 0.0 && x.numel()) {
    a = known_v;
  } else if (known >= 0.0 && x.numel()) {
    a = std::fabs(static_cast<double>(float(mult))) * known;       // as abs_max_affine forms it
  } else if (x.numel()) {
    a = abs_max_affine(x, float(mult), float(bias), relu, float(pre));
  }
  TORCH_CHECK(std::isfinite(a), "cannot quantize a tensor holding NaN or Inf");
  const int64_t lsb = exponent_of(a) + 1 - bits, m = (int64_t(1) << (bits - 1)) - 1;
  if (pad >= 0) {      // the direct kernels' padded input (nearest codes of a channels-last x)
    TORCH_CHECK(mode == 0 && codes && x.dim() == 4 && x.scalar_type() == at::kFloat &&
                x.is_contiguous(at::MemoryFormat::ChannelsLast), "sq: padded codes of a channels-last x, nearest");
    return {round_padded(x, lsb, m, float(bias), float(mult), relu, float(pre), pad, cp), lsb};
  }
  std::pair<uint32_t, uint32_t> k{0, 0};
  if (mode) k = draw_key(gen);
  return {round_scaled(x, lsb, m, mode, k.first, k.second, codes, bias, mult, 0, relu, pre), lsb};
}

// SQ of a float32 buffer in place (shift scale from its own max|x|), as eoq.quant.quantizers.sq.
void sq_inplace(at::Tensor& x, int64_t bits, int64_t mode, uint32_t k0, uint32_t k1) {
  const double a = abs_max(x);
  TORCH_CHECK(std::isfinite(a), "cannot quantize a tensor holding NaN or Inf");
  const int64_t lsb = exponent_of(a) + 1 - bits, m = (int64_t(1) << (bits - 1)) - 1;
  at::Tensor out = round_scaled(x, lsb, m, mode, k0, k1, false);
  x.copy_(out);
}

// ---- the all-integer update (eoq/training/int_update.py, bit for bit) ----------------------------
constexpr int64_t ACC_BITS = 64;

// clamp(SR(y / 2^f), -m, m) of an integer y (see int_update.sr_clamped): y first clamped to
// +-(m + 1) * 2^f, which changes no result and keeps every shift inside int64.
inline int64_t sr_clamped(int64_t y, int64_t f, int64_t m, uint32_t b) {
  if (f >= 0) {
    const int64_t lim = f >= 62 - 24 ? (int64_t(1) << 62) : std::min((m + 1) << f, int64_t(1) << 62);
    y = std::min(std::max(y, -lim), lim);
    const int64_t t = f <= 16 ? y * (int64_t(1) << (16 - f)) : (y >> (f - 16));    // >> floors (arithmetic)
    const int64_t r = (t + int64_t(b)) >> 16;
    return std::min(std::max(r, -m), m);
  }
  y = std::min(std::max(y, -(m + 1)), m + 1) * (int64_t(1) << std::min<int64_t>(-f, 32));
  return std::min(std::max(y, -m), m);
}

// out[l] = sr_clamped(y[l], f, m, b[l]) for a block: the same integers, with the branches on f
// taken once per block so that each loop is straight-line and vectorizes.
template <typename OUT>
inline void sr_clamped_block(const int64_t* __restrict y, const uint32_t* __restrict b, int64_t len, int64_t f,
                             int64_t m, OUT* __restrict out) {
  if (f >= 0) {
    const int64_t lim = f >= 62 - 24 ? (int64_t(1) << 62) : std::min((m + 1) << f, int64_t(1) << 62);
    if (f <= 16) {
      const int64_t mul = int64_t(1) << (16 - f);
      for (int64_t l = 0; l < len; ++l) {
        const int64_t r = (std::min(std::max(y[l], -lim), lim) * mul + int64_t(b[l])) >> 16;
        out[l] = static_cast<OUT>(std::min(std::max(r, -m), m));
      }
    } else {
      const int64_t sh = f - 16;
      for (int64_t l = 0; l < len; ++l) {
        const int64_t r = ((std::min(std::max(y[l], -lim), lim) >> sh) + int64_t(b[l])) >> 16;
        out[l] = static_cast<OUT>(std::min(std::max(r, -m), m));
      }
    }
    return;
  }
  const int64_t mul = int64_t(1) << std::min<int64_t>(-f, 32);
  for (int64_t l = 0; l < len; ++l)
    out[l] = static_cast<OUT>(std::min(std::max(std::min(std::max(y[l], -(m + 1)), m + 1) * mul, -m), m));
}

// round(log2(m * 2^e)) for an integer m >= 0, exactly: 2 m^2 >= 4^bitlength(m) decides; floored at -100.
inline int64_t exponent_of_int(uint64_t m, int64_t e) {
  if (m == 0) return 0;
  const int bl = 64 - __builtin_clzll(m);
  const int64_t p = bl + e;
  const unsigned __int128 sq = static_cast<unsigned __int128>(m) * m * 2;
  return std::max<int64_t>(sq >= (static_cast<unsigned __int128>(1) << (2 * bl)) ? p : p - 1, -100);
}

// a term x * mult * 2^-shift of the update's sum: x float32 values, or integer codes (int8/16/32)
struct Term {
  const void* x; double mult; int64_t shift; at::ScalarType type = at::kFloat;
};

// f(T{}) with T the C++ type of a term's elements: float32 values, or int8/int16/int32 codes
template <typename F>
decltype(auto) by_code_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kChar: return f(int8_t{});
    case at::kShort: return f(int16_t{});
    default: TORCH_CHECK(t == at::kInt, "grid_step: a term of type ", t); return f(int32_t{});
  }
}

template <typename T>
int64_t max_abs_code(const T* x, int64_t n) {
  int32_t m = 0;
  for (int64_t j = 0; j < n; ++j) { const int32_t a = x[j] < 0 ? -int32_t(x[j]) : int32_t(x[j]); m = a > m ? a : m; }
  return m;
}

// acc[j] += floor(x[j] * mult * scale): |x * mult| < 2^53 (exact in double), |result| < 2^62
template <typename T>
void add_term(int64_t* __restrict acc, const T* __restrict x, int64_t n, double mult, double scale) {
  for (int64_t j = 0; j < n; ++j) {            // floor(v) as trunc(v) - (trunc(v) > v): vectorizes
    const double v = static_cast<double>(x[j]) * mult * scale;
    const int64_t t = static_cast<int64_t>(v);
    acc[j] += t - (static_cast<double>(t) > v);
  }
}

// S = sum of the terms as int64 integers S * 2^e0 (int_update.accumulate): e0 and each term's scale
// 2^(-shift - e0); false when all terms are zero. S itself is formed a block at a time
// (sum_block), as often as it is needed, instead of held whole: an int64 per weight is 8 bytes
// of memory traffic per pass, and the step would make five passes over it.
bool accumulate_plan(const std::vector<Term>& terms, const std::vector<double>& amaxes, int64_t& e0,
                     std::vector<double>& scales) {
  bool any = false;
  int64_t top = 0;
  for (size_t t = 0; t < terms.size(); ++t) {
    if (!(amaxes[t] > 0)) continue;
    int p;
    std::frexp(amaxes[t] * terms[t].mult, &p);
    const int64_t tt = p - terms[t].shift;
    top = any ? std::max(top, tt) : tt;
    any = true;
  }
  if (!any) return false;
  e0 = top + 2 - (ACC_BITS - 2);
  scales.clear();
  for (const Term& t : terms) scales.push_back(std::ldexp(1.0, static_cast<int>(-t.shift - e0)));
  return true;
}

// S[j0 .. j0 + len) into out (integer sums of the terms' floors: the same integers in any order)
void sum_block(const std::vector<Term>& terms, const std::vector<double>& scales, int64_t j0, int64_t len,
               int64_t* out) {
  for (int64_t l = 0; l < len; ++l) out[l] = 0;
  for (size_t t = 0; t < terms.size(); ++t)
    by_code_type(terms[t].type, [&](auto z) {
      add_term(out, static_cast<const decltype(z)*>(terms[t].x) + j0, len, terms[t].mult, scales[t]);
    });
}

// The exponent policy's move for new codes (max |code| amax_c, nsat of them saturated): +1 when
// nsat * sat_den > sat_num * n (an integer comparison), -1 when 0 < amax_c < 2^(bits-1-shrink) and
// e > min_exp, else 0.
inline int policy_move(int64_t n, int64_t e, int64_t amax_c, int64_t nsat, int64_t bits, int64_t shrink,
                       int64_t min_exp, int64_t sat_num, int64_t sat_den) {
  const int64_t k_max = (int64_t(1) << (bits - 1)) - 1;
  if (amax_c >= k_max && nsat * sat_den > sat_num * n) return 1;
  if (amax_c > 0 && amax_c < (int64_t(1) << (bits - 1 - shrink)) && e > min_exp) return -1;
  return 0;
}

// The exponent policy on new codes cp[0..n) (policy_move), then the weights pp = codes * 2^e and
// the exponent *ep: up one bit halves the codes (SR, key r0/r1), down one doubles them (exact).
void apply_policy(float* cp, float* pp, float* ep, int64_t n, int64_t e, int64_t amax_c, int64_t nsat,
                  int64_t bits, int64_t shrink, int64_t min_exp, int64_t sat_num, int64_t sat_den,
                  uint32_t r0, uint32_t r1) {
  const int64_t k_max = (int64_t(1) << (bits - 1)) - 1;
  const int move = policy_move(n, e, amax_c, nsat, bits, shrink, min_exp, sat_num, sat_den);
  if (move > 0) {
    for (int64_t j = 0; j < n; ++j) {
      double h = std::floor((std::floor(double(cp[j]) * 0.5 * 65536.0) + double(rbits32(uint32_t(j), r0, r1))) / 65536.0);
      cp[j] = float(h < -double(k_max) ? -double(k_max) : (h > double(k_max) ? double(k_max) : h));
    }
  } else if (move < 0) {
    for (int64_t j = 0; j < n; ++j) cp[j] *= 2;
  }
  e += move;
  const float scale = std::ldexp(1.0f, static_cast<int>(e));
  for (int64_t j = 0; j < n; ++j) pp[j] = cp[j] * scale;
  *ep = static_cast<float>(e);
}

// apply_policy for weights pp that already hold their new codes times 2^e: a move down (codes
// doubled, the exponent one less) leaves every weight's value as it is, a move up halves the codes
// (as apply_policy) and rewrites the weights; *ep gets the new exponent.
void apply_policy_codes(float* pp, float* ep, int64_t n, int64_t e, int64_t amax_c, int64_t nsat,
                        int64_t bits, int64_t shrink, int64_t min_exp, int64_t sat_num, int64_t sat_den,
                        uint32_t r0, uint32_t r1) {
  const int move = policy_move(n, e, amax_c, nsat, bits, shrink, min_exp, sat_num, sat_den);
  if (move > 0) {
    std::vector<float> codes(n);
    const float inv = std::ldexp(1.0f, static_cast<int>(-e));
    for (int64_t j = 0; j < n; ++j) codes[j] = pp[j] * inv;        // exact: a code of at most 24 bits
    apply_policy(codes.data(), pp, ep, n, e, amax_c, nsat, bits, shrink, min_exp, sat_num, sat_den, r0, r1);
    return;
  }
  *ep = static_cast<float>(e + move);
}

// One EOQSGD step for integer-stored tensors (see eoq/training/optimizer.py, which holds the same
// algorithm in torch ops and is the reference). cfg rows: eoq/csrc/common.h, PlanCol (lr_eff, bits,
// u_bits, u_mode, gq_bits (0 = none), gq_mode, m_bits (0 = none), m_mode, saturate_frac as
// num / den, shrink_bits, buffer_ready, exact_lr, min_exp, and the all-integer update's columns).
// keys: (n, 4, 2) int64 for G, M, U and the rescale. grads: float32 values, or (the all-integer
// update) int8 G codes whose value is codes * 2^grad_exps[i]. bufs: the momentum buffers, float32 values
// (float-sum updates) or, for the all-integer update, M-bit integer codes whose LSB exponent is the
// int32 scalar in buf_exps (read and written here).
void grid_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<int64_t> grad_exps,
               std::vector<at::Tensor> bufs, std::vector<at::Tensor> buf_exps, std::vector<at::Tensor> exps,
               std::vector<at::Tensor> updates, at::Tensor cfg_, at::Tensor keys_, double mu) {
  TORCH_CHECK(cfg_.dim() == 2 && cfg_.size(1) == eoqk::PLAN_COLUMNS, "grid_step: the plan has ",
              cfg_.size(1), " columns, the kernel reads ", int(eoqk::PLAN_COLUMNS));
  const auto cfg = cfg_.accessor<double, 2>();
  const auto keys = keys_.accessor<int64_t, 3>();
  // the all-integer update of tensor i (int_update and optimizer._int_grid_step, bit for bit)
  auto int_step_one = [&](size_t i, at::Tensor& p, at::Tensor& g, int64_t n,
                          int64_t bits, int64_t u_bits, int64_t m_bits, bool ready, int64_t min_exp,
                          int64_t shrink, int64_t sat_num, int64_t sat_den, auto key) {
    const int64_t lr_mant = int64_t(cfg[i][eoqk::PLAN_LR_MANT]), lr_shift = int64_t(cfg[i][eoqk::PLAN_LR_SHIFT]);
    const int64_t wd_mant = int64_t(cfg[i][eoqk::PLAN_WD_MANT]), wd_shift = int64_t(cfg[i][eoqk::PLAN_WD_SHIFT]);
    const int64_t s_mu = int64_t(cfg[i][eoqk::PLAN_MU_SHIFT]);
    float* pp = p.data_ptr<float>();
    float* ep = exps[i].data_ptr<float>();
    int64_t e = static_cast<int64_t>(*ep);
    const double lead = s_mu ? 1.0 : double(lr_mant);
    // the gradient: float32 values, or int8 G codes with value codes * 2^grad_exps[i]
    const bool g8 = g.scalar_type() == at::kChar;
    std::vector<Term> terms{{g.data_ptr(), lead, g8 ? -grad_exps[i] : 0, g.scalar_type()}};
    std::vector<double> amaxes{g8 ? double(max_abs_code(g.data_ptr<int8_t>(), n)) : abs_max(g)};
    if (wd_mant) { terms.push_back({pp, double(wd_mant) * lead, wd_shift}); amaxes.push_back(abs_max(p)); }
    // the momentum buffer: M-bit codes (int8/16/32) with their LSB exponent, v = codes * 2^lsb_v
    at::Tensor buf = bufs[i];
    const at::ScalarType bt = buf.scalar_type();
    TORCH_CHECK(!s_mu || bt == at::kChar || bt == at::kShort || bt == at::kInt,
                "grid_step: the all-integer update keeps the momentum buffer as integer codes");
    int32_t* bexp = s_mu ? buf_exps[i].data_ptr<int32_t>() : nullptr;
    if (s_mu && ready) {
      terms.push_back({buf.data_ptr(), double((int64_t(1) << s_mu) - 1), s_mu - *bexp, bt});
      const int64_t cmax = by_code_type(bt, [&](auto z) {
        return max_abs_code(static_cast<const decltype(z)*>(buf.data_ptr()), n); });
      amaxes.push_back(double(cmax));
    }
    for (double a : amaxes)
      TORCH_CHECK(std::isfinite(a), "cannot form the update of a tensor holding NaN or Inf");
    std::vector<double> scales;
    int64_t e0 = 0;
    void* const bdata = s_mu ? buf.data_ptr() : nullptr;
    auto store_codes = [&](int64_t j0, const int64_t* v, int64_t len) {     // a block of M codes
      by_code_type(bt, [&](auto z) {
        using T = decltype(z);
        T* d = static_cast<T*>(bdata) + j0;
        for (int64_t l = 0; l < len; ++l) d[l] = static_cast<T>(v[l]);
      });
    };
    const bool any = accumulate_plan(terms, amaxes, e0, scales);
    // M's exponent needs max|S| first (one pass forming S); then one pass per block of BLK elements
    // forms S again and does the rest: M = SR(S) (the buffer), U = SR(L M) or SR(S), the new codes,
    // their max and saturation count
    const int64_t mm = s_mu ? (int64_t(1) << (m_bits - 1)) - 1 : 0;
    int64_t lsb = 1 - m_bits, f = 0;
    // a tensor of at most KEEP_S weights keeps S from the first pass (at most 1 MiB, in cache) for
    // the second instead of forming it again; a larger one forms it twice, a block at a time
    constexpr int64_t KEEP_S = int64_t(1) << 17;
    int64_t sblk_[BLK];
    int64_t* sblk = sblk_;
    std::vector<int64_t> kept;
    const bool keep = s_mu && any && n <= KEEP_S;
    if (keep) kept.resize(n);
    if (s_mu && any) {
      uint64_t amax = 0;
      for (int64_t j0 = 0; j0 < n; j0 += BLK) {
        const int64_t len = std::min(BLK, n - j0);
        if (keep) sblk = kept.data() + j0;
        sum_block(terms, scales, j0, len, sblk);
        for (int64_t l = 0; l < len; ++l) amax = std::max<uint64_t>(amax, uint64_t(sblk[l] < 0 ? -sblk[l] : sblk[l]));
      }
      lsb = exponent_of_int(amax, e0) + 1 - m_bits;
    }
    if (s_mu) f = lr_shift + e - lsb;
    else if (any) f = lr_shift + e - e0;
    const int64_t u_max = (int64_t(1) << (u_bits - 1)) - 1, k_max = (int64_t(1) << (bits - 1)) - 1;
    const bool u8 = updates[i].scalar_type() == at::kChar;
    int8_t* up8 = u8 ? updates[i].data_ptr<int8_t>() : nullptr;
    int32_t* up32 = u8 ? nullptr : updates[i].data_ptr<int32_t>();
    const uint32_t m0 = key(1, 0), m1 = key(1, 1), u0 = key(2, 0), u1 = key(2, 1);
    const float inv = std::ldexp(1.0f, static_cast<int>(-e)), w_scale = std::ldexp(1.0f, static_cast<int>(e));
    int64_t amax_c = 0, nsat = 0;
    uint32_t mbits[BLK], ubits[BLK];
    int64_t y[BLK];
    int32_t uu[BLK];                  // |U| <= 2^23 - 1 and |codes| <= 2^23 - 1 (bits <= 24): int32 vectorizes on AVX2
    const int32_t ikm = static_cast<int32_t>(k_max);
    const int32_t lr32 = static_cast<int32_t>(lr_mant);           // < 2^24
    for (int64_t j0 = 0; j0 < n; j0 += BLK) {
      const int64_t len = std::min(BLK, n - j0);
      if (keep) sblk = kept.data() + j0;
      else if (any) sum_block(terms, scales, j0, len, sblk);   // before this block's weights change
      if (s_mu) {
        if (any) {
          fill_bits(mbits, len, uint32_t(j0), 1u, m0, m1);
          sr_clamped_block(sblk, mbits, len, lsb - e0, mm, y);
        } else {
          for (int64_t l = 0; l < len; ++l) y[l] = 0;
        }
        store_codes(j0, y, len);
        for (int64_t l = 0; l < len; ++l) y[l] = int64_t(int32_t(y[l])) * lr32;   // |M codes| < 2^23: a 32 x 32 product
      } else {
        for (int64_t l = 0; l < len; ++l) y[l] = any ? sblk[l] : 0;
      }
      fill_bits(ubits, len, uint32_t(j0), 1u, u0, u1);
      sr_clamped_block(y, ubits, len, f, u_max, uu);
      if (u8) for (int64_t l = 0; l < len; ++l) up8[j0 + l] = static_cast<int8_t>(uu[l]);
      else for (int64_t l = 0; l < len; ++l) up32[j0 + l] = uu[l];
      float* __restrict pw = pp + j0;
      int32_t bmax = 0, bsat = 0;
      for (int64_t l = 0; l < len; ++l) {
        // the weight's code (an integer of at most 24 bits; held to +-2^30 first, which changes no
        // clamped result, so that the int32 conversion cannot overflow; ternaries, not fmin/fmax,
        // which GCC does not vectorize)
        float c = pw[l] * inv;
        c = !(c >= -0x1p30f) ? -0x1p30f : (c > 0x1p30f ? 0x1p30f : c);
        int32_t w = static_cast<int32_t>(std::nearbyint(c)) - uu[l];
        w = w < -ikm ? -ikm : (w > ikm ? ikm : w);
        pw[l] = static_cast<float>(w) * w_scale;       // the policy below rewrites it only on a move up
        const int32_t aw = w < 0 ? -w : w;
        bmax = aw > bmax ? aw : bmax;
        bsat += aw >= ikm;
      }
      amax_c = std::max<int64_t>(amax_c, bmax);
      nsat += bsat;
    }
    if (s_mu) *bexp = static_cast<int32_t>(lsb);
    apply_policy_codes(pp, ep, n, e, amax_c, nsat, bits, shrink, min_exp, sat_num, sat_den, key(3, 0), key(3, 1));
  };
  // tensors are independent (own keys, own exponent): spread them over the threads
  auto step_one = [&](size_t i) {
    at::Tensor p = params[i];
    const int64_t n = p.numel();
    using namespace eoqk;
    const double lr = cfg[i][PLAN_LR];
    const int64_t bits = int64_t(cfg[i][PLAN_BITS]), u_bits = int64_t(cfg[i][PLAN_U_BITS]);
    const int64_t u_mode = int64_t(cfg[i][PLAN_U_MODE]);
    const int64_t gq_bits = int64_t(cfg[i][PLAN_G_BITS]), gq_mode = int64_t(cfg[i][PLAN_G_MODE]);
    const int64_t m_bits = int64_t(cfg[i][PLAN_M_BITS]), m_mode = int64_t(cfg[i][PLAN_M_MODE]);
    const int64_t sat_num = int64_t(cfg[i][PLAN_SAT_NUM]), sat_den = int64_t(cfg[i][PLAN_SAT_DEN]);
    const int64_t shrink = int64_t(cfg[i][PLAN_SHRINK]);
    const bool ready = cfg[i][PLAN_READY] != 0;
    const bool exact = cfg[i][PLAN_EXACT_LR] != 0;
    const int64_t min_exp = int64_t(cfg[i][PLAN_MIN_EXP]);
    auto key = [&](int slot, int w) { return static_cast<uint32_t>(keys[i][slot][w]); };

    at::Tensor g = grads[i].contiguous();
    TORCH_CHECK(g.scalar_type() == at::kFloat || (g.scalar_type() == at::kChar && !gq_bits &&
                                                   cfg[i][PLAN_INT_UPDATE] != 0),
                "grid_step: int8 gradient codes are taken by the all-integer update only");
    if (gq_bits) { g = g.clone(); sq_inplace(g, gq_bits, gq_mode, key(0, 0), key(0, 1)); }
    if (cfg[i][PLAN_INT_UPDATE] != 0) {
      int_step_one(i, p, g, n, bits, u_bits, m_bits, ready, min_exp, shrink, sat_num, sat_den, key);
      return;
    }
    at::Tensor v = g;
    if (mu != 0) {
      at::Tensor buf = bufs[i];
      float* b = buf.data_ptr<float>();
      const float* gp = g.data_ptr<float>();
      const float fmu = static_cast<float>(mu);
      if (!ready) {
        for (int64_t j = 0; j < n; ++j) b[j] = gp[j];
      } else {
        for (int64_t j = 0; j < n; ++j) { float t = b[j] * fmu; b[j] = t + gp[j]; }
      }
      if (m_bits) sq_inplace(buf, m_bits, m_mode, key(1, 0), key(1, 1));
      v = buf;
    }
    float* ep = exps[i].data_ptr<float>();
    int e = static_cast<int>(*ep);
    const float c = static_cast<float>(lr) * std::ldexp(1.0f, -e);
    const int64_t u_max = (int64_t(1) << (u_bits - 1)) - 1, k_max = (int64_t(1) << (bits - 1)) - 1;
    const float* vp = v.data_ptr<float>();
    float* pp = p.data_ptr<float>();
    at::Tensor codes = at::empty({n}, at::kFloat);       // codes of up to 24 bits: exact in float
    float* cp = codes.data_ptr<float>();
    const uint32_t u0 = key(2, 0), u1 = key(2, 1);
    const bool u8 = updates[i].scalar_type() == at::kChar;
    int8_t* up8 = u8 ? updates[i].data_ptr<int8_t>() : nullptr;
    int32_t* up32 = u8 ? nullptr : updates[i].data_ptr<int32_t>();
    const float inv = std::ldexp(1.0f, -e);
    // per-chunk max|code| and saturation count, combined after the parallel loop
    const int64_t grain = 1 << 14, chunks = (n + grain - 1) / grain;
    std::vector<int32_t> cmax(chunks, 0);
    std::vector<int64_t> csat(chunks, 0);
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t ch = cb; ch < ce; ++ch) {
        int32_t amax_c = 0, nsat = 0;
        const int32_t ikm = static_cast<int32_t>(k_max);
        for (int64_t j0 = ch * grain, je = std::min(n, j0 + grain); j0 < je; j0 += BLK) {
          const int64_t len = std::min(BLK, je - j0);
          float ub[BLK];
          if (exact)
            quant_block<double, float, double>(vp + j0, ub, len, uint32_t(j0), 1u, lr * std::ldexp(1.0, -e),
                                               1.0f, double(u_max), u_mode, u0, u1, true);
          else if (u_max <= 127)
            quant_block<float, float>(vp + j0, ub, len, uint32_t(j0), 1u, c, 1.0f, float(u_max),
                                      u_mode, u0, u1, true);
          else
            quant_block<double, float>(vp + j0, ub, len, uint32_t(j0), 1u, c, 1.0f, double(u_max),
                                       u_mode, u0, u1, true);
          if (u8) { for (int64_t l = 0; l < len; ++l) up8[j0 + l] = static_cast<int8_t>(ub[l]); }
          else { for (int64_t l = 0; l < len; ++l) up32[j0 + l] = static_cast<int32_t>(ub[l]); }
          // codes are integers of at most 24 bits: integer max/count reductions vectorize
          for (int64_t l = 0; l < len; ++l) {
            int32_t w = static_cast<int32_t>(std::nearbyint(pp[j0 + l] * inv)) - static_cast<int32_t>(ub[l]);
            w = w < -ikm ? -ikm : (w > ikm ? ikm : w);
            cp[j0 + l] = static_cast<float>(w);
            const int32_t aw = w < 0 ? -w : w;
            amax_c = aw > amax_c ? aw : amax_c;
            nsat += aw >= ikm;
          }
        }
        cmax[ch] = amax_c; csat[ch] = nsat;
      }
    });
    int64_t amax_c = 0, nsat = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) { amax_c = std::max<int64_t>(amax_c, cmax[ch]); nsat += csat[ch]; }
    apply_policy(cp, pp, ep, n, e, amax_c, nsat, bits, shrink, min_exp, sat_num, sat_den, key(3, 0), key(3, 1));
  };
  std::string error;
  const int64_t count = static_cast<int64_t>(params.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t i = 0; i < count; ++i) {
    try {
      step_one(static_cast<size_t>(i));
    } catch (const std::exception& err) {
#pragma omp critical
      if (error.empty()) error = err.what();
    }
  }
  TORCH_CHECK(error.empty(), error);
}

// (codes, lsb, ok): g = codes * 2^lsb with int8 codes, lsb = e - 7 for max|g| < 2^e (the largest
// code in [64, 127]); ok false (g stays float) when some value is not an integer on that grid, or
// g is not finite (optimizer.pack_codes, which holds the same rule in torch ops).
std::tuple<at::Tensor, int64_t, bool> pack_int8(const at::Tensor& g_) {
  const at::Tensor g = g_.contiguous();
  TORCH_CHECK(g.scalar_type() == at::kFloat, "pack_int8: float32 only");
  const int64_t n = g.numel();
  const double amax = n ? abs_max(g) : 0.0;
  at::Tensor codes = at::empty(g.sizes(), g.options().dtype(at::kChar));
  if (!std::isfinite(amax)) return {codes, 0, false};
  int e = 0;
  if (amax > 0) std::frexp(amax, &e);
  const int64_t lsb = amax > 0 ? e - 7 : 0;
  const float scale = std::ldexp(1.0f, static_cast<int>(-lsb));
  const float* p = g.data_ptr<float>();
  int8_t* d = codes.data_ptr<int8_t>();
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, 1 << 15, [&](int64_t b, int64_t en) {
    bool good = true;
    for (int64_t i = b; i < en; ++i) {
      const float v = p[i] * scale;                     // exact: a power-of-two scaling
      const float r = std::nearbyint(v);
      good &= (r == v) & (std::fabs(v) <= 127.0f);
      d[i] = static_cast<int8_t>(good ? r : 0.0f);
    }
    if (!good) ok = false;
  });
  return {codes, lsb, ok.load()};
}

at::Tensor random_bits(int64_t n, int64_t k0, int64_t k1) {
  at::Tensor out = at::empty({n}, at::kInt);
  int32_t* d = out.data_ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<int32_t>(rbits32(uint32_t(i), uint32_t(k0), uint32_t(k1)));
  return out;
}

}  // namespace

void register_intops(pybind11::module& m);  // intops.cpp
void register_tail(pybind11::module& m);    // tail.cpp
void register_direct(pybind11::module& m);  // direct.cpp
void register_stats(pybind11::module& m);   // stats.cpp
void register_stream(pybind11::module& m);  // stream.cpp
void register_shortcut(pybind11::module& m);  // shortcut.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_intops(m);
  register_tail(m);
  register_direct(m);
  register_stats(m);
  register_stream(m);
  register_shortcut(m);
  m.def("amax", &abs_max);
  m.def("round_scaled", &round_scaled, pybind11::arg("x"), pybind11::arg("exponent"),
        pybind11::arg("max_code"), pybind11::arg("mode"), pybind11::arg("k0"), pybind11::arg("k1"),
        pybind11::arg("codes"), pybind11::arg("bias") = 0.0, pybind11::arg("mult") = 1.0,
        pybind11::arg("offset") = 0, pybind11::arg("relu") = false, pybind11::arg("pre") = 0.0);
  m.def("random_bits", &random_bits);
  m.def("grid_step", &grid_step);
  m.def("pack_int8", &pack_int8);
  m.def("sq", &sq, pybind11::arg("x"), pybind11::arg("bits"), pybind11::arg("mode"),
        pybind11::arg("generator"), pybind11::arg("codes"), pybind11::arg("bias") = 0.0,
        pybind11::arg("mult") = 1.0, pybind11::arg("relu") = false, pybind11::arg("pre") = 0.0,
        pybind11::arg("known") = -1.0, pybind11::arg("known_v") = -1.0, pybind11::arg("pad") = -1,
        pybind11::arg("cp") = 0);
  m.def("draw_key", [](c10::optional<at::Generator> g) { auto k = draw_key(g); return std::make_tuple(int64_t(k.first), int64_t(k.second)); });
}
