// Registering the extensions' functions as the CPU kernels of the rnnkit:: operators that
// rnnkit/kernels/ops.py declares. Autograd is outside (rnnkit's autograd Functions and the
// operators' registered autograd), so a kernel runs with gradient recording off: the ATen calls
// inside it (products into preallocated outputs) must not record, whatever the caller's mode.
#pragma once

#include <torch/library.h>

#include <utility>

namespace rnnkit_ops {

template <auto F>
struct WithoutGrad;

template <typename R, typename... Args, R (*F)(Args...)>
struct WithoutGrad<F> {
  static R call(Args... args) {
    at::NoGradGuard no_grad;
    return F(std::forward<Args>(args)...);
  }
};

}  // namespace rnnkit_ops

// m.impl(NAME, kernel) with gradient recording off inside the kernel
#define RNNKIT_IMPL(m, name) m.impl(#name, &rnnkit_ops::WithoutGrad<&name>::call)
