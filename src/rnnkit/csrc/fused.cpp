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

#include "simd.h"

using torch::Tensor;

namespace {

using namespace rnnkit_simd;

inline f8 relu(f8 x) { return select(x < 0.0f, splat(0.0f), x); }  // NaN stays NaN
inline double relu(double x) { return std::max(x, 0.0); }
inline f8 positive(f8 y) { return select(y > 0.0f, splat(1.0f), splat(0.0f)); }
inline double positive(double y) { return y > 0; }

// ---- One batch row of each pass, `width` lanes per iteration. --------------------------------


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
