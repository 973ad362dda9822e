// The fixed-point residual stream (eoq/nn/stream.py, eoq/nn/fixup_tail.py hold the torch
// reference): an exact elementwise value, in double, rounded once to FX(., bits) = the smallest
// exponent that holds max|v| in bits-bit codes, round half to even. Two passes: max|v|, then the
// rounding (v recomputed, not stored). Each v is exact in double (a float32 times an 8-bit
// scalar plus terms on nearby grids), so the results equal the float64 torch ops bit for bit.
//
//   fx_affine(x, s, b, id, relu, bits) -> (y, live, e, lo, hi)   v = relu?(x * s + b + id); id may be
//                                                        empty; live = v > 0 (the ReLU's mask, before
//                                                        rounding); [lo, hi] = y's range (min, max);
//                                                        tabs >= 0: (tmin, tmax, tabs) = min, max and
//                                                        max| | of x * s + b + id, known: no max pass;
//                                                        ahead_bits > 0: also (codes, lsb), the next
//                                                        layer's nearest A codes of y + ahead_bias
//   fx_sum(a, b, bits, known) -> (y, e)                  v = a + b (b may be empty); known >= 0: max|v|
//   dot_sums(g, x) -> (sum g, sum g * x)                 in double: the Fixup scalars' gradients
//   sum_f32(g) -> sum g                                  in double
//   masked_sums(grad, live, x) -> (g, sum g, sum g * x, max|g|)  g = grad where live (the tail's backward)
//   masked_grad_sums(grad, live) -> (g, sum g, sum grad, max|g|)
//   fx_sum_masked(a, b, bits, known, live, x) -> masked_sums(fx_sum(a, b, bits), live, x), in one pass
//     each sum formed in double and handed out rounded once to float32, as a one-element tensor
//     (no Python float -> tensor per gradient)
//   live_bits(x, t) -> live                              x > t (float32 compare)
//   masked_bits(grad, live) -> g                         g = grad where live, else +0.0
//   unpack_bits(live, out) -> out                        the mask as bools (a dense bool out)
//
// A mask ("live") is kept for the backward as bits: uint8[ceil(n / 8)], element i (memory order of
// the tensor it was made from) in bit i & 7 of byte i >> 3. A bool mask took a byte an element,
// a quarter of what the integer engine saved for a ResNet's backward.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {
using eoqk::abs_bits;
using eoqk::from_abs_bits;

int fixed_exponent(double amax, int64_t bits) {
  if (!(amax > 0)) return 0;
  const double m = static_cast<double>((int64_t(1) << (bits - 1)) - 1);
  int e = static_cast<int>(std::ceil(std::log2(amax / m)));
  while (amax > std::ldexp(m, e)) ++e;            // exact comparisons settle a rounded log2
  while (amax <= std::ldexp(m, e - 1)) --e;
  return std::max(e, -100);
}

void check_pair(const at::Tensor& x, const at::Tensor& y, const char* what) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, what, ": float32 tensors");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), what, ": a dense tensor");
  if (y.numel()) {
    TORCH_CHECK(y.scalar_type() == at::kFloat && y.sizes() == x.sizes() && y.strides() == x.strides(),
                what, ": both tensors need the same sizes and strides");
  }
}

// max|f(i)| over i, or +inf when some f(i) is NaN/Inf: a max over the bits of |f(i)| as unsigned
// integers (they order as the values do, NaN and Inf above every finite value), an integer
// reduction the compiler vectorizes (a double max with lanes by hand did not).
// RELU: the max of relu(f(i)), i.e. of 0 and the largest f(i): a second integer max over f's
// order keys (negative values flipped), no select per element (its branch mispredicts on a
// ReLU's random signs).
// RANGE: also the smallest and largest f(i) (relu?(f)'s, with RELU) into *lo and *hi, from the
// order keys' min and max (one more integer reduction each), for the range of the rounded tensor.
using eoqk::ABS64;
using eoqk::SIGN64;
using eoqk::f32;
using eoqk::from_key64;
using eoqk::order_key64;

template <bool RELU, bool RANGE = false, typename F>
double amax_of(int64_t n, F f, double* lo_out = nullptr, double* hi_out = nullptr) {
  constexpr uint64_t INF = 0x7ff0000000000000ull;
  struct R { uint64_t m, k, kl; };                // max bits of |f|, max and min order keys of f
  const R r = at::parallel_reduce(0, n, 1 << 14, R{0, 0, ~0ull}, [&](int64_t lo, int64_t hi, R acc) {
    uint64_t m = acc.m, k = acc.k, kl = acc.kl;
    for (int64_t i = lo; i < hi; ++i) {
      const double v = f(i);
      uint64_t u;
      std::memcpy(&u, &v, sizeof u);
      m = std::max(m, u & ABS64);
      if (RELU || RANGE) k = std::max(k, order_key64(u));
      if (RANGE) kl = std::min(kl, order_key64(u));
    }
    return R{m, k, kl};
  }, [](R x, R y) { return R{std::max(x.m, y.m), std::max(x.k, y.k), std::min(x.kl, y.kl)}; });
  if (r.m >= INF) return std::numeric_limits<double>::infinity();
  if (RANGE && n) {
    double lo = from_key64(r.kl), hi = from_key64(r.k);
    if (RELU) lo = std::max(lo, 0.0), hi = std::max(hi, 0.0);
    *lo_out = lo, *hi_out = hi;
  } else if (RANGE) {
    *lo_out = *hi_out = 0.0;
  }
  uint64_t u = r.m;
  if (RELU) {
    if (r.k < SIGN64) return 0.0;                // every f(i) negative (or no element)
    u = r.k & ABS64;                             // the largest f(i), positive
  }
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
}

// The tail's value relu?(x * s + b + id) of element i, each step exact in double.
template <typename ID, bool HAS_ID, bool RELU>
inline double tail_value(const float* px, const ID* pi, double s, double b, int64_t i) {
  double t = static_cast<double>(px[i]) * s + b;
  if (HAS_ID) t += static_cast<double>(pi[i]);
  return RELU ? std::max(t, 0.0) : t;          // NaN stays NaN (std::max keeps its first argument)
}

inline bool bit_at(const uint8_t* pb, int64_t i) { return (pb[i >> 3] >> (i & 7)) & 1; }

// The mask bits of elements [i, i + 8) as the low byte (i need not be a multiple of 8; element
// i + 7 must exist): one or two byte loads.
inline uint32_t bits8(const uint8_t* pb, int64_t i) {
  const int64_t k = i >> 3;
  const int r = static_cast<int>(i & 7);
  uint32_t w = pb[k];
  if (r) w |= static_cast<uint32_t>(pb[k + 1]) << 8;
  return (w >> r) & 0xFFu;
}

// A byte of mask bits spread to eight 0/1 bytes (a table of 256 entries): the loops then read
// bytes as they did from a bool mask, and vectorize as they did.
struct Spread {
  uint64_t t[256];
  Spread() {
    for (int m = 0; m < 256; ++m) {
      uint64_t v = 0;
      for (int l = 0; l < 8; ++l) v |= static_cast<uint64_t>((m >> l) & 1) << (8 * l);
      t[m] = v;
    }
  }
};
const Spread SPREAD;

inline void spread8(uint32_t m8, uint8_t* out) { std::memcpy(out, &SPREAD.t[m8], 8); }

at::Tensor new_bits(int64_t n) { return at::empty({(n + 7) / 8}, at::TensorOptions().dtype(at::kByte)); }

void check_bits(const at::Tensor& bits, int64_t n, const char* what) {
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.dim() == 1 && bits.is_contiguous() && bits.numel() == (n + 7) / 8,
              what, ": a packed mask (uint8[ceil(n / 8)]) of ", n, " elements");
}

// Runs f(first element, end element, first byte) over the bytes of an n-element mask in parallel:
// each task writes whole bytes, so no two threads share one.
template <typename F>
void for_mask_bytes(int64_t n, const F& f) {
  at::parallel_for(0, (n + 7) / 8, 1 << 11, [&](int64_t lo, int64_t hi) { f(lo * 8, std::min(hi * 8, n), lo); });
}

// The rounding pass of fx_affine over n elements, the ReLU mask as 0/1 bytes; restrict pointers
// let it vectorize.
template <typename ID, bool HAS_ID, bool RELU>
void fx_affine_bytes(const float* __restrict__ px, const ID* __restrict__ pi, float* __restrict__ py,
                     uint8_t* __restrict__ pl, int64_t n, double s, double b, double down, double up) {
  for (int64_t i = 0; i < n; ++i) {
    const double t = tail_value<ID, HAS_ID, RELU>(px, pi, s, b, i);
    pl[i] = t > 0.0;
    py[i] = static_cast<float>(std::nearbyint(t * down) * up);
  }
}

// n 0/1 bytes packed into ceil(n / 8) bytes of bits.
inline void pack_bytes(const uint8_t* __restrict__ in, int64_t n, uint8_t* __restrict__ out) {
  for (int64_t j = 0; j < n; j += 8) {
    uint32_t m = 0;
    for (int l = 0; l < 8 && j + l < n; ++l) m |= static_cast<uint32_t>(in[j + l]) << l;
    out[j >> 3] = static_cast<uint8_t>(m);
  }
}

// fx_affine over n elements (starting at a multiple of 8): blocks of MASK_BLOCK elements rounded
// with their mask as bytes on the stack, then packed to bits.
constexpr int64_t MASK_BLOCK = 1024;

// The next layer's A codes of a block of y (see Ahead): nearbyint(clamp((y + b) / 2^lsb, -m, m)), in
// double as the quantizer's affine path (quant.cpp quant_block) forms them.
struct Ahead {
  int8_t* codes = nullptr;   // none: no codes
  double bias = 0.0, dinv = 1.0, m = 127.0;
};

// In float32 where every y + b is exact (TwoSum's error 0: a stream value plus an 8-bit Fixup bias
// usually is), the same codes in twice the lanes; a block with an inexact sum in double.
inline void ahead_codes(const float* __restrict__ py, int8_t* __restrict__ pc, int64_t n, const Ahead& a) {
  const float fb = static_cast<float>(a.bias), finv = static_cast<float>(a.dinv), fm = static_cast<float>(a.m);
  uint32_t inexact = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float t = py[i], w = t + fb, bw = w - t;
    inexact |= static_cast<uint32_t>(((t - (w - bw)) + (fb - bw)) != 0.0f);
    float v = w * finv;
    v = v < -fm ? -fm : (v > fm ? fm : v);
    pc[i] = static_cast<int8_t>(std::nearbyint(v));
  }
  if (!inexact) return;
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::min(std::max((static_cast<double>(py[i]) + a.bias) * a.dinv, -a.m), a.m);
    pc[i] = static_cast<int8_t>(std::nearbyint(v));
  }
}

template <typename ID, bool HAS_ID, bool RELU>
void fx_affine_block(const float* px, const ID* pi, float* py, uint8_t* pl, int64_t n, double s, double b,
                     double down, double up, const Ahead& ahead, int64_t first) {
  uint8_t bytes[MASK_BLOCK];
  for (int64_t c = 0; c < n; c += MASK_BLOCK) {
    const int64_t m = std::min(MASK_BLOCK, n - c);
    fx_affine_bytes<ID, HAS_ID, RELU>(px + c, HAS_ID ? pi + c : pi, py + c, bytes, m, s, b, down, up);
    pack_bytes(bytes, m, pl + (c >> 3));
    if (ahead.codes) ahead_codes(py + c, ahead.codes + first + c, m, ahead);     // y still in L1
  }
}

using AffineOut = std::tuple<at::Tensor, at::Tensor, int64_t, double, double, at::Tensor, int64_t>;

// The max pass's results from a known (min t, max t, max|t|) of t = x * s + b + id (found by the
// store of the conv that wrote x: direct.cpp conv_range), as amax_of<RELU, true> gives them.
double known_amax(bool relu, double tmin, double tmax, double tabs, double* lo, double* hi) {
  if (!std::isfinite(tabs)) return std::numeric_limits<double>::infinity();
  *lo = relu ? std::max(tmin, 0.0) : tmin;
  *hi = relu ? std::max(tmax, 0.0) : tmax;
  return relu ? std::max(tmax, 0.0) : tabs;
}

template <typename ID, bool HAS_ID, bool RELU>
AffineOut fx_affine_t(const at::Tensor& x, double s, double b, const ID* pi, int64_t bits, const double* known,
                      int64_t ahead_bits, double ahead_bias) {
  const float* px = x.data_ptr<float>();
  const int64_t n = x.numel();
  double lo = 0.0, hi = 0.0;
  const double amax = known != nullptr && n ? known_amax(RELU, known[0], known[1], known[2], &lo, &hi)
      : amax_of<RELU, true>(n, [&](int64_t i) { return tail_value<ID, HAS_ID, false>(px, pi, s, b, i); }, &lo, &hi);
  TORCH_CHECK(std::isfinite(amax), "fx_affine: cannot round a tensor holding NaN or Inf");
  const int e = fixed_exponent(amax, bits);
  at::Tensor y = at::empty_like(x), live = new_bits(n);
  TORCH_CHECK(y.strides() == x.strides(), "fx_affine: output strides");
  float* py = y.data_ptr<float>();
  uint8_t* pl = live.data_ptr<uint8_t>();
  const double down = std::ldexp(1.0, -e), up = std::ldexp(1.0, e);
  // the range of y: the rounding is monotone, so the ends of v's range round to y's (as y's own
  // elements are rounded, to the float32 y holds)
  auto rounded = [&](double v) { return static_cast<double>(static_cast<float>(std::nearbyint(v * down) * up)); };
  const double ylo = rounded(lo), yhi = rounded(hi);
  // the next layer's A codes of y + ahead_bias, nearest rounding: its exponent from y's range, as
  // quant.cpp's sq forms it from a known max|v|
  Ahead ahead;
  at::Tensor codes;
  int64_t lsb = 0;
  if (ahead_bits > 0) {
    const double a = n ? std::max(std::fabs(ylo + ahead_bias), std::fabs(yhi + ahead_bias)) : 0.0;
    lsb = eoqk::exponent_of(a) + 1 - ahead_bits;
    codes = at::empty_like(x, x.options().dtype(at::kChar));
    TORCH_CHECK(codes.strides() == x.strides(), "fx_affine: codes strides");
    ahead.codes = codes.data_ptr<int8_t>();
    ahead.bias = ahead_bias;
    ahead.dinv = static_cast<double>(std::ldexp(1.0f, static_cast<int>(-lsb)));
    ahead.m = static_cast<double>((int64_t(1) << (ahead_bits - 1)) - 1);
  }
  for_mask_bytes(n, [&](int64_t lo, int64_t hi, int64_t byte) {
    fx_affine_block<ID, HAS_ID, RELU>(px + lo, HAS_ID ? pi + lo : pi, py + lo, pl + byte, hi - lo, s, b, down, up,
                                      ahead, lo);
  });
  return {y, live, e, ylo, yhi, codes, lsb};
}

template <typename ID>
AffineOut fx_affine_dispatch(const at::Tensor& x, double s, double b, const ID* pi, bool relu, int64_t bits,
                             const double* k, int64_t ab, double abias) {
  if (pi == nullptr) {
    return relu ? fx_affine_t<ID, false, true>(x, s, b, pi, bits, k, ab, abias)
                : fx_affine_t<ID, false, false>(x, s, b, pi, bits, k, ab, abias);
  }
  return relu ? fx_affine_t<ID, true, true>(x, s, b, pi, bits, k, ab, abias)
              : fx_affine_t<ID, true, false>(x, s, b, pi, bits, k, ab, abias);
}

// identity: float32 (a stream value) or float64 (an option-A shortcut of stream + bias, exact).
AffineOut fx_affine(const at::Tensor& x, double s, double b, const at::Tensor& id, bool relu, int64_t bits,
                    double tmin, double tmax, double tabs, int64_t ab, double abias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_non_overlapping_and_dense(), "fx_affine: a dense float32 x");
  TORCH_CHECK(ab >= 0 && ab <= 8, "fx_affine: the next layer's A codes have 1-8 bits");
  const double known[3] = {tmin, tmax, tabs};
  const double* k = tabs >= 0.0 ? known : nullptr;      // (min t, max t, max|t|) known: no max pass
  if (!id.numel()) return fx_affine_dispatch<float>(x, s, b, nullptr, relu, bits, k, ab, abias);
  TORCH_CHECK(id.sizes() == x.sizes() && id.strides() == x.strides(), "fx_affine: identity of x's sizes and strides");
  if (id.scalar_type() == at::kDouble)
    return fx_affine_dispatch<double>(x, s, b, id.data_ptr<double>(), relu, bits, k, ab, abias);
  TORCH_CHECK(id.scalar_type() == at::kFloat, "fx_affine: identity float32 or float64");
  return fx_affine_dispatch<float>(x, s, b, id.data_ptr<float>(), relu, bits, k, ab, abias);
}

// g where live (a 0/1 byte), else +0.0: a bit mask, not a select whose branch would mispredict.
inline float masked(float g, uint8_t live) {
  uint32_t u;
  std::memcpy(&u, &g, 4);
  u &= 0u - static_cast<uint32_t>(live);
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// The lanes of masked_sums: element i of a range (counted from its start) adds to lane i % 8.
// Lane l also keeps the largest |g| of its elements, as the bits of |g| (an integer max vectorizes;
// NaN and Inf lie above every finite value).
struct Lanes {
  static constexpr int L = 8;
  double sg[L] = {}, sx[L] = {};
  uint32_t mx[L] = {};
};

// The second sum of masked_sums: sum g * x (DOT), or sum grad, the input before the mask.
template <bool DOT>
inline double second(float v, float g, const float* px, int64_t i) {
  if constexpr (DOT) return static_cast<double>(v) * static_cast<double>(px[i]);
  else return static_cast<double>(g);
}

// n elements (a multiple of 8) of masked_sums into the lanes, the mask as 0/1 bytes: independent
// lanes and restrict pointers, so that it vectorizes.
template <bool DOT>
inline void masked_bytes(const float* __restrict__ pg, const uint8_t* __restrict__ pl, const float* __restrict__ px,
                         float* __restrict__ po, int64_t n, Lanes& a) {
  constexpr int L = Lanes::L;
  for (int64_t i = 0; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) {
      const float v = masked(pg[i + l], pl[i + l]);
      po[i + l] = v;
      a.sg[l] += v;
      a.sx[l] += second<DOT>(v, pg[i + l], px, i + l);
      a.mx[l] = std::max(a.mx[l], abs_bits(v));
    }
  }
}

// The sums of a range of masked_sums and the bits of its largest |g|.
struct Sums {
  double sg = 0.0, sx = 0.0;
  uint32_t mx = 0;
};

// masked_sums over elements [lo, lo + n) of the mask pb: blocks of MASK_BLOCK elements unpacked to
// bytes on the stack, the lanes as they were with a bool mask (element lo + 8j + l in lane l, the
// last n % 8 in lane 0), so the sums add in the same order.
template <bool DOT>
Sums masked_block(const float* pg, const uint8_t* pb, int64_t lo, const float* px, float* po,
                                       int64_t n) {
  Lanes a;
  const int64_t full = n - n % Lanes::L;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  // the same lanes in registers: eight floats under their byte of mask bits (a masked load gives
  // +0.0 where the bit is clear, as masked() does), widened to the eight double lanes; a multiply
  // and an add apart (no FMA), in the scalar loop's order, so the sums are the same bit for bit
  {
    __m512d sg = _mm512_setzero_pd(), sx = _mm512_setzero_pd();
    __m256i mx = _mm256_setzero_si256();
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    for (int64_t i = 0; i < full; i += 8) {
      const __mmask8 k = static_cast<__mmask8>(bits8(pb, lo + i));
      const __m256 v = _mm256_maskz_loadu_ps(k, pg + i);
      _mm256_storeu_ps(po + i, v);
      const __m512d vd = _mm512_cvtps_pd(v);
      sg = _mm512_add_pd(sg, vd);
      if constexpr (DOT) sx = _mm512_add_pd(sx, _mm512_mul_pd(vd, _mm512_cvtps_pd(_mm256_loadu_ps(px + i))));
      else sx = _mm512_add_pd(sx, _mm512_cvtps_pd(_mm256_loadu_ps(pg + i)));
      mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(v), abs_mask));
    }
    _mm512_storeu_pd(a.sg, sg);
    _mm512_storeu_pd(a.sx, sx);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.mx), mx);
  }
#else
  uint8_t bytes[MASK_BLOCK];
  for (int64_t c = 0; c < full; c += MASK_BLOCK) {
    const int64_t m = std::min(MASK_BLOCK, full - c);
    for (int64_t j = 0; j < m; j += 8) spread8(bits8(pb, lo + c + j), bytes + j);
    masked_bytes<DOT>(pg + c, bytes, px == nullptr ? nullptr : px + c, po + c, m, a);
  }
#endif
  for (int64_t i = full; i < n; ++i) {
    const float v = masked(pg[i], bit_at(pb, lo + i));
    po[i] = v;
    a.sg[0] += v;
    a.sx[0] += second<DOT>(v, pg[i], px, i);
    a.mx[0] = std::max(a.mx[0], abs_bits(v));
  }
  Sums r;
  for (int l = 0; l < Lanes::L; ++l) r.sg += a.sg[l], r.sx += a.sx[l], r.mx = std::max(r.mx, a.mx[l]);
  return r;
}

// g = grad where live, else 0 (the ReLU backward), with sum g and (DOT) sum g * x or sum grad, in
// double; each sum in the lanes and chunks of sum_double, so either equals sum_double of its tensor;
// and max|g| as the double the quantizers' amax gives (+inf for NaN or Inf), which g's E quantizer
// then need not find in a pass of its own. x empty when not DOT.
using MaskedOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, double>;

template <bool DOT>
MaskedOut masked_sums_t(const at::Tensor& grad, const at::Tensor& live, const at::Tensor& x,
                                                     const char* what) {
  check_pair(grad, x, what);
  check_bits(live, grad.numel(), what);
  const float* px = DOT ? x.data_ptr<float>() : nullptr;
  at::Tensor g = at::empty_like(grad);
  TORCH_CHECK(g.strides() == grad.strides(), what, ": output strides");
  const float* pg = grad.data_ptr<float>();
  const uint8_t* pl = live.data_ptr<uint8_t>();
  float* po = g.data_ptr<float>();
  const Sums r = at::parallel_reduce(0, grad.numel(), 1 << 14, Sums(), [&](int64_t lo, int64_t hi, Sums acc) {
    const Sums d = masked_block<DOT>(pg + lo, pl, lo, px == nullptr ? nullptr : px + lo, po + lo, hi - lo);
    return Sums{acc.sg + d.sg, acc.sx + d.sx, std::max(acc.mx, d.mx)};
  }, [](Sums p, Sums q) { return Sums{p.sg + q.sg, p.sx + q.sx, std::max(p.mx, q.mx)}; });
  return {g, f32(r.sg), f32(r.sx), from_abs_bits(r.mx)};
}

// (g, sum g, sum g * x): the Fixup tail's backward (a multiplier's gradient).
MaskedOut masked_sums(const at::Tensor& grad, const at::Tensor& live, const at::Tensor& x) {
  TORCH_CHECK(x.numel() == grad.numel(), "masked_sums: x of grad's size");
  return masked_sums_t<true>(grad, live, x, "masked_sums");
}

// (g, sum g, sum grad): the backward of relu(x + b_out) + b_in (the gradients of both biases).
MaskedOut masked_grad_sums(const at::Tensor& grad, const at::Tensor& live) {
  return masked_sums_t<false>(grad, live, at::empty({0}, grad.options()), "masked_grad_sums");
}

// fx_sum with b (HAS_B) or without it (v = a + 0.0, as the sum with an absent b always was):
// the two loops compiled apart, without a test of b per element.
template <bool HAS_B>
std::tuple<at::Tensor, int64_t> fx_sum_t(const at::Tensor& a, const float* pb, int64_t bits, double known) {
  const float* pa = a.data_ptr<float>();
  auto v = [&](int64_t i) { return static_cast<double>(pa[i]) + (HAS_B ? static_cast<double>(pb[i]) : 0.0); };
  const int64_t n = a.numel();
  const double amax = known >= 0.0 ? known : amax_of<false>(n, v);
  TORCH_CHECK(std::isfinite(amax), "fx_sum: cannot round a tensor holding NaN or Inf");
  const int e = fixed_exponent(amax, bits);
  at::Tensor y = at::empty_like(a);
  TORCH_CHECK(y.strides() == a.strides(), "fx_sum: output strides");
  float* py = y.data_ptr<float>();
  const double down = std::ldexp(1.0, -e), up = std::ldexp(1.0, e);
  at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) py[i] = static_cast<float>(std::nearbyint(v(i) * down) * up);
  });
  return {y, e};
}

// known >= 0: max|a + b| found already (the store of the conv that wrote a: direct.cpp conv_sum),
// no max pass here.
std::tuple<at::Tensor, int64_t> fx_sum(const at::Tensor& a, const at::Tensor& b, int64_t bits, double known) {
  check_pair(a, b, "fx_sum");
  return b.numel() ? fx_sum_t<true>(a, b.data_ptr<float>(), bits, known) : fx_sum_t<false>(a, nullptr, bits, known);
}

// fx_sum, then masked_sums on its result: (g, sum g, sum g * x, max|g|) for g = FX(a + b) where live,
// with the previous block's tail mask `live` and conv output `x` (the stream's error at a block
// input is only ever that tail's gradient). FX(a + b) is never written: each range of the reduction
// is rounded into g, then masked and summed in place by masked_block, in the ranges and lanes of
// masked_sums, so the sums are those of the two calls bit for bit. known >= 0: max|a + b| as in fx_sum.
MaskedOut fx_sum_masked(const at::Tensor& a, const at::Tensor& b, int64_t bits, double known, const at::Tensor& live,
                        const at::Tensor& x) {
  check_pair(a, b, "fx_sum_masked");
  check_pair(a, x, "fx_sum_masked");
  TORCH_CHECK(x.numel() == a.numel(), "fx_sum_masked: x of a's size");
  check_bits(live, a.numel(), "fx_sum_masked");
  const float* pa = a.data_ptr<float>();
  const float* pb = b.numel() ? b.data_ptr<float>() : nullptr;
  auto v = [&](int64_t i) { return static_cast<double>(pa[i]) + (pb ? static_cast<double>(pb[i]) : 0.0); };
  const int64_t n = a.numel();
  const double amax = known >= 0.0 ? known : amax_of<false>(n, v);
  TORCH_CHECK(std::isfinite(amax), "fx_sum: cannot round a tensor holding NaN or Inf");
  const int e = fixed_exponent(amax, bits);
  const double down = std::ldexp(1.0, -e), up = std::ldexp(1.0, e);
  at::Tensor g = at::empty_like(a);
  TORCH_CHECK(g.strides() == a.strides(), "fx_sum_masked: output strides");
#if defined(__AVX512F__) && defined(__AVX512VL__)
  float* py = g.data_ptr<float>();          // masked_block reads and writes the same element (no restrict)
#else
  at::Tensor y = at::empty_like(a);         // masked_bytes takes restrict pointers: a buffer apart
  float* py = y.data_ptr<float>();
#endif
  float* po = g.data_ptr<float>();
  const uint8_t* pl = live.data_ptr<uint8_t>();
  const float* px = x.data_ptr<float>();
  const Sums r = at::parallel_reduce(0, n, 1 << 14, Sums(), [&](int64_t lo, int64_t hi, Sums acc) {
    for (int64_t i = lo; i < hi; ++i) py[i] = static_cast<float>(std::nearbyint(v(i) * down) * up);
    const Sums d = masked_block<true>(py + lo, pl, lo, px + lo, po + lo, hi - lo);
    return Sums{acc.sg + d.sg, acc.sx + d.sx, std::max(acc.mx, d.mx)};
  }, [](Sums p, Sums q) { return Sums{p.sg + q.sg, p.sx + q.sx, std::max(p.mx, q.mx)}; });
  return {g, f32(r.sg), f32(r.sx), from_abs_bits(r.mx)};
}

std::tuple<at::Tensor, at::Tensor> dot_sums(const at::Tensor& g, const at::Tensor& x) {
  check_pair(g, x, "dot_sums");
  const float* pg = g.data_ptr<float>();
  const float* px = x.data_ptr<float>();
  using P = std::pair<double, double>;
  const P r = at::parallel_reduce(0, g.numel(), 1 << 14, P(0.0, 0.0), [&](int64_t lo, int64_t hi, P acc) {
    constexpr int L = 8;
    double s[L] = {}, d[L] = {};
    int64_t i = lo;
    for (; i + L <= hi; i += L) {
      for (int l = 0; l < L; ++l) {
        s[l] += pg[i + l];
        d[l] += static_cast<double>(pg[i + l]) * static_cast<double>(px[i + l]);
      }
    }
    for (; i < hi; ++i) s[0] += pg[i], d[0] += static_cast<double>(pg[i]) * static_cast<double>(px[i]);
    for (int l = 0; l < L; ++l) acc.first += s[l], acc.second += d[l];
    return acc;
  }, [](P p, P q) { return P(p.first + q.first, p.second + q.second); });
  return {f32(r.first), f32(r.second)};
}

// sum g in double (a Fixup scalar's gradient).
double sum_double(const at::Tensor& g) {
  TORCH_CHECK(g.scalar_type() == at::kFloat && g.is_non_overlapping_and_dense(), "sum_double: a dense float32 tensor");
  const float* pg = g.data_ptr<float>();
  return at::parallel_reduce(0, g.numel(), 1 << 14, 0.0, [&](int64_t lo, int64_t hi, double acc) {
    constexpr int L = 8;
    double s[L] = {};
    int64_t i = lo;
    for (; i + L <= hi; i += L) {
      for (int l = 0; l < L; ++l) s[l] += pg[i + l];
    }
    for (; i < hi; ++i) s[0] += pg[i];
    for (int l = 0; l < L; ++l) acc += s[l];
    return acc;
  }, [](double a, double b) { return a + b; });
}

at::Tensor sum_f32(const at::Tensor& g) { return f32(sum_double(g)); }

// x > t for every element of a dense float32 x (t compared as float32), as a packed mask.
at::Tensor live_bits(const at::Tensor& x, double t) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_non_overlapping_and_dense(), "live_bits: a dense float32 x");
  const float* px = x.data_ptr<float>();
  const float tf = static_cast<float>(t);
  const int64_t n = x.numel();
  at::Tensor bits = new_bits(n);
  uint8_t* pb = bits.data_ptr<uint8_t>();
  for_mask_bytes(n, [&](int64_t lo, int64_t hi, int64_t byte) {
    int64_t i = lo;
#if defined(__AVX512F__)
    // 16 compares into one mask register, two bytes of bits (the scalar loop did not vectorize)
    const __m512 tv = _mm512_set1_ps(tf);
    for (; i + 16 <= hi; i += 16) {
      const uint16_t m = _mm512_cmp_ps_mask(_mm512_loadu_ps(px + i), tv, _CMP_GT_OQ);   // NaN: false, as >
      std::memcpy(pb + byte + ((i - lo) >> 3), &m, 2);
    }
#endif
    for (; i < hi; i += 8) {
      uint8_t m = 0;
      for (int l = 0; l < 8 && i + l < hi; ++l) m |= static_cast<uint8_t>(px[i + l] > tf) << l;
      pb[byte + ((i - lo) >> 3)] = m;
    }
  });
  return bits;
}

// grad where its bit is set, else +0.0 (torch.where(live, grad, 0.0) of the bool mask).
at::Tensor masked_bits(const at::Tensor& grad, const at::Tensor& live) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.is_non_overlapping_and_dense(), "masked_bits: a dense float32 grad");
  check_bits(live, grad.numel(), "masked_bits");
  at::Tensor g = at::empty_like(grad);
  TORCH_CHECK(g.strides() == grad.strides(), "masked_bits: output strides");
  const float* pg = grad.data_ptr<float>();
  const uint8_t* pb = live.data_ptr<uint8_t>();
  float* po = g.data_ptr<float>();
  for_mask_bytes(grad.numel(), [&](int64_t lo, int64_t hi, int64_t byte) {
    int64_t i = lo;
    uint8_t lv[8];
    for (; i + 8 <= hi; i += 8) {
      spread8(pb[byte + ((i - lo) >> 3)], lv);
      for (int l = 0; l < 8; ++l) po[i + l] = masked(pg[i + l], lv[l]);
    }
    for (; i < hi; ++i) po[i] = masked(pg[i], bit_at(pb, i));
  });
  return g;
}

// The packed mask written into a dense bool tensor (its sizes and memory layout those of the
// tensor the mask was made from).
at::Tensor unpack_bits(const at::Tensor& live, at::Tensor out) {
  TORCH_CHECK(out.scalar_type() == at::kBool && out.is_non_overlapping_and_dense(), "unpack_bits: a dense bool out");
  check_bits(live, out.numel(), "unpack_bits");
  uint8_t* po = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  const uint8_t* pb = live.data_ptr<uint8_t>();
  at::parallel_for(0, out.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) po[i] = bit_at(pb, i);
  });
  return out;
}

}  // namespace

void register_stream(pybind11::module& m) {
  m.def("live_bits", &live_bits);
  m.def("masked_bits", &masked_bits);
  m.def("unpack_bits", &unpack_bits);
  m.def("fx_affine", &fx_affine, pybind11::arg("x"), pybind11::arg("s"), pybind11::arg("b"), pybind11::arg("id"),
        pybind11::arg("relu"), pybind11::arg("bits"), pybind11::arg("tmin") = 0.0, pybind11::arg("tmax") = 0.0,
        pybind11::arg("tabs") = -1.0, pybind11::arg("ahead_bits") = 0, pybind11::arg("ahead_bias") = 0.0);
  m.def("fx_sum", &fx_sum, pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("bits"),
        pybind11::arg("known") = -1.0);
  m.def("dot_sums", &dot_sums);
  m.def("masked_sums", &masked_sums);
  m.def("fx_sum_masked", &fx_sum_masked);
  m.def("masked_grad_sums", &masked_grad_sums);
  m.def("sum_f32", &sum_f32);
}
