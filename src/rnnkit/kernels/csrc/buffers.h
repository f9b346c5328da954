// Memory of the time loops: their big buffers from a pool kept between calls (`buffer`), and the
// opt-in tuning of glibc's malloc for the whole process (`tune_malloc`). Part of the one
// translation unit fused.cpp.
#pragma once

#include <torch/extension.h>

#include <malloc.h>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "simd.h"

using torch::Tensor;

namespace {

using namespace rnnkit_simd;

// The loops' big buffers (states, caches, gradients: up to hundreds of MB a sequence) come from a
// pool that keeps them between calls. glibc's malloc gives a buffer above its mmap threshold
// (32 MiB at most, `tune_malloc`) fresh pages on every call and returns them on free, so each of
// its 4 KiB pages is faulted in again on every call (on a virtual machine, a sizeable share of a
// loop's time). A pooled block is faulted in once and then reused by later calls asking for at
// most its size (and at least 4/5 of it). The pool keeps at most kPoolLimit bytes of free
// blocks, freeing the oldest beyond; RNNKIT_MALLOC=default turns it off with the malloc settings
// (`set_pooled`).
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

}  // namespace

// glibc's malloc hands buffers from 128 KiB up as fresh pages from the kernel (mmap) and gives
// freed heap memory back at once (trim at 128 KiB); the loops' buffers (states, caches,
// gradients: megabytes per sequence) then cost a page fault per 4 KiB on every call, which on a
// virtual machine can cost as much as the loop's arithmetic. Buffers up to 32 MiB are taken
// from the heap instead, and up to 64 MiB of freed memory stays there for the next sequence.
// This changes the whole process, so it runs only when the process opts in (`tune_process` in
// fused.py). Returns whether the allocator took the settings (false off glibc).
bool tune_malloc() {
#ifdef __GLIBC__
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 64 << 20) == 1;
#else
  return false;
#endif
}
