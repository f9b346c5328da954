// The time loops of rnnkit's engine for the GRU and Elman cells, in C++.
//
// The same algorithm as rnnkit/recurrence.py (hoisted input product, one GEMM per step for the
// recurrent part, BPTT walking the steps in reverse, weight gradients gathered after the loop),
// without the Python interpreter between steps and with each step's pointwise math fused into
// one pass over memory. Shapes: T steps, B batch, H hidden, G gate blocks (3 GRU, 1 Elman).
//
//   states   (T + 1, B, H): states[0] = h0, states[t + 1] = h_t (carried past a sequence's end)
//   cache    (T, B, C): what the backward needs of each step (GRU: r, z, n, W_hn h + b_hn)
//   mask     (T, B) bool, or an empty tensor when every sequence has length T
//
// The pointwise passes (the *_row functions) run float32 in 8-lane SIMD vectors with exp, tanh
// and sigmoid as branch-free polynomials (Cephes'), where std::exp and std::tanh would be scalar
// libm calls per element; float64 (gradcheck, tests) keeps the exact std:: functions.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <algorithm>
#include <type_traits>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

using torch::Tensor;

namespace {

// ---- SIMD lanes. ------------------------------------------------------------------------------
//
// float32 runs 8 lanes at a time as a GCC/Clang vector type (arithmetic, comparisons and ?: act
// lane-wise; one AVX register with the -march=native fused.py passes, two SSE ones without).
// Plain loops over j would leave the vectorising to GCC, which gives up on the exp polynomial
// below as soon as it turns a clamp into a branch (GCC 12 does). float64 (gradcheck, tests) runs
// one lane at a time with the exact std:: functions.
using f8 = float __attribute__((vector_size(32)));
using i8 = int32_t __attribute__((vector_size(32)));
using u8 = uint32_t __attribute__((vector_size(32)));

template <typename T> struct Lanes;  // V: what one iteration handles; load/store n <= width
template <> struct Lanes<double> {
  using V = double;
  static constexpr int64_t width = 1;
  static V load(const double* p, int64_t) { return *p; }
  static void store(double* p, V v, int64_t) { *p = v; }
};
template <> struct Lanes<float> {
  using V = f8;
  static constexpr int64_t width = 8;
  static V load(const float* p, int64_t n) {  // the row's tail (n < 8) padded with zeros
    V v = {};
    if (n == width) std::memcpy(&v, p, sizeof(V));  // one unaligned vector load
    else std::memcpy(&v, p, n * sizeof(float));
    return v;
  }
  static void store(float* p, V v, int64_t n) {
    if (n == width) std::memcpy(p, &v, sizeof(V));
    else std::memcpy(p, &v, n * sizeof(float));
  }
};

inline f8 splat(float c) { return f8{} + c; }
inline f8 select(i8 mask, f8 a, f8 b) { return mask ? a : b; }
inline f8 abs_of(f8 x) { return std::bit_cast<f8>(std::bit_cast<u8>(x) & 0x7fffffffu); }
inline f8 with_sign_of(f8 magnitude, f8 x) {  // copysign
  return std::bit_cast<f8>(std::bit_cast<u8>(magnitude) | (std::bit_cast<u8>(x) & 0x80000000u));
}

// ---- Pointwise math: float32 approximations in 8 lanes, float64 exact. ----------------------

// e^x, after Cephes expf.c (S. L. Moshier, Cephes Math Library; also exp256_ps of avx_mathfun):
// x = n ln2 + r with n = floor(x / ln2 + 0.5), |r| <= ln2 / 2 (ln2 split in two constants so
// n ln2 is exact); e^r = 1 + r + r^2 P(r), P of degree 5 with Cephes' coefficients; 2^n built in
// the exponent bits. Cephes states a peak relative error of 1.7e-7; measured 8.5e-8 over every
// float in [-87, 88] against double. x is clamped to [-87, 88] first, so 2^n is a normal float
// and no inf or denormal comes out (e^88 = 1.7e38, e^-87 = 1.6e-38); sigmoid and tanh saturate
// long before. NaN passes the clamp (comparisons with NaN are false) and comes out NaN.
inline f8 vexp(f8 x) {
  x = select(x < -87.0f, splat(-87.0f), x);
  x = select(x > 88.0f, splat(88.0f), x);
  // n = k - 128, k the truncation of a positive number (x / ln2 + 128.5 >= 3); k - 1 = n + 127
  // is 2^n's biased exponent.
  const i8 k = __builtin_convertvector(x * 1.44269504088896341f + 128.5f, i8);
  const f8 n = __builtin_convertvector(k, f8) - 128.0f;
  const f8 r = x - n * 0.693359375f - n * -2.12194440e-4f;
  f8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<f8>((std::bit_cast<u8>(k) - 1u) << 23);
}

// 1 / (1 + e^-x): vexp's error plus two roundings, measured 1.5e-7 relative (every float in
// [-87, 100]); 1 above x = 17, e^-87 ~ 0 below x = -87.
inline f8 vsigmoid(f8 x) { return 1.0f / (1.0f + vexp(-x)); }
inline double vsigmoid(double x) { return 1 / (1 + std::exp(-x)); }

// tanh, after Cephes tanhf.c: for |x| < 0.625 the odd polynomial x + x^3 P(x^2) (Cephes'
// coefficients; no cancellation near 0), else 1 - 2 / (e^2|x| + 1) with the sign of x (|tanh| >
// 0.55 there, so the subtraction loses at most a bit). Both are computed, one selected per lane.
// |x| is clamped to 10, where tanh rounds to 1 in float (at 9 it does not yet). Cephes states
// 1.3e-7 peak relative error; measured 1.4e-7 relative, at most 1.2 ulp, over [-100, 100].
inline f8 vtanh(f8 x) {
  f8 a = abs_of(x);
  a = select(a > 10.0f, splat(10.0f), a);
  const f8 s = x * x;
  f8 p = splat(-5.70498872745e-3f);
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const f8 small = x + x * s * p;
  const f8 big = with_sign_of(1.0f - 2.0f / (vexp(a + a) + 1.0f), x);
  return select(a < 0.625f, small, big);
}
inline double vtanh(double x) { return std::tanh(x); }

inline f8 relu(f8 x) { return select(x < 0.0f, splat(0.0f), x); }  // NaN stays NaN
inline double relu(double x) { return std::max(x, 0.0); }
inline f8 positive(f8 y) { return select(y > 0.0f, splat(1.0f), splat(0.0f)); }
inline double positive(double y) { return y > 0; }

// ---- One batch row of each pass, `width` lanes per iteration. --------------------------------

// for (j = 0; j < H; j += width) body(j, n), with n = min(width, H - j) lanes in play; n is the
// constant `width` but for the tail, so the loads and stores of the main loop are whole vectors.
template <typename T, typename F>
inline void over_lanes(int64_t H, const F& body) {
  constexpr int64_t w = Lanes<T>::width;
  int64_t j = 0;
  for (; j + w <= H; j += w) body(j, w);
  if (j < H) body(j, H - j);
}

// GRU step forward: r, z, n and the new state from x (3H) = W_i x + b_i and gh (3H) = W_h h + b_h;
// the cache row (4H) keeps r, z, n and W_hn h + b_hn for the backward.
template <typename T>
void gru_forward_row(const T* x, const T* gh, const T* h, T* h_new, T* cache, int64_t H) {
  using L = Lanes<T>;
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    const auto r = vsigmoid(L::load(x + j, n) + L::load(gh + j, n));
    const auto z = vsigmoid(L::load(x + H + j, n) + L::load(gh + H + j, n));
    const auto hn = L::load(gh + 2 * H + j, n);
    const auto c = vtanh(L::load(x + 2 * H + j, n) + r * hn);
    L::store(cache + j, r, n), L::store(cache + H + j, z, n);
    L::store(cache + 2 * H + j, c, n), L::store(cache + 3 * H + j, hn, n);
    L::store(h_new + j, (1 - z) * c + z * L::load(h + j, n), n);
  });
}

// GRU step backward: g = d + go is the gradient of h_t; writes the gradients of the
// pre-activations through the input (dx, 3H) and the recurrent (dr, 3H) products, and keep =
// dL/dh_{t-1} (H) through the direct path z * h_{t-1}.
template <typename T>
void gru_backward_row(const T* d, const T* go, const T* cache, const T* h, T* keep, T* dx, T* dr,
                      int64_t H) {
  using L = Lanes<T>;
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    const auto g = L::load(d + j, n) + L::load(go + j, n);
    const auto r = L::load(cache + j, n), z = L::load(cache + H + j, n);
    const auto c = L::load(cache + 2 * H + j, n), hn = L::load(cache + 3 * H + j, n);
    const auto dc = g * (1 - z) * (1 - c * c);
    const auto dr_pre = dc * hn * r * (1 - r);
    const auto dz = g * (L::load(h + j, n) - c) * z * (1 - z);
    L::store(dx + j, dr_pre, n), L::store(dr + j, dr_pre, n);
    L::store(dx + H + j, dz, n), L::store(dr + H + j, dz, n);
    L::store(dx + 2 * H + j, dc, n), L::store(dr + 2 * H + j, dc * r, n);
    L::store(keep + j, g * z, n);
  });
}

// Elman nonlinearities (0 tanh, 1 relu, 2 sigmoid) and their slopes in terms of the output y.
template <int NL, typename V>
inline V activation(V a) {
  if constexpr (NL == 0) return vtanh(a);
  else if constexpr (NL == 1) return relu(a);
  else return vsigmoid(a);
}
template <int NL, typename V>
inline V slope(V y) {
  if constexpr (NL == 0) return 1 - y * y;
  else if constexpr (NL == 1) return positive(y);
  else return y * (1 - y);
}

template <int NL, typename T>
void elman_forward_row(const T* x, const T* gh, T* out, int64_t H) {
  using L = Lanes<T>;
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    L::store(out + j, activation<NL>(L::load(x + j, n) + L::load(gh + j, n)), n);
  });
}

template <int NL, typename T>
void elman_backward_row(const T* d, const T* go, const T* y, T* dp, int64_t H) {
  using L = Lanes<T>;
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    L::store(dp + j, (L::load(d + j, n) + L::load(go + j, n)) * slope<NL>(L::load(y + j, n)), n);
  });
}

// Calls f(std::integral_constant<int, NL>) for a runtime nonlinearity code.
template <typename F>
void with_nonlinearity(int64_t code, const F& f) {
  if (code == 0) f(std::integral_constant<int, 0>{});
  else if (code == 1) f(std::integral_constant<int, 1>{});
  else f(std::integral_constant<int, 2>{});
}

// ---- Helpers of the time loops. ---------------------------------------------------------------

// Run `body(b)` for every batch row, in parallel when the rows are many.
template <typename F>
void for_rows(int64_t rows, int64_t row_size, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(row_size, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

// gh = h @ W_hh^T (+ b_hh), into a preallocated (B, G*H) buffer.
void recurrent_product(Tensor& gh, const Tensor& h, const Tensor& w_t, const Tensor& bias) {
  if (bias.defined() && bias.numel()) at::addmm_out(gh, bias, h, w_t);
  else at::mm_out(gh, h, w_t);
}

bool valid(const bool* mask, int64_t t, int64_t B, int64_t b) {
  return mask == nullptr || mask[t * B + b];
}

// The gradient of the outputs at step t: (B, H) rows of grad_out, or zeros when the outputs
// were not used (grad_out empty), so the row passes need no branch for it.
template <typename T>
const T* output_grad(const Tensor& grad_out, const Tensor& zeros, int64_t t, int64_t BH) {
  return grad_out.numel() ? grad_out.data_ptr<T>() + t * BH : zeros.data_ptr<T>();
}

}  // namespace

// GRU forward: gx (T, B, 3H) -> {states (T+1, B, H), cache (T, B, 4H)}.
std::vector<Tensor> gru_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor mask) {
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  gx = gx.contiguous();
  auto states = at::empty({T + 1, B, H}, gx.options());
  auto cache = at::empty({T, B, 4 * H}, gx.options());
  auto gh = at::empty({B, 3 * H}, gx.options());
  auto w_t = w_hh.t();
  states[0].copy_(h0);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    recurrent_product(gh, states[t], w_t, b_hh);
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "gru_forward", [&] {
      const scalar_t* x = gx.data_ptr<scalar_t>() + t * B * 3 * H;
      const scalar_t* r_h = gh.data_ptr<scalar_t>();
      const scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      scalar_t* h_new = states.data_ptr<scalar_t>() + (t + 1) * B * H;
      scalar_t* c = cache.data_ptr<scalar_t>() + t * B * 4 * H;
      for_rows(B, H, [&](int64_t b) {
        gru_forward_row(x + b * 3 * H, r_h + b * 3 * H, h + b * H, h_new + b * H, c + b * 4 * H, H);
        if (!valid(m, t, B, b)) std::copy(h + b * H, h + (b + 1) * H, h_new + b * H);
      });
    });
  }
  return {states, cache};
}

// GRU backward: grad_states (T, B, H) of the outputs h_t (masked by the caller), grad_hn (B, H)
// -> {grad_gx (T, B, 3H), grad_gh (T, B, 3H), grad_h0 (B, H)}.
std::vector<Tensor> gru_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states,
                                 Tensor cache, Tensor mask) {
  const int64_t T = cache.size(0), B = cache.size(1), H = states.size(2);
  grad_out = grad_out.contiguous();
  auto grad_gx = at::empty({T, B, 3 * H}, cache.options());
  auto grad_gh = at::empty({T, B, 3 * H}, cache.options());
  auto dh = grad_hn.contiguous().clone();
  auto direct = at::empty_like(dh);
  auto zeros = grad_out.numel() ? Tensor() : at::zeros_like(dh);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T - 1; t >= 0; --t) {
    AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "gru_backward", [&] {
      const scalar_t* go = output_grad<scalar_t>(grad_out, zeros, t, B * H);
      const scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* c = cache.data_ptr<scalar_t>() + t * B * 4 * H;
      const scalar_t* d = dh.data_ptr<scalar_t>();
      scalar_t* keep = direct.data_ptr<scalar_t>();
      scalar_t* dx = grad_gx.data_ptr<scalar_t>() + t * B * 3 * H;
      scalar_t* dr = grad_gh.data_ptr<scalar_t>() + t * B * 3 * H;
      for_rows(B, H, [&](int64_t b) {
        scalar_t *kb = keep + b * H, *dxb = dx + b * 3 * H, *drb = dr + b * 3 * H;
        if (valid(m, t, B, b)) {
          gru_backward_row(d + b * H, go + b * H, c + b * 4 * H, h + b * H, kb, dxb, drb, H);
        } else {  // past the end: the state passed through unchanged
          for (int64_t j = 0; j < H; ++j) kb[j] = d[b * H + j] + go[b * H + j];
          std::fill(dxb, dxb + 3 * H, scalar_t(0));
          std::fill(drb, drb + 3 * H, scalar_t(0));
        }
      });
    });
    at::addmm_out(dh, direct, grad_gh[t], w_hh);
  }
  return {grad_gx, grad_gh, dh};
}

// Elman forward: gx (T, B, H) -> states (T+1, B, H); nonlinearity 0 tanh, 1 relu, 2 sigmoid.
Tensor elman_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor mask,
                     int64_t nonlinearity) {
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  gx = gx.contiguous();
  auto states = at::empty({T + 1, B, H}, gx.options());
  auto gh = at::empty({B, H}, gx.options());
  auto w_t = w_hh.t();
  states[0].copy_(h0);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    recurrent_product(gh, states[t], w_t, b_hh);
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "elman_forward", [&] {
      const scalar_t* x = gx.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* g = gh.data_ptr<scalar_t>();
      const scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      scalar_t* out = states.data_ptr<scalar_t>() + (t + 1) * B * H;
      with_nonlinearity(nonlinearity, [&](auto nl) {
        for_rows(B, H, [&](int64_t b) {
          const int64_t o = b * H;
          if (valid(m, t, B, b)) elman_forward_row<decltype(nl)::value>(x + o, g + o, out + o, H);
          else std::copy(h + o, h + o + H, out + o);
        });
      });
    });
  }
  return states;
}

// Elman backward -> {grad_pre (T, B, H) (both grad_gx and grad_gh), grad_h0 (B, H)}.
std::vector<Tensor> elman_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states,
                                   Tensor mask, int64_t nonlinearity) {
  const int64_t T = states.size(0) - 1, B = states.size(1), H = states.size(2);
  grad_out = grad_out.contiguous();
  auto grad_pre = at::empty({T, B, H}, states.options());
  auto dh = grad_hn.contiguous().clone();
  auto direct = at::empty_like(dh);
  auto zeros = grad_out.numel() ? Tensor() : at::zeros_like(dh);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T - 1; t >= 0; --t) {
    AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "elman_backward", [&] {
      const scalar_t* go = output_grad<scalar_t>(grad_out, zeros, t, B * H);
      const scalar_t* y = states.data_ptr<scalar_t>() + (t + 1) * B * H;
      const scalar_t* d = dh.data_ptr<scalar_t>();
      scalar_t* keep = direct.data_ptr<scalar_t>();
      scalar_t* dp = grad_pre.data_ptr<scalar_t>() + t * B * H;
      with_nonlinearity(nonlinearity, [&](auto nl) {
        for_rows(B, H, [&](int64_t b) {
          const int64_t o = b * H;
          if (valid(m, t, B, b)) {
            elman_backward_row<decltype(nl)::value>(d + o, go + o, y + o, dp + o, H);
            std::fill(keep + o, keep + o + H, scalar_t(0));
          } else {  // past the end: the state passed through unchanged
            for (int64_t j = o; j < o + H; ++j) keep[j] = d[j] + go[j];
            std::fill(dp + o, dp + o + H, scalar_t(0));
          }
        });
      });
    });
    at::addmm_out(dh, direct, grad_pre[t], w_hh);
  }
  return {grad_pre, dh};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("elman_forward", &elman_forward);
  m.def("elman_backward", &elman_backward);
}
