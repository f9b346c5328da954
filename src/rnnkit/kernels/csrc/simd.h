// SIMD helpers shared by fused.cpp (the time loops and their row passes) and scan.cpp (minGRU /
// minLSTM scans).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rnnkit_simd {

// ---- SIMD lanes. ------------------------------------------------------------------------------
//
// float32 runs kWidth lanes at a time as a GCC/Clang vector type (arithmetic, comparisons and ?:
// act lane-wise): 16, one AVX-512 register, where the -march=native build that fused.py tries
// first has AVX-512; else 8, one AVX register (two SSE ones in the generic build). Plain loops
// over j would leave the vectorising to GCC, which gives up on the exp polynomial below as soon
// as it turns a clamp into a branch (GCC 12 does). float64 (gradcheck, tests) runs one lane at a
// time with the exact std:: functions.
#if defined(__AVX512F__)
constexpr int64_t kWidth = 16;
#else
constexpr int64_t kWidth = 8;
#endif
using fv = float __attribute__((vector_size(4 * kWidth)));
using iv = int32_t __attribute__((vector_size(4 * kWidth)));
using uv = uint32_t __attribute__((vector_size(4 * kWidth)));

template <typename T> struct Lanes;  // V: what one iteration handles; load/store n <= width
template <> struct Lanes<double> {
  using V = double;
  static constexpr int64_t width = 1;
  static V load(const double* p, int64_t) { return *p; }
  static void store(double* p, V v, int64_t) { *p = v; }
  static void stream(double* p, V v, int64_t) { *p = v; }
};
template <> struct Lanes<float> {
  using V = fv;
  static constexpr int64_t width = kWidth;
  static V load(const float* p, int64_t n) {  // the row's tail (n < width) padded with zeros
    V v = {};
    if (n == width) std::memcpy(&v, p, sizeof(V));  // one unaligned vector load
    else std::memcpy(&v, p, n * sizeof(float));
    return v;
  }
  static void store(float* p, V v, int64_t n) {
    if (n == width) std::memcpy(p, &v, sizeof(V));
    else std::memcpy(p, &v, n * sizeof(float));
  }
  // A store for what the backward reads (a loop's cache) and no step reads again: a whole,
  // aligned vector goes straight to memory (a non-temporal store), neither reading the line
  // first nor pushing the step's operands out of the caches. A thread calls
  // `streamed_stores_done` before another thread reads them.
  static void stream(float* p, V v, int64_t n) {
    if (n == width && reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0) {
#if defined(__AVX512F__)
      return _mm512_stream_ps(p, std::bit_cast<__m512>(v));
#elif defined(__AVX__)
      return _mm256_stream_ps(p, std::bit_cast<__m256>(v));
#endif
    }
    store(p, v, n);
  }
};

// Makes this thread's non-temporal stores (`Lanes::stream`) visible to the other threads.
inline void streamed_stores_done() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

// c - 0 is c for every float (c + 0 is not: -0 + 0 = +0), so GCC emits a bare broadcast; fv{} + c
// costs an add before it, on the ports the multiply-adds need.
inline fv splat(float c) { return c - fv{}; }
inline fv select(iv mask, fv a, fv b) { return mask ? a : b; }
inline fv abs_of(fv x) { return std::bit_cast<fv>(std::bit_cast<uv>(x) & 0x7fffffffu); }
inline fv with_sign_of(fv magnitude, fv x) {  // copysign
  return std::bit_cast<fv>(std::bit_cast<uv>(magnitude) | (std::bit_cast<uv>(x) & 0x80000000u));
}

// ---- Pointwise math: float32 approximations in kWidth lanes, float64 exact. ------------------

// e^x, after Cephes expf.c (S. L. Moshier, Cephes Math Library; also exp256_ps of avx_mathfun):
// x = n ln2 + r with n = floor(x / ln2 + 0.5), |r| <= ln2 / 2 (ln2 split in two constants so
// n ln2 is exact); e^r = 1 + r + r^2 P(r), P of degree 5 with Cephes' coefficients; 2^n built in
// the exponent bits. Cephes states a peak relative error of 1.7e-7; measured 8.5e-8 over every
// float in [-87, 88] against double. x is clamped to [-87, 88] first, so 2^n is a normal float
// and no inf or denormal comes out (e^88 = 1.7e38, e^-87 = 1.6e-38); sigmoid and tanh saturate
// long before. NaN passes the clamp (comparisons with NaN are false) and comes out NaN.
[[gnu::always_inline]] inline fv vexp(fv x) {
  x = select(x < -87.0f, splat(-87.0f), x);
  x = select(x > 88.0f, splat(88.0f), x);
  // n = k - 128, k the truncation of a positive number (x / ln2 + 128.5 >= 3); k - 1 = n + 127
  // is 2^n's biased exponent.
  const iv k = __builtin_convertvector(x * 1.44269504088896341f + 128.5f, iv);
  const fv n = __builtin_convertvector(k, fv) - 128.0f;
  const fv r = x - n * 0.693359375f - n * -2.12194440e-4f;
  fv p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<fv>((std::bit_cast<uv>(k) - 1u) << 23);
}

// 1 / (1 + e^-x): vexp's error plus two roundings, measured 1.5e-7 relative (every float in
// [-87, 100]); 1 above x = 17, e^-87 ~ 0 below x = -87.
[[gnu::always_inline]] inline fv vsigmoid(fv x) { return 1.0f / (1.0f + vexp(-x)); }
inline double vsigmoid(double x) { return 1 / (1 + std::exp(-x)); }

// tanh, after Cephes tanhf.c: for |x| < 0.625 the odd polynomial x + x^3 P(x^2) (Cephes'
// coefficients; no cancellation near 0), else 1 - 2 / (e^2|x| + 1) with the sign of x (|tanh| >
// 0.55 there, so the subtraction loses at most a bit). Both are computed, one selected per lane.
// |x| is clamped to 10, where tanh rounds to 1 in float (at 9 it does not yet). Cephes states
// 1.3e-7 peak relative error; measured 1.4e-7 relative, at most 1.2 ulp, over [-100, 100].
[[gnu::always_inline]] inline fv vtanh(fv x) {
  fv a = abs_of(x);
  a = select(a > 10.0f, splat(10.0f), a);
  const fv s = x * x;
  fv p = splat(-5.70498872745e-3f);
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const fv small = x + x * s * p;
  const fv big = with_sign_of(1.0f - 2.0f / (vexp(a + a) + 1.0f), x);
  return select(a < 0.625f, small, big);
}
inline double vtanh(double x) { return std::tanh(x); }

inline double select(bool mask, double a, double b) { return mask ? a : b; }
inline double abs_of(double x) { return std::abs(x); }
inline double vexp(double x) { return std::exp(x); }

// for (j = 0; j < H; j += width) body(j, n), with n = min(width, H - j) lanes in play; n is the
// constant `width` but for the tail, so the loads and stores of the main loop are whole vectors.
template <typename T, typename F>
inline void over_lanes(int64_t H, const F& body) {
  constexpr int64_t w = Lanes<T>::width;
  int64_t j = 0;
  for (; j + w <= H; j += w) body(j, w);
  if (j < H) body(j, H - j);
}

// The units [begin, end) of a row of H (a thread's slice of a step; all H from a plain H).
struct Units {
  int64_t H, begin, end;
  Units(int64_t h) : H(h), begin(0), end(h) {}  // NOLINT: a plain H means every unit
  Units(int64_t h, int64_t b, int64_t e) : H(h), begin(b), end(e) {}
};

template <typename T, typename F>
inline void over_lanes(Units u, const F& body) {
  over_lanes<T>(u.end - u.begin, [&](int64_t j, int64_t n) { body(u.begin + j, n); });
}

}  // namespace rnnkit_simd
