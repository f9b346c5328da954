// Dropout with a counter-based random mask, in C++.
//
// torch's CPU dropout draws its mask with bernoulli_ from the Mersenne Twister generator, one
// element after the other (a generator with state neither vectorises nor splits between
// threads): a noticeable share of a language model's training step. Here element i of a call is
// kept iff the 32-bit word splitmix64(seed + (i / 2 + 1) * golden) gives it (low half for even
// i, high half for odd i) is at least p * 2^32: a hash of (seed, i), so the mask needs no state,
// vectorises, splits between threads without changing, and is the same again for the same seed.
// The backward is the same call on the gradient (the mask recomputed, never stored).
//
// masked_scale(x, p, seed, scale): x (any shape, float32/float64/bfloat16/float16), 0 <= p < 1
//   -> x_i * scale where element i is kept (probability 1 - p), else 0: a new contiguous tensor
//   of x's shape and dtype. Dropout is scale = 1 / (1 - p); a zoneout keep mask is x = 1,
//   scale = 1.
#include <torch/extension.h>

#include "operators.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

using torch::Tensor;

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// The splitmix64 output function (Steele, Lea and Flood 2014) of the counter value z.
inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The value of element v as the type the kernel multiplies in, and back. bfloat16 goes through
// its bits (the upper half of a float32; rounding to nearest even, NaN kept a NaN) so that GCC
// vectorises the loop, which it does not through c10::BFloat16's conversions.
template <typename scalar_t>
struct Lanes {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using raw_t = scalar_t;
  static acc_t load(raw_t v) { return static_cast<acc_t>(v); }
  static raw_t store(acc_t v) { return static_cast<raw_t>(v); }
};

template <>
struct Lanes<c10::BFloat16> {
  using acc_t = float;
  using raw_t = uint16_t;
  static float load(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }
  static uint16_t store(float v) {
    const uint32_t u = std::bit_cast<uint32_t>(v);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(v != v ? (u >> 16) | 0x40u : rounded);
  }
};

// Elements [2 * begin, 2 * end) of x (n elements) into out, kept where their word >= threshold.
template <typename scalar_t>
void drop_pairs(const scalar_t* x_, scalar_t* out_, int64_t n, int64_t begin, int64_t end,
                uint64_t seed, uint32_t threshold, double scale) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  const auto* x = reinterpret_cast<const typename L::raw_t*>(x_);
  auto* out = reinterpret_cast<typename L::raw_t*>(out_);
  const acc_t kept = static_cast<acc_t>(scale), dropped = 0;
  const int64_t full = std::min(end, n / 2);
#pragma omp simd
  for (int64_t j = begin; j < full; ++j) {
    const uint64_t word = mix(seed + static_cast<uint64_t>(j + 1) * kGolden);
    const acc_t s0 = static_cast<uint32_t>(word) >= threshold ? kept : dropped;
    const acc_t s1 = static_cast<uint32_t>(word >> 32) >= threshold ? kept : dropped;
    out[2 * j] = L::store(L::load(x[2 * j]) * s0);
    out[2 * j + 1] = L::store(L::load(x[2 * j + 1]) * s1);
  }
  if (end > full && n % 2 == 1) {  // the odd last element: the low half of its pair's word
    const uint64_t word = mix(seed + static_cast<uint64_t>(full + 1) * kGolden);
    const acc_t s = static_cast<uint32_t>(word) >= threshold ? kept : dropped;
    out[n - 1] = L::store(L::load(x[n - 1]) * s);
  }
}

Tensor masked_scale(const Tensor& x, double p, int64_t seed, double scale) {
  TORCH_CHECK(x.device().is_cpu(), "rnnkit dropout kernel: CPU tensors only");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "rnnkit dropout kernel: p must be in [0, 1), got ", p);
  const Tensor input = x.contiguous();
  Tensor out = at::empty_like(input);
  const int64_t n = input.numel();
  const double cut = std::round(p * 4294967296.0);
  const uint32_t threshold = static_cast<uint32_t>(std::min(cut, 4294967295.0));
  const uint64_t start = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dropout", [&] {
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, (n + 1) / 2, 16384, [&](int64_t begin, int64_t end) {
      drop_pairs<scalar_t>(src, dst, n, begin, end, start, threshold, scale);
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("masked_scale", &masked_scale); }

// The CPU kernels of the operators `rnnkit/kernels/ops.py` declares (torch.ops.rnnkit.*).
TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  RNNKIT_IMPL(m, masked_scale);
}
