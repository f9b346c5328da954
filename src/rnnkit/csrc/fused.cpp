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
#include <torch/extension.h>

#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
#include <algorithm>
#include <malloc.h>
#include <mutex>
#include <new>
#include <type_traits>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"
#include "step_gemm.h"

using torch::Tensor;

namespace at::native {
// oneDNN's matmul inside torch, exported but not among its installed headers:
// result = beta * result + alpha * mat1 @ mat2 (2-D, any strides; float32 here).
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
                             float beta, float alpha);
}  // namespace at::native

namespace {

using namespace rnnkit_simd;

inline fv relu(fv x) { return select(x < 0.0f, splat(0.0f), x); }  // NaN stays NaN
inline double relu(double x) { return std::max(x, 0.0); }
inline fv positive(fv y) { return select(y > 0.0f, splat(1.0f), splat(0.0f)); }
inline double positive(double y) { return y > 0; }

// ---- One batch row of each pass, `width` lanes per iteration. --------------------------------


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

// ---- Helpers of the time loops. ---------------------------------------------------------------

// Run `body(b)` for every batch row, in parallel when the rows are many.
template <typename F>
void for_rows(int64_t rows, int64_t row_size, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 1024 / std::max<int64_t>(row_size, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
    streamed_stores_done();
  });
}

// ---- Matrix products. ---------------------------------------------------------------------------
//
// float32: a step's product goes to rnnkit's own kernel (step_gemm.h) with the weights packed once
// per sequence (neither library's call overhead, and up to 1.9x MKL's and 1.1-1.6x oneDNN's
// speed at these shapes here); the big products outside the loop (`matmul`: the input
// projection, the weight gradients) go to oneDNN's matmul (torch's at::native::mkldnn_matmul,
// the kernels behind its fused LSTM: at::mm calls MKL, which on CPUs it does not tune for, AMD's,
// runs them at half of oneDNN's speed or less). float64, and every product after
// set_tuned(false) (RNNKIT_GEMM=aten), takes at::mm.
bool g_tuned = true;

void set_tuned(bool on) { g_tuned = on; }

constexpr int64_t kOneDnnWork = int64_t(1) << 22;  // multiply-adds from which oneDNN is faster

bool tuned_for(const Tensor& a) { return g_tuned && a.scalar_type() == at::kFloat; }

// Whether oneDNN's float32 matmul runs here: torch 2.13 takes it only on CPUs with AVX-512 (BW,
// VL, DQ) or AVX-NE-CONVERT and raises elsewhere, so one small product is tried when the
// extension loads (`probe_onednn`) and at::mm takes the big products where it fails.
bool g_onednn = false;

bool probe_onednn() {
  g_onednn = false;
  if (!at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn()) return false;
  try {
    auto a = at::ones({2, 2}, at::kFloat), out = at::empty({2, 2}, at::kFloat);
    at::native::mkldnn_matmul(a, a, out, 0.0f, 1.0f);
    g_onednn = out.eq(2).all().item<bool>();
  } catch (const c10::Error&) {
    g_onednn = false;
  }
  return g_onednn;
}

// The loops' big buffers (states, caches, gradients: up to hundreds of MB a sequence) come from a
// pool that keeps them between calls. glibc's malloc gives a buffer above its mmap threshold
// (32 MiB at most, `tune_malloc`) fresh pages on every call and returns them on free, and on a
// virtual machine here each 4 KiB page took about a microsecond to fault in: 30-40% of a GRU's
// forward+backward at (64, 200, 256, 512), half of nn.LSTM's. A pooled block is faulted in once
// and then reused by later calls asking for at most its size (and at least 4/5 of it). The pool
// keeps at most kPoolLimit bytes of free blocks, freeing the oldest beyond; RNNKIT_MALLOC=default
// turns it off with the malloc settings (`set_pooled`).
constexpr size_t kPoolFrom = size_t(32) << 20, kPoolLimit = size_t(1) << 30;

class BufferPool {
 public:
  struct Block {
    void* data;
    size_t bytes;
  };

  Block take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->bytes >= bytes && it->bytes - bytes <= bytes / 4) {
          const Block block = *it;
          pooled_ -= block.bytes;
          free_.erase(it);
          return block;
        }
      }
    }
    void* data = nullptr;
    if (posix_memalign(&data, 64, bytes) != 0) throw std::bad_alloc();
    return {data, bytes};
  }

  void give(Block block) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back(block);
      pooled_ += block.bytes;
      while (pooled_ > kPoolLimit) {
        evicted.push_back(free_.front());
        pooled_ -= free_.front().bytes;
        free_.erase(free_.begin());
      }
    }
    for (const auto& b : evicted) std::free(b.data);
  }

  size_t clear() {  // frees every free block; returns the bytes freed
    std::vector<Block> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      pooled_ = 0;
    }
    size_t bytes = 0;
    for (const auto& b : blocks) std::free(b.data), bytes += b.bytes;
    return bytes;
  }

  size_t pooled() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pooled_;
  }

 private:
  std::mutex mutex_;
  std::vector<Block> free_;  // oldest first
  size_t pooled_ = 0;
};

BufferPool& pool() {
  static auto* pool = new BufferPool;  // never destroyed: tensors may be freed at exit
  return *pool;
}

bool g_pooled = true;

// Turning the pool off also frees its blocks.
void set_pooled(bool on) {
  g_pooled = on;
  if (!on) pool().clear();
}

// Bytes of free blocks the pool keeps (what `set_pooled(false)` would free).
int64_t pooled_bytes() { return static_cast<int64_t>(pool().pooled()); }

// at::empty, from the pool when big (such a tensor's storage cannot grow in place: a user holds
// one only as the outputs of a loop run without autograd, which `_outputs` in fused.py hands
// over without a copy; resize_ beyond their size raises there).
Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (!g_pooled || bytes < kPoolFrom || bytes > kPoolLimit) return at::empty(sizes, options);
  const auto block = pool().take(bytes);
  return at::from_blob(block.data, sizes, [block](void*) { pool().give(block); }, options);
}

// a (M, K) @ b (K, N), any strides -> (M, N).
Tensor matmul(const Tensor& a, const Tensor& b) {
  const bool big = a.size(0) * a.size(1) * b.size(1) >= kOneDnnWork;
  if (!tuned_for(a) || !big || !g_onednn) return at::mm(a, b);
  auto out = buffer({a.size(0), b.size(1)}, a.options());
  at::native::mkldnn_matmul(a, b, out, 0.0f, 1.0f);
  return out;
}

// W (N, K) packed for rnnkit's kernel (`step_gemm.h`) when it runs the products, else undefined.
Tensor pack_for_steps(const Tensor& w) {
  return tuned_for(w) ? rnnkit_gemm::pack_weight(w) : Tensor();
}

// Step t of a (T, B, K) tensor: the (B, K) rows a step's product reads, as a pointer for rnnkit's
// kernel, as a tensor only when at::mm needs one (a slice costs about a microsecond, a tenth of a
// step at B = 1).
struct StepRows {
  const Tensor& seq;
  int64_t t;
  const float* data() const { return seq.data_ptr<float>() + t * seq.size(1) * seq.size(2); }
  Tensor tensor() const { return seq[t]; }
};

// out (B, N) = h (B, K) @ W^T (+ bias), W (N, K); packed = pack_for_steps(W).
void recurrent_product(Tensor& out, StepRows h, const Tensor& w, const Tensor& packed,
                       const Tensor& bias) {
  const bool has_bias = bias.defined() && bias.numel();
  if (packed.defined()) {
    rnnkit_gemm::step_gemm(h.data(), h.seq.size(1), h.seq.size(2), packed, out.size(1),
                           has_bias ? bias.data_ptr<float>() : nullptr, nullptr,
                           out.data_ptr<float>());
  } else if (has_bias) {
    at::addmm_out(out, bias, h.tensor(), w.t());
  } else {
    at::mm_out(out, h.tensor(), w.t());
  }
}

// acc (B, H) += grad (B, N) @ W (N, H): the backward's step to h_{t-1}; packed =
// pack_for_steps(W^T).
void add_back_product(Tensor& acc, StepRows grad, const Tensor& w, const Tensor& packed) {
  if (packed.defined()) {
    float* out = acc.data_ptr<float>();
    rnnkit_gemm::step_gemm(grad.data(), grad.seq.size(1), grad.seq.size(2), packed, acc.size(1),
                           nullptr, out, out);
  } else {
    acc.addmm_(grad.tensor(), w);
  }
}

bool valid(const bool* mask, int64_t t, int64_t B, int64_t b) {
  return mask == nullptr || mask[t * B + b];
}

// The gradient of the outputs h_t, grad_out (T, B, H), or zeros when the outputs were not used
// (grad_out empty), so the row passes need no branch for it: row b of step t at row(t, b).
struct OutputGrad {
  Tensor values;
  int64_t step_stride = 0, row_stride = 0;
  OutputGrad(const Tensor& grad_out, int64_t B, int64_t H) {
    if (!grad_out.numel()) {
      values = at::zeros({H}, grad_out.options());
      return;
    }
    // A broadcast gradient (stride 0 over steps or rows: output.sum()'s) is read as the one
    // slice it repeats, not copied out T * B times; rows need only contiguous units.
    Tensor g = grad_out;
    const bool over_steps = g.stride(0) == 0, over_rows = g.stride(1) == 0;
    if (over_steps) g = g.narrow(0, 0, 1);
    if (over_rows) g = g.narrow(1, 0, 1);
    if (g.stride(2) != 1 && g.size(2) > 1) g = g.contiguous();
    values = g;
    step_stride = over_steps ? 0 : g.stride(0);
    row_stride = over_rows ? 0 : g.stride(1);
  }
  template <typename T>
  const T* row(int64_t t, int64_t b) const {  // the H units of row b at step t
    return values.data_ptr<T>() + t * step_stride + b * row_stride;
  }
};

// ---- The time loops of the classic cells. -------------------------------------------------------
//
// `forward_loop` and `backward_loop` walk the steps of the LSTM, GRU and Elman cells; each cell
// gives the pointwise pass of one batch row (`row`), over a range of units.
//
// float32 (with rnnkit's kernel): a team of threads that keep their share from the first step to
// the last. At the sizes of a step (B rows x a few hundred units), waking the threads for each
// product and again for each pointwise pass costs as much as the work, hundreds of times per
// sequence. With a batch of two kernel row tiles or more and a W_hh that fits each core's cache,
// each thread owns some of the sequences and steps them through alone. Else each thread owns a
// slice of the units (whole column tiles of the packed weights, the same in every gate block):
// it computes its units' columns of a step's product, runs their pointwise pass over every row
// while the product's outputs are still in its core's cache, and waits for the others once per
// step, as the next product reads every unit (see `on_team`).
// Otherwise (float64, RNNKIT_GEMM=aten, rows that need every unit: the layer norms), each step's
// product is one call (`recurrent_product`) and the rows run in parallel (`for_rows`).

// W (G * H, K) packed per gate block: (G, J, K, kCols, kLanes), so that one tile range covers the
// same units in every block.
Tensor pack_gates(const Tensor& w, int64_t G) {
  const int64_t H = w.size(0) / G, K = w.size(1), span = rnnkit_gemm::kSpan;
  const int64_t J = (H + span - 1) / span;
  auto packed = at::empty({G, J, K, rnnkit_gemm::kCols, rnnkit_gemm::kLanes}, w.options());
  for (int64_t g = 0; g < G; ++g) {
    rnnkit_gemm::pack_into(w.narrow(0, g * H, H), packed.data_ptr<float>() + g * J * K * span);
  }
  return packed;
}

// A thread's share of a team: the column tiles [tile_begin, tile_end) of the products and the
// units they cover, for the batch rows [row_begin, row_end); a pass that needs whole rows (after
// a wait) takes the rows [whole_begin, whole_end). own_weights: the team splits the batch, so
// every thread reads all of the packed weights at every step (see `weights_for`).
struct Share {
  int64_t tile_begin, tile_end;
  Units units;
  int64_t row_begin, row_end, whole_begin, whole_end;
  bool own_weights = false;
};

// The packed weights a thread of a team reads: a copy of its own where the team splits the
// batch. Two cores streaming one copy of 0.8 MB of packed weights from their caches ran the
// step products about 20% slower here than with a copy each (a test kernel, 12 x 256 x 768 per
// thread: 140-158 against 163-200 GFLOP/s), and the GRU and LSTM layers 5-9% slower at
// (32, 100, 128, 256) and (16, 512, 64, 128); a copy costs well under 1% of a loop.
Tensor weights_for(const Share& share, const Tensor& packed) {
  return share.own_weights ? packed.clone() : packed;
}

thread_local int64_t t_team_thread = -1;  // this thread's index in the running team, else -1

// The index of the thread running a row pass, inside a team or an at::parallel_for (for sums
// kept per thread).
int64_t worker_index() { return t_team_thread >= 0 ? t_team_thread : at::get_thread_num(); }

constexpr int64_t kTeamWork = int64_t(1) << 15;  // multiply-adds of a step from which 2 threads pay

int64_t g_last_team = 0;  // threads of the last team loop (for the tests)

int64_t last_team_size() { return g_last_team; }

inline void team_wait() {
#pragma omp barrier
}

// A thread's floating-point mode (x86: MXCSR, whose flush-to-zero and denormals-are-zero bits
// torch.set_flush_denormal sets, for the calling thread only). A team's threads compute in the
// caller's mode: with their own, units on one thread would keep denormals that the caller's
// thread flushes (a trained Elman RNN's vanishing gradients: microcode-slow arithmetic, and
// results that depend on the thread count).
struct FloatMode {
#if defined(__x86_64__) || defined(__i386__)
  unsigned csr = _mm_getcsr();
  void apply() const { _mm_setcsr(csr); }
#else
  void apply() const {}
#endif
};

constexpr int64_t kOwnWeights = int64_t(1) << 18;  // floats of W_hh each core can keep in cache
bool g_last_by_rows = false;  // whether the last team split the batch (for the tests)

bool last_team_by_rows() { return g_last_by_rows; }

inline void no_wait() {}

// Runs body(share, wait) on every thread of a team, or on this thread alone with every unit and
// row when a step's work (B rows x `weights` multiply-adds) is small; wait() waits for the team.
// A team splits the batch when it has two kernel row tiles or more and W_hh (`weights` floats)
// fits each core's cache: every thread then steps its own sequences through every unit and
// never waits (no barrier, no half of h_t read from the other core). Else it splits the H units
// (float32 tiles), each core reading only its part of W_hh, and waits once or twice a step, as
// the next product reads every unit. Measured here (Elman, GRU and LSTM forward loops, per
// step): by rows 1.3-1.9x faster at B = 16-32, H = 128-256, and no slower up to 1 MiB of W_hh;
// by units 1.2-1.6x faster from 3 MiB (H = 768-1024 at B = 16-32).
template <typename F>
void on_team(int64_t H, int64_t B, int64_t weights, const F& body) {
  const int64_t span = rnnkit_gemm::kSpan, rows = rnnkit_gemm::kRows;
  const int64_t tiles = (H + span - 1) / span, blocks = (B + rows - 1) / rows;
  const bool by_rows = blocks >= 2 && weights <= kOwnWeights;
  auto share = [&](int64_t id, int64_t n) {
    if (by_rows) {
      const int64_t begin = B * id / n, end = B * (id + 1) / n;
      return Share{0, tiles, Units(H), begin, end, begin, end, n > 1};
    }
    const int64_t begin = tiles * id / n, end = tiles * (id + 1) / n;
    const Units units(H, std::min(begin * span, H), std::min(end * span, H));
    return Share{begin, end, units, 0, B, B * id / n, B * (id + 1) / n};
  };
#ifdef _OPENMP
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), by_rows ? blocks : tiles);
  if (B * weights >= kTeamWork && threads > 1 && !at::in_parallel_region()) {
    const FloatMode caller;
#pragma omp parallel num_threads(threads)
    {
      const FloatMode own;
      caller.apply();
      if (omp_get_thread_num() == 0) g_last_team = omp_get_num_threads(), g_last_by_rows = by_rows;
      t_team_thread = omp_get_thread_num();
      body(share(omp_get_thread_num(), omp_get_num_threads()), by_rows ? no_wait : team_wait);
      t_team_thread = -1;
      own.apply();
    }
    return;
  }
#endif
  g_last_team = 1, g_last_by_rows = false;
  body(share(0, 1), no_wait);
}

// For t = 0 .. T-1: gh (B, G * H) = (h_t * rec_mask) @ W_hh^T + b_hh, then row(t, b, units) for
// every row b. states (T + 1, B, H) holds h_0 and receives h_t from `row`; rec_mask (B, H), b_hh
// may be empty. whole_rows: `row` needs every unit of its row (the layer norms): a team then
// splits the row pass by rows, with a second barrier between the product and the rows.
template <typename S, typename Row>
void forward_loop(const Tensor& states, const Tensor& w_hh, const Tensor& b_hh,
                  const Tensor& rec_mask, Tensor& gh, bool whole_rows, const Row& row) {
  const int64_t T = states.size(0) - 1, B = states.size(1), H = states.size(2);
  const int64_t G = w_hh.size(0) / H;
  const bool masked = rec_mask.numel() > 0;
  if constexpr (std::is_same_v<S, float>) {
    if (tuned_for(states) && !(whole_rows && masked)) {
      auto h_in = masked ? at::empty({2, B, H}, states.options()) : states;  // h * rec_mask
      if (masked) h_in[0].copy_(states[0] * rec_mask);
      const auto packed = pack_gates(w_hh, G);
      const float* m = masked ? rec_mask.data_ptr<float>() : nullptr;
      const int64_t block = packed.numel() / G;  // one gate block's packed weights
      const float* bias = b_hh.numel() ? b_hh.data_ptr<float>() : nullptr;
      float *s = states.data_ptr<float>(), *in = h_in.data_ptr<float>();
      float* out = gh.data_ptr<float>();
      on_team(H, B, G * H * H, [&](Share share, auto wait) {
        const Units u = share.units;
        const int64_t r0 = share.row_begin, r1 = share.row_end;
        const Tensor weights = weights_for(share, packed);
        const float* p = weights.data_ptr<float>();
        for (int64_t t = 0; t < T; ++t) {
          const float* h = masked ? in + (t % 2) * B * H : s + t * B * H;
          for (int64_t g = 0; g < G; ++g) {
            rnnkit_gemm::gemm_tiles(h + r0 * H, r1 - r0, H, p + g * block, H, share.tile_begin,
                                    share.tile_end, bias ? bias + g * H : nullptr, nullptr,
                                    out + r0 * G * H + g * H, G * H);
          }
          if (whole_rows) {
            wait();  // the rows read every unit's product
            for (int64_t b = share.whole_begin; b < share.whole_end; ++b) row(t, b, Units(H));
          } else {
            for (int64_t b = r0; b < r1; ++b) row(t, b, u);
          }
          if (masked) {  // the next product's input, these units
            float* next = in + ((t + 1) % 2) * B * H;
            const float* h_new = s + (t + 1) * B * H;
            for (int64_t b = r0; b < r1; ++b) {
              for (int64_t j = b * H + u.begin; j < b * H + u.end; ++j) next[j] = h_new[j] * m[j];
            }
          }
          wait();
        }
        streamed_stores_done();
      });
      return;
    }
  }
  auto h_in = masked ? at::empty({1, B, H}, states.options()) : Tensor();
  const auto packed = pack_for_steps(w_hh);
  for (int64_t t = 0; t < T; ++t) {
    if (masked) {
      auto h = h_in[0];
      at::mul_out(h, states[t], rec_mask);
    }
    recurrent_product(gh, {masked ? h_in : states, masked ? 0 : t}, w_hh, packed, b_hh);
    for_rows(B, whole_rows ? w_hh.size(0) : H, [&](int64_t b) { row(t, b, Units(H)); });
  }
}

// acc (G * H) += the units u of each gate block of rows [begin, end) of a (., G * H) array.
template <typename S>
void add_rows(double* acc, const S* rows, int64_t begin, int64_t end, int64_t G, int64_t H,
              Units u) {
  for (int64_t b = begin; b < end; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      const S* src = rows + (b * G + g) * H;
      double* sum = acc + g * H;
      for (int64_t j = u.begin; j < u.end; ++j) sum[j] += src[j];
    }
  }
}

// For t = T-1 .. 0: row(t, b, units, d, keep) for every row b writes the step's gradients of
// the pre-activations, grad_pre[t] (B, G * H), and keep (B, H), the share of dL/dh_{t-1} that
// bypasses the product, from d = dL/dh_t (B, H); then dL/dh_{t-1} = keep + (grad_pre[t] @ W_hh)
// * rec_mask (may be empty). dh holds dL/dh_T; returns dL/dh_0. whole_rows as in forward_loop
// (a second barrier after the product: the next rows read every unit of dL/dh_{t-1}).
// Each of `summed` (source, total), if total is defined ((G * H,)), receives the sum over the
// steps and rows of its source, a (T, B, G * H) array the row pass writes (grad_pre or beside
// it): the gradients of the biases. On the team loops each thread adds its rows in while its
// row pass has them in cache (a separate sum over dim 0 ran at 6-8 GB/s here, 1.3 ms of a GRU's
// backward at (32, 100, 128, 256)); elsewhere (float64, RNNKIT_GEMM=aten) after each step's rows.
using Summed = std::vector<std::pair<Tensor, Tensor>>;

template <typename S, typename Row>
Tensor backward_loop(const Tensor& grad_pre, const Tensor& w_hh, const Tensor& rec_mask,
                     Tensor dh, bool whole_rows, const Row& row, Summed summed = {}) {
  const int64_t T = grad_pre.size(0), B = grad_pre.size(1), H = dh.size(1);
  const int64_t G = w_hh.size(0) / H;
  const bool masked = rec_mask.numel() > 0;
  auto direct = at::empty_like(dh);
  std::erase_if(summed, [](const auto& pair) { return !pair.second.defined(); });
  const int64_t n_sums = static_cast<int64_t>(summed.size()), width = n_sums * G * H;
  // one row of partial sums per thread and source (double: a few thousand float terms each)
  auto partial = at::zeros({at::get_num_threads(), width}, dh.options().dtype(at::kDouble));
  double* sums = n_sums ? partial.data_ptr<double>() : nullptr;
  // adds rows [begin, end), units u of step t of every source into the sums at acc
  auto add_step = [&](double* acc, int64_t t, int64_t begin, int64_t end, Units u) {
    for (int64_t k = 0; k < n_sums; ++k) {
      const S* source = summed[k].first.data_ptr<S>() + t * B * G * H;
      add_rows(acc + k * G * H, source, begin, end, G, H, u);
    }
  };
  auto finish = [&](const Tensor& result) {  // the totals: the threads' sums, added in order
    for (int64_t k = 0; k < n_sums; ++k) {
      S* out = summed[k].second.data_ptr<S>();
      for (int64_t j = 0; j < G * H; ++j) {
        double total = 0;
        for (int64_t i = 0; i < partial.size(0); ++i) total += sums[i * width + k * G * H + j];
        out[j] = static_cast<S>(total);
      }
    }
    return result;
  };
  if constexpr (std::is_same_v<S, float>) {
    if (tuned_for(dh) && !(whole_rows && masked)) {
      auto through = masked ? at::empty_like(dh) : dh;  // grad_pre[t] @ W_hh before the mask
      const auto packed = rnnkit_gemm::pack_weight(w_hh.t());  // N = H, K = G * H
      const float* dp = grad_pre.data_ptr<float>();
      const float* m = masked ? rec_mask.data_ptr<float>() : nullptr;
      float* buffers[2] = {dh.data_ptr<float>(), direct.data_ptr<float>()};
      float* th = through.data_ptr<float>();
      on_team(H, B, G * H * H, [&](Share share, auto wait) {
        const Units u = share.units;
        const int64_t r0 = share.row_begin, r1 = share.row_end;
        const Tensor weights = weights_for(share, packed);
        const float* p = weights.data_ptr<float>();
        for (int64_t t = T - 1, i = 0; t >= 0; --t, i ^= 1) {
          float *d = buffers[i], *keep = buffers[i ^ 1];
          if (whole_rows) {
            for (int64_t b = share.whole_begin; b < share.whole_end; ++b) {
              row(t, b, Units(H), d, keep);
            }
            if (sums) add_step(sums + worker_index() * width, t, share.whole_begin,
                               share.whole_end, Units(H));
          } else {
            for (int64_t b = r0; b < r1; ++b) row(t, b, u, d, keep);
            if (sums) add_step(sums + worker_index() * width, t, r0, r1, u);
          }
          wait();  // the product reads every unit of grad_pre[t]
          const int64_t o = r0 * H;  // the first of these rows in a (B, H) buffer
          rnnkit_gemm::gemm_tiles(dp + (t * B + r0) * G * H, r1 - r0, G * H, p, H,
                                  share.tile_begin, share.tile_end, nullptr,
                                  masked ? nullptr : keep + o, (masked ? th : keep) + o, H);
          for (int64_t b = r0; masked && b < r1; ++b) {
            for (int64_t j = b * H + u.begin; j < b * H + u.end; ++j) keep[j] += th[j] * m[j];
          }
          if (whole_rows) wait();
        }
      });
      return finish(T % 2 ? direct : dh);
    }
  }
  auto through = masked ? at::empty_like(dh) : Tensor();
  const auto packed = pack_for_steps(w_hh.t());
  for (int64_t t = T - 1; t >= 0; --t) {
    const S* d = dh.data_ptr<S>();
    S* keep = direct.data_ptr<S>();
    for_rows(B, whole_rows ? w_hh.size(0) : H, [&](int64_t b) { row(t, b, Units(H), d, keep); });
    if (sums) add_step(sums, t, 0, B, Units(H));
    if (masked) {
      through.zero_();
      add_back_product(through, {grad_pre, t}, w_hh, packed);
      at::addcmul_out(dh, direct, through, rec_mask);
    } else {
      add_back_product(direct, {grad_pre, t}, w_hh, packed);
      std::swap(dh, direct);
    }
  }
  return finish(dh);
}

}  // namespace

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
// grad_b_hh (3H: grad_gh summed; undefined (None) unless `bias`, without ln), grad_b_ih (3H:
// grad_gx summed; undefined unless `bias_ih`, b_ih given to `gru_forward`)}.
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
  auto grad_b_hh = bias && !norm ? at::empty({3 * H}, cache.options()) : Tensor();
  auto grad_b_ih = bias_ih ? at::empty({3 * H}, cache.options()) : Tensor();
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
        } else {
          std::copy(h + tb + u.begin, h + tb + u.end, h + BH + tb + u.begin);
          std::copy(c + tb + u.begin, c + tb + u.end, c + BH + tb + u.begin);
        }
      };
      forward_loop<scalar_t>(states, w_hh, b_hh, rec_mask, gh, false, row);
    });
  });
  return {states, cells, cache};
}

// LSTM backward: grad_out (T, B, H) of the outputs h_t (masked by the caller) or empty, grad_hn
// and grad_cn (B, H) -> {grad_pre (T, B, 4H) (both grad_gx and grad_gh), grad_h0, grad_c0,
// grad_b_hh (4H: grad_pre summed; undefined (None) unless `bias`)}.
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
  auto grad_b_hh = bias ? at::empty({4 * H}, cache.options()) : Tensor();
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
// thread, then added; a pass of their own over the (T, B, 4H) products cost a tenth of the
// layer): sum grad_gx * gh_hat (4H), sum grad_gx (4H), sum grad_norm * c_hat (H), sum grad_norm
// (H).
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
// (H: grad_pre summed; undefined (None) unless `bias`)}.
std::vector<Tensor> elman_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor states,
                                   Tensor mask, int64_t nonlinearity, bool bias) {
  const int64_t T = states.size(0) - 1, B = states.size(1), H = states.size(2);
  auto grad_pre = buffer({T, B, H}, states.options());
  const bool* m = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const OutputGrad incoming(grad_out, B, H);
  Tensor grad_h0;
  auto grad_b_hh = bias ? at::empty({H}, states.options()) : Tensor();
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

// v (B, K) @ w^T + b -> (B, G); one matrix-vector product when B = 1 (cheaper than a GEMM).
// v (B, n) @ w^T + b, contiguous, as (B, m), or as (m,) at B=1: a matrix-vector product.
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
// output, which the caller may change in place without changing the state (select + clone cost
// 3.5 us here, a tenth of a step of two 16-unit layers).
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

// glibc's malloc hands buffers from 128 KiB up as fresh pages from the kernel (mmap) and gives
// freed heap memory back at once (trim at 128 KiB); the loops' buffers (states, caches,
// gradients: megabytes per sequence) then cost a page fault per 4 KiB on every call, which in a
// virtual machine here took as long as the loop's arithmetic. Buffers up to 32 MiB are taken
// from the heap instead, and up to 64 MiB of freed memory stays there for the next sequence.
// Returns whether the allocator took the settings (false off glibc).
bool tune_malloc() {
#ifdef __GLIBC__
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1;
#else
  return false;
#endif
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
