// Direct int8 convolutions for narrow layers (AVX-512 VNNI vpdpbusd or AMX tdpbusd), no im2col.
// eoq/engine/direct.py holds the torch reference of each and says when the engine uses them.
//
// vpdpbusd multiplies unsigned by signed bytes, so the activation side carries codes + 128
// (uint8, 128 = the code 0 in padding) and the sums are corrected exactly afterwards:
//   sum (a + 128) w = sum a w + 128 sum w.
//
//   pad_u8(x, pad, cp)     int8 NHWC codes -> uint8 [N, H+2p, W+2p, cp] holding code + 128,
//                          128 in the border and in channels C..cp-1 (cp: C rounded up to 4)
//   conv(xu, w, corr, kh, kw, exponent)
//       stride-1 convolution of a padded uint8 input with weights packed [kh*kw, cp/4, Co, 4]
//       (int8; 4 input channels of one output channel side by side), Co a multiple of 16:
//       float32 NHWC (sum - corr[co]) * 2^exponent, corr = 128 * sum of the weights of co
//   wgrad(xu, e, kh, kw, cin)
//       int64 [Co, kh*kw*cin] (im2col order) = sum over pixels of E (int8 NHWC, the conv's
//       output grid) times the stride-1 window of the input codes; int32 partial sums are
//       flushed to int64 before 2^31 / (255 * 127) products, so nothing can overflow
//   pack(w, exponent)      float32 weights on the grid 2^exponent -> both conv operands and
//                          corrections (direct.weights is the torch reference)
//   amx_available()        AMX tiles usable here (CPU, compiler, and the kernel's permission)
// conv and wgrad take `amx`: compute the same integers on AMX tiles when available (amx.cpp).
#include "direct.h"
#include "common.h"

#include <limits>
#include <tuple>

namespace {
using namespace eoq_direct;
using eoqk::f32;

bool available() { return EOQ_DIRECT; }

constexpr int64_t kSlack = 256;  // readable bytes after a padded input (an AMX tile row reads up to
                                 // 64 * ceil(kw * cp / 64) bytes from its pixel; conv checks)

at::Tensor pad_u8(const at::Tensor& x_, int64_t pad, int64_t cp) {
  TORCH_CHECK(x_.scalar_type() == at::kChar && x_.dim() == 4, "pad_u8: int8 NHWC codes");
  const at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK(pad >= 0 && cp >= C && cp % 4 == 0, "pad_u8: cp must be >= C and a multiple of 4");
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad;
  at::Tensor out = at::empty({N * Hp * Wp * cp + kSlack}, x.options().dtype(at::kByte))
                       .narrow(0, 0, N * Hp * Wp * cp).view({N, Hp, Wp, cp});
  const int8_t* src = x.data_ptr<int8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, N * Hp, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      int64_t n, y;
      uint8_t* dd = eoqk::padded_row(dst, r, H, W, pad, cp, n, y);
      if (dd == nullptr) continue;
      const int8_t* s = src + (n * H + y) * W * C;
      if (cp == C) {
        int64_t i = 0;
#if EOQ_DIRECT
        const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
        for (; i + 64 <= W * C; i += 64)
          _mm512_storeu_si512(dd + i, _mm512_xor_si512(_mm512_loadu_si512(s + i), flip));
#endif
        for (; i < W * C; ++i) dd[i] = static_cast<uint8_t>(s[i]) ^ 0x80u;
      } else {
        for (int64_t i = 0; i < W; ++i) {
          for (int64_t c = 0; c < C; ++c) dd[i * cp + c] = static_cast<uint8_t>(s[i * C + c]) ^ 0x80u;
          std::memset(dd + i * cp + C, 128, cp - C);
        }
      }
    }
  });
  return out;
}

#if EOQ_DIRECT
inline __m512i bcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// P output pixels of one row x 16 output channels: P accumulators in registers. With MASK, the
// first one is element `elem` of the output (store16).
template <int P, bool MASK, bool RANGE, bool SUM>
inline void conv_pixels(const uint8_t* in, int64_t row, int64_t cp, const int8_t* w, int64_t Co,
                        int64_t kh, int64_t kw, __m512i corr, __m512 scale, float* out, const uint8_t* live,
                        int64_t elem, StoreAcc& m) {
  __m512i acc[P];
  for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_si512();
  const int64_t G = cp / 4;
  for (int64_t ky = 0; ky < kh; ++ky) {
    for (int64_t kx = 0; kx < kw; ++kx) {
      const uint8_t* s = in + ky * row + kx * cp;
      const int8_t* wt = w + (ky * kw + kx) * G * Co * 4;
      for (int64_t g = 0; g < G; ++g) {
        const __m512i wv = _mm512_loadu_si512(wt + g * Co * 4);
        for (int p = 0; p < P; ++p) acc[p] = _mm512_dpbusd_epi32(acc[p], bcast4(s + p * cp + 4 * g), wv);
      }
    }
  }
  for (int p = 0; p < P; ++p) store16<MASK, RANGE, SUM>(out + p * Co, acc[p], corr, scale, live, elem + p * Co, true, m);
}

// One output row's pixels [0, Wo) x 16 channels from cb on, P = 16, 8, 4, 1 at a time.
template <bool MASK, bool RANGE, bool SUM>
inline void conv_row(const uint8_t* in, int64_t row, int64_t cp, const int8_t* wc, int64_t Co, int64_t kh,
                     int64_t kw, __m512i cv, __m512 scale, float* o, int64_t Wo, const uint8_t* live,
                     int64_t elem, StoreAcc& m) {
  int64_t x = 0;
  for (; x + 16 <= Wo; x += 16)
    conv_pixels<16, MASK, RANGE, SUM>(in + x * cp, row, cp, wc, Co, kh, kw, cv, scale, o + x * Co, live, elem + x * Co, m);
  for (; x + 8 <= Wo; x += 8)
    conv_pixels<8, MASK, RANGE, SUM>(in + x * cp, row, cp, wc, Co, kh, kw, cv, scale, o + x * Co, live, elem + x * Co, m);
  for (; x + 4 <= Wo; x += 4)
    conv_pixels<4, MASK, RANGE, SUM>(in + x * cp, row, cp, wc, Co, kh, kw, cv, scale, o + x * Co, live, elem + x * Co, m);
  for (; x < Wo; ++x)
    conv_pixels<1, MASK, RANGE, SUM>(in + x * cp, row, cp, wc, Co, kh, kw, cv, scale, o + x * Co, live, elem + x * Co, m);
}
#endif

at::Tensor conv_into(const at::Tensor& xu_, const at::Tensor& w_, const at::Tensor& corr_, int64_t kh,
                     int64_t kw, int64_t exponent, bool amx, StoreTotal* mask) {
  TORCH_CHECK(available(), "direct conv: this build has no AVX-512 VNNI");
  TORCH_CHECK(xu_.scalar_type() == at::kByte && xu_.dim() == 4, "direct conv: uint8 padded NHWC input");
  const at::Tensor xu = xu_.contiguous(), w = w_.contiguous(), corr = corr_.contiguous();
  const int64_t N = xu.size(0), Hp = xu.size(1), Wp = xu.size(2), cp = xu.size(3);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 4 && w.size(0) == kh * kw && w.size(1) * 4 == cp &&
              w.size(3) == 4 && w.size(2) % 16 == 0, "direct conv: weights packed [kh*kw, cp/4, Co, 4], Co % 16 == 0");
  const int64_t Co = w.size(2), Ho = Hp - kh + 1, Wo = Wp - kw + 1;
  TORCH_CHECK(Ho > 0 && Wo > 0, "direct conv: kernel larger than the padded input");
  TORCH_CHECK(corr.scalar_type() == at::kInt && corr.numel() == Co, "direct conv: int32 corr[Co]");
  TORCH_CHECK(kh * kw * cp <= 66000, "direct conv: inner size too large for int32 sums");
  at::Tensor out = at::empty({N, Ho, Wo, Co}, xu.options().dtype(at::kFloat));
#if EOQ_AMX
  if (amx && Ho * Wp >= 16 && amx_available()) {
    at::Tensor in = xu;
    const int64_t reach = (kw * cp + 63) / 64 * 64;   // bytes a tile row reads from its pixel on
    if (xu.storage().nbytes() < static_cast<size_t>(xu.storage_offset() + xu.numel() + reach)) {
      in = at::empty({xu.numel() + reach}, xu.options()).narrow(0, 0, xu.numel()).view(xu.sizes());
      in.copy_(xu);
    }
    conv_amx(in.data_ptr<uint8_t>(), w.data_ptr<int8_t>(), corr.data_ptr<int32_t>(), out.data_ptr<float>(), N,
             Hp, Wp, cp, Co, kh, kw, std::ldexp(1.0f, static_cast<int>(exponent)), mask);
    return out;
  }
#endif
#if EOQ_DIRECT
  const uint8_t* src = xu.data_ptr<uint8_t>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const int32_t* cr = corr.data_ptr<int32_t>();
  float* dst = out.data_ptr<float>();
  const __m512 scale = _mm512_set1_ps(std::ldexp(1.0f, static_cast<int>(exponent)));
  const int64_t row = Wp * cp;
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    StoreAcc macc = mask ? mask->acc() : StoreAcc();
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / Ho, y = r % Ho;
      const uint8_t* in = src + (n * Hp + y) * row;
      float* o = dst + r * Wo * Co;
      for (int64_t cb = 0; cb < Co; cb += 16) {
        const __m512i cv = _mm512_loadu_si512(cr + cb);
        const int8_t* wc = wp + cb * 4;
        if (mask && mask->live)
          conv_row<true, false, false>(in, row, cp, wc, Co, kh, kw, cv, scale, o + cb, Wo, mask->live, r * Wo * Co + cb,
                                       macc);
        else if (mask && mask->range)   // (the element index: the tail identity's)
          conv_row<false, true, false>(in, row, cp, wc, Co, kh, kw, cv, scale, o + cb, Wo, nullptr, r * Wo * Co + cb,
                                       macc);
        else if (mask && mask->sum)     // (the element index: the addend's)
          conv_row<false, false, true>(in, row, cp, wc, Co, kh, kw, cv, scale, o + cb, Wo, nullptr, r * Wo * Co + cb,
                                       macc);
        else
          conv_row<false, false, false>(in, row, cp, wc, Co, kh, kw, cv, scale, o + cb, Wo, nullptr, 0, macc);
      }
    }
    if (mask) mask->add(macc);
  });
#endif
  return out;
}

at::Tensor conv(const at::Tensor& xu, const at::Tensor& w, const at::Tensor& corr, int64_t kh, int64_t kw,
                int64_t exponent, bool amx) {
  return conv_into(xu, w, corr, kh, kw, exponent, amx, nullptr);
}

// conv with the backward of the ReLU in front of the conv whose input gradient this is (see
// StoreTotal): (g = out where live else +0.0, sum g, sum out, max|g|), the sums rounded once to
// float32 and max|g| a double, as masked_grad_sums (stream.cpp) returns them for out.
std::tuple<at::Tensor, at::Tensor, at::Tensor, double> conv_masked(const at::Tensor& xu, const at::Tensor& w,
                                                                   const at::Tensor& corr, int64_t kh, int64_t kw,
                                                                   int64_t exponent, bool amx, const at::Tensor& live) {
  TORCH_CHECK(live.scalar_type() == at::kByte && live.dim() == 1 && live.is_contiguous(),
              "direct conv_masked: a packed mask (uint8 bits)");
#if EOQ_DIRECT
  const int64_t Co = w.size(2), n = xu.size(0) * (xu.size(1) - kh + 1) * (xu.size(2) - kw + 1) * Co;
  TORCH_CHECK(live.numel() == (n + 7) / 8, "direct conv_masked: the mask of ", n, " elements");
  StoreTotal mask(live.data_ptr<uint8_t>(), false);
  at::Tensor out = conv_into(xu, w, corr, kh, kw, exponent, amx, &mask);
  const double scale = std::ldexp(1.0, static_cast<int>(exponent));
  uint32_t mx = mask.mx;
  float amax;
  std::memcpy(&amax, &mx, 4);
  return {out, f32(static_cast<double>(mask.sm) * scale), f32(static_cast<double>(mask.sa) * scale),
          static_cast<double>(amax)};
#else
  TORCH_CHECK(false, "direct conv: this build has no AVX-512 VNNI");
#endif
}

// conv and the sum of its output, in double, rounded once to float32 (as sum_f32 of stream.cpp
// returns it for out, wherever that one is exact; see StoreTotal); with an `addend` (float32, the
// output's sizes in NHWC memory order; empty: none) also max|out + addend| as the double fx_sum's
// max pass finds it (+inf for NaN or Inf), else -1.
std::tuple<at::Tensor, at::Tensor, double> conv_sum(const at::Tensor& xu, const at::Tensor& w, const at::Tensor& corr,
                                                    int64_t kh, int64_t kw, int64_t exponent, bool amx,
                                                    const at::Tensor& addend) {
#if EOQ_DIRECT
  StoreTotal total(nullptr, false, true);
  if (addend.numel()) {
    const int64_t n = xu.size(0) * (xu.size(1) - kh + 1) * (xu.size(2) - kw + 1) * w.size(2);
    TORCH_CHECK(addend.scalar_type() == at::kFloat && addend.numel() == n && addend.is_non_overlapping_and_dense(),
                "direct conv_sum: a dense float32 addend of the output's size");
    total.addend = addend.data_ptr<float>();
  }
  at::Tensor out = conv_into(xu, w, corr, kh, kw, exponent, amx, &total);
  const double amax = addend.numel() ? eoqk::from_abs_bits64(total.amx) : -1.0;
  return {out, f32(static_cast<double>(total.sa) * std::ldexp(1.0, static_cast<int>(exponent))), amax};
#else
  TORCH_CHECK(false, "direct conv: this build has no AVX-512 VNNI");
#endif
}

// conv and the range of its output: (out, min, max) as doubles (the float32 values' ends); with a
// tail identity `tail_id` (float32, the output's NHWC memory order; empty: none) also the tail's
// (min t, max t, max|t|) for t = out * ts + tb + tail_id (max|t| +inf for NaN or Inf), else zeros
// and -1.
std::tuple<at::Tensor, double, double, double, double, double> conv_range(
    const at::Tensor& xu, const at::Tensor& w, const at::Tensor& corr, int64_t kh, int64_t kw, int64_t exponent,
    bool amx, const at::Tensor& tail_id, double ts, double tb) {
#if EOQ_DIRECT
  StoreTotal range(nullptr, true);
  const int64_t n = xu.size(0) * (xu.size(1) - kh + 1) * (xu.size(2) - kw + 1) * w.size(2);
  if (tail_id.numel()) {
    TORCH_CHECK(tail_id.scalar_type() == at::kFloat && tail_id.numel() == n && tail_id.is_non_overlapping_and_dense(),
                "direct conv_range: a dense float32 tail identity of the output's size");
    range.tail_id = tail_id.data_ptr<float>(), range.ts = ts, range.tb = tb;
  }
  at::Tensor out = conv_into(xu, w, corr, kh, kw, exponent, amx, &range);
  if (out.numel() == 0) return {out, 0.0, 0.0, 0.0, 0.0, -1.0};
  const float scale = std::ldexp(1.0f, static_cast<int>(exponent));
  double tmin = 0.0, tmax = 0.0, tabs = -1.0;
  if (tail_id.numel()) {
    tmin = eoqk::from_key64(range.tl), tmax = eoqk::from_key64(range.tk);
    tabs = eoqk::from_abs_bits64(range.ta);
  }
  return {out, static_cast<double>(static_cast<float>(range.lo) * scale),
          static_cast<double>(static_cast<float>(range.hi) * scale), tmin, tmax, tabs};
#else
  TORCH_CHECK(false, "direct conv: this build has no AVX-512 VNNI");
#endif
}

#if EOQ_DIRECT
// stage[c] (16 output-channel lanes) += sum over `rows` rows' pixel groups of E4 x A4 (NC input
// channels); with SUM, esum (lanes) += the E codes themselves (vpdpbusd with ones)
template <int NC, bool SUM>
inline void wgrad_block(const uint8_t* e4, int64_t e_row, int64_t e_g, const uint8_t* a4, int64_t a_row,
                        int64_t a_g, int64_t rows, int64_t G4, int32_t* stage, int32_t* esum) {
  __m512i acc[NC];
  __m512i sum = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  for (int c = 0; c < NC; ++c) acc[c] = _mm512_setzero_si512();
  for (int64_t y = 0; y < rows; ++y) {
    const uint8_t* er = e4 + y * e_row;
    const uint8_t* ar = a4 + y * a_row;
    for (int64_t g = 0; g < G4; ++g) {
      const __m512i ev = _mm512_loadu_si512(er + g * e_g);
      const uint8_t* a = ar + g * a_g;
      for (int c = 0; c < NC; ++c) acc[c] = _mm512_dpbusd_epi32(acc[c], bcast4(a + 4 * c), ev);
      if (SUM) sum = _mm512_dpbusd_epi32(sum, ones, ev);
    }
  }
  for (int c = 0; c < NC; ++c)
    _mm512_storeu_si512(stage + c * 16, _mm512_add_epi32(_mm512_loadu_si512(stage + c * 16), acc[c]));
  if (SUM) _mm512_storeu_si512(esum, _mm512_add_epi32(_mm512_loadu_si512(esum), sum));
}

template <bool SUM>
inline void wgrad_dispatch(int64_t nc, const uint8_t* eb, int64_t e_row, int64_t e_g, const uint8_t* ab,
                           int64_t a_row, int64_t a_g, int64_t rows, int64_t G4, int32_t* st, int32_t* es) {
  if (nc == 16) wgrad_block<16, SUM>(eb, e_row, e_g, ab, a_row, a_g, rows, G4, st, es);
  else if (nc == 12) wgrad_block<12, SUM>(eb, e_row, e_g, ab, a_row, a_g, rows, G4, st, es);
  else if (nc == 8) wgrad_block<8, SUM>(eb, e_row, e_g, ab, a_row, a_g, rows, G4, st, es);
  else wgrad_block<4, SUM>(eb, e_row, e_g, ab, a_row, a_g, rows, G4, st, es);
}
#endif

at::Tensor wgrad(const at::Tensor& xu_, const at::Tensor& e_, int64_t kh, int64_t kw, int64_t cin, bool amx) {
  TORCH_CHECK(available(), "direct wgrad: this build has no AVX-512 VNNI");
  TORCH_CHECK(xu_.scalar_type() == at::kByte && xu_.dim() == 4, "direct wgrad: uint8 padded NHWC input");
  TORCH_CHECK(e_.scalar_type() == at::kChar && e_.dim() == 4, "direct wgrad: int8 NHWC errors");
  const at::Tensor xu = xu_.contiguous(), e = e_.contiguous();
  const int64_t N = xu.size(0), Hp = xu.size(1), Wp = xu.size(2), cp = xu.size(3);
  const int64_t Ho = e.size(1), Wo = e.size(2), Co = e.size(3);
  TORCH_CHECK(e.size(0) == N && Ho == Hp - kh + 1 && Wo == Wp - kw + 1 && Co % 16 == 0 && cp % 4 == 0 &&
              cin <= cp, "direct wgrad: shapes of a stride-1 conv, Co % 16 == 0");
  const int64_t KK = kh * kw, G4 = (Wo + 3) / 4, Cob = Co / 16;
  // per image: E4[y][g][cb][16][4] and A4[yp][kx][g][cp][4] (input pixel 4g + j + kx)
  const int64_t e_g = Cob * 64, e_row = G4 * e_g, a_g = cp * 4, a_row = kw * G4 * a_g;
  // int32 staging per image: at most `chunk` rows of (255 * 127)-bounded products per flush
#if EOQ_AMX
  if (amx && Ho * Wo <= 66000 && amx_available()) {
    at::Tensor out = at::zeros({Co, kh * kw * cin}, e.options().dtype(at::kLong));
    WgradTotal total(out.data_ptr<int64_t>(), Co, kh * kw, cin);
    wgrad_amx(xu.data_ptr<uint8_t>(), e.data_ptr<int8_t>(), total, N, Hp, Wp, cp, Ho, Wo, Co, kh, kw);
    total.finish();
    return out;
  }
#endif
  TORCH_CHECK(G4 * 4 <= 66000, "direct wgrad: rows wider than 66,000 pixels");
  const int64_t chunk = std::max<int64_t>(1, 66000 / (G4 * 4));
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>(chunk, 32 / G4));  // ~32 groups per block
  at::Tensor out = at::zeros({Co, KK * cin}, e.options().dtype(at::kLong));
#if EOQ_DIRECT
  const uint8_t* xs = xu.data_ptr<uint8_t>();
  const int8_t* es = e.data_ptr<int8_t>();
  WgradTotal total(out.data_ptr<int64_t>(), Co, KK, cin);
  at::parallel_for(0, N, 1, [&](int64_t nb, int64_t ne) {
    std::vector<uint8_t> e4(Ho * e_row), a4(Hp * a_row);
    std::vector<int64_t> part(Co * KK * cp, 0), psum(Co, 0);
    std::vector<int32_t> stage(Cob * KK * cp * 16, 0), ssum(Co, 0);   // [cb][tap][c][16 lanes]
    auto drain = [&]() {
      for (int64_t cb = 0; cb < Cob; ++cb)
        for (int64_t q = 0; q < KK; ++q)
          for (int64_t c = 0; c < cp; ++c)
            for (int64_t o = 0; o < 16; ++o)
              part[((cb * 16 + o) * KK + q) * cp + c] += stage[((cb * KK + q) * cp + c) * 16 + o];
      for (int64_t o = 0; o < Co; ++o) psum[o] += ssum[o];
      std::fill(stage.begin(), stage.end(), 0);
      std::fill(ssum.begin(), ssum.end(), 0);
    };
    int64_t since = 0;                                                // rows staged since the drain
    for (int64_t n = nb; n < ne; ++n) {
      const uint8_t* img = xs + n * Hp * Wp * cp;
      const int8_t* ei = es + n * Ho * Wo * Co;
      for (int64_t y = 0; y < Ho; ++y)
        for (int64_t cb = 0; cb < Cob; ++cb)
          interleave_row(reinterpret_cast<const uint8_t*>(ei + y * Wo * Co) + cb * 16, Co, Wo, 16, G4, 0,
                         e4.data() + y * e_row + cb * 64, e_g);
      for (int64_t yp = 0; yp < Hp; ++yp)
        for (int64_t kx = 0; kx < kw; ++kx)
          interleave_row(img + (yp * Wp + kx) * cp, cp, Wp - kx, cp, G4, 128,
                         a4.data() + yp * a_row + kx * G4 * a_g, a_g);
      for (int64_t y0 = 0; y0 < Ho; y0 += R) {
        const int64_t rows = std::min(R, Ho - y0);
        if (since + rows > chunk) { drain(); since = 0; }
        since += rows;
        for (int64_t cb = 0; cb < Cob; ++cb)
          for (int64_t q = 0; q < KK; ++q)
            for (int64_t c0 = 0; c0 < cp; c0 += 16) {
              const int64_t ky = q / kw, kx = q % kw, nc = std::min<int64_t>(16, cp - c0);
              const uint8_t* eb = e4.data() + y0 * e_row + cb * 64;
              const uint8_t* ab = a4.data() + (y0 + ky) * a_row + kx * G4 * a_g + c0 * 4;
              int32_t* st = stage.data() + ((cb * KK + q) * cp + c0) * 16;
              if (q == 0 && c0 == 0) wgrad_dispatch<true>(nc, eb, e_row, e_g, ab, a_row, a_g, rows, G4, st, ssum.data() + cb * 16);
              else wgrad_dispatch<false>(nc, eb, e_row, e_g, ab, a_row, a_g, rows, G4, st, nullptr);
            }
      }
    }
    drain();
    total.add(part, psum, cp);
  });
  total.finish();
#endif
  return out;
}

// float32 weights [Co, Ci, kh, kw] on the grid 2^exponent -> conv's operand and correction for
// the forward ([kh*kw, cp/4, Co, 4], corr[Co]) and for the input gradient (kernel rotated by 180
// degrees, channels swapped: [kh*kw, cop/4, Ci, 4], corr[Ci]); padded channels hold 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack(const at::Tensor& w_, int64_t exponent) {
  TORCH_CHECK(w_.scalar_type() == at::kFloat && w_.dim() == 4, "direct pack: float32 [Co, Ci, kh, kw]");
  const at::Tensor w = w_.contiguous();
  const int64_t Co = w.size(0), Ci = w.size(1), kh = w.size(2), kw = w.size(3), KK = kh * kw;
  const int64_t cp = (Ci + 3) / 4 * 4, cop = (Co + 3) / 4 * 4;
  auto i8 = w.options().dtype(at::kChar), i32 = w.options().dtype(at::kInt);
  at::Tensor fwd = at::zeros({KK, cp / 4, Co, 4}, i8), bwd = at::zeros({KK, cop / 4, Ci, 4}, i8);
  at::Tensor fc = at::zeros({Co}, i32), bc = at::zeros({Ci}, i32);
  const float* src = w.data_ptr<float>();
  int8_t *f = fwd.data_ptr<int8_t>(), *b = bwd.data_ptr<int8_t>();
  int32_t *fs = fc.data_ptr<int32_t>(), *bs = bc.data_ptr<int32_t>();
  const float inv = std::ldexp(1.0f, static_cast<int>(-exponent));
  // threads take groups of 4 output channels (their writes never meet): their codes first, in the
  // weights' order, then both operands written in the operands' order (a weight tensor is too large
  // for the cache, and writing the operands in its order touched a new cache line per code); the
  // input channels' sums are added per thread and then under a lock (integers: any order)
  std::mutex lock;
  const int64_t row = Ci * KK, c4n = cp / 4, co4n = cop / 4;
  at::parallel_for(0, co4n, 1, [&](int64_t g0, int64_t g1) {
    const int64_t o0 = 4 * g0, o1 = std::min(4 * g1, Co);
    std::vector<int8_t> v((o1 - o0) * row);
    std::vector<int32_t> part(Ci, 0);
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t c = 0; c < Ci; ++c) {
        int32_t sum = 0;
        for (int64_t q = 0; q < KK; ++q) {
          const int64_t i = c * KK + q;
          const int8_t code = static_cast<int8_t>(std::nearbyint(src[o * row + i] * inv));
          v[(o - o0) * row + i] = code;
          sum += 128 * code;
        }
        fs[o] += sum;
        part[c] += sum;
      }
    // four codes a step (one int32 store), the last incomplete group of channels a code a step
    auto word = [](const int8_t* p, int64_t stride) {
      return static_cast<uint32_t>(static_cast<uint8_t>(p[0])) |
             static_cast<uint32_t>(static_cast<uint8_t>(p[stride])) << 8 |
             static_cast<uint32_t>(static_cast<uint8_t>(p[2 * stride])) << 16 |
             static_cast<uint32_t>(static_cast<uint8_t>(p[3 * stride])) << 24;
    };
    for (int64_t q = 0; q < KK; ++q) {
      for (int64_t c4 = 0; c4 < c4n; ++c4) {
        int8_t* out = f + (q * c4n + c4) * Co * 4;
        if (4 * c4 + 4 <= Ci) {
          for (int64_t o = o0; o < o1; ++o) {
            const uint32_t w4 = word(v.data() + (o - o0) * row + 4 * c4 * KK + q, KK);
            std::memcpy(out + o * 4, &w4, 4);
          }
        } else {
          for (int64_t o = o0; o < o1; ++o)
            for (int64_t j = 0; 4 * c4 + j < Ci; ++j) out[o * 4 + j] = v[(o - o0) * row + (4 * c4 + j) * KK + q];
        }
      }
      for (int64_t g = g0; g < g1; ++g) {
        int8_t* out = b + ((KK - 1 - q) * co4n + g) * Ci * 4;
        const int8_t* in = v.data() + (4 * g - o0) * row + q;
        if (4 * g + 4 <= Co) {
          for (int64_t c = 0; c < Ci; ++c) {
            const uint32_t w4 = word(in + c * KK, row);
            std::memcpy(out + c * 4, &w4, 4);
          }
        } else {
          for (int64_t c = 0; c < Ci; ++c)
            for (int64_t j = 0; 4 * g + j < Co; ++j) out[c * 4 + j] = in[j * row + c * KK];
        }
      }
    }
    std::lock_guard<std::mutex> hold(lock);
    for (int64_t c = 0; c < Ci; ++c) bs[c] += part[c];
  });
  return {fwd, fc, bwd, bc};
}

}  // namespace

void register_direct(pybind11::module& m) {
  m.def("direct_available", &available);
  m.def("amx_available", &amx_available);
  m.def("pad_u8", &pad_u8);
  m.def("direct_conv", &conv, pybind11::arg("xu"), pybind11::arg("w"), pybind11::arg("corr"), pybind11::arg("kh"),
        pybind11::arg("kw"), pybind11::arg("exponent"), pybind11::arg("amx") = false);
  m.def("direct_conv_masked", &conv_masked, pybind11::arg("xu"), pybind11::arg("w"), pybind11::arg("corr"),
        pybind11::arg("kh"), pybind11::arg("kw"), pybind11::arg("exponent"), pybind11::arg("amx"), pybind11::arg("live"));
  m.def("direct_conv_sum", &conv_sum, pybind11::arg("xu"), pybind11::arg("w"), pybind11::arg("corr"),
        pybind11::arg("kh"), pybind11::arg("kw"), pybind11::arg("exponent"), pybind11::arg("amx"),
        pybind11::arg("addend"));
  m.def("direct_conv_range", &conv_range, pybind11::arg("xu"), pybind11::arg("w"), pybind11::arg("corr"),
        pybind11::arg("kh"), pybind11::arg("kw"), pybind11::arg("exponent"), pybind11::arg("amx"),
        pybind11::arg("tail_id"), pybind11::arg("ts") = 1.0, pybind11::arg("tb") = 0.0);
  m.def("direct_wgrad", &wgrad, pybind11::arg("xu"), pybind11::arg("e"), pybind11::arg("kh"), pybind11::arg("kw"),
        pybind11::arg("cin"), pybind11::arg("amx") = false);
  m.def("direct_pack", &pack);
}
