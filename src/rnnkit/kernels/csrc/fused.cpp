// The time loops of rnnkit's engine for the LSTM, GRU and Elman cells, in C++.
//
// The same algorithm as rnnkit/recurrence.py (hoisted input product, one GEMM per step for the
// recurrent part, BPTT walking the steps in reverse, weight gradients gathered after the loop),
// without the Python interpreter between steps and with each step's pointwise math fused into
// one pass over memory. Shapes: T steps, B batch, H hidden, G gate blocks (4 LSTM, 3 GRU,
// 1 Elman).
//
//   states   (T + 1, B, H): states[0] = h0, states[t + 1] = h_t (carried past a sequence's end)
//            (LSTM: also cells (T + 1, B, H), the same for c)
//   cache    (T, B, C): what the backward needs of each step (GRU: r, z, n, W_hn h + b_hn;
//            LSTM: i, f, g, o, tanh(c'))
//   mask     (T, B) bool, or an empty tensor when every sequence has length T
//
// The pointwise passes (the *_row functions) run float32 in SIMD vectors (simd.h) with exp, tanh
// and sigmoid as branch-free polynomials (Cephes'), where std::exp and std::tanh would be scalar
// libm calls per element; float64 (gradcheck, tests) keeps the exact std:: functions. Every loop
// but the projected LSTM's walks its steps in `forward_loop` / `backward_loop` (float32: a team
// of threads for the whole sequence, see there); the big buffers come from `buffer` (a pool).
//
// One translation unit, its parts in headers by job:
//   row_passes.h  the pointwise forward and backward of one batch row of each cell's step
//   buffers.h     the loops' buffer pool and the opt-in malloc tuning
//   products.h    the matrix products (rnnkit's packed kernel, oneDNN, at::mm)
//   teams.h       the threads: a team per sequence (`on_team`), `for_rows`
//   loops.h       the time loops (`forward_loop`, `backward_loop`)
//   fused.cpp     the entry points Python calls (below), the streaming step, the module
// with simd.h (SIMD lanes and the polynomials) and step_gemm.h (the packed kernel) beneath them.
#include <torch/extension.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "buffers.h"
#include "loops.h"
#include "operators.h"
#include "products.h"
#include "row_passes.h"
#include "simd.h"
#include "step_gemm.h"
#include "teams.h"

using torch::Tensor;

using namespace rnnkit_simd;

// GRU forward: gx (T, B, 3H) -> {states (T+1, B, H), cache (T, B, C), stats}. With ln = {w_hh,
// b_hh} (each 3H) the layer-normalised GRU (`ln_gru_forward_row`; b_hh empty then): C = 7H and
// stats (T, B, 1); else C = 4H and stats empty. b_ih (3H) or empty: added to gx in the steps.
std::vector<Tensor> gru_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor mask,
                                std::vector<Tensor> ln, Tensor b_ih) {
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  const bool norm = !ln.empty();
  const int64_t C = norm ? 7 * H : 4 * H;
  gx = gx.contiguous(), b_ih = b_ih.contiguous();
  for (auto& p : ln) p = p.contiguous();
  auto states = buffer({T + 1, B, H}, gx.options());
  auto cache = buffer({T, B, C}, gx.options());
  auto stats = at::zeros({norm ? T : 0, B, 1}, gx.options());
  auto gh = at::empty({B, 3 * H}, gx.options());
  states[0].copy_(h0);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "gru_forward", [&] {
    const scalar_t* x = gx.data_ptr<scalar_t>();
    scalar_t* r_h = gh.data_ptr<scalar_t>();
    scalar_t *s = states.data_ptr<scalar_t>(), *c = cache.data_ptr<scalar_t>();
    const scalar_t* gain = norm ? ln[0].data_ptr<scalar_t>() : nullptr;
    const scalar_t* shift = norm ? ln[1].data_ptr<scalar_t>() : nullptr;
    scalar_t* st = stats.data_ptr<scalar_t>();
    const scalar_t* bi = b_ih.numel() ? b_ih.data_ptr<scalar_t>() : nullptr;
    auto row = [&](int64_t t, int64_t b, Units u) {
      const int64_t o = b * H, tb = (t * B + b) * H;  // row b of step t's (B, H)
      scalar_t* h_new = s + tb + B * H;
      if (!valid(m, t, B, b)) {  // zeros in the cache: the LN gains' gradients sum every row
        std::copy(s + tb + u.begin, s + tb + u.end, h_new + u.begin);
        if (norm) std::fill(c + (t * B + b) * C, c + (t * B + b + 1) * C, scalar_t(0));
      } else if (norm) {
        ln_gru_forward_row(x + 3 * tb, r_h + 3 * o, s + tb, gain, shift, h_new,
                           c + (t * B + b) * C, st + t * B + b, H);
      } else {
        gru_forward_row(x + 3 * tb, r_h + 3 * o, s + tb, h_new, c + (t * B + b) * C, u, bi);
      }
    };
    forward_loop<scalar_t>(states, w_hh, b_hh, Tensor(), gh, norm, row);
  });
  return {states, cache, stats};
}

// GRU backward: grad_out (T, B, H) of the outputs h_t (masked by the caller) or empty, grad_hn
// (B, H), ln as in `gru_forward` -> {grad_gx, grad_gh (each T, B, 3H), grad_raw (T, B, 3H): the
// gradient of the recurrent product before the normalisation (empty without it), grad_h0,
// grad_b_hh (3H: grad_gh summed; empty unless `bias`, without ln), grad_b_ih (3H:
// grad_gx summed; empty unless `bias_ih`, b_ih given to `gru_forward`)}.
std::vector<Tensor> gru_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states,
                                 Tensor cache, Tensor stats, Tensor mask, std::vector<Tensor> ln,
                                 bool bias, bool bias_ih) {
  const int64_t T = cache.size(0), B = cache.size(1), H = states.size(2);
  const bool norm = !ln.empty();
  const int64_t C = norm ? 7 * H : 4 * H;
  for (auto& p : ln) p = p.contiguous();
  auto grad_gx = buffer({T, B, 3 * H}, cache.options());
  auto grad_gh = buffer({T, B, 3 * H}, cache.options());
  auto grad_raw = buffer({norm ? T : 0, B, 3 * H}, cache.options());
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const OutputGrad incoming(grad_out, B, H);
  Tensor grad_h0;
  auto grad_b_hh = at::empty({bias && !norm ? 3 * H : 0}, cache.options());
  auto grad_b_ih = at::empty({bias_ih ? 3 * H : 0}, cache.options());
  AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "gru_backward", [&] {
    const scalar_t* h = states.data_ptr<scalar_t>();
    scalar_t *dx_all = grad_gx.data_ptr<scalar_t>(), *dr_all = grad_gh.data_ptr<scalar_t>();
    scalar_t* raw_all = norm ? grad_raw.data_ptr<scalar_t>() : nullptr;
    const scalar_t* cache_all = cache.data_ptr<scalar_t>();
    const scalar_t* gain = norm ? ln[0].data_ptr<scalar_t>() : nullptr;
    const scalar_t* st = stats.data_ptr<scalar_t>();
    auto row = [&](int64_t t, int64_t b, Units u, const scalar_t* d, scalar_t* keep) {
      const int64_t o = b * H, tb = (t * B + b) * H;
      const scalar_t* go = incoming.row<scalar_t>(t, b);
      scalar_t *dx = dx_all + 3 * tb, *dr = dr_all + 3 * tb;
      scalar_t* raw = norm ? raw_all + 3 * tb : nullptr;
      const scalar_t* c = cache_all + (t * B + b) * C;
      if (valid(m, t, B, b)) {
        gru_backward_row(d + o, go, c, h + tb, keep + o, dx, dr, u);
        if (norm) {
          normalise_backward_row(dr, gain, c + 4 * H, st[t * B + b], raw, 3 * H);
        }
        return;
      }
      for (int64_t j = u.begin; j < u.end; ++j) keep[o + j] = d[o + j] + go[j];  // passed through
      for (int64_t g = 0; g < 3; ++g) {
        std::fill(dx + g * H + u.begin, dx + g * H + u.end, scalar_t(0));
        std::fill(dr + g * H + u.begin, dr + g * H + u.end, scalar_t(0));
        if (norm) std::fill(raw + g * H + u.begin, raw + g * H + u.end, scalar_t(0));
      }
    };
    grad_h0 = backward_loop<scalar_t>(norm ? grad_raw : grad_gh, w_hh, Tensor(),
                                      grad_hn.contiguous().clone(), norm, row,
                                      {{grad_gh, grad_b_hh}, {grad_gx, grad_b_ih}});
  });
  return {grad_gx, grad_gh, grad_raw, grad_h0, grad_b_hh, grad_b_ih};
}

// LSTM forward: gx (T, B, 4H) -> {states (T+1, B, H), cells (T+1, B, H), cache (T, B, 5H)}.
// Each of these may be empty: rec_mask (B, H) multiplies h before the recurrent product
// (variational recurrent dropout), keep_h and keep_c (T, B, H) are zoneout's keep masks (or its
// rates at evaluation), peephole (3H) the peephole weights w_ic | w_fc | w_oc.
std::vector<Tensor> lstm_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor c0,
                                 Tensor mask, Tensor rec_mask, Tensor keep_h, Tensor keep_c,
                                 Tensor peephole) {
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  gx = gx.contiguous(), keep_h = keep_h.contiguous(), keep_c = keep_c.contiguous();
  peephole = peephole.contiguous();
  if (rec_mask.numel()) rec_mask = rec_mask.expand({B, H}).contiguous();  // the team reads B x H
  auto states = buffer({T + 1, B, H}, gx.options());
  auto cells = buffer({T + 1, B, H}, gx.options());
  auto cache = buffer({T, B, 5 * H}, gx.options());
  auto gh = at::empty({B, 4 * H}, gx.options());
  states[0].copy_(h0), cells[0].copy_(c0);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const bool zone = keep_h.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "lstm_forward", [&] {
    const int64_t BH = B * H;
    const scalar_t *x = gx.data_ptr<scalar_t>(), *r_h = gh.data_ptr<scalar_t>();
    scalar_t *h = states.data_ptr<scalar_t>(), *c = cells.data_ptr<scalar_t>();
    const scalar_t* kh = zone ? keep_h.data_ptr<scalar_t>() : nullptr;
    const scalar_t* kc = zone ? keep_c.data_ptr<scalar_t>() : nullptr;
    scalar_t* cch = cache.data_ptr<scalar_t>();
    const scalar_t* peep = peephole.numel() ? peephole.data_ptr<scalar_t>() : nullptr;
    with_variant(zone, peep != nullptr, [&](auto z, auto p) {
      auto row = [&](int64_t t, int64_t b, Units u) {
        const int64_t tb = t * BH + b * H;  // row b of step t's (B, H)
        if (valid(m, t, B, b)) {
          lstm_forward_row<decltype(z)::value, decltype(p)::value>(
              x + 4 * tb, r_h + 4 * b * H, h + tb, c + tb, zone ? kh + tb : kh,
              zone ? kc + tb : kc, peep, h + BH + tb, c + BH + tb, cch + 5 * tb, u);
        } else {  // the state holds; zeros in the cache, so that every output is defined
          std::copy(h + tb + u.begin, h + tb + u.end, h + BH + tb + u.begin);
          std::copy(c + tb + u.begin, c + tb + u.end, c + BH + tb + u.begin);
          for (int64_t k = 0; k < 5; ++k) {
            std::fill(cch + 5 * tb + k * H + u.begin, cch + 5 * tb + k * H + u.end, scalar_t(0));
          }
        }
      };
      forward_loop<scalar_t>(states, w_hh, b_hh, rec_mask, gh, false, row);
    });
  });
  return {states, cells, cache};
}

// LSTM backward: grad_out (T, B, H) of the outputs h_t (masked by the caller) or empty, grad_hn
// and grad_cn (B, H) -> {grad_pre (T, B, 4H) (both grad_gx and grad_gh), grad_h0, grad_c0,
// grad_b_hh (4H: grad_pre summed; empty unless `bias`)}.
std::vector<Tensor> lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor w_hh,
                                  Tensor cells, Tensor cache, Tensor mask, Tensor rec_mask,
                                  Tensor keep_h, Tensor keep_c, Tensor peephole, bool bias) {
  const int64_t T = cache.size(0), B = cache.size(1), H = cells.size(2);
  keep_h = keep_h.contiguous(), keep_c = keep_c.contiguous();
  peephole = peephole.contiguous();
  if (rec_mask.numel()) rec_mask = rec_mask.expand({B, H}).contiguous();
  auto grad_pre = buffer({T, B, 4 * H}, cache.options());
  auto dc = grad_cn.contiguous().clone();
  const OutputGrad incoming(grad_out, B, H);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const bool zone = keep_h.numel() > 0;
  Tensor grad_h0;
  auto grad_b_hh = at::empty({bias ? 4 * H : 0}, cache.options());
  AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "lstm_backward", [&] {
    const int64_t BH = B * H;
    const scalar_t *c = cells.data_ptr<scalar_t>(), *cch = cache.data_ptr<scalar_t>();
    const scalar_t* kh = zone ? keep_h.data_ptr<scalar_t>() : nullptr;
    const scalar_t* kc = zone ? keep_c.data_ptr<scalar_t>() : nullptr;
    scalar_t *dcp = dc.data_ptr<scalar_t>(), *dp = grad_pre.data_ptr<scalar_t>();
    const scalar_t* peep = peephole.numel() ? peephole.data_ptr<scalar_t>() : nullptr;
    with_variant(zone, peep != nullptr, [&](auto z, auto p) {
      auto row = [&](int64_t t, int64_t b, Units u, const scalar_t* d, scalar_t* keep) {
        const int64_t o = b * H, tb = t * BH + o;
        const scalar_t* go = incoming.row<scalar_t>(t, b);
        if (valid(m, t, B, b)) {
          lstm_backward_row<decltype(z)::value, decltype(p)::value>(
              d + o, go, dcp + o, cch + 5 * tb, c + tb, zone ? kh + tb : kh, zone ? kc + tb : kc,
              peep, keep + o, dp + 4 * tb, u);
          return;
        }
        for (int64_t j = u.begin; j < u.end; ++j) keep[o + j] = d[o + j] + go[j];  // passed through
        for (int64_t g = 0; g < 4; ++g) {
          std::fill(dp + 4 * tb + g * H + u.begin, dp + 4 * tb + g * H + u.end, scalar_t(0));
        }
      };
      grad_h0 = backward_loop<scalar_t>(grad_pre, w_hh, rec_mask, grad_hn.contiguous().clone(),
                                        false, row, {{grad_pre, grad_b_hh}});
    });
  });
  return {grad_pre, grad_h0, dc, grad_b_hh};
}

// Projected LSTM (LSTMP) forward, no zoneout, recurrent dropout or peepholes: gx (T, B, 4H),
// w_hh (4H, P), w_hr (P, H) -> {states (T+1, B, P), cells (T+1, B, H), cache (T, B, 5H)}: each
// step the LSTM's m = o * tanh(c') (B, H) and then h' = m @ W_hr^T (B, P).
std::vector<Tensor> lstmp_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor w_hr, Tensor h0,
                                  Tensor c0, Tensor mask) {
  const int64_t T = gx.size(0), B = gx.size(1), P = h0.size(1), H = c0.size(1);
  gx = gx.contiguous();
  auto states = buffer({T + 1, B, P}, gx.options());
  auto cells = buffer({T + 1, B, H}, gx.options());
  auto cache = buffer({T, B, 5 * H}, gx.options());
  auto gh = at::empty({B, 4 * H}, gx.options());
  auto m = at::zeros({1, B, H}, gx.options());  // o * tanh(c'), the projection's input
  const auto packed = pack_for_steps(w_hh), packed_r = pack_for_steps(w_hr);
  states[0].copy_(h0), cells[0].copy_(c0);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = 0; t < T; ++t) {
    recurrent_product(gh, {states, t}, w_hh, packed, b_hh);
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "lstmp_forward", [&] {
      const int64_t BH = B * H;
      const scalar_t* x = gx.data_ptr<scalar_t>() + t * 4 * BH;
      const scalar_t* r_h = gh.data_ptr<scalar_t>();
      scalar_t* c = cells.data_ptr<scalar_t>() + t * BH;
      scalar_t* cch = cache.data_ptr<scalar_t>() + t * 5 * BH;
      scalar_t* mm = m.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o = b * H;
        if (valid(mk, t, B, b)) {
          lstm_forward_row<false, false>(x + 4 * o, r_h + 4 * o, c + o, c + o, c, c, c, mm + o,
                                         c + BH + o, cch + 5 * o, H);
        } else {  // zeros in the cache: m = o * tanh(c') feeds the gradient of W_hr
          std::copy(c + o, c + o + H, c + BH + o);
          std::fill(cch + 5 * o, cch + 5 * (o + H), scalar_t(0));
        }
      });
    });
    auto h_new = states[t + 1];
    recurrent_product(h_new, {m, 0}, w_hr, packed_r, Tensor());
    if (mk) {  // past a sequence's end h is carried
      AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "lstmp_carry", [&] {
        const scalar_t* h = states.data_ptr<scalar_t>() + t * B * P;
        scalar_t* hn = states.data_ptr<scalar_t>() + (t + 1) * B * P;
        for (int64_t b = 0; b < B; ++b) {
          if (!valid(mk, t, B, b)) std::copy(h + b * P, h + (b + 1) * P, hn + b * P);
        }
      });
    }
  }
  return {states, cells, cache};
}

// LSTMP backward: grad_out (T, B, P) or empty, grad_hn (B, P), grad_cn (B, H) -> {grad_pre
// (T, B, 4H), grad_h (T, B, P): the gradient reaching each step's h' (zero past the end; for
// dW_hr = sum_t grad_h_t^T m_t), grad_h0, grad_c0}.
std::vector<Tensor> lstmp_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor w_hh,
                                   Tensor w_hr, Tensor cells, Tensor cache, Tensor mask) {
  const int64_t T = cache.size(0), B = cache.size(1), H = cells.size(2), P = grad_hn.size(1);
  auto grad_pre = buffer({T, B, 4 * H}, cache.options());
  auto grad_h = buffer({T, B, P}, cache.options());
  auto dh = grad_hn.contiguous().clone();
  auto dc = grad_cn.contiguous().clone();
  auto direct = at::empty_like(dh);
  auto dm = at::empty({B, H}, cache.options());
  auto scratch = at::empty({B, H}, cache.options());  // zoneout's share of dm: zero here
  auto zeros_h = at::zeros({B, H}, cache.options());
  const OutputGrad incoming(grad_out, B, P);
  const auto packed = pack_for_steps(w_hh.t()), packed_r = pack_for_steps(w_hr.t());
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T - 1; t >= 0; --t) {
    AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "lstmp_backward_h", [&] {
      const scalar_t* d = dh.data_ptr<scalar_t>();
      scalar_t* g = grad_h.data_ptr<scalar_t>() + t * B * P;
      scalar_t* keep = direct.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {  // valid rows reach h' (then W_hr), others h_{t-1}
        const bool on = valid(mk, t, B, b);
        const scalar_t* go = incoming.row<scalar_t>(t, b);
        for (int64_t j = 0, o = b * P; j < P; ++j) {
          g[o + j] = on ? d[o + j] + go[j] : scalar_t(0);
          keep[o + j] = on ? scalar_t(0) : d[o + j] + go[j];
        }
      }
    });
    recurrent_product(dm, {grad_h, t}, w_hr.t(), packed_r, Tensor());  // dm = g @ W_hr
    AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "lstmp_backward", [&] {
      const int64_t BH = B * H;
      const scalar_t* c = cells.data_ptr<scalar_t>() + t * BH;  // c_{t-1}
      const scalar_t* cch = cache.data_ptr<scalar_t>() + t * 5 * BH;
      const scalar_t* z = zeros_h.data_ptr<scalar_t>();
      const scalar_t* dmp = dm.data_ptr<scalar_t>();
      scalar_t* dcp = dc.data_ptr<scalar_t>();
      scalar_t* sc = scratch.data_ptr<scalar_t>();
      scalar_t* dp = grad_pre.data_ptr<scalar_t>() + t * 4 * BH;
      for_rows(B, H, [&](int64_t b) {
        const int64_t o = b * H;
        if (valid(mk, t, B, b)) {
          lstm_backward_row<false, false>(dmp + o, z + o, dcp + o, cch + 5 * o, c + o, z, z, z,
                                          sc + o, dp + 4 * o, H);
        } else {
          std::fill(dp + 4 * o, dp + 4 * (o + H), scalar_t(0));
        }
      });
    });
    add_back_product(direct, {grad_pre, t}, w_hh, packed);
    std::swap(dh, direct);
  }
  return {grad_pre, grad_h, dh, dc};
}

// LN-LSTM forward: gx (T, B, 4H) (the normalised input projection, its shift included), params
// {w_hh, b_hh (4H), w_c, b_c (H)} -> {states, cells (T+1, B, H), cache (T, B, 10H), stats
// (T, B, 2)}.
std::vector<Tensor> ln_lstm_forward(Tensor gx, Tensor w_hh, Tensor h0, Tensor c0, Tensor mask,
                                    std::vector<Tensor> params) {
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  gx = gx.contiguous();
  for (auto& p : params) p = p.contiguous();
  auto states = buffer({T + 1, B, H}, gx.options());
  auto cells = buffer({T + 1, B, H}, gx.options());
  auto cache = buffer({T, B, 10 * H}, gx.options());
  auto stats = buffer({T, B, 2}, gx.options());
  auto raw = at::empty({B, 4 * H}, gx.options());
  states[0].copy_(h0), cells[0].copy_(c0);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "ln_lstm_forward", [&] {
    const LnParams<scalar_t> p{params[0].data_ptr<scalar_t>(), params[1].data_ptr<scalar_t>(),
                               params[2].data_ptr<scalar_t>(), params[3].data_ptr<scalar_t>()};
    const int64_t BH = B * H;
    const scalar_t *x = gx.data_ptr<scalar_t>(), *r = raw.data_ptr<scalar_t>();
    scalar_t *h = states.data_ptr<scalar_t>(), *c = cells.data_ptr<scalar_t>();
    scalar_t *cch = cache.data_ptr<scalar_t>(), *st = stats.data_ptr<scalar_t>();
    auto row = [&](int64_t t, int64_t b, Units) {
      const int64_t tb = t * BH + b * H;  // row b of step t's (B, H)
      if (valid(m, t, B, b)) {
        ln_lstm_forward_row(x + 4 * tb, r + 4 * b * H, c + tb, p, h + BH + tb, c + BH + tb,
                            cch + 10 * tb, st + 2 * (t * B + b), H);
      } else {
        std::copy(h + tb, h + tb + H, h + BH + tb), std::copy(c + tb, c + tb + H, c + BH + tb);
        // zeros in the cache: the parameters' gradients sum over every row
        std::fill(cch + 10 * tb, cch + 10 * (tb + H), scalar_t(0));
        std::fill(st + 2 * (t * B + b), st + 2 * (t * B + b) + 2, scalar_t(0));
      }
    };
    forward_loop<scalar_t>(states, w_hh, Tensor(), Tensor(), raw, true, row);
  });
  return {states, cells, cache, stats};
}

// LN-LSTM backward -> {grad_gx (T, B, 4H), grad_raw (T, B, 4H), grad_h0, grad_c0, gains (10H)}:
// gains holds the parameters' gradients, sums over steps and rows gathered during the pass (per
// thread, then added; a pass of their own would read the (T, B, 4H) arrays from memory again):
// sum grad_gx * gh_hat (4H), sum grad_gx (4H), sum grad_norm * c_hat (H), sum grad_norm (H).
std::vector<Tensor> ln_lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor w_hh,
                                     Tensor cells, Tensor cache, Tensor stats, Tensor mask,
                                     std::vector<Tensor> params) {
  const int64_t T = cache.size(0), B = cache.size(1), H = cells.size(2);
  for (auto& p : params) p = p.contiguous();
  auto grad_gx = buffer({T, B, 4 * H}, cache.options());
  auto grad_raw = buffer({T, B, 4 * H}, cache.options());
  auto grad_norm = at::empty({B, H}, cache.options());  // of the cell's normalisation, a step
  auto dc = grad_cn.contiguous().clone();
  const OutputGrad incoming(grad_out, B, H);
  auto partial = at::zeros({at::get_num_threads(), 10 * H}, cache.options());  // per thread
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  Tensor grad_h0;
  AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "ln_lstm_backward", [&] {
    const LnParams<scalar_t> p{params[0].data_ptr<scalar_t>(), params[1].data_ptr<scalar_t>(),
                               params[2].data_ptr<scalar_t>(), params[3].data_ptr<scalar_t>()};
    const int64_t BH = B * H;
    const scalar_t* c = cells.data_ptr<scalar_t>();
    const scalar_t *cch = cache.data_ptr<scalar_t>(), *st = stats.data_ptr<scalar_t>();
    scalar_t *dcp = dc.data_ptr<scalar_t>(), *dn = grad_norm.data_ptr<scalar_t>();
    scalar_t *dg = grad_gx.data_ptr<scalar_t>(), *dr = grad_raw.data_ptr<scalar_t>();
    scalar_t* sums = partial.data_ptr<scalar_t>();
    auto row = [&](int64_t t, int64_t b, Units, const scalar_t* d, scalar_t* keep) {
      const int64_t o = b * H, tb = t * BH + o;
      const scalar_t* go = incoming.row<scalar_t>(t, b);
      if (!valid(m, t, B, b)) {  // past the end: the state passed through unchanged
        for (int64_t j = 0; j < H; ++j) keep[o + j] = d[o + j] + go[j];
        std::fill(dg + 4 * tb, dg + 4 * (tb + H), scalar_t(0));
        std::fill(dr + 4 * tb, dr + 4 * (tb + H), scalar_t(0));
        return;
      }
      ln_lstm_backward_row(d + o, go, dcp + o, cch + 10 * tb, st + 2 * (t * B + b), c + tb, p,
                           dg + 4 * tb, dr + 4 * tb, dn + o, H);
      std::fill(keep + o, keep + o + H, scalar_t(0));
      scalar_t* acc = sums + worker_index() * 10 * H;
      const scalar_t *gh_hat = cch + 10 * tb + 5 * H, *c_hat = cch + 10 * tb + 9 * H;
      for (int64_t j = 0; j < 4 * H; ++j) {
        acc[j] += dg[4 * tb + j] * gh_hat[j], acc[4 * H + j] += dg[4 * tb + j];
      }
      for (int64_t j = 0; j < H; ++j) {
        acc[8 * H + j] += dn[o + j] * c_hat[j], acc[9 * H + j] += dn[o + j];
      }
    };
    grad_h0 = backward_loop<scalar_t>(grad_raw, w_hh, Tensor(), grad_hn.contiguous().clone(),
                                      true, row);
  });
  return {grad_gx, grad_raw, grad_h0, dc, partial.sum(0)};
}

// Elman forward: gx (T, B, H) -> states (T+1, B, H); nonlinearity 0 tanh, 1 relu, 2 sigmoid.
Tensor elman_forward(Tensor gx, Tensor w_hh, Tensor b_hh, Tensor h0, Tensor mask,
                     int64_t nonlinearity) {
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  gx = gx.contiguous();
  auto states = buffer({T + 1, B, H}, gx.options());
  auto gh = at::empty({B, H}, gx.options());
  states[0].copy_(h0);
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "elman_forward", [&] {
    const scalar_t *x = gx.data_ptr<scalar_t>(), *g = gh.data_ptr<scalar_t>();
    scalar_t* s = states.data_ptr<scalar_t>();
    with_nonlinearity(nonlinearity, [&](auto nl) {
      auto row = [&](int64_t t, int64_t b, Units u) {
        const int64_t tb = (t * B + b) * H;  // row b of step t's (B, H)
        if (valid(m, t, B, b)) {
          elman_forward_row<decltype(nl)::value>(x + tb, g + b * H, s + B * H + tb, u);
        } else {
          std::copy(s + tb + u.begin, s + tb + u.end, s + B * H + tb + u.begin);
        }
      };
      forward_loop<scalar_t>(states, w_hh, b_hh, Tensor(), gh, false, row);
    });
  });
  return states;
}

// Elman backward -> {grad_pre (T, B, H) (both grad_gx and grad_gh), grad_h0 (B, H), grad_b_hh
// (H: grad_pre summed; empty unless `bias`)}.
std::vector<Tensor> elman_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states,
                                   Tensor mask, int64_t nonlinearity, bool bias) {
  const int64_t T = states.size(0) - 1, B = states.size(1), H = states.size(2);
  auto grad_pre = buffer({T, B, H}, states.options());
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const OutputGrad incoming(grad_out, B, H);
  Tensor grad_h0;
  auto grad_b_hh = at::empty({bias ? H : 0}, states.options());
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "elman_backward", [&] {
    const scalar_t* y = states.data_ptr<scalar_t>() + B * H;  // y[t]: h_t
    scalar_t* dp = grad_pre.data_ptr<scalar_t>();
    with_nonlinearity(nonlinearity, [&](auto nl) {
      auto row = [&](int64_t t, int64_t b, Units u, const scalar_t* d, scalar_t* keep) {
        const int64_t o = b * H, tb = t * B * H + o;
        const scalar_t* go_b = incoming.row<scalar_t>(t, b);
        if (valid(m, t, B, b)) {
          elman_backward_row<decltype(nl)::value>(d + o, go_b, y + tb, dp + tb, u);
          std::fill(keep + o + u.begin, keep + o + u.end, scalar_t(0));
        } else {  // past the end: the state passed through unchanged
          for (int64_t j = u.begin; j < u.end; ++j) keep[o + j] = d[o + j] + go_b[j];
          std::fill(dp + tb + u.begin, dp + tb + u.end, scalar_t(0));
        }
      };
      grad_h0 = backward_loop<scalar_t>(grad_pre, w_hh, Tensor(), grad_hn.contiguous().clone(),
                                        false, row, {{grad_pre, grad_b_hh}});
    });
  });
  return {grad_pre, grad_h0, grad_b_hh};
}

// ---- Streaming: one step of a stack of layers, no autograd. -----------------------------------

// v (B, n) @ w^T + b, w (m, n), as (B, m), contiguous; at B = 1 as (m,), one matrix-vector
// product (cheaper than a GEMM).
static Tensor affine(const Tensor& v, const Tensor& w, const Tensor& b) {
  if (v.size(0) == 1) return b.numel() ? at::addmv(b, w, v[0]) : at::mv(w, v[0]);
  return b.numel() ? at::addmm(b, v, w.t()) : at::mm(v, w.t());
}

// The pointwise pass of one row of a plain cell's step (cell codes as in `stack_step`), units u:
// gx, gh the row's two products (G H), h, c its state (c: the LSTM's, else unused), h_new and
// c_new the new state, cache a scratch row (5 H).
template <typename T>
void step_row(int64_t cell, const T* gx, const T* gh, const T* h, const T* c, T* h_new, T* c_new,
              T* cache, Units u) {
  if (cell == 4) {
    lstm_forward_row<false, false>(gx, gh, h, c, h, h, h, h_new, c_new, cache, u);
  } else if (cell == 3) {
    gru_forward_row(gx, gh, h, h_new, cache, u);
  } else {
    with_nonlinearity(cell, [&](auto nl) {
      elman_forward_row<decltype(nl)::value>(gx, gh, h_new, u);
    });
  }
}

// y[i] = w[i, :] . v + (b ? b[i] : 0) for the rows i in [begin, end) of w (rows of K floats), eight
// rows at a time so that each load of v serves eight rows (a matrix-vector product is bound by
// reading w once).
void dot_rows(const float* w, int64_t K, const float* v, const float* b, float* y, int64_t begin,
              int64_t end) {
  using L = Lanes<float>;
  constexpr int64_t kRows = 8;
  int64_t i = begin;
  for (; i + kRows <= end; i += kRows) {
    fv sum[kRows] = {};
    over_lanes<float>(K, [&](int64_t k, int64_t n) {
      const fv x = L::load(v + k, n);
      for (int64_t r = 0; r < kRows; ++r) sum[r] += L::load(w + (i + r) * K + k, n) * x;
    });
    for (int64_t r = 0; r < kRows; ++r) y[i + r] = hsum(sum[r]) + (b ? b[i + r] : 0.0f);
  }
  for (; i < end; ++i) {
    fv sum{};
    over_lanes<float>(K, [&](int64_t k, int64_t n) {
      sum += L::load(w + i * K + k, n) * L::load(v + k, n);
    });
    y[i] = hsum(sum) + (b ? b[i] : 0.0f);
  }
}

const float* bias_or_null(const Tensor& b) { return b.numel() ? b.data_ptr<float>() : nullptr; }

// A copy of layer l of a contiguous state (L, B, H), (B, H): what the stack steps return as their
// output, which the caller may change in place without changing the state (one memcpy: a select
// and clone through ATen cost a sizeable part of a step of small layers).
Tensor copy_of_layer(const Tensor& state, int64_t l) {
  auto out = at::empty({state.size(1), state.size(2)}, state.options());
  const int64_t bytes = out.numel() * state.element_size();
  std::memcpy(out.data_ptr(), static_cast<const char*>(state.data_ptr()) + l * bytes, bytes);
  return out;
}

// stack_step at B = 1 in float32, each layer in one parallel pass: a thread takes a fixed slice
// of the units, computes the gate rows of those units (both products, its own rows of the weights:
// each core reads the same part of the weights at every step, from its own cache) and then their
// pointwise math. torch's mat-vecs would split each product anew and leave the gates to a third
// pass. -> as stack_step.
std::vector<Tensor> stack_step_single(Tensor x, Tensor h, Tensor c,
                                      const std::vector<Tensor>& weights, int64_t cell) {
  const int64_t L = h.size(0), H = h.size(2), G = cell == 4 ? 4 : cell == 3 ? 3 : 1;
  auto h_new = at::empty_like(h);
  auto c_new = c.numel() ? at::empty_like(c) : c;
  auto scratch = at::empty({(2 * G + 5) * H}, h.options());  // gx (G H), gh (G H), a cache row
  float *gx = scratch.data_ptr<float>(), *gh = gx + G * H, *cache = gh + G * H;
  x = x.contiguous();
  const float* in = x.data_ptr<float>();
  const int64_t tiles = (H + kWidth - 1) / kWidth;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor w_ih = weights[4 * l].contiguous(), w_hh = weights[4 * l + 1].contiguous();
    const float *b_ih = bias_or_null(weights[4 * l + 2]), *b_hh = bias_or_null(weights[4 * l + 3]);
    const int64_t I = w_ih.size(1);
    const float* hp = h.data_ptr<float>() + l * H;
    float* hn = h_new.data_ptr<float>() + l * H;
    const float* cp = c.numel() ? c.data_ptr<float>() + l * H : hp;  // the LSTM's c, else unused
    float* cn = c.numel() ? c_new.data_ptr<float>() + l * H : hn;
    const FloatMode caller;
    const int64_t grain = G * H * (I + H) >= kTeamWork ? 1 : tiles;
    at::parallel_for(0, tiles, grain, [&](int64_t first, int64_t last) {
      const FloatMode own;
      caller.apply();
      const Units u(H, first * kWidth, std::min(last * kWidth, H));
      for (int64_t g = 0; g < G; ++g) {
        const int64_t begin = g * H + u.begin, end = g * H + u.end;
        dot_rows(w_ih.data_ptr<float>(), I, in, b_ih, gx, begin, end);
        dot_rows(w_hh.data_ptr<float>(), H, hp, b_hh, gh, begin, end);
      }
      step_row(cell, gx, gh, hp, cp, hn, cn, cache, u);
      own.apply();
    });
    in = hn;
  }
  return {h_new, c_new, copy_of_layer(h_new, L - 1)};
}

// One time step of L plain layers: x (B, I), h (L, B, H), c (L, B, H) for the LSTM (else empty),
// weights w_ih, w_hh, b_ih, b_hh per layer (biases may be empty); cell 0, 1, 2: Elman with tanh,
// relu, sigmoid; 3 GRU; 4 LSTM. -> {h' (L, B, H), c' (L, B, H) or empty, h' of the last layer
// (a copy: the caller may change it in place without changing the state)}.
std::vector<Tensor> stack_step(Tensor x, Tensor h, Tensor c, std::vector<Tensor> weights,
                               int64_t cell) {
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2);
  h = h.contiguous(), c = c.contiguous();
  if (B == 1 && tuned_for(h) && x.scalar_type() == at::kFloat) {
    return stack_step_single(x, h, c, weights, cell);
  }
  auto h_new = at::empty_like(h);
  auto c_new = c.numel() ? at::empty_like(c) : c;
  auto scratch = at::empty({B, 5 * H}, h.options());
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* w = weights.data() + 4 * l;
    auto gx = affine(x, w[0], w[2]), gh = affine(h[l], w[1], w[3]);
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "stack_step", [&] {
      const scalar_t *a = gx.data_ptr<scalar_t>(), *r = gh.data_ptr<scalar_t>();
      const scalar_t* hp = h.data_ptr<scalar_t>() + l * B * H;
      scalar_t* hn = h_new.data_ptr<scalar_t>() + l * B * H;
      const scalar_t* cp = c.numel() ? c.data_ptr<scalar_t>() + l * B * H : hp;
      scalar_t* cn = c.numel() ? c_new.data_ptr<scalar_t>() + l * B * H : hn;
      scalar_t* sc = scratch.data_ptr<scalar_t>();
      const int64_t G = w[1].size(0) / H;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * H;
        step_row(cell, a + G * o, r + G * o, hp + o, cp + o, hn + o, cn + o, sc + 5 * o, Units(H));
      }
    });
    x = h_new[l];
  }
  return {h_new, c_new, copy_of_layer(h_new, L - 1)};
}

// a (B, K) @ W^T + bias + add through rnnkit's step kernel, packed = pack_weight(W) (N, K);
// bias and add may be empty. For tests and benchmarks of the kernel.
Tensor packed_linear(Tensor a, Tensor packed, int64_t N, Tensor bias, Tensor add) {
  a = a.contiguous(), add = add.contiguous();
  auto out = at::empty({a.size(0), N}, a.options());
  rnnkit_gemm::step_gemm(a.data_ptr<float>(), a.size(0), a.size(1), packed, N,
                         bias.numel() ? bias.data_ptr<float>() : nullptr,
                         add.numel() ? add.data_ptr<float>() : nullptr, out.data_ptr<float>());
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_weight", &rnnkit_gemm::pack_weight);
  m.def("packed_linear", &packed_linear);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("lstmp_forward", &lstmp_forward);
  m.def("lstmp_backward", &lstmp_backward);
  m.def("ln_lstm_forward", &ln_lstm_forward);
  m.def("ln_lstm_backward", &ln_lstm_backward);
  m.def("stack_step", &stack_step);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("elman_forward", &elman_forward);
  m.def("elman_backward", &elman_backward);
  m.def("set_tuned", &set_tuned);
  m.def("tune_malloc", &tune_malloc);
  m.def("set_pooled", &set_pooled);
  m.def("pooled_bytes", &pooled_bytes);
  m.def("last_team_size", &last_team_size);
  m.def("last_team_by_rows", &last_team_by_rows);
  m.def("probe_onednn", &probe_onednn);
  m.def("matmul", &matmul);
}

// The CPU kernels of the operators `rnnkit/kernels/ops.py` declares (torch.ops.rnnkit.*).
TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  RNNKIT_IMPL(m, gru_forward);
  RNNKIT_IMPL(m, gru_backward);
  RNNKIT_IMPL(m, lstm_forward);
  RNNKIT_IMPL(m, lstm_backward);
  RNNKIT_IMPL(m, lstmp_forward);
  RNNKIT_IMPL(m, lstmp_backward);
  RNNKIT_IMPL(m, ln_lstm_forward);
  RNNKIT_IMPL(m, ln_lstm_backward);
  RNNKIT_IMPL(m, elman_forward);
  RNNKIT_IMPL(m, elman_backward);
  RNNKIT_IMPL(m, matmul);
}
