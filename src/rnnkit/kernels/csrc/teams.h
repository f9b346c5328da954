// The threads of the time loops: a team that keeps its share of a sequence (some of its rows, or
// some of its units) from the first step to the last (`on_team`), and `for_rows` for the loops
// without a team. Part of the one translation unit fused.cpp.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
#include <algorithm>
#include <cstdint>

#include "simd.h"
#include "step_gemm.h"

using torch::Tensor;

namespace {

using namespace rnnkit_simd;

// Run `body(b)` for every batch row, in parallel when the rows are many.
template <typename F>
void for_rows(int64_t rows, int64_t row_size, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 1024 / std::max<int64_t>(row_size, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
    streamed_stores_done();
  });
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
// batch. Every thread of such a team reads all of the weights at every step, and cores that
// stream one shared copy from their caches run the step products slower than with a copy each,
// while the copy, made once per sequence, costs little against the loop.
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
// the next product reads every unit: once W_hh outgrows a core's cache, reading only a part of
// it beats the barrier saved.
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

}  // namespace
