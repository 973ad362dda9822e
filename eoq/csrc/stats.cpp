// Quantization-error statistics of one quantization x -> y in two passes over memory (the torch
// reference, analysis/qstats/stats.py, takes about fifteen). Pass 1 (stats_moments): max|x|,
// sum x^2, sum (y - x)^2, sum (y - x), and the nonzero counts of x and y, accumulated in double
// per chunk. Pass 2 (stats_hists), once the caller has chosen the grid from max|x|: the count of
// |x| > threshold, a `bins`-bin histogram of x over [-lim, lim] (torch.histc's binning: bin =
// floor((x + lim) * bins / (2 lim)), the top edge in the last bin) and the histogram of the codes
// y / unit in -m .. m (y is on the grid, so the codes are exact integers).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

namespace {

void check(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat, "qstats: float32 tensors");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel(),
              "qstats: x and y need the same number of elements, contiguous");
}

std::tuple<double, double, double, double, int64_t, int64_t> stats_moments(const at::Tensor& x,
                                                                          const at::Tensor& y) {
  check(x, y);
  const float* px = x.data_ptr<float>();
  const float* py = y.data_ptr<float>();
  double amax = 0, sx = 0, se = 0, serr = 0;
  int64_t nx = 0, ny = 0;
  std::mutex mu;
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t lo, int64_t hi) {
    constexpr int L = 16;                 // independent lanes: the compiler vectorizes across them
    double a[L] = {}, s1[L] = {}, s2[L] = {}, s3[L] = {};
    int64_t cx[L] = {}, cy[L] = {};
    int64_t i = lo;
    for (; i + L <= hi; i += L) {
      for (int l = 0; l < L; ++l) {
        const double v = px[i + l], e = double(py[i + l]) - v, av = v < 0 ? -v : v;
        a[l] = a[l] > av ? a[l] : av;
        s1[l] += v * v;
        s2[l] += e * e;
        s3[l] += e;
        cx[l] += px[i + l] != 0.0f;
        cy[l] += py[i + l] != 0.0f;
      }
    }
    for (; i < hi; ++i) {
      const double v = px[i], e = double(py[i]) - v, av = v < 0 ? -v : v;
      a[0] = a[0] > av ? a[0] : av;
      s1[0] += v * v, s2[0] += e * e, s3[0] += e;
      cx[0] += px[i] != 0.0f, cy[0] += py[i] != 0.0f;
    }
    std::lock_guard<std::mutex> lock(mu);
    for (int l = 0; l < L; ++l) {
      amax = amax > a[l] ? amax : a[l];
      sx += s1[l], se += s2[l], serr += s3[l], nx += cx[l], ny += cy[l];
    }
  });
  return {amax, sx, se, serr, nx, ny};
}

std::tuple<int64_t, at::Tensor, at::Tensor> stats_hists(const at::Tensor& x, const at::Tensor& y, double threshold,
                                                        double lim, int64_t bins, double unit, int64_t m) {
  check(x, y);
  TORCH_CHECK(bins > 0 && lim > 0 && unit > 0 && m >= 0, "qstats: bins, lim, unit > 0");
  const float* px = x.data_ptr<float>();
  const float* py = y.data_ptr<float>();
  at::Tensor values = at::zeros({bins}, at::kLong), codes = at::zeros({2 * m + 1}, at::kLong);
  int64_t* hv = values.data_ptr<int64_t>();
  int64_t* hc = codes.data_ptr<int64_t>();
  int64_t saturated = 0;
  const double per_bin = double(bins) / (2 * lim), inv_unit = 1.0 / unit;
  std::mutex mu;
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t lo, int64_t hi) {
    // Per block: the bin indices in one vectorizable loop, then the counting into four
    // interleaved copies of each histogram (consecutive equal bins do not wait on one another).
    constexpr int64_t B = 2048, K = 4;
    const int64_t nv = bins + 1, nc = 2 * m + 1;    // values: bin `bins` collects the out-of-range
    std::vector<int64_t> lv(K * nv, 0), lc(K * nc, 0);
    int32_t iv[B], ic[B];
    int64_t sat = 0;
    for (int64_t s0 = lo; s0 < hi; s0 += B) {
      const int64_t len = std::min(B, hi - s0);
      for (int64_t j = 0; j < len; ++j) {
        const double v = px[s0 + j], av = v < 0 ? -v : v;
        sat += av > threshold;
        const double t = (v + lim) * per_bin;
        int32_t b = t < 0 || av > lim || t != t ? int32_t(bins) : int32_t(t);   // histc skips these
        iv[j] = b == bins && av <= lim ? int32_t(bins - 1) : b;                 // the top edge
        const double c = double(py[s0 + j]) * inv_unit;
        ic[j] = int32_t(c < -m ? -m : (c > m ? m : c)) + int32_t(m);
      }
      for (int64_t j = 0; j < len; ++j) {
        lv[(j % K) * nv + iv[j]] += 1;
        lc[(j % K) * nc + ic[j]] += 1;
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    saturated += sat;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t b = 0; b < bins; ++b) hv[b] += lv[k * nv + b];
      for (int64_t c = 0; c < nc; ++c) hc[c] += lc[k * nc + c];
    }
  });
  return {saturated, values, codes};
}

}  // namespace

void register_stats(pybind11::module& m) {
  m.def("stats_moments", &stats_moments);
  m.def("stats_hists", &stats_hists);
}
