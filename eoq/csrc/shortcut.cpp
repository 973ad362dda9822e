// The option-A shortcut of a Fixup block inside the fixed-point stream (eoq/models/blocks.py,
// _ExactShortcutAFn, holds the torch reference), one pass each way:
//
//   shortcut_a(x, b, s, pad) -> y        y = pad(x[:, :, ::s, ::s] + b) in float64 (exact: a float32
//                                        plus a float32 scalar), zero channels appended; y in x's
//                                        memory layout (NCHW or channels-last)
//   shortcut_a_backward(g, x_shape, s, channels_last) -> (gx, sum)
//                                        gx = g[:, :C] scattered to every s-th pixel of a float32
//                                        zero tensor of x's shape (the layout asked for), and the
//                                        sum of g[:, :C] in double, rounded once to float32 (b's
//                                        gradient). The errors are stream values (integers times
//                                        one power of two, fewer than 53 bits in all), so the sum
//                                        is exact and equals torch's in any order.
//
// Torch's strided copy, zero fill and pad took 10-30 times as long (a float64 strided copy into a
// channels-last view does not vectorize).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstring>

namespace {

bool is_cl(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor shortcut_a(const at::Tensor& x, double b_, int64_t s, int64_t pad) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 4, "shortcut_a: a 4-d float32 x");
  TORCH_CHECK(s >= 1 && pad >= 0, "shortcut_a: stride >= 1 and pad >= 0");
  const bool cl = is_cl(x);
  TORCH_CHECK(cl || x.is_contiguous(), "shortcut_a: x contiguous (NCHW or channels-last)");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + s - 1) / s, Wo = (W + s - 1) / s, Cp = C + pad;
  const double b = static_cast<double>(static_cast<float>(b_));
  at::Tensor y = at::empty({N, Cp, Ho, Wo}, x.options().dtype(at::kDouble),
                           cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const float* px = x.data_ptr<float>();
  double* py = y.data_ptr<double>();
  if (cl) {
    at::parallel_for(0, N * Ho, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t n = r / Ho, ho = r % Ho;
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const float* src = px + ((n * H + ho * s) * W + wo * s) * C;
          double* dst = py + (r * Wo + wo) * Cp;
          for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<double>(src[c]) + b;
          for (int64_t c = C; c < Cp; ++c) dst[c] = 0.0;
        }
      }
    });
    return y;
  }
  at::parallel_for(0, N * Cp, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / Cp, c = r % Cp;
      double* dst = py + r * Ho * Wo;
      if (c >= C) {
        for (int64_t i = 0; i < Ho * Wo; ++i) dst[i] = 0.0;
        continue;
      }
      for (int64_t ho = 0; ho < Ho; ++ho) {
        const float* src = px + ((n * C + c) * H + ho * s) * W;
        for (int64_t wo = 0; wo < Wo; ++wo) dst[ho * Wo + wo] = static_cast<double>(src[wo * s]) + b;
      }
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> shortcut_a_backward(const at::Tensor& g, std::vector<int64_t> x_shape, int64_t s,
                                                       bool channels_last) {
  TORCH_CHECK(g.scalar_type() == at::kDouble && g.dim() == 4 && x_shape.size() == 4,
              "shortcut_a_backward: a 4-d float64 error and x's 4-d shape");
  const int64_t N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3];
  const int64_t Ho = (H + s - 1) / s, Wo = (W + s - 1) / s, Cp = g.size(1);
  TORCH_CHECK(g.size(0) == N && Cp >= C && g.size(2) == Ho && g.size(3) == Wo, "shortcut_a_backward: error of shape ",
              g.sizes(), " for x of shape ", at::IntArrayRef(x_shape), " and stride ", s);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor gx = at::empty(x_shape, g.options().dtype(at::kFloat), fmt);
  const double* pg = g.data_ptr<double>();
  float* po = gx.data_ptr<float>();
  // element (n, c, ho, wo) of g, any strides
  const int64_t sn = g.stride(0), sc = g.stride(1), sh = g.stride(2), sw = g.stride(3);
  double total;
  if (channels_last) {
    total = at::parallel_reduce(0, N * H, 1, 0.0, [&](int64_t lo, int64_t hi, double acc) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t n = r / H, h = r % H;
        float* row = po + r * W * C;
        if (h % s) {
          std::memset(row, 0, sizeof(float) * W * C);
          continue;
        }
        for (int64_t w = 0; w < W; ++w) {
          float* dst = row + w * C;
          if (w % s) {
            std::memset(dst, 0, sizeof(float) * C);
            continue;
          }
          const double* src = pg + n * sn + (h / s) * sh + (w / s) * sw;
          for (int64_t c = 0; c < C; ++c) {
            const double v = src[c * sc];
            dst[c] = static_cast<float>(v);
            acc += v;
          }
        }
      }
      return acc;
    }, [](double a, double c) { return a + c; });
  } else {
    total = at::parallel_reduce(0, N * C, 1, 0.0, [&](int64_t lo, int64_t hi, double acc) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t n = r / C, c = r % C;
        float* plane = po + r * H * W;
        std::memset(plane, 0, sizeof(float) * H * W);
        for (int64_t h = 0; h < H; h += s) {
          const double* src = pg + n * sn + c * sc + (h / s) * sh;
          for (int64_t w = 0, wo = 0; w < W; w += s, ++wo) {
            const double v = src[wo * sw];
            plane[h * W + w] = static_cast<float>(v);
            acc += v;
          }
        }
      }
      return acc;
    }, [](double a, double c) { return a + c; });
  }
  at::Tensor sum = at::empty({1}, g.options().dtype(at::kFloat));
  *sum.data_ptr<float>() = static_cast<float>(total);
  return {gx, sum};
}

}  // namespace

void register_shortcut(pybind11::module& m) {
  m.def("shortcut_a", &shortcut_a);
  m.def("shortcut_a_backward", &shortcut_a_backward);
}
