// Shared by direct.cpp (VNNI kernels, entry points) and amx.cpp (the same sums on AMX tiles).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <mutex>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define EOQ_DIRECT 1
#else
#define EOQ_DIRECT 0
#endif
#if EOQ_DIRECT && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define EOQ_AMX 1
#else
#define EOQ_AMX 0
#endif

namespace eoq_direct {

struct StoreTotal;   // (EOQ_DIRECT builds) what a conv's store takes along, below

bool amx_available();

// The int64 weight-gradient total that a kernel's threads share: each adds its part (rows of
// `stride` >= cin input channels) and its sums of E; finish() removes the +128 offset of the
// input side, 128 * (sum of E) per output channel.
struct WgradTotal {
  int64_t* tot;
  int64_t Co, KK, cin;
  std::vector<int64_t> esum;
  std::mutex lock;
  WgradTotal(int64_t* t, int64_t co, int64_t kk, int64_t ci) : tot(t), Co(co), KK(kk), cin(ci), esum(co, 0) {}
  void add(const std::vector<int64_t>& part, const std::vector<int64_t>& psum, int64_t stride) {
    std::lock_guard<std::mutex> guard(lock);
    for (int64_t o = 0; o < Co; ++o) {
      esum[o] += psum[o];
      for (int64_t q = 0; q < KK; ++q)
        for (int64_t c = 0; c < cin; ++c) tot[(o * KK + q) * cin + c] += part[(o * KK + q) * stride + c];
    }
  }
  void finish() {
    for (int64_t o = 0; o < Co; ++o)
      for (int64_t i = 0; i < KK * cin; ++i) tot[o * KK * cin + i] -= 128 * esum[o];
  }
};

#if EOQ_DIRECT
// [16 channels][4 pixels] from 4 pixels of 16 channels each (bytes), in SSE unpacks.
inline void interleave4(const void* p0, const void* p1, const void* p2, const void* p3, void* out) {
  const __m128i a = _mm_loadu_si128(static_cast<const __m128i*>(p0));
  const __m128i b = _mm_loadu_si128(static_cast<const __m128i*>(p1));
  const __m128i c = _mm_loadu_si128(static_cast<const __m128i*>(p2));
  const __m128i d = _mm_loadu_si128(static_cast<const __m128i*>(p3));
  const __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
  const __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
  __m128i* o = static_cast<__m128i*>(out);
  _mm_storeu_si128(o + 0, _mm_unpacklo_epi16(ab0, cd0));
  _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(ab0, cd0));
  _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(ab1, cd1));
  _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(ab1, cd1));
}

// out[g * og + c * 4 + j] = pixel (4g + j)'s channel c, for g < G4, c < C (C % 4 == 0);
// pixels lie `ps` bytes apart, and those at or past `valid` read as `fill`.
inline void interleave_row(const uint8_t* src, int64_t ps, int64_t valid, int64_t C, int64_t G4,
                           uint8_t fill, uint8_t* out, int64_t og) {
  for (int64_t g = 0; g < G4; ++g) {
    uint8_t* o = out + g * og;
    const uint8_t* s = src + 4 * g * ps;
    if (4 * g + 4 <= valid && C % 16 == 0) {
      for (int64_t c = 0; c < C; c += 16) interleave4(s + c, s + ps + c, s + 2 * ps + c, s + 3 * ps + c, o + c * 4);
      continue;
    }
    for (int64_t j = 0; j < 4; ++j)
      for (int64_t c = 0; c < C; ++c) o[c * 4 + j] = 4 * g + j < valid ? s[j * ps + c] : fill;
  }
}

// What a conv's store can take along as it writes each group of 16 output channels (conv_into in
// direct.cpp), so that no later pass over the output is needed:
//  - MASK: the input gradient of a conv that follows relu(x + b_out) + b_in in a Fixup branch, with
//    that ReLU's backward (conv_masked): only the elements whose bit is set in `live` (the ReLU's
//    mask, bits in the output's memory order) are kept, and the store adds to the sums of the kept
//    and of all values and to max|kept|. A sum is of the stored float32 values' integers (value /
//    2^exponent, exact in int64), so it equals the double sum of masked_grad_sums (stream.cpp)
//    wherever that one is exact: always when the values are exact float32 integers (below 2^24),
//    which the engines' bit-for-bit agreement requires anyway.
//  - RANGE: the forward's smallest and largest output (conv_range), which the next layer's A
//    quantizer then needs no max pass for (float32 conversion and the power-of-two scale are
//    monotone: the ends of the integers give the ends of the values). With a Fixup block tail
//    after the conv (`tail_id`: the block's identity, float32 in the output's memory order), also
//    the ends of t = value * s + b + identity (each step exact in double) and max|t|, as the max
//    pass of the tail's rounding (fx_affine in stream.cpp) finds them.
//  - SUM: the sum of all values (conv_sum), as MASK's: the gradient of the Fixup bias in front of
//    the conv whose input gradient this is; with an `addend` (the identity's error, of the output's
//    memory order) also max|value + addend| in double, the max pass of the stream's rounding of
//    that sum (fx_sum in stream.cpp), as the bits of |double| (they order as the magnitudes do).
struct StoreAcc {
  __m512i sm = _mm512_setzero_si512(), sa = _mm512_setzero_si512();   // int64 lanes: kept, all
  __m512i mx = _mm512_setzero_si512();                                 // bits of |kept|, uint32 lanes
  __m512i lo = _mm512_set1_epi32(INT32_MAX), hi = _mm512_set1_epi32(INT32_MIN);   // int32 lanes
  __m512i amx = _mm512_setzero_si512();                                // bits of |value + addend|, uint64
  const float* addend = nullptr;
  __m512i tk = _mm512_setzero_si512(), tl = _mm512_set1_epi64(-1), ta = _mm512_setzero_si512();  // tail t:
  const float* tail_id = nullptr;                                     // max, min order keys, max bits of |t|
  double ts = 1.0, tb = 0.0;
};

struct StoreTotal {
  const uint8_t* live;     // MASK when not null
  bool range, sum;         // RANGE, SUM
  const float* addend = nullptr;     // SUM: also max|value + addend|
  const float* tail_id = nullptr;    // RANGE: also the tail's t = value * ts + tb + tail_id
  double ts = 1.0, tb = 0.0;
  int64_t sm = 0, sa = 0;
  uint32_t mx = 0;
  int32_t lo = INT32_MAX, hi = INT32_MIN;
  uint64_t amx = 0, tk = 0, tl = ~0ull, ta = 0;
  std::mutex lock;
  StoreTotal(const uint8_t* l, bool r, bool s = false) : live(l), range(r), sum(s) {}
  StoreAcc acc() const {
    StoreAcc a;
    a.addend = addend;
    a.tail_id = tail_id, a.ts = ts, a.tb = tb;
    return a;
  }
  void add(const StoreAcc& a) {
    const int64_t sm_ = _mm512_reduce_add_epi64(a.sm), sa_ = _mm512_reduce_add_epi64(a.sa);
    const uint32_t mx_ = static_cast<uint32_t>(_mm512_reduce_max_epu32(a.mx));
    const int32_t lo_ = _mm512_reduce_min_epi32(a.lo), hi_ = _mm512_reduce_max_epi32(a.hi);
    const uint64_t amx_ = static_cast<uint64_t>(_mm512_reduce_max_epu64(a.amx));
    const uint64_t tk_ = _mm512_reduce_max_epu64(a.tk), tl_ = _mm512_reduce_min_epu64(a.tl);
    const uint64_t ta_ = _mm512_reduce_max_epu64(a.ta);
    std::lock_guard<std::mutex> guard(lock);
    sm += sm_, sa += sa_, mx = std::max(mx, mx_), lo = std::min(lo, lo_), hi = std::max(hi, hi_);
    amx = std::max(amx, amx_), tk = std::max(tk, tk_), tl = std::min(tl, tl_), ta = std::max(ta, ta_);
  }
};

// the tail's t = v * s + b + id for 8 lanes (each step in double, exact, as stream.cpp's
// tail_value), folded into the max and min order keys and the max bits of |t|
inline void tail_keys(StoreAcc& m, __m256 v, __m256 id) {
  const __m512d t = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(_mm512_cvtps_pd(v), _mm512_set1_pd(m.ts)),
                                                _mm512_set1_pd(m.tb)), _mm512_cvtps_pd(id));
  const __m512i u = _mm512_castpd_si512(t);
  const __m512i sign = _mm512_set1_epi64(static_cast<int64_t>(0x8000000000000000ull));
  const __m512i key = _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi64(u, 63), sign));   // order key
  m.tk = _mm512_max_epu64(m.tk, key);
  m.tl = _mm512_min_epu64(m.tl, key);
  m.ta = _mm512_max_epu64(m.ta, _mm512_andnot_si512(sign, u));
}

// max over 8 lanes of the bits of |a + b| (a, b: 8 floats widened to double; the sum exact)
inline __m512i abs_sum_max(__m512i acc, __m256 a, __m256 b) {
  const __m512d v = _mm512_add_pd(_mm512_cvtps_pd(a), _mm512_cvtps_pd(b));
  return _mm512_max_epu64(acc, _mm512_and_si512(_mm512_castpd_si512(v), _mm512_set1_epi64(0x7fffffffffffffffll)));
}

inline __m512i widen_sum(__m512i acc, __m512i k) {
  acc = _mm512_add_epi64(acc, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(k)));
  return _mm512_add_epi64(acc, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(k, 1)));
}

// 16 output channels (acc - corr) * scale stored at dst; with MASK, element `elem` of the output's
// memory order (a multiple of 16) and its 15 successors masked by `live`, and counted into `m`
// unless `count` is false (a value written a second time); with RANGE, their ends into `m`; with
// SUM, their sum (counted as MASK's).
template <bool MASK, bool RANGE = false, bool SUM = false>
inline void store16(float* dst, __m512i acc, __m512i cv, __m512 scale, const uint8_t* live, int64_t elem,
                    bool count, StoreAcc& m) {
  const __m512i k = _mm512_sub_epi32(acc, cv);
  const __m512 f = _mm512_cvtepi32_ps(k);
  __m512 v = _mm512_mul_ps(f, scale);
  if constexpr (RANGE) {
    m.lo = _mm512_min_epi32(m.lo, k);
    m.hi = _mm512_max_epi32(m.hi, k);
    if (m.tail_id) {
      const float* id = m.tail_id + elem;
      tail_keys(m, _mm512_castps512_ps256(v), _mm256_loadu_ps(id));
      tail_keys(m, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)), _mm256_loadu_ps(id + 8));
    }
  }
  if constexpr (SUM) {
    if (count) m.sa = widen_sum(m.sa, _mm512_cvtps_epi32(f));
    if (m.addend) {
      const float* b = m.addend + elem;
      m.amx = abs_sum_max(m.amx, _mm512_castps512_ps256(v), _mm256_loadu_ps(b));
      m.amx = abs_sum_max(m.amx, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)), _mm256_loadu_ps(b + 8));
    }
  }
  if constexpr (MASK) {
    uint16_t bits;
    std::memcpy(&bits, live + (elem >> 3), 2);
    v = _mm512_maskz_mov_ps(bits, v);
    m.mx = _mm512_max_epu32(m.mx, _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
    if (count) {
      const __m512i kf = _mm512_cvtps_epi32(f);          // the float's integer (exact: below 2^31)
      m.sa = widen_sum(m.sa, kf);
      m.sm = widen_sum(m.sm, _mm512_maskz_mov_epi32(bits, kf));
    }
  }
  _mm512_storeu_ps(dst, v);
}
#endif

#if EOQ_AMX
// conv of a padded uint8 input (>= 64 * ceil(kw * cp / 64) readable bytes past its end) with the
// VNNI-packed weights wp, written as float32 (acc - corr) * scale; needs Ho * Wp >= 16. With
// `mask`, the store also masks, sums or finds the range (StoreTotal).
void conv_amx(const uint8_t* src, const int8_t* wp, const int32_t* cr, float* dst, int64_t N, int64_t Hp,
              int64_t Wp, int64_t cp, int64_t Co, int64_t kh, int64_t kw, float scale, StoreTotal* mask = nullptr);
// the weight gradient into total (zeroed int64 [Co, kh*kw*cin]); needs Ho * Wo <= 66,000
void wgrad_amx(const uint8_t* xs, const int8_t* es, WgradTotal& total, int64_t N, int64_t Hp, int64_t Wp,
               int64_t cp, int64_t Ho, int64_t Wo, int64_t Co, int64_t kh, int64_t kw);
#endif

}  // namespace eoq_direct
