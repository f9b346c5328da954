// The per-step matrix product of the time loops, float32: out (B, N) = a (B, K) @ W^T (+ bias)
// (+ add), with W (N, K) packed once per sequence (`pack_weight`).
//
// Why not at::mm: a step's product is small (B rows of a few hundred), so MKL's call overhead
// (more than the product itself at B = 1) and its generic code path on CPUs it does not tune for
// (AMD's) dominate. This kernel keeps a tile of R rows x C vectors of the output in registers and
// streams the packed weights once per row tile, so at B = 1 it runs at the speed the weights can
// be read from cache.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace rnnkit_gemm {

// A tile of kRows x kCols vectors of accumulators, with the weight vectors and a broadcast beside
// them, fits the register file: 29 of AVX-512's 32 registers (6 x 4), 15 of AVX2's 16 (6 x 2).
// The widest tile that fits keeps the most multiply-adds in flight per weight and input loaded
// (8 x 3 would fit too, but its 48 columns do not divide the usual widths). The loops over a
// tile are unrolled by pragma: left to GCC's heuristics, tiles of more than 16 accumulators keep
// them in memory. (docs/performance.md has the tile sizes' measurements.)
#if defined(__AVX512F__)
using fv = float __attribute__((vector_size(64)));  // one AVX-512 register
constexpr int64_t kRows = 6;
constexpr int64_t kCols = 4;
#else
using fv = float __attribute__((vector_size(32)));  // one AVX register (two SSE ones)
constexpr int64_t kRows = 6;
constexpr int64_t kCols = 2;
#endif
constexpr int64_t kLanes = sizeof(fv) / sizeof(float);
constexpr int64_t kSpan = kCols * kLanes;  // output columns of one tile

// Writes W (N, K) float32, any strides, packed at out as (J, K, kCols, kLanes), J = ceil(N /
// kSpan): tile j holds, for every k, W[j * kSpan + c * kLanes + l][k] (zeros past N), so that a
// tile's weights are one contiguous stream in the order the kernel reads them. Tiles in
// parallel, each written in order while its kSpan rows of W (columns of W^T) are read in step, so
// both stay in the L1 cache (a generic strided copy of W^T misses the cache on most elements).
inline void pack_into(const torch::Tensor& w, float* out) {
  const int64_t N = w.size(0), K = w.size(1), J = (N + kSpan - 1) / kSpan;
  const int64_t sn = w.stride(0), sk = w.stride(1);
  const float* src = w.data_ptr<float>();
  at::parallel_for(0, J, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t n0 = j * kSpan, cols = std::min(kSpan, N - n0);
      for (int64_t k = 0; k < K; ++k) {  // writes in order; reads the tile's rows of W in step
        float* packed_k = out + (j * K + k) * kSpan;
        const float* w_k = src + n0 * sn + k * sk;
        for (int64_t n = 0; n < cols; ++n) packed_k[n] = w_k[n * sn];
        std::fill(packed_k + cols, packed_k + kSpan, 0.0f);
      }
    }
  });
}

// W (N, K) float32 -> the packed (J, K, kCols, kLanes) of `pack_into`.
inline torch::Tensor pack_weight(const torch::Tensor& w) {
  const int64_t J = (w.size(0) + kSpan - 1) / kSpan;
  auto packed = at::empty({J, w.size(1), kCols, kLanes}, w.options());
  pack_into(w, packed.data_ptr<float>());
  return packed;
}

// One tile: rows [0, R) of a and out, columns [0, C * kLanes) from the packed tile at p (C <=
// kCols vectors of its kCols: a last tile of a narrow W computes only the vectors it stores), of
// which the first `cols` are stored. bias (per column) and add (per row, stride ld) may be
// null. With few rows, U partial sums over alternating k keep enough multiply-adds in flight
// (a chain of dependent ones waits 4 cycles each).
template <int R, int C>
inline void tile(const float* a, int64_t lda, const float* p, int64_t K, const float* bias,
                 const float* add, float* out, int64_t ld, int64_t cols) {
  constexpr int U = R * C >= 8 ? 1 : 8 / (R * C);
  fv acc[U][R][C] = {};
  int64_t k = 0;
  auto accumulate = [&](int u, int64_t kk) {  // acc[u] += a[:, kk] (x) W[:, kk]
    fv w[C];
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) std::memcpy(&w[c], p + (kk * kCols + c) * kLanes, sizeof(fv));
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      // a - 0 is a broadcast; fv{} + a would add first (-0 + 0 is +0) on the multiply-add ports
      const fv x = a[r * lda + kk] - fv{};
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[u][r][c] += x * w[c];
    }
  };
  for (; k + U <= K; k += U) {
    for (int u = 0; u < U; ++u) accumulate(u, k + u);
  }
  for (; k < K; ++k) accumulate(0, k);
  // A whole tile's epilogue in vectors, the same sums as the scalar one below (which, with its
  // per-element null checks, would cost a noticeable part of the tile's multiply-adds if run on
  // every tile).
  if (cols == C * kLanes) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        fv sum = acc[0][r][c], b = {}, x = {};
        for (int u = 1; u < U; ++u) sum += acc[u][r][c];
        if (bias) std::memcpy(&b, bias + c * kLanes, sizeof(fv));
        if (add) std::memcpy(&x, add + r * ld + c * kLanes, sizeof(fv));
        sum += b + x;
        std::memcpy(out + r * ld + c * kLanes, &sum, sizeof(fv));
      }
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    float row[C * kLanes];
    fv sum[C];
    for (int c = 0; c < C; ++c) {
      sum[c] = acc[0][r][c];
      for (int u = 1; u < U; ++u) sum[c] += acc[u][r][c];
    }
    std::memcpy(row, sum, sizeof(row));
    for (int64_t n = 0; n < cols; ++n) {
      row[n] += (bias ? bias[n] : 0.0f) + (add ? add[r * ld + n] : 0.0f);
    }
    std::memcpy(out + r * ld, row, cols * sizeof(float));
  }
}

// Calls f(std::integral_constant<int, n>) for 1 <= n <= N.
template <int N, typename F>
inline void with_constant(int64_t n, const F& f) {
  if constexpr (N == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    if (n == N) f(std::integral_constant<int, N>{});
    else with_constant<N - 1>(n, f);
  }
}

// Columns [tile_begin * kSpan, min(tile_end * kSpan, N)) of out (B, N) = a (B, K) @ W^T + bias
// (N, or null) + add (B, N, or null), with packed = pack_weight(W); a contiguous rows, add and out
// rows ld apart (ld >= N: one gate block of a wider row).
inline void gemm_tiles(const float* a, int64_t B, int64_t K, const float* packed, int64_t N,
                       int64_t tile_begin, int64_t tile_end, const float* bias, const float* add,
                       float* out, int64_t ld) {
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t n0 = t * kSpan, cols = std::min(kSpan, N - n0);
    const int64_t vectors = (cols + kLanes - 1) / kLanes;  // of the tile's kCols that hold columns
    const float* pt = packed + t * kCols * K * kLanes;
    const float* bt = bias ? bias + n0 : nullptr;
    for (int64_t b = 0; b < B; b += kRows) {
      const float* add_b = add ? add + b * ld + n0 : nullptr;
      with_constant<kRows>(std::min(kRows, B - b), [&](auto rows) {
        with_constant<kCols>(vectors, [&](auto vecs) {
          constexpr int R = decltype(rows)::value, C = decltype(vecs)::value;
          tile<R, C>(a + b * K, K, pt, K, bt, add_b, out + b * ld + n0, ld, cols);
        });
      });
    }
  }
}

// out (B, N) = a (B, K) @ W^T + bias (N, or null) + add (B, N, or null); a, add and out
// contiguous rows; packed = pack_weight(W). Column tiles run in parallel when the product is big
// enough to pay for waking the second thread.
inline void step_gemm(const float* a, int64_t B, int64_t K, const torch::Tensor& packed,
                      int64_t N, const float* bias, const float* add, float* out) {
  const int64_t tiles = packed.size(0);
  const int64_t grain = B * N * K < (1 << 17) ? tiles : 1;
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    gemm_tiles(a, B, K, packed.data_ptr<float>(), N, begin, end, bias, add, out, N);
  });
}

}  // namespace rnnkit_gemm
