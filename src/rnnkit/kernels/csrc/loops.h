// The time loops of the classic cells.
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
//
// Part of the one translation unit fused.cpp.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "products.h"
#include "simd.h"
#include "step_gemm.h"
#include "teams.h"

using torch::Tensor;

namespace {

using namespace rnnkit_simd;

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
// row pass has them in cache (a separate sum afterwards would read the whole array from memory
// again); elsewhere (float64, RNNKIT_GEMM=aten) after each step's rows.
using Summed = std::vector<std::pair<Tensor, Tensor>>;

template <typename S, typename Row>
Tensor backward_loop(const Tensor& grad_pre, const Tensor& w_hh, const Tensor& rec_mask,
                     Tensor dh, bool whole_rows, const Row& row, Summed summed = {}) {
  const int64_t T = grad_pre.size(0), B = grad_pre.size(1), H = dh.size(1);
  const int64_t G = w_hh.size(0) / H;
  const bool masked = rec_mask.numel() > 0;
  auto direct = at::empty_like(dh);
  std::erase_if(summed,
                [](const auto& pair) { return !pair.second.defined() || !pair.second.numel(); });
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
