// Kernels of the integer engine (eoq/engine/intengine.py holds the torch reference of each):
//   im2col(x, kh, kw, stride, dilation, pad_top, pad_bottom, pad_left, pad_right)
//       int8 NHWC x -> rows [N*Ho*Wo, kh*kw*C] (C fastest); the input is read as if dilated by
//       `dilation` (zeros between pixels, for transposed convolutions) and zero-padded, without
//       materialising either; writes into `out` when given (a reused buffer: no page faults).
//   dequant(acc, exponent)          int32 -> float32 acc * 2^exponent in one pass
//   dequant_stats(acc, e, out)      the same into a 4-d out, and (sum of the values' integers, min, max)
//   scale_exact_(y, e, stats)       dequant's floats in place from exact float32 integers (and the stats)
//   weight_mats(w, exponent)
//       float32 weights [Co, Ci, kh, kw] on the grid 2^exponent -> int8 codes as the forward GEMM
//       operand [kh*kw*Ci, Co] and the input-gradient operand [kh*kw*Co, Ci] (kernel rotated by
//       180 degrees), both row-major, in one pass
//   sq_int_conv(acc, exp_in, bits, mode, generator, ci)
//       G of a conv weight-gradient accumulator [Co, kh*kw*Ci] (int32 or int64, im2col order):
//       sq_int's codes of the same values in logical [Co, Ci, kh, kw] order (random bits by
//       logical index), returned as float32 codes * 2^lsb in that order
//   transpose(x)                    int8 [R, C] -> [C, R] row-major, in 64 x 64 tiles (the E codes
//       as the weight-gradient GEMM's left operand; torch's strided copy is 4x slower)
//   sq_int(acc, exp_in, bits, mode, generator)
//       SQ(acc * 2^exp_in, bits) of an int64 tensor (logical order) computed on the integers:
//       exact exponent, then round half to even or floor((floor(acc 2^(16-s)) + b) / 2^16).
#include <torch/extension.h>
#include <climits>
#include <ATen/Parallel.h>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <tuple>
#include "common.h"

namespace {

at::Tensor im2col(const at::Tensor& x_, int64_t kh, int64_t kw, int64_t stride, int64_t dil,
                  int64_t pt, int64_t pb, int64_t pl, int64_t pr, c10::optional<at::Tensor> out_) {
  TORCH_CHECK(x_.scalar_type() == at::kChar && x_.dim() == 4, "im2col: int8 NHWC input");
  const at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t Hd = (H - 1) * dil + 1 + pt + pb, Wd = (W - 1) * dil + 1 + pl + pr;
  const int64_t Ho = (Hd - kh) / stride + 1, Wo = (Wd - kw) / stride + 1;
  TORCH_CHECK(Ho > 0 && Wo > 0, "im2col: kernel larger than the padded input");
  at::Tensor out = out_.has_value() ? *out_ : at::empty({N * Ho * Wo, kh * kw * C}, x.options());
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kChar && out.size(0) == N * Ho * Wo &&
              out.size(1) == kh * kw * C, "im2col: out buffer of the wrong shape");
  const int8_t* src = x.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  const int64_t cell_bytes = C, row_bytes = kh * kw * C;
  // copy one C-byte cell; fixed sizes inline to a few vector moves
  auto copy_cell = [C](int8_t* d, const int8_t* s) {
    switch (C) {
      case 16: std::memcpy(d, s, 16); break;
      case 32: std::memcpy(d, s, 32); break;
      case 64: std::memcpy(d, s, 64); break;
      default: std::memcpy(d, s, C);
    }
  };
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / Ho, oh = r % Ho;
      const int8_t* img = src + n * H * W * C;
      for (int64_t ky = 0; ky < kh; ++ky) {
        const int64_t yd = oh * stride + ky - pt;             // row in the dilated, padded input
        const bool yok = yd >= 0 && yd % dil == 0 && yd / dil < H;
        const int8_t* line = img + (yok ? yd / dil : 0) * W * C;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          int8_t* cell = dst + (r * Wo + ow) * row_bytes + ky * kw * cell_bytes;
          const int64_t x0 = ow * stride - pl;
          if (dil == 1 && yok && x0 >= 0 && x0 + kw <= W) {   // the kw cells lie side by side
            std::memcpy(cell, line + x0 * C, kw * cell_bytes);
            continue;
          }
          for (int64_t kx = 0; kx < kw; ++kx, cell += cell_bytes) {
            const int64_t xd = ow * stride + kx - pl;
            if (yok && xd >= 0 && xd % dil == 0 && xd / dil < W)
              copy_cell(cell, line + (xd / dil) * C);
            else
              std::memset(cell, 0, cell_bytes);
          }
        }
      }
    }
  });
  return out;
}

// The code of integer a at shift s = lsb - exp_in, clamped to [-m, m]: round half to even of
// a / 2^s (mode 0), or floor((floor(a 2^(16-s)) + b) / 2^16) with 16 random bits b (mode 1).
inline int64_t int_code(int64_t a, int64_t s, int64_t m, int64_t mode, uint32_t b) {
  int64_t c;
  if (mode == 0) {
    if (s <= 0) {
      c = a * (int64_t(1) << -s);
    } else {
      const int64_t q = a >> s, r = a - (q << s), half = int64_t(1) << (s - 1);
      c = q + ((r > half || (r == half && (q & 1))) ? 1 : 0);
    }
  } else {
    const int64_t t = s <= 16 ? a * (int64_t(1) << (16 - s)) : (a >> (s - 16));
    c = (t + int64_t(b)) >> 16;
  }
  return c < -m ? -m : (c > m ? m : c);
}

// What SQ of acc * 2^exp_in needs before rounding: the exact LSB exponent from max|acc|, the
// max code m, the shift s = lsb - exp_in, and the random key (drawn only for stochastic rounding).
struct IntSQ {
  int64_t lsb, m, s;
  std::pair<uint32_t, uint32_t> key;
};

template <typename T>
IntSQ int_sq_setup(const T* p, int64_t n, int64_t exp_in, int64_t bits, int64_t mode,
                   c10::optional<at::Generator> gen) {
  int64_t amax = at::parallel_reduce(0, n, 1 << 14, int64_t(0), [&](int64_t b, int64_t e, int64_t m) {
    for (int64_t i = b; i < e; ++i) { const int64_t a = p[i]; m = std::max(m, a < 0 ? -a : a); }
    return m;
  }, [](int64_t a, int64_t b) { return std::max(a, b); });
  IntSQ q;
  q.lsb = eoqk::exponent_of(std::ldexp(double(amax), int(exp_in))) + 1 - bits;
  q.m = (int64_t(1) << (bits - 1)) - 1;
  q.s = q.lsb - exp_in;
  q.key = mode ? eoqk::draw_key(gen) : std::pair<uint32_t, uint32_t>{0, 0};
  return q;
}

std::tuple<at::Tensor, int64_t> sq_int(const at::Tensor& acc_, int64_t exp_in, int64_t bits,
                                       int64_t mode, c10::optional<at::Generator> gen) {
  TORCH_CHECK(acc_.scalar_type() == at::kLong, "sq_int: int64 input");
  const at::Tensor acc = acc_.contiguous();
  const int64_t n = acc.numel();
  const int64_t* p = acc.data_ptr<int64_t>();
  const IntSQ q = int_sq_setup(p, n, exp_in, bits, mode, gen);
  const int64_t lsb = q.lsb, m = q.m, s = q.s;
  const auto k = q.key;
  at::Tensor out = at::empty(acc.sizes(), acc.options().dtype(at::kChar));
  int8_t* d = out.data_ptr<int8_t>();
  at::parallel_for(0, (n + 511) / 512, 8, [&](int64_t bb, int64_t be) {
    uint32_t rb[512] = {0};
    for (int64_t blk = bb; blk < be; ++blk) {
      const int64_t i0 = blk * 512, len = std::min<int64_t>(512, n - i0);
      if (mode) eoqk::fill_bits(rb, len, uint32_t(i0), 1u, k.first, k.second);
      for (int64_t l = 0; l < len; ++l)
        d[i0 + l] = static_cast<int8_t>(int_code(p[i0 + l], s, m, mode, rb[l]));
    }
  });
  return {out, lsb};
}

// acc * 2^exponent as float32 in one pass (torch's int32 * float makes a float copy, then scales).
// Exact for |acc| < 2^24; beyond, it rounds exactly as float(acc) * 2^e does.
// out: a float32 tensor of acc's size to write into (a block of a larger output): contiguous, or
// a 4-d view whose last dimension is contiguous (a strided conv's input-gradient phase
// out[:, py::s, px::s]), written row by row in acc's order.
at::Tensor dequant(const at::Tensor& acc_, int64_t exponent, c10::optional<at::Tensor> out_) {
  TORCH_CHECK(acc_.scalar_type() == at::kInt, "dequant: int32 input");
  const at::Tensor acc = acc_.contiguous();
  at::Tensor out = out_.has_value() ? *out_ : at::empty(acc.sizes(), acc.options().dtype(at::kFloat));
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.numel() == acc.numel() &&
              (out.is_contiguous() || (out.dim() == 4 && out.stride(3) == 1)),
              "dequant: out must be a float32 tensor of the accumulator's size, contiguous or 4-d with "
              "a contiguous last dimension");
  const int32_t* p = acc.data_ptr<int32_t>();
  float* d = out.data_ptr<float>();
  const float scale = std::ldexp(1.0f, static_cast<int>(exponent));
  if (!out.is_contiguous()) {
    const int64_t n1 = out.size(1), n2 = out.size(2), c = out.size(3);
    const int64_t s0 = out.stride(0), s1 = out.stride(1), s2 = out.stride(2);
    at::parallel_for(0, out.size(0) * n1 * n2, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* dr = d + (r / (n1 * n2)) * s0 + ((r / n2) % n1) * s1 + (r % n2) * s2;
        const int32_t* pr = p + r * c;
        for (int64_t l = 0; l < c; ++l) dr[l] = static_cast<float>(pr[l]) * scale;
      }
    });
    return out;
  }
  at::parallel_for(0, acc.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] = static_cast<float>(p[i]) * scale;
  });
  return out;
}

// dequant into `out` (as dequant) and, along, the sum of the written values' integers (value /
// 2^exponent: the float32 of each accumulator, exact in int64) and the accumulators' min and max
// (their floats' order): what the Fixup bias in front of an input gradient needs (its sum, as
// sum_f32 forms it wherever that is exact) and the next quantizer's max pass (a forward's range).
std::tuple<int64_t, int64_t, int64_t> dequant_stats(const at::Tensor& acc_, int64_t exponent, at::Tensor out) {
  TORCH_CHECK(acc_.scalar_type() == at::kInt, "dequant_stats: int32 input");
  const at::Tensor acc = acc_.contiguous();
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.numel() == acc.numel() && out.dim() == 4 && out.stride(3) == 1,
              "dequant_stats: out must be a 4-d float32 tensor of the accumulator's size, its last dimension contiguous");
  const int32_t* p = acc.data_ptr<int32_t>();
  float* d = out.data_ptr<float>();
  const float scale = std::ldexp(1.0f, static_cast<int>(exponent));
  const int64_t n1 = out.size(1), n2 = out.size(2), c = out.size(3);
  const int64_t s0 = out.stride(0), s1 = out.stride(1), s2 = out.stride(2);
  struct R { int64_t sum; int32_t lo, hi; };
  const R r = at::parallel_reduce(0, out.size(0) * n1 * n2, 64, R{0, INT32_MAX, INT32_MIN},
                                  [&](int64_t b, int64_t e, R acc_r) {
    int64_t sum = acc_r.sum;
    int32_t lo = acc_r.lo, hi = acc_r.hi;
    for (int64_t row = b; row < e; ++row) {
      float* dr = d + (row / (n1 * n2)) * s0 + ((row / n2) % n1) * s1 + (row % n2) * s2;
      const int32_t* pr = p + row * c;
      for (int64_t l = 0; l < c; ++l) {
        const float f = static_cast<float>(pr[l]);
        dr[l] = f * scale;
        sum += static_cast<int64_t>(f);
        lo = std::min(lo, pr[l]);
        hi = std::max(hi, pr[l]);
      }
    }
    return R{sum, lo, hi};
  }, [](R a, R b) { return R{a.sum + b.sum, std::min(a.lo, b.lo), std::max(a.hi, b.hi)}; });
  return {r.sum, r.lo, r.hi};
}

// y *= 2^exponent in place, for a contiguous float32 y holding integers of magnitude <= 2^24 (an
// exact float32 convolution's sums, eoq/engine/float_conv.py): the floats dequant writes for the
// same integers as int32, and along, with `stats`, dequant_stats' (sum of the integers, min, max).
std::tuple<int64_t, int64_t, int64_t> scale_exact_(at::Tensor y, int64_t exponent, bool stats) {
  TORCH_CHECK(y.scalar_type() == at::kFloat && y.is_contiguous(), "scale_exact_: a contiguous float32 tensor");
  float* d = y.data_ptr<float>();
  const float scale = std::ldexp(1.0f, static_cast<int>(exponent));
  struct R { int64_t sum; int32_t lo, hi; };
  const R r = at::parallel_reduce(0, y.numel(), 1 << 14, R{0, INT32_MAX, INT32_MIN},
                                  [&](int64_t b, int64_t e, R acc_r) {
    int64_t sum = acc_r.sum;
    int32_t lo = acc_r.lo, hi = acc_r.hi;
    if (!stats) {
      for (int64_t i = b; i < e; ++i) d[i] = d[i] * scale;
      return acc_r;
    }
    for (int64_t i = b; i < e; ++i) {
      const float f = d[i];
      const int32_t v = static_cast<int32_t>(f);
      d[i] = f * scale;
      sum += v;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    return R{sum, lo, hi};
  }, [](R a, R b) { return R{a.sum + b.sum, std::min(a.lo, b.lo), std::max(a.hi, b.hi)}; });
  return {r.sum, r.lo, r.hi};
}

// d[j * ds + i] = s[i * ss + j] for a 16 x 16 block of bytes: four rounds of SSE2 unpacks
// (bytes, 16-bit pairs, 32-bit quads, 64-bit halves), 16 loads and 16 stores.
inline void transpose16(const int8_t* s, int64_t ss, int8_t* d, int64_t ds) {
  __m128i r[16], b[16], c[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * ss));
  for (int k = 0; k < 8; ++k) {           // b[2k]: rows 2k, 2k+1 interleaved, columns 0-7 (2k+1: 8-15)
    b[2 * k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
    b[2 * k + 1] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
  }
  for (int m = 0; m < 4; ++m) {           // c[4m + q]: rows 4m..4m+3, columns 4q..4q+3
    c[4 * m + 0] = _mm_unpacklo_epi16(b[4 * m], b[4 * m + 2]);
    c[4 * m + 1] = _mm_unpackhi_epi16(b[4 * m], b[4 * m + 2]);
    c[4 * m + 2] = _mm_unpacklo_epi16(b[4 * m + 1], b[4 * m + 3]);
    c[4 * m + 3] = _mm_unpackhi_epi16(b[4 * m + 1], b[4 * m + 3]);
  }
  for (int g = 0; g < 2; ++g)             // r[8g + p]: rows 8g..8g+7, columns 2p, 2p+1
    for (int q = 0; q < 4; ++q) {
      r[8 * g + 2 * q] = _mm_unpacklo_epi32(c[8 * g + q], c[8 * g + 4 + q]);
      r[8 * g + 2 * q + 1] = _mm_unpackhi_epi32(c[8 * g + q], c[8 * g + 4 + q]);
    }
  for (int p = 0; p < 8; ++p) {           // column 2p and 2p+1, rows 0..15
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * p) * ds), _mm_unpacklo_epi64(r[p], r[8 + p]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * p + 1) * ds), _mm_unpackhi_epi64(r[p], r[8 + p]));
  }
}

// Tile (r0, c0) (64 x 64, cut at the edges) of the transpose of an [R, C] byte matrix into [C, R].
inline void transpose_tile(const int8_t* src, int8_t* dst, int64_t R, int64_t C, int64_t r0, int64_t c0) {
  const int64_t r1 = std::min(R, r0 + 64), c1 = std::min(C, c0 + 64);
  const int64_t r16 = r0 + (r1 - r0) / 16 * 16, c16 = c0 + (c1 - c0) / 16 * 16;
  for (int64_t r = r0; r < r16; r += 16)
    for (int64_t c = c0; c < c16; c += 16) transpose16(src + r * C + c, C, dst + c * R + r, R);
  for (int64_t c = c0; c < c1; ++c) {     // the ragged edges, byte by byte
    int8_t* d = dst + c * R;
    for (int64_t r = (c < c16 ? r16 : r0); r < r1; ++r) d[r] = src[r * C + c];
  }
}

at::Tensor transpose(const at::Tensor& x_) {
  TORCH_CHECK(x_.scalar_type() == at::kChar && x_.dim() == 2, "transpose: int8 matrix");
  const at::Tensor x = x_.contiguous();
  const int64_t R = x.size(0), C = x.size(1), tc = (C + 63) / 64;
  at::Tensor out = at::empty({C, R}, x.options());
  const int8_t* src = x.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  at::parallel_for(0, (R + 63) / 64 * tc, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) transpose_tile(src, dst, R, C, t / tc * 64, t % tc * 64);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> weight_mats(const at::Tensor& w_, int64_t exponent) {
  TORCH_CHECK(w_.scalar_type() == at::kFloat && w_.dim() == 4, "weight_mats: float32 [Co, Ci, kh, kw]");
  const at::Tensor w = w_.contiguous();
  const int64_t Co = w.size(0), Ci = w.size(1), KK = w.size(2) * w.size(3), plane = Co * Ci;
  at::Tensor fwd = at::empty({KK * Ci, Co}, w.options().dtype(at::kChar));
  at::Tensor bwd = at::empty({KK * Co, Ci}, w.options().dtype(at::kChar));
  const float* src = w.data_ptr<float>();
  int8_t* f = fwd.data_ptr<int8_t>();
  int8_t* b = bwd.data_ptr<int8_t>();
  const float inv = std::ldexp(1.0f, static_cast<int>(-exponent));
  // pass 1: bwd block KK - 1 - q (the kernel rotated by 180 degrees) is codes[:, :, q] as [Co, Ci]:
  // read the weights in order, KK sequential write streams
  at::parallel_for(0, plane, 1 << 12, [&](int64_t lo, int64_t hi) {
    for (int64_t oc = lo; oc < hi; ++oc)
      for (int64_t q = 0; q < KK; ++q)
        b[(KK - 1 - q) * plane + oc] = static_cast<int8_t>(std::nearbyint(src[oc * KK + q] * inv));
  });
  // pass 2: fwd block q ([Ci, Co]) is the transpose of bwd block KK - 1 - q
  const int64_t tc = (Ci + 63) / 64, tiles = (Co + 63) / 64 * tc;
  at::parallel_for(0, KK * tiles, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t q = t / tiles, r = t % tiles;
      transpose_tile(b + (KK - 1 - q) * plane, f + q * plane, Co, Ci, r / tc * 64, r % tc * 64);
    }
  });
  return {fwd, bwd};
}

template <typename T>
std::tuple<at::Tensor, int64_t> sq_int_conv_t(const at::Tensor& acc, int64_t exp_in, int64_t bits,
                                              int64_t mode, c10::optional<at::Generator> gen, int64_t Ci) {
  const int64_t Co = acc.size(0), K = acc.size(1), KK = K / Ci, n = acc.numel();
  const T* p = acc.data_ptr<T>();
  const IntSQ sq = int_sq_setup(p, n, exp_in, bits, mode, gen);
  const int64_t lsb = sq.lsb, m = sq.m, s = sq.s;
  const auto k = sq.key;
  at::Tensor out = at::empty({Co, Ci, KK}, acc.options().dtype(at::kFloat));
  float* d = out.data_ptr<float>();
  const float scale = std::ldexp(1.0f, static_cast<int>(lsb));
  // logical index i = (o * Ci + c) * KK + q  <->  accumulator element (o, q * Ci + c); one output
  // row o per task, its random bits by logical index in blocks of 512, (c, q) carried along
  const int64_t row = Ci * KK;
  at::parallel_for(0, Co, 1, [&](int64_t ob, int64_t oe) {
    uint32_t rb[512] = {0};
    for (int64_t o = ob; o < oe; ++o) {
      const T* src = p + o * K;
      float* dst = d + o * row;
      int64_t c = 0, q = 0;
      for (int64_t j0 = 0; j0 < row; j0 += 512) {
        const int64_t len = std::min<int64_t>(512, row - j0);
        if (mode) eoqk::fill_bits(rb, len, uint32_t(o * row + j0), 1u, k.first, k.second);
        for (int64_t l = 0; l < len; ++l) {
          dst[j0 + l] = static_cast<float>(int_code(src[q * Ci + c], s, m, mode, rb[l])) * scale;
          if (++q == KK) { q = 0; ++c; }
        }
      }
    }
  });
  return {out, lsb};
}

std::tuple<at::Tensor, int64_t> sq_int_conv(const at::Tensor& acc_, int64_t exp_in, int64_t bits,
                                            int64_t mode, c10::optional<at::Generator> gen, int64_t ci) {
  TORCH_CHECK(acc_.dim() == 2 && ci > 0 && acc_.size(1) % ci == 0, "sq_int_conv: [Co, kh*kw*Ci] accumulator");
  const at::Tensor acc = acc_.contiguous();
  if (acc.scalar_type() == at::kInt) return sq_int_conv_t<int32_t>(acc, exp_in, bits, mode, gen, ci);
  TORCH_CHECK(acc.scalar_type() == at::kLong, "sq_int_conv: int32 or int64 accumulator");
  return sq_int_conv_t<int64_t>(acc, exp_in, bits, mode, gen, ci);
}

}  // namespace

void register_intops(pybind11::module& m) {
  m.def("dequant", &dequant, pybind11::arg("acc"), pybind11::arg("exponent"), pybind11::arg("out") = pybind11::none());
  m.def("dequant_stats", &dequant_stats, pybind11::arg("acc"), pybind11::arg("exponent"), pybind11::arg("out"));
  m.def("scale_exact_", &scale_exact_, pybind11::arg("y"), pybind11::arg("exponent"), pybind11::arg("stats"));
  m.def("im2col", &im2col);
  m.def("sq_int", &sq_int);
  m.def("weight_mats", &weight_mats);
  m.def("transpose", &transpose);
  m.def("sq_int_conv", &sq_int_conv);
}
