// The direct convolutions of direct.cpp on AMX tiles (tdpbusd: a 16 x 16 int32 tile += 16 x 64
// uint8 times 64 x 16 int8, 16,384 multiply-adds per instruction), computing the same integers.
// Linux hands out the tile state only on request (arch_prctl), once per process.
#include "direct.h"

namespace eoq_direct {

// AMX tiles need the kernel's permission once per process (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023
// for XFEATURE_XTILEDATA = 18); false when the CPU, the compiler or the kernel lacks them.
bool amx_available() {
#if EOQ_AMX
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
#else
  return false;
#endif
}

#if EOQ_AMX
struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline void amx_configure() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
  _tile_loadconfig(&cfg);
}

// Tiles 0..N-1 (N <= 5; tile numbers must be constants) zeroed, or stored 256 int32 apart.
template <int N>
inline void zero_tiles() {
  _tile_zero(0);
  if (N > 1) _tile_zero(1);
  if (N > 2) _tile_zero(2);
  if (N > 3) _tile_zero(3);
  if (N > 4) _tile_zero(4);
}

template <int N>
inline void store_tiles(int32_t* scratch) {
  _tile_stored(0, scratch, 64);
  if (N > 1) _tile_stored(1, scratch + 256, 64);
  if (N > 2) _tile_stored(2, scratch + 512, 64);
  if (N > 3) _tile_stored(3, scratch + 768, 64);
  if (N > 4) _tile_stored(4, scratch + 1024, 64);
}

// NB (1-4) blocks of 16 output pixels x 16 output channels in tiles 0-3: for each kernel row ky
// and 64-byte chunk t of the kw*cp-byte row segment, tile 4 holds the weights (16 rows of 4 k x 16
// co) and tiles 5/6 the 16 pixels' segments (row stride cp bytes: neighbouring pixels overlap).
template <int NB>
inline void amx_blocks(const uint8_t* const* in, int64_t row, int64_t cp, const int8_t* bw, int64_t kh,
                       int64_t nk, int32_t* scratch) {
  zero_tiles<NB>();
  for (int64_t ky = 0; ky < kh; ++ky)
    for (int64_t t = 0; t < nk; ++t) {
      const int64_t off = ky * row + 64 * t;
      _tile_loadd(4, bw + (ky * nk + t) * 1024, 64);
      _tile_loadd(5, in[0] + off, cp);
      _tile_dpbusd(0, 5, 4);
      if (NB > 1) { _tile_loadd(6, in[1] + off, cp); _tile_dpbusd(1, 6, 4); }
      if (NB > 2) { _tile_loadd(5, in[2] + off, cp); _tile_dpbusd(2, 5, 4); }
      if (NB > 3) { _tile_loadd(6, in[3] + off, cp); _tile_dpbusd(3, 6, 4); }
    }
  store_tiles<NB>(scratch);
}

// The conv on AMX tiles. Output pixels are taken in flat order q = y * Wp + x over the padded
// width, so that 16 consecutive positions read input segments a uniform cp bytes apart; positions
// with x >= Wo are computed and dropped, and an image's last block may overlap the one before it
// (it writes the same values again). Needs Ho * Wp >= 16. Weights repacked from the VNNI operand:
// bw[cb][ky][t][r][co][j] holds, for k = 64 t + 4 r + j, the weight of kernel column k / cp and
// input channel k % cp (0 past kw).
void conv_amx(const uint8_t* src, const int8_t* wp, const int32_t* cr, float* dst, int64_t N, int64_t Hp,
              int64_t Wp, int64_t cp, int64_t Co, int64_t kh, int64_t kw, float scale_, StoreTotal* mask) {
  const int64_t Ho = Hp - kh + 1, Wo = Wp - kw + 1, row = Wp * cp, nk = (kw * cp + 63) / 64;
  const int64_t per_cb = kh * nk * 1024;
  // cp % 4 == 0, so the 4 bytes of k = 4 k4 .. 4 k4 + 3 are one (kx, ci / 4) group of the VNNI operand,
  // whose 16 output channels x 4 bytes lie contiguous there: one 64-byte copy per (cb, ky, k4)
  std::vector<int8_t> bw(Co / 16 * per_cb, 0);
  const int64_t c4 = cp / 4;
  at::parallel_for(0, Co / 16 * kh, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t cb = i / kh, ky = i % kh;
      for (int64_t k4 = 0; k4 < kw * c4; ++k4)
        std::memcpy(bw.data() + cb * per_cb + (ky * nk + k4 / 16) * 1024 + (k4 % 16) * 64,
                    wp + (((ky * kw + k4 / c4) * c4 + k4 % c4) * Co + cb * 16) * 4, 64);
    }
  });
  const int64_t L = Ho * Wp, per_img = (L + 15) / 16;
  const __m512 scale = _mm512_set1_ps(scale_);
  at::parallel_for(0, N * per_img, 16, [&](int64_t b, int64_t e) {
    amx_configure();
    alignas(64) int32_t scratch[4 * 256];
    const uint8_t* in[4];
    int64_t img[4], q0[4], own[4];     // own: the first position that is this block's (overlap: below)
    int nb = 0;
    StoreAcc macc = mask ? mask->acc() : StoreAcc();
    auto store = [&](auto masked, auto ranged, auto summed, int i, int64_t cb, __m512i cv) {
      for (int64_t p = 0; p < 16; ++p) {
        const int64_t q = q0[i] + p, y = q / Wp, x = q % Wp;
        if (x >= Wo) continue;
        const int64_t elem = ((img[i] * Ho + y) * Wo + x) * Co + cb * 16;
        store16<decltype(masked)::value, decltype(ranged)::value, decltype(summed)::value>(
            dst + elem, _mm512_load_si512(scratch + i * 256 + p * 16), cv, scale, mask ? mask->live : nullptr, elem,
            q >= own[i], macc);
      }
    };
    auto flush = [&]() {
      for (int64_t cb = 0; cb < Co / 16; ++cb) {
        const int8_t* w = bw.data() + cb * per_cb;
        switch (nb) {
          case 1: amx_blocks<1>(in, row, cp, w, kh, nk, scratch); break;
          case 2: amx_blocks<2>(in, row, cp, w, kh, nk, scratch); break;
          case 3: amx_blocks<3>(in, row, cp, w, kh, nk, scratch); break;
          default: amx_blocks<4>(in, row, cp, w, kh, nk, scratch);
        }
        const __m512i cv = _mm512_loadu_si512(cr + cb * 16);
        for (int i = 0; i < nb; ++i) {
          using T = std::true_type;
          using F = std::false_type;
          if (mask && mask->live) store(T(), F(), F(), i, cb, cv);
          else if (mask && mask->range) store(F(), T(), F(), i, cb, cv);
          else if (mask && mask->sum) store(F(), F(), T(), i, cb, cv);
          else store(F(), F(), F(), i, cb, cv);
        }
      }
      nb = 0;
    };
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / per_img, start = std::min((t % per_img) * 16, L - 16);
      img[nb] = n;
      q0[nb] = start;
      own[nb] = (t % per_img) * 16;
      in[nb] = src + (n * Hp * Wp + start) * cp;
      if (++nb == 4) flush();
    }
    if (nb) flush();
    _tile_release();
    if (mask) mask->add(macc);
  });
}

// 16 x 16 bytes transposed: d[j * ds + i] = s[i * ss + j] (four rounds of SSE unpacks)
inline void transpose16(const uint8_t* s, int64_t ss, uint8_t* d, int64_t ds) {
  __m128i a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * ss));
  for (int i = 0; i < 8; ++i) {
    b[2 * i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {                       // rows 4q..4q+3
    const __m128i* x = b + 4 * q;
    a[4 * q] = _mm_unpacklo_epi16(x[0], x[2]);
    a[4 * q + 1] = _mm_unpackhi_epi16(x[0], x[2]);
    a[4 * q + 2] = _mm_unpacklo_epi16(x[1], x[3]);
    a[4 * q + 3] = _mm_unpackhi_epi16(x[1], x[3]);
  }
  for (int h = 0; h < 2; ++h)                          // rows 8h..8h+7
    for (int i = 0; i < 4; ++i) {
      b[8 * h + 2 * i] = _mm_unpacklo_epi32(a[8 * h + i], a[8 * h + 4 + i]);
      b[8 * h + 2 * i + 1] = _mm_unpackhi_epi32(a[8 * h + i], a[8 * h + 4 + i]);
    }
  for (int i = 0; i < 8; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * i) * ds), _mm_unpacklo_epi64(b[i], b[8 + i]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * i + 1) * ds), _mm_unpackhi_epi64(b[i], b[8 + i]));
  }
}

// G (1-5) weight-gradient tiles 0..G-1 over nch chunks of 64 positions: tile 6 = E (16 groups of
// 4 positions x 16 output channels), tile 5 = 16 input channels x 64 positions shifted by a tap.
template <int G>
inline void amx_wgrad_group(const uint8_t* const* a, int64_t a_stride, const uint8_t* e, int64_t e_stride,
                            int64_t nch, int32_t* scratch) {
  zero_tiles<G>();
  for (int64_t ch = 0; ch < nch; ++ch) {
    _tile_loadd(6, e + ch * 16 * e_stride, e_stride);
    const int64_t off = ch * 64;
    _tile_loadd(5, a[0] + off, a_stride); _tile_dpbusd(0, 5, 6);
    if (G > 1) { _tile_loadd(5, a[1] + off, a_stride); _tile_dpbusd(1, 5, 6); }
    if (G > 2) { _tile_loadd(5, a[2] + off, a_stride); _tile_dpbusd(2, 5, 6); }
    if (G > 3) { _tile_loadd(5, a[3] + off, a_stride); _tile_dpbusd(3, 5, 6); }
    if (G > 4) { _tile_loadd(5, a[4] + off, a_stride); _tile_dpbusd(4, 5, 6); }
  }
  store_tiles<G>(scratch);
}

// The weight gradient on AMX tiles, for groups of B images at once: the padded inputs transposed
// to XT[ci][q] (q = b * P + flat padded pixel, P = Hp * Wp) and E placed at q = b * P + y * Wp + x
// (zeros elsewhere), interleaved by 4 positions. Tap (ky, kx) pairs E position q with input
// position q + ky * Wp + kx, a uniform shift that stays inside the image: C[ci][co] +=
// XT[ci][q + shift] * E[q][co] over 64-position chunks. A group's int32 sums hold at most
// B * Ho * Wo <= 66,000 products of 255 * 127 per element, below 2^31, before they go to int64.
void wgrad_amx(const uint8_t* xs, const int8_t* es, WgradTotal& total, int64_t N, int64_t Hp, int64_t Wp,
               int64_t cp, int64_t Ho, int64_t Wo, int64_t Co, int64_t kh, int64_t kw) {
  // B: at most 66,000 / (Ho * Wo) images (int32 bound), and about 16K positions (cache-sized)
  const int64_t P = Hp * Wp, B = std::max<int64_t>(1, std::min(66000 / (Ho * Wo), 16384 / P));
  const int64_t cpt = (cp + 15) / 16 * 16, cib_n = cpt / 16, Cob = Co / 16, KK = kh * kw;
  at::parallel_for(0, N, 1, [&](int64_t nb, int64_t ne) {
    amx_configure();
    const int64_t bmax = std::min(B, ne - nb), kmax = (bmax * P + 63) / 64 * 64;
    // rows 4096 k + 64 bytes apart: a tile's 16 rows then fall in 16 cache sets (the position budget
    // made the length a multiple of 4096, which put all 16 rows in one set of the L1 cache)
    const int64_t xt_len = (kmax + (kh - 1) * Wp + kw + 64 + 4095) / 4096 * 4096 + 64;
    std::vector<uint8_t> xt(cpt * xt_len, 128), e4((kmax / 4) * Co * 4, 0), ef(kmax * Co, 0);
    std::vector<int64_t> part(Co * KK * cpt, 0), psum(Co, 0);
    alignas(64) int32_t scratch[5 * 256];
    for (int64_t n0 = nb; n0 < ne; n0 += bmax) {
      const int64_t nimg = std::min(bmax, ne - n0), K = (nimg * P + 63) / 64 * 64, nch = K / 64;
      const uint8_t* img = xs + n0 * P * cp;
      int64_t q = 0;
      if (cp % 16 == 0)
        for (; q + 16 <= nimg * P; q += 16)
          for (int64_t c0 = 0; c0 < cp; c0 += 16) transpose16(img + q * cp + c0, cp, xt.data() + c0 * xt_len + q, xt_len);
      for (; q < nimg * P; ++q)
        for (int64_t c = 0; c < cp; ++c) xt[c * xt_len + q] = img[q * cp + c];
      std::fill(ef.begin(), ef.end(), 0);
      for (int64_t b = 0; b < nimg; ++b) {
        const int8_t* ei = es + (n0 + b) * Ho * Wo * Co;
        for (int64_t y = 0; y < Ho; ++y)
          std::memcpy(ef.data() + (b * P + y * Wp) * Co, ei + y * Wo * Co, Wo * Co);
        for (int64_t cb = 0; cb < Cob; ++cb) {                  // sum E per channel (int32 lanes)
          __m512i acc = _mm512_setzero_si512();
          for (int64_t p = 0; p < Ho * Wo; ++p)
            acc = _mm512_add_epi32(acc, _mm512_cvtepi8_epi32(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(ei + p * Co + cb * 16))));
          alignas(64) int32_t lanes[16];
          _mm512_store_si512(lanes, acc);
          for (int o = 0; o < 16; ++o) psum[cb * 16 + o] += lanes[o];
        }
      }
      // E of output channel block cb at e4 + cb * K * 16, 64 contiguous bytes per 4 positions, so
      // that a tile's 16 rows are one contiguous kilobyte
      for (int64_t cb = 0; cb < Cob; ++cb)
        interleave_row(reinterpret_cast<const uint8_t*>(ef.data()) + cb * 16, Co, K, 16, K / 4, 0,
                       e4.data() + cb * K * 16, 64);
      for (int64_t cb = 0; cb < Cob; ++cb)
        for (int64_t cib = 0; cib < cib_n; ++cib)
          for (int64_t t0 = 0; t0 < KK; t0 += 5) {
            const int64_t g = std::min<int64_t>(5, KK - t0);
            const uint8_t* a[5];
            for (int64_t i = 0; i < g; ++i)
              a[i] = xt.data() + cib * 16 * xt_len + (t0 + i) / kw * Wp + (t0 + i) % kw;
            const uint8_t* eb = e4.data() + cb * K * 16;
            switch (g) {
              case 1: amx_wgrad_group<1>(a, xt_len, eb, 64, nch, scratch); break;
              case 2: amx_wgrad_group<2>(a, xt_len, eb, 64, nch, scratch); break;
              case 3: amx_wgrad_group<3>(a, xt_len, eb, 64, nch, scratch); break;
              case 4: amx_wgrad_group<4>(a, xt_len, eb, 64, nch, scratch); break;
              default: amx_wgrad_group<5>(a, xt_len, eb, 64, nch, scratch);
            }
            for (int64_t i = 0; i < g; ++i)        // 16 contiguous int64 sums per output channel
              for (int64_t o = 0; o < 16; ++o) {
                int64_t* __restrict dst = part.data() + ((cb * 16 + o) * KK + t0 + i) * cpt + cib * 16;
                const int32_t* src = scratch + i * 256 + o;
                for (int64_t ci = 0; ci < 16; ++ci) dst[ci] += src[ci * 16];
              }
          }
    }
    _tile_release();
    total.add(part, psum, cpt);
  });
}
#endif

}  // namespace eoq_direct
