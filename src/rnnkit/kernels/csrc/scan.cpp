// The linear recurrence h_t = a_t * h_{t-1} + b_t (elementwise) of minGRU / minLSTM, in C++.
//
// Two pairs of passes, both walking the T steps in order (forward) or in reverse (backward) over
// the N = B * H independent elements of a step, split between threads with at::parallel_for
// (each thread owns its elements for all T steps, so no thread waits on another). Exact in
// float32 as the step mode is: the same multiply-add per step, no logarithms, no chunking.
//
// linear_scan_*: the recurrence alone, from a, b (T, B, H) and h0 (B, H):
//   forward:  h (T, B, H)
//   backward: g_t = dL/dh_t + a_{t+1} g_{t+1} (g_T = dL/dh_T), dL/da_t = g_t h_{t-1},
//             dL/db_t = g_t, dL/dh0 = a_1 g_1; returns {dL/da, dL/db, dL/dh0}
//
// min_scan_*: the same with the gates fused in, from the projected input p (T, B, G*H) of
// minGRU (kind 0, G = 2: [k | pre]) or minLSTM (kind 1, G = 3: [F | I | pre]):
//   minGRU:  z = sigmoid(k),                      a = 1 - z,  b = z g(pre)
//   minLSTM: f' = sigmoid(F) / (sigmoid(F) + sigmoid(I)),  a = f',  b = (1 - f') g(pre)
// with g(v) = v + 0.5 (v >= 0), sigmoid(v) (v < 0). Past a sequence's end (mask false) a = 1,
// b = 0. The backward recomputes the gates from p (cheaper than storing them) and returns
// {dL/dp, dL/dh0}. On the CPU a layer's pointwise gate math as separate torch kernels (and
// their autograd) cost more than its input projection; fused into the scan it is nearly free.
//
// float32 runs kWidth lanes at a time with exp as the Cephes polynomial of simd.h (shared with
// fused.cpp); float64 (gradcheck, tests) one lane with std::exp.
#include <torch/extension.h>

#include "operators.h"

#include <ATen/Parallel.h>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

using torch::Tensor;

namespace {

// Run body(begin, end) over element ranges of a row of n, in parallel when the rows are long.
template <typename F>
void over_elements(int64_t n, const F& body) {
  at::parallel_for(0, n, 4096, body);
}

using namespace rnnkit_simd;

inline fv min0(fv x) { return select(x < 0.0f, x, splat(0.0f)); }
inline double min0(double x) { return std::min(x, 0.0); }

// The gates of one step, per lane: a, b and what the backward needs of them.
template <typename V>
struct Gates {
  V a, b;          // h_t = a h_{t-1} + b
  V candidate;     // g(pre)
  V d_candidate;   // g'(pre)
  V d_logit_a;     // minGRU: z (1 - z) = -da/dk; minLSTM: f' (1 - f') = df'/d(log f - log i)
  V d_f, d_i;      // minLSTM: d(log f)/dF = 1 - sigmoid(F), d(log i)/dI = 1 - sigmoid(I)
};

template <int KIND, typename V>
inline Gates<V> gates(const V& x0, const V& x1, const V& pre) {
  Gates<V> out;
  // g(pre): pre + 0.5 above 0, sigmoid(pre) below; g' = 1 above, s (1 - s) below
  const V s = 1 / (1 + vexp(-pre));
  out.candidate = select(pre >= 0, pre + 0.5, s);
  out.d_candidate = select(pre >= 0, s - s + 1, s * (1 - s));
  if constexpr (KIND == 0) {  // x0 = k
    const V z = 1 / (1 + vexp(-x0));
    out.a = 1 - z, out.b = z * out.candidate, out.d_logit_a = z * (1 - z);
  } else {  // x0 = F, x1 = I
    // sigmoid(x) = e^min(x, 0) / (1 + e^-|x|), so i / f = e^(min(I, 0) - min(F, 0)) sF / sI
    // with sX = 1 + e^-|X| in [1, 2]: finite for any F, I (no 0 / 0 when both gates underflow).
    const V ef = vexp(-abs_of(x0)), ei = vexp(-abs_of(x1));
    const V sf = 1 + ef, si = 1 + ei;
    const V f = 1 / (1 + vexp(min0(x1) - min0(x0)) * sf / si);
    out.a = f, out.b = (1 - f) * out.candidate, out.d_logit_a = f * (1 - f);
    out.d_f = select(x0 >= 0, ef, ef - ef + 1) / sf;  // 1 - sigmoid(F)
    out.d_i = select(x1 >= 0, ei, ei - ei + 1) / si;
  }
  return out;
}

// Run body(t, b) for every step t (in order, or in reverse) and batch row b, the rows split
// between threads (each thread owns its rows for all steps). Steps outside, rows inside: each
// step's rows of a thread are adjacent in memory, so the passes stream through it.
template <typename F>
void over_steps_and_rows(int64_t T, int64_t B, int64_t H, bool reverse, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      for (int64_t b = begin; b < end; ++b) body(t, b);
    }
  });
}

}  // namespace

// a, b (T, B, H), h0 (B, H) -> h (T, B, H).
Tensor linear_scan_forward(Tensor a, Tensor b, Tensor h0) {
  a = a.contiguous(), b = b.contiguous(), h0 = h0.contiguous();
  const int64_t T = a.size(0), N = h0.numel();
  auto h = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "linear_scan_forward", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.data_ptr<scalar_t>();
    scalar_t* ph = h.data_ptr<scalar_t>();
    over_elements(N, [&](int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* __restrict__ prev = t ? ph + (t - 1) * N : p0;
        const scalar_t* __restrict__ at_ = pa + t * N;
        const scalar_t* __restrict__ bt = pb + t * N;
        scalar_t* __restrict__ ht = ph + t * N;
        for (int64_t j = lo; j < hi; ++j) ht[j] = at_[j] * prev[j] + bt[j];
      }
    });
  });
  return h;
}

// grad_h, a, h (T, B, H), h0 (B, H) -> {grad_a, grad_b, grad_h0}.
std::vector<Tensor> linear_scan_backward(Tensor grad_h, Tensor a, Tensor h, Tensor h0) {
  grad_h = grad_h.contiguous(), a = a.contiguous(), h = h.contiguous(), h0 = h0.contiguous();
  const int64_t T = a.size(0), N = h0.numel();
  auto grad_a = at::empty_like(a);
  auto grad_b = at::empty_like(a);
  auto grad_h0 = at::zeros_like(h0);  // the carry a_{t+1} g_{t+1}; a_1 g_1 after the loop
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "linear_scan_backward", [&] {
    const scalar_t* pd = grad_h.data_ptr<scalar_t>();
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* ph = h.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.data_ptr<scalar_t>();
    scalar_t* pga = grad_a.data_ptr<scalar_t>();
    scalar_t* pgb = grad_b.data_ptr<scalar_t>();
    scalar_t* carry = grad_h0.data_ptr<scalar_t>();
    over_elements(N, [&](int64_t lo, int64_t hi) {
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* __restrict__ dt = pd + t * N;
        const scalar_t* __restrict__ at_ = pa + t * N;
        const scalar_t* __restrict__ prev = t ? ph + (t - 1) * N : p0;
        scalar_t* __restrict__ gat = pga + t * N;
        scalar_t* __restrict__ gbt = pgb + t * N;
        scalar_t* __restrict__ c = carry;
        for (int64_t j = lo; j < hi; ++j) {
          const scalar_t g = dt[j] + c[j];
          gbt[j] = g;
          gat[j] = g * prev[j];
          c[j] = at_[j] * g;
        }
      }
    });
  });
  return {grad_a, grad_b, grad_h0};
}

// p (T, B, G*H), h0 (B, H), mask (T, B) bool or empty -> h (T, B, H).
Tensor min_scan_forward(Tensor p, Tensor h0, Tensor mask, int64_t kind) {
  p = p.contiguous(), h0 = h0.contiguous();
  const int64_t T = p.size(0), B = p.size(1), H = h0.size(1), G = kind == 0 ? 2 : 3;
  auto h = at::empty({T, B, H}, p.options());
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "min_scan_forward", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.data_ptr<scalar_t>();
    scalar_t* ph = h.data_ptr<scalar_t>();
    auto run = [&](auto kind_tag) {
      constexpr int K = decltype(kind_tag)::value;
      over_steps_and_rows(T, B, H, false, [&](int64_t t, int64_t b) {
        const scalar_t* prev = t ? ph + ((t - 1) * B + b) * H : p0 + b * H;
        scalar_t* out = ph + (t * B + b) * H;
        if (m && !m[t * B + b]) {  // past the end: the state holds
          std::memcpy(out, prev, H * sizeof(scalar_t));
          return;
        }
        const scalar_t* x = pp + (t * B + b) * G * H;
        over_lanes<scalar_t>(H, [&](int64_t j, int64_t n) {
          const auto x0 = L::load(x + j, n);
          const auto x1 = K == 1 ? L::load(x + H + j, n) : x0;
          const auto gt = gates<K>(x0, x1, L::load(x + (G - 1) * H + j, n));
          L::store(out + j, gt.a * L::load(prev + j, n) + gt.b, n);
        });
      });
    };
    if (kind == 0) run(std::integral_constant<int, 0>{});
    else run(std::integral_constant<int, 1>{});
  });
  return h;
}

// grad_h, h (T, B, H), p (T, B, G*H), h0 (B, H), mask -> {grad_p, grad_h0}.
std::vector<Tensor> min_scan_backward(Tensor grad_h, Tensor p, Tensor h, Tensor h0, Tensor mask,
                                      int64_t kind) {
  grad_h = grad_h.contiguous(), p = p.contiguous(), h = h.contiguous(), h0 = h0.contiguous();
  const int64_t T = p.size(0), B = p.size(1), H = h0.size(1), G = kind == 0 ? 2 : 3;
  auto grad_p = at::empty_like(p);
  auto grad_h0 = at::zeros_like(h0);  // the carry a_{t+1} g_{t+1}; a_1 g_1 after the loop
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "min_scan_backward", [&] {
    using L = Lanes<scalar_t>;
    const scalar_t* pd = grad_h.data_ptr<scalar_t>();
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* ph = h.data_ptr<scalar_t>();
    const scalar_t* p0 = h0.data_ptr<scalar_t>();
    scalar_t* pg = grad_p.data_ptr<scalar_t>();
    scalar_t* carry_all = grad_h0.data_ptr<scalar_t>();
    auto run = [&](auto kind_tag) {
      constexpr int K = decltype(kind_tag)::value;
      over_steps_and_rows(T, B, H, true, [&](int64_t t, int64_t b) {
        scalar_t* carry = carry_all + b * H;
        const scalar_t* d = pd + (t * B + b) * H;
        scalar_t* gx = pg + (t * B + b) * G * H;
        if (m && !m[t * B + b]) {  // a = 1, b = 0: the gradient passes, the gates get none
          for (int64_t j = 0; j < H; ++j) carry[j] += d[j];
          std::memset(gx, 0, G * H * sizeof(scalar_t));
          return;
        }
        const scalar_t* prev = t ? ph + ((t - 1) * B + b) * H : p0 + b * H;
        const scalar_t* x = pp + (t * B + b) * G * H;
        over_lanes<scalar_t>(H, [&](int64_t j, int64_t n) {
          const auto x0 = L::load(x + j, n);
          const auto x1 = K == 1 ? L::load(x + H + j, n) : x0;
          const auto gt = gates<K>(x0, x1, L::load(x + (G - 1) * H + j, n));
          const auto g = L::load(d + j, n) + L::load(carry + j, n);
          const auto hp = L::load(prev + j, n);
          if constexpr (K == 0) {  // dh/dz = g(pre) - h_{t-1}
            L::store(gx + j, g * (gt.candidate - hp) * gt.d_logit_a, n);
            L::store(gx + H + j, g * (1 - gt.a) * gt.d_candidate, n);
          } else {  // dh/df' = h_{t-1} - g(pre); f' = sigmoid(log f - log i)
            const auto dl = g * (hp - gt.candidate) * gt.d_logit_a;
            L::store(gx + j, dl * gt.d_f, n);
            L::store(gx + H + j, -dl * gt.d_i, n);
            L::store(gx + 2 * H + j, g * (1 - gt.a) * gt.d_candidate, n);
          }
          L::store(carry + j, gt.a * g, n);
        });
      });
    };
    if (kind == 0) run(std::integral_constant<int, 0>{});
    else run(std::integral_constant<int, 1>{});
  });
  return {grad_p, grad_h0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_scan_forward", &linear_scan_forward);
  m.def("linear_scan_backward", &linear_scan_backward);
  m.def("min_scan_forward", &min_scan_forward);
  m.def("min_scan_backward", &min_scan_backward);
}

// The CPU kernels of the operators `rnnkit/kernels/ops.py` declares (torch.ops.rnnkit.*).
TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  RNNKIT_IMPL(m, linear_scan_forward);
  RNNKIT_IMPL(m, linear_scan_backward);
  RNNKIT_IMPL(m, min_scan_forward);
  RNNKIT_IMPL(m, min_scan_backward);
}
