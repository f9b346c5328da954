// The pointwise passes of the time loops: for each cell (GRU, LSTM with zoneout and peepholes,
// layer-normalised LSTM and GRU, Elman), the forward and the backward of one batch row of a step,
// over a range of its units, `width` lanes per iteration (simd.h). A loop (loops.h) runs them
// after each step's matrix product. Part of the one translation unit fused.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "simd.h"

namespace {

using namespace rnnkit_simd;

inline fv relu(fv x) { return select(x < 0.0f, splat(0.0f), x); }  // NaN stays NaN
inline double relu(double x) { return std::max(x, 0.0); }
inline fv positive(fv y) { return select(y > 0.0f, splat(1.0f), splat(0.0f)); }
inline double positive(double y) { return y > 0; }

// GRU step forward: r, z, n and the new state from x (3H) = W_i x (+ b_i: bi (3H) unless null,
// else in x) and gh (3H) = W_h h + b_h; the cache row (4H) keeps r, z, n and W_hn h + b_hn for
// the backward.
template <typename T>
void gru_forward_row(const T* x, const T* gh, const T* h, T* h_new, T* cache, Units units,
                     const T* bi = nullptr) {
  const int64_t H = units.H;
  using L = Lanes<T>;
  over_lanes<T>(units, [&](int64_t j, int64_t n) {
    auto in = [&](int64_t g) {  // the gate block g of W_i x + b_i
      const auto v = L::load(x + g * H + j, n);
      return bi ? v + L::load(bi + g * H + j, n) : v;
    };
    const auto r = vsigmoid(in(0) + L::load(gh + j, n));
    const auto z = vsigmoid(in(1) + L::load(gh + H + j, n));
    const auto hn = L::load(gh + 2 * H + j, n);
    const auto c = vtanh(in(2) + r * hn);
    L::stream(cache + j, r, n), L::stream(cache + H + j, z, n);
    L::stream(cache + 2 * H + j, c, n), L::stream(cache + 3 * H + j, hn, n);
    L::store(h_new + j, (1 - z) * c + z * L::load(h + j, n), n);
  });
}

// GRU step backward: g = d + go is the gradient of h_t; writes the gradients of the
// pre-activations through the input (dx, 3H) and the recurrent (dr, 3H) products, and keep =
// dL/dh_{t-1} (H) through the direct path z * h_{t-1}.
template <typename T>
void gru_backward_row(const T* d, const T* go, const T* cache, const T* h, T* keep, T* dx, T* dr,
                      Units units) {
  const int64_t H = units.H;
  using L = Lanes<T>;
  over_lanes<T>(units, [&](int64_t j, int64_t n) {
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

// LSTM step forward, gates i|f|g|o from x (4H) = W_i x + b_i and gh (4H) = W_h h + b_h. With
// zoneout (Z), each unit keeps its previous value where kh (kc) is 1: h_t = kh h + (1 - kh) h'.
// With peepholes (P), peep (3H) = w_ic | w_fc | w_oc: i and f also see c, o sees c'.
template <bool Z, bool P, typename T>
void lstm_forward_row(const T* x, const T* gh, const T* h, const T* c, const T* kh, const T* kc,
                      const T* peep, T* h_new, T* c_new, T* cache, Units units) {
  const int64_t H = units.H;
  using L = Lanes<T>;
  over_lanes<T>(units, [&](int64_t j, int64_t n) {
    auto pre = [&](int64_t k) { return L::load(x + k * H + j, n) + L::load(gh + k * H + j, n); };
    const auto cp = L::load(c + j, n);
    auto a_i = pre(0), a_f = pre(1), a_o = pre(3);
    if constexpr (P) {
      a_i = a_i + L::load(peep + j, n) * cp, a_f = a_f + L::load(peep + H + j, n) * cp;
    }
    const auto i = vsigmoid(a_i), f = vsigmoid(a_f), g = vtanh(pre(2));
    const auto cn = f * cp + i * g;
    if constexpr (P) a_o = a_o + L::load(peep + 2 * H + j, n) * cn;
    const auto o = vsigmoid(a_o), tc = vtanh(cn);
    L::stream(cache + j, i, n), L::stream(cache + H + j, f, n);
    L::stream(cache + 2 * H + j, g, n), L::stream(cache + 3 * H + j, o, n);
    L::stream(cache + 4 * H + j, tc, n);
    if constexpr (Z) {
      const auto zh = L::load(kh + j, n), zc = L::load(kc + j, n);
      L::store(h_new + j, zh * L::load(h + j, n) + (1 - zh) * (o * tc), n);
      L::store(c_new + j, zc * cp + (1 - zc) * cn, n);
    } else {
      L::store(h_new + j, o * tc, n), L::store(c_new + j, cn, n);
    }
  });
}

// LSTM step backward: dh + go and dc are the gradients of h_t and c_t; writes the gradient of
// the pre-activations (dp, 4H: the same through the input and the recurrent product), keep_h
// (what reaches h_{t-1} directly: zoneout's share) and dc_prev (dL/dc_{t-1}, overwrites dc).
template <bool Z, bool P, typename T>
void lstm_backward_row(const T* dh, const T* go, T* dc, const T* cache, const T* c,
                       const T* kh, const T* kc, const T* peep, T* keep_h, T* dp, Units units) {
  const int64_t H = units.H;
  using L = Lanes<T>;
  over_lanes<T>(units, [&](int64_t j, int64_t n) {
    auto gh = L::load(dh + j, n) + L::load(go + j, n);
    auto gc = L::load(dc + j, n);
    auto through_h = decltype(gh){}, through_c = decltype(gc){};  // zoneout's direct paths
    if constexpr (Z) {
      const auto zh = L::load(kh + j, n), zc = L::load(kc + j, n);
      through_h = gh * zh, through_c = gc * zc;
      gh = gh - through_h, gc = gc - through_c;
    }
    const auto i = L::load(cache + j, n), f = L::load(cache + H + j, n);
    const auto g = L::load(cache + 2 * H + j, n), o = L::load(cache + 3 * H + j, n);
    const auto tc = L::load(cache + 4 * H + j, n);
    const auto d_o = gh * tc * o * (1 - o);
    auto gct = gc + gh * o * (1 - tc * tc);
    if constexpr (P) gct = gct + d_o * L::load(peep + 2 * H + j, n);
    const auto d_i = gct * g * i * (1 - i), d_f = gct * L::load(c + j, n) * f * (1 - f);
    L::store(dp + j, d_i, n), L::store(dp + H + j, d_f, n);
    L::store(dp + 2 * H + j, gct * i * (1 - g * g), n), L::store(dp + 3 * H + j, d_o, n);
    auto dc_prev = gct * f + through_c;
    if constexpr (P) dc_prev = dc_prev + d_i * L::load(peep + j, n) + d_f * L::load(peep + H + j, n);
    L::store(dc + j, dc_prev, n);
    L::store(keep_h + j, through_h, n);
  });
}

// Calls f(std::bool_constant<Z>, std::bool_constant<P>) for runtime flags.
template <typename F>
void with_variant(bool zone, bool peep, const F& f) {
  if (zone && peep) f(std::true_type{}, std::true_type{});
  else if (zone) f(std::true_type{}, std::false_type{});
  else if (peep) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

// ---- Layer normalisation of one row (LN-LSTM). ----------------------------------------------

inline float hsum(fv v) {
  float s = 0;
  for (int k = 0; k < kWidth; ++k) s += v[k];
  return s;
}
inline double hsum(double v) { return v; }

// hat (N) = (x - mean) / sqrt(var + 1e-5) over the row, as torch.nn.functional.layer_norm;
// returns 1 / sqrt(var + 1e-5). (The loads pad a vector's tail with zeros, so the sums are exact.)
template <typename T>
T normalise_row(const T* x, T* hat, int64_t N) {
  using L = Lanes<T>;
  typename L::V sum{}, squares{};
  over_lanes<T>(N, [&](int64_t j, int64_t n) { sum = sum + L::load(x + j, n); });
  const T mean = hsum(sum) / N;
  over_lanes<T>(N, [&](int64_t j, int64_t n) { L::store(hat + j, L::load(x + j, n) - mean, n); });
  over_lanes<T>(N, [&](int64_t j, int64_t n) {
    const auto v = L::load(hat + j, n);
    squares = squares + v * v;
  });
  const T rstd = 1 / std::sqrt(hsum(squares) / N + T(1e-5));
  over_lanes<T>(N, [&](int64_t j, int64_t n) { L::store(hat + j, L::load(hat + j, n) * rstd, n); });
  return rstd;
}

// The gradient dx (N) of x through y = hat * w + b (`normalise_row`), from dy (N).
template <typename T>
void normalise_backward_row(const T* dy, const T* w, const T* hat, T rstd, T* dx, int64_t N) {
  using L = Lanes<T>;
  typename L::V sum{}, dot{};
  over_lanes<T>(N, [&](int64_t j, int64_t n) {
    const auto g = L::load(dy + j, n) * L::load(w + j, n);
    sum = sum + g, dot = dot + g * L::load(hat + j, n);
  });
  const T mean = hsum(sum) / N, mean_dot = hsum(dot) / N;
  over_lanes<T>(N, [&](int64_t j, int64_t n) {
    const auto g = L::load(dy + j, n) * L::load(w + j, n), xh = L::load(hat + j, n);
    L::store(dx + j, rstd * (g - mean - xh * mean_dot), n);
  });
}

// The parameters of the layer-normalised LSTM's steps: gains and shifts of the recurrent
// projection (4H) and of the cell state (H).
template <typename T>
struct LnParams {
  const T *w_hh, *b_hh, *w_c, *b_c;
};

// LN-LSTM step forward (`rnnkit.cells.LayerNormLSTMCell`): gh = LN(raw) * w_hh + b_hh, the LSTM
// gates from x + gh, c' as the LSTM's, h' = o * tanh(LN(c') * w_c + b_c). cache (10H): i, f, g,
// o, tanh(LN(c')), the normalised raw (4H) and c' (H); stats (2): their 1 / std.
template <typename T>
void ln_lstm_forward_row(const T* x, const T* raw, const T* c, const LnParams<T>& p, T* h_new,
                         T* c_new, T* cache, T* stats, int64_t H) {
  using L = Lanes<T>;
  T* gh_hat = cache + 5 * H;
  T* c_hat = cache + 9 * H;
  stats[0] = normalise_row(raw, gh_hat, 4 * H);
  auto gate = [&](int64_t k, int64_t j, int64_t n) {
    const int64_t at = k * H + j;
    return L::load(x + at, n) + L::load(gh_hat + at, n) * L::load(p.w_hh + at, n) +
           L::load(p.b_hh + at, n);
  };
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    const auto i = vsigmoid(gate(0, j, n)), f = vsigmoid(gate(1, j, n));
    const auto g = vtanh(gate(2, j, n)), o = vsigmoid(gate(3, j, n));
    L::store(cache + j, i, n), L::store(cache + H + j, f, n);
    L::store(cache + 2 * H + j, g, n), L::store(cache + 3 * H + j, o, n);
    L::store(c_new + j, f * L::load(c + j, n) + i * g, n);
  });
  stats[1] = normalise_row(c_new, c_hat, H);
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    const auto tc = vtanh(L::load(c_hat + j, n) * L::load(p.w_c + j, n) + L::load(p.b_c + j, n));
    L::store(cache + 4 * H + j, tc, n);
    L::store(h_new + j, L::load(cache + 3 * H + j, n) * tc, n);
  });
}

// LN-LSTM step backward: from dh + go and dc (gradients of h_t, c_t) writes dgates (4H, the
// gradient of gx), draw (4H, of the raw recurrent product), dnorm (H, of LN(c') * w_c + b_c)
// and dc_{t-1} (over dc).
template <typename T>
void ln_lstm_backward_row(const T* dh, const T* go, T* dc, const T* cache, const T* stats,
                          const T* c, const LnParams<T>& p, T* dgates, T* draw, T* dnorm,
                          int64_t H) {
  using L = Lanes<T>;
  const T* gh_hat = cache + 5 * H;
  const T* c_hat = cache + 9 * H;
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    const auto g_h = L::load(dh + j, n) + L::load(go + j, n);
    const auto o = L::load(cache + 3 * H + j, n), tc = L::load(cache + 4 * H + j, n);
    L::store(dnorm + j, g_h * o * (1 - tc * tc), n);
    L::store(dgates + 3 * H + j, g_h * tc * o * (1 - o), n);
  });
  normalise_backward_row(dnorm, p.w_c, c_hat, stats[1], draw, H);  // draw[0:H]: scratch dc'
  over_lanes<T>(H, [&](int64_t j, int64_t n) {
    const auto gc = L::load(dc + j, n) + L::load(draw + j, n);
    const auto i = L::load(cache + j, n), f = L::load(cache + H + j, n);
    const auto g = L::load(cache + 2 * H + j, n);
    L::store(dgates + j, gc * g * i * (1 - i), n);
    L::store(dgates + H + j, gc * L::load(c + j, n) * f * (1 - f), n);
    L::store(dgates + 2 * H + j, gc * i * (1 - g * g), n);
    L::store(dc + j, gc * f, n);
  });
  normalise_backward_row(dgates, p.w_hh, gh_hat, stats[0], draw, 4 * H);
}

// LN-GRU step forward (`rnnkit.cells.LayerNormGRUCell`): gh = LN(raw) * w_hh + b_hh (written over
// raw), then the GRU step. cache (7H): the GRU's 4H, then the normalised raw (3H); stats: 1 / std.
template <typename T>
void ln_gru_forward_row(const T* x, T* raw, const T* h, const T* w_hh, const T* b_hh, T* h_new,
                        T* cache, T* stats, int64_t H) {
  using L = Lanes<T>;
  T* gh_hat = cache + 4 * H;
  stats[0] = normalise_row(raw, gh_hat, 3 * H);
  over_lanes<T>(3 * H, [&](int64_t j, int64_t n) {
    L::store(raw + j, L::load(gh_hat + j, n) * L::load(w_hh + j, n) + L::load(b_hh + j, n), n);
  });
  gru_forward_row(x, raw, h, h_new, cache, H);
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
void elman_forward_row(const T* x, const T* gh, T* out, Units units) {
  using L = Lanes<T>;
  over_lanes<T>(units, [&](int64_t j, int64_t n) {
    L::store(out + j, activation<NL>(L::load(x + j, n) + L::load(gh + j, n)), n);
  });
}

template <int NL, typename T>
void elman_backward_row(const T* d, const T* go, const T* y, T* dp, Units units) {
  using L = Lanes<T>;
  over_lanes<T>(units, [&](int64_t j, int64_t n) {
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

}  // namespace
