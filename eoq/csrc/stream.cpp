// The fixed-point residual stream (eoq/nn/stream.py, eoq/nn/fixup_tail.py hold the torch
// reference): an exact elementwise value, in double, rounded once to FX(., bits) = the smallest
// exponent that holds max|v| in bits-bit codes, round half to even. Two passes: max|v|, then the
// rounding (v recomputed, not stored). Each v is exact in double (a float32 times an 8-bit
// scalar plus terms on nearby grids), so the results equal the float64 torch ops bit for bit.
//
//   fx_affine(x, s, b, id, relu, bits) -> (y, live, e)   v = relu?(x * s + b + id); id may be empty;
//                                                        live = v > 0 (the ReLU's mask, before rounding)
//   fx_sum(a, b, bits) -> (y, e)                         v = a + b (b may be empty)
//   dot_sums(g, x) -> (sum g, sum g * x)                 in double: the Fixup scalars' gradients
//   sum_double(g) -> sum g                               in double
//   masked_sums(grad, live, x) -> (g, sum g, sum g * x)  g = grad where live (the tail's backward)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace {

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

// max|f(i)| over i, or +inf when some f(i) is NaN/Inf (carried by a sum of f(i) * 0, which
// keeps the loop free of branches so that it vectorizes).
// RELU: f's values are taken as relu(f) (max with the lanes' start, 0): no select per element,
// whose branch would mispredict on a ReLU's random signs.
template <bool RELU, typename F>
double amax_of(int64_t n, F f) {
  using P = std::pair<double, double>;
  const P r = at::parallel_reduce(0, n, 1 << 14, P(0.0, 0.0), [&](int64_t lo, int64_t hi, P acc) {
    constexpr int L = 8;
    double m[L] = {}, z[L] = {};
    int64_t i = lo;
    for (; i + L <= hi; i += L) {
      for (int l = 0; l < L; ++l) {
        const double v = f(i + l);
        m[l] = std::max(m[l], RELU ? v : std::fabs(v));
        z[l] += v * 0.0;
      }
    }
    for (; i < hi; ++i) {
      const double v = f(i);
      m[0] = std::max(m[0], RELU ? v : std::fabs(v));
      z[0] += v * 0.0;
    }
    for (int l = 0; l < L; ++l) acc.first = std::max(acc.first, m[l]), acc.second += z[l];
    return acc;
  }, [](P a, P b) { return P(std::max(a.first, b.first), a.second + b.second); });
  return r.second == 0.0 ? r.first : std::numeric_limits<double>::infinity();
}

// The tail's value relu?(x * s + b + id) of element i, each step exact in double.
template <typename ID, bool HAS_ID, bool RELU>
inline double tail_value(const float* px, const ID* pi, double s, double b, int64_t i) {
  double t = static_cast<double>(px[i]) * s + b;
  if (HAS_ID) t += static_cast<double>(pi[i]);
  return RELU ? std::max(t, 0.0) : t;          // NaN stays NaN (std::max keeps its first argument)
}

// The rounding pass of fx_affine over n elements; restrict pointers let it vectorize.
template <typename ID, bool HAS_ID, bool RELU>
void fx_affine_block(const float* __restrict__ px, const ID* __restrict__ pi, float* __restrict__ py,
                     uint8_t* __restrict__ pl, int64_t n, double s, double b, double down, double up) {
  for (int64_t i = 0; i < n; ++i) {
    const double t = tail_value<ID, HAS_ID, RELU>(px, pi, s, b, i);
    pl[i] = t > 0.0;
    py[i] = static_cast<float>(std::nearbyint(t * down) * up);
  }
}

template <typename ID, bool HAS_ID, bool RELU>
std::tuple<at::Tensor, at::Tensor, int64_t> fx_affine_t(const at::Tensor& x, double s, double b, const ID* pi,
                                                        int64_t bits) {
  const float* px = x.data_ptr<float>();
  const int64_t n = x.numel();
  const double amax = amax_of<RELU>(n, [&](int64_t i) { return tail_value<ID, HAS_ID, false>(px, pi, s, b, i); });
  TORCH_CHECK(std::isfinite(amax), "fx_affine: cannot round a tensor holding NaN or Inf");
  const int e = fixed_exponent(amax, bits);
  at::Tensor y = at::empty_like(x), live = at::empty_like(x, x.options().dtype(at::kBool));
  TORCH_CHECK(y.strides() == x.strides() && live.strides() == x.strides(), "fx_affine: output strides");
  float* py = y.data_ptr<float>();
  // the mask as bytes: a bool store may alias every other pointer and stops vectorization
  uint8_t* pl = reinterpret_cast<uint8_t*>(live.data_ptr<bool>());
  const double down = std::ldexp(1.0, -e), up = std::ldexp(1.0, e);
  at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
    fx_affine_block<ID, HAS_ID, RELU>(px + lo, HAS_ID ? pi + lo : pi, py + lo, pl + lo, hi - lo, s, b, down, up);
  });
  return {y, live, e};
}

template <typename ID>
std::tuple<at::Tensor, at::Tensor, int64_t> fx_affine_dispatch(const at::Tensor& x, double s, double b, const ID* pi,
                                                               bool relu, int64_t bits) {
  if (pi == nullptr) {
    return relu ? fx_affine_t<ID, false, true>(x, s, b, pi, bits) : fx_affine_t<ID, false, false>(x, s, b, pi, bits);
  }
  return relu ? fx_affine_t<ID, true, true>(x, s, b, pi, bits) : fx_affine_t<ID, true, false>(x, s, b, pi, bits);
}

// identity: float32 (a stream value) or float64 (an option-A shortcut of stream + bias, exact).
std::tuple<at::Tensor, at::Tensor, int64_t> fx_affine(const at::Tensor& x, double s, double b, const at::Tensor& id,
                                                      bool relu, int64_t bits) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_non_overlapping_and_dense(), "fx_affine: a dense float32 x");
  if (!id.numel()) return fx_affine_dispatch<float>(x, s, b, nullptr, relu, bits);
  TORCH_CHECK(id.sizes() == x.sizes() && id.strides() == x.strides(), "fx_affine: identity of x's sizes and strides");
  if (id.scalar_type() == at::kDouble) return fx_affine_dispatch<double>(x, s, b, id.data_ptr<double>(), relu, bits);
  TORCH_CHECK(id.scalar_type() == at::kFloat, "fx_affine: identity float32 or float64");
  return fx_affine_dispatch<float>(x, s, b, id.data_ptr<float>(), relu, bits);
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

// masked_sums over n elements: independent lanes and restrict pointers, so that it vectorizes.
std::pair<double, double> masked_block(const float* __restrict__ pg, const uint8_t* __restrict__ pl,
                                       const float* __restrict__ px, float* __restrict__ po, int64_t n) {
  constexpr int L = 8;
  double sg[L] = {}, sx[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int l = 0; l < L; ++l) {
      const float v = masked(pg[i + l], pl[i + l]);
      po[i + l] = v;
      sg[l] += v;
      sx[l] += static_cast<double>(v) * static_cast<double>(px[i + l]);
    }
  }
  for (; i < n; ++i) {
    const float v = masked(pg[i], pl[i]);
    po[i] = v;
    sg[0] += v;
    sx[0] += static_cast<double>(v) * static_cast<double>(px[i]);
  }
  double a = 0.0, c = 0.0;
  for (int l = 0; l < L; ++l) a += sg[l], c += sx[l];
  return {a, c};
}

// g = grad where live, else 0 (the ReLU backward), with sum g and sum g * x in double.
std::tuple<at::Tensor, double, double> masked_sums(const at::Tensor& grad, const at::Tensor& live, const at::Tensor& x) {
  check_pair(grad, x, "masked_sums");
  TORCH_CHECK(live.scalar_type() == at::kBool && live.strides() == grad.strides() && live.sizes() == grad.sizes(),
              "masked_sums: a bool mask of grad's sizes and strides");
  at::Tensor g = at::empty_like(grad);
  TORCH_CHECK(g.strides() == grad.strides(), "masked_sums: output strides");
  const float* pg = grad.data_ptr<float>();
  const float* px = x.data_ptr<float>();
  const uint8_t* pl = reinterpret_cast<const uint8_t*>(live.data_ptr<bool>());
  float* po = g.data_ptr<float>();
  using P = std::pair<double, double>;
  const P r = at::parallel_reduce(0, grad.numel(), 1 << 14, P(0.0, 0.0), [&](int64_t lo, int64_t hi, P acc) {
    const P d = masked_block(pg + lo, pl + lo, px + lo, po + lo, hi - lo);
    return P(acc.first + d.first, acc.second + d.second);
  }, [](P p, P q) { return P(p.first + q.first, p.second + q.second); });
  return {g, r.first, r.second};
}

std::tuple<at::Tensor, int64_t> fx_sum(const at::Tensor& a, const at::Tensor& b, int64_t bits) {
  check_pair(a, b, "fx_sum");
  const float* pa = a.data_ptr<float>();
  const float* pb = b.numel() ? b.data_ptr<float>() : nullptr;
  auto v = [&](int64_t i) { return static_cast<double>(pa[i]) + (pb != nullptr ? static_cast<double>(pb[i]) : 0.0); };
  const int64_t n = a.numel();
  const double amax = amax_of<false>(n, v);
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

std::tuple<double, double> dot_sums(const at::Tensor& g, const at::Tensor& x) {
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
  return {r.first, r.second};
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

}  // namespace

void register_stream(pybind11::module& m) {
  m.def("fx_affine", &fx_affine);
  m.def("fx_sum", &fx_sum);
  m.def("dot_sums", &dot_sums);
  m.def("masked_sums", &masked_sums);
  m.def("sum_double", &sum_double);
}
