// The per-step matrix product of the time loops, float32: out (B, N) = a (B, K) @ W^T (+ bias)
// (+ add), with W (N, K) packed once per sequence (`pack_weight`).
//
// Why not at::mm: a step's product is small (B rows of a few hundred), so MKL's call overhead
// (a few microseconds, more than the product at B = 1) and its generic code path on CPUs it does
// not tune for (AMD's: half of oneDNN's speed at these shapes) dominate. This kernel keeps a tile
// of R rows x C vectors of the output in registers and streams the packed weights once per row
// tile, so at B = 1 it runs at the speed the weights can be read from cache.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace rnnkit_gemm {

// A tile of kRows x kCols vectors of accumulators, with the kCols weight vectors and a broadcast
// beside them, fits the register file: 21 of AVX-512's 32, 11 of AVX2's 16.
#if defined(__AVX512F__)
using fv = float __attribute__((vector_size(64)));  // one AVX-512 register
constexpr int64_t kCols = 4;                        // vectors per output tile
#else
using fv = float __attribute__((vector_size(32)));  // one AVX register (two SSE ones)
constexpr int64_t kCols = 2;
#endif
constexpr int64_t kLanes = sizeof(fv) / sizeof(float);
constexpr int64_t kRows = 4;  // rows per output tile

// W (N, K), any strides -> (J, K, kLanes) with J a multiple of kCols: block j holds, for every k,
// W[j * kLanes + l][k] for l < kLanes (zeros past N).
inline torch::Tensor pack_weight(const torch::Tensor& w) {
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t J = (N + kLanes * kCols - 1) / (kLanes * kCols) * kCols;
  auto padded = at::zeros({J * kLanes, K}, w.options());
  padded.narrow(0, 0, N).copy_(w);
  return padded.view({J, kLanes, K}).permute({0, 2, 1}).contiguous();
}

// One tile: rows [0, R) of a and out, columns [0, kCols * kLanes) from the packed blocks at p,
// of which the first `cols` are stored. bias (per column) and add (per row, stride ld) may be
// null. With few rows, U partial sums over alternating k keep enough multiply-adds in flight
// (a chain of dependent ones waits 4 cycles each).
template <int R>
inline void tile(const float* a, int64_t lda, const float* p, int64_t K, const float* bias,
                 const float* add, float* out, int64_t ld, int64_t cols) {
  constexpr int U = R == 1 ? 4 / (kCols / 2) : R == 2 ? 2 / (kCols / 2) : 1;
  fv acc[U][R][kCols] = {};
  int64_t k = 0;
  auto accumulate = [&](int u, int64_t k) {
    fv w[kCols];
    for (int64_t c = 0; c < kCols; ++c) std::memcpy(&w[c], p + (c * K + k) * kLanes, sizeof(fv));
    for (int r = 0; r < R; ++r) {
      const fv x = fv{} + a[r * lda + k];
      for (int64_t c = 0; c < kCols; ++c) acc[u][r][c] += x * w[c];
    }
  };
  for (; k + U <= K; k += U) {
    for (int u = 0; u < U; ++u) accumulate(u, k + u);
  }
  for (; k < K; ++k) accumulate(0, k);
  for (int r = 0; r < R; ++r) {
    float row[kCols * kLanes];
    fv sum[kCols];
    for (int64_t c = 0; c < kCols; ++c) {
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

// out (B, N) = a (B, K) @ W^T + bias (N, or null) + add (B, N, or null); a, add and out
// contiguous rows; packed = pack_weight(W). Column tiles run in parallel when the product is big
// enough to pay for waking the second thread.
inline void step_gemm(const float* a, int64_t B, int64_t K, const torch::Tensor& packed,
                      int64_t N, const float* bias, const float* add, float* out) {
  const float* p = packed.data_ptr<float>();
  const int64_t tiles = packed.size(0) / kCols, span = kCols * kLanes;
  const int64_t grain = B * N * K < (1 << 16) ? tiles : 1;
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * span, cols = std::min(span, N - n0);
      const float* pt = p + t * kCols * K * kLanes;
      const float* bt = bias ? bias + n0 : nullptr;
      for (int64_t b = 0; b < B; b += kRows) {
        const float* ab = a + b * K;
        const float* add_b = add ? add + b * N + n0 : nullptr;
        float* ob = out + b * N + n0;
        switch (std::min(kRows, B - b)) {
          case 4: tile<4>(ab, K, pt, K, bt, add_b, ob, N, cols); break;
          case 3: tile<3>(ab, K, pt, K, bt, add_b, ob, N, cols); break;
          case 2: tile<2>(ab, K, pt, K, bt, add_b, ob, N, cols); break;
          default: tile<1>(ab, K, pt, K, bt, add_b, ob, N, cols);
        }
      }
    }
  });
}

}  // namespace rnnkit_gemm
