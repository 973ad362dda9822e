// The Fixup block tail y = relu(x * s + b + identity) in one pass (eoq/nn/fixup_tail.py holds the
// torch reference). Each step is the float32 operation torch does, in torch's order, and the
// build uses -ffp-contract=off (no fused multiply-add), so y is bit for bit
// torch.relu(x * s + b + identity). x and identity must share sizes and (dense) strides; the
// output takes the same strides.
#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {

at::Tensor fixup_tail(const at::Tensor& x, double s_, double b_, const at::Tensor& id) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && id.scalar_type() == at::kFloat, "fixup_tail: float32 tensors");
  TORCH_CHECK(x.sizes() == id.sizes() && x.strides() == id.strides() && x.is_non_overlapping_and_dense(),
              "fixup_tail: x and identity need the same sizes and dense strides");
  at::Tensor out = at::empty_like(x);
  TORCH_CHECK(out.strides() == x.strides(), "fixup_tail: output strides differ from the input's");
  const float s = static_cast<float>(s_), b = static_cast<float>(b_);
  const float* px = x.data_ptr<float>();
  const float* pi = id.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float v = (px[i] * s + b) + pi[i];
      po[i] = v < 0.0f ? 0.0f : v;          // relu; NaN passes through as in torch.relu
    }
  });
  return out;
}

}  // namespace

void register_tail(pybind11::module& m) {
  m.def("fixup_tail", &fixup_tail);
}
