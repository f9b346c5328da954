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
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

using torch::Tensor;

namespace {

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

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
        const scalar_t *xb = x + b * 3 * H, *gb = r_h + b * 3 * H, *hb = h + b * H;
        scalar_t *ob = h_new + b * H, *cb = c + b * 4 * H;
        const bool live = valid(m, t, B, b);
        for (int64_t j = 0; j < H; ++j) {
          scalar_t r = sigmoid(xb[j] + gb[j]);
          scalar_t z = sigmoid(xb[H + j] + gb[H + j]);
          scalar_t n = std::tanh(xb[2 * H + j] + r * gb[2 * H + j]);
          cb[j] = r, cb[H + j] = z, cb[2 * H + j] = n, cb[3 * H + j] = gb[2 * H + j];
          ob[j] = live ? (1 - z) * n + z * hb[j] : hb[j];
        }
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
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T - 1; t >= 0; --t) {
    AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "gru_backward", [&] {
      const scalar_t* go = grad_out.numel() ? grad_out.data_ptr<scalar_t>() + t * B * H : nullptr;
      const scalar_t* h = states.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* c = cache.data_ptr<scalar_t>() + t * B * 4 * H;
      scalar_t* d = dh.data_ptr<scalar_t>();
      scalar_t* keep = direct.data_ptr<scalar_t>();
      scalar_t* dx = grad_gx.data_ptr<scalar_t>() + t * B * 3 * H;
      scalar_t* dr = grad_gh.data_ptr<scalar_t>() + t * B * 3 * H;
      for_rows(B, H, [&](int64_t b) {
        const scalar_t *cb = c + b * 4 * H, *hb = h + b * H;
        scalar_t *db = d + b * H, *kb = keep + b * H, *dxb = dx + b * 3 * H, *drb = dr + b * 3 * H;
        const bool live = valid(m, t, B, b);
        for (int64_t j = 0; j < H; ++j) {
          scalar_t g = db[j] + (go ? go[b * H + j] : scalar_t(0));
          if (!live) {  // past the end: the state passed through unchanged
            kb[j] = g, dxb[j] = dxb[H + j] = dxb[2 * H + j] = 0;
            drb[j] = drb[H + j] = drb[2 * H + j] = 0;
            continue;
          }
          scalar_t r = cb[j], z = cb[H + j], n = cb[2 * H + j], hn = cb[3 * H + j];
          scalar_t dn = g * (1 - z) * (1 - n * n);
          scalar_t dr_pre = dn * hn * r * (1 - r);
          scalar_t dz = g * (hb[j] - n) * z * (1 - z);
          dxb[j] = drb[j] = dr_pre;
          dxb[H + j] = drb[H + j] = dz;
          dxb[2 * H + j] = dn;
          drb[2 * H + j] = dn * r;
          kb[j] = g * z;
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
      for_rows(B, H, [&](int64_t b) {
        const bool live = valid(m, t, B, b);
        for (int64_t j = b * H; j < (b + 1) * H; ++j) {
          scalar_t a = x[j] + g[j];
          scalar_t y = nonlinearity == 0 ? std::tanh(a)
                       : nonlinearity == 1 ? std::max(a, scalar_t(0)) : sigmoid(a);
          out[j] = live ? y : h[j];
        }
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
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T - 1; t >= 0; --t) {
    AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "elman_backward", [&] {
      const scalar_t* go = grad_out.numel() ? grad_out.data_ptr<scalar_t>() + t * B * H : nullptr;
      const scalar_t* y = states.data_ptr<scalar_t>() + (t + 1) * B * H;
      scalar_t* d = dh.data_ptr<scalar_t>();
      scalar_t* keep = direct.data_ptr<scalar_t>();
      scalar_t* dp = grad_pre.data_ptr<scalar_t>() + t * B * H;
      for_rows(B, H, [&](int64_t b) {
        const bool live = valid(m, t, B, b);
        for (int64_t j = b * H; j < (b + 1) * H; ++j) {
          scalar_t g = d[j] + (go ? go[j] : scalar_t(0));
          scalar_t slope = nonlinearity == 0 ? 1 - y[j] * y[j]
                           : nonlinearity == 1 ? scalar_t(y[j] > 0) : y[j] * (1 - y[j]);
          dp[j] = live ? g * slope : 0;
          keep[j] = live ? 0 : g;
        }
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
