// The matrix products of the time loops: a step's product on rnnkit's packed kernel (step_gemm.h),
// the big products outside the loop on oneDNN's matmul, float64 and RNNKIT_GEMM=aten on at::mm.
// Part of the one translation unit fused.cpp.
#pragma once

#include <torch/extension.h>

#include <cstdint>

#include "buffers.h"
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

// float32: a step's product goes to rnnkit's own kernel (step_gemm.h) with the weights packed once
// per sequence: a step's product is small, so neither library's call overhead nor its generic
// code path should weigh on it. The big products outside the loop (`matmul`: the input
// projection, the weight gradients) go to oneDNN's matmul (torch's at::native::mkldnn_matmul,
// the kernels behind its fused LSTM), not at::mm: at::mm calls MKL, which runs its generic code
// on the CPUs it does not tune for (AMD's). float64, and every product after set_tuned(false)
// (RNNKIT_GEMM=aten), takes at::mm. (docs/performance.md has the measurements.)
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
// kernel, as a tensor only when at::mm needs one (slicing a tensor costs a sizeable part of a
// small step).
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

}  // namespace
