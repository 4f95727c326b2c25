// The SIMT emulator's CUDA for g++. Force-included (g++ -include simt.h) ahead of every CUDA
// source the emulator compiles, after tools/simt/translate.py has turned launches, __shared__
// declarations and __launch_bounds__ into the calls declared here.
//
// NVIDIA's own headers, in host mode, give the vector types, half, __nv_bfloat16,
// __nv_fp8_e4m3 and their conversions (the very code nvcc compiles for the host). This header
// adds what host mode lacks: the built-in variables, barriers, warp collectives, __ldg,
// atomics, the integer and fast-math intrinsics, and the launch itself. Every CUDA thread is a
// fiber of tools/simt/runtime.cpp; see docs/emulator.md for what that proves and what not.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

namespace simt {

using Where = std::source_location;

struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned linear;  // thread index within the block
};

// The fiber that is running on this OS thread (set by the scheduler before each resume).
extern thread_local ThreadState* t_current __attribute__((tls_model("initial-exec")));

// ---- barriers and warp collectives (runtime.cpp) ---------------------------------------------

enum class BarrierOp : int { kSync, kCount, kAnd, kOr };
int block_barrier(BarrierOp op, int predicate, const Where& where);

enum class WarpOp : int {
  kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kMatchAny, kMatchAll,
  kReduceAddU, kReduceMinU, kReduceMaxU, kReduceMinS, kReduceMaxS, kReduceAnd, kReduceOr, kReduceXor,
};
// Every lane in `mask` posts `value`; returns this lane's result once all of them arrived at
// the same call site (`lane_arg` and `width` as the shuffles take them). Checked: the caller is
// in `mask`, every lane in `mask` is live, lanes that meet have the same site and mask.
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int lane_arg, int width, const Where& where);
unsigned live_lanes();
void yield_fiber();  // let the other threads of the block run (__nanosleep)

// ---- checks and failures -----------------------------------------------------------------------

// Ends the launch with cudaErrorLaunchFailure and `what` (with kernel, block and thread) as the
// emulator's failure message; the other threads of the block never run again.
[[noreturn]] void fail(const char* what, const Where& where);
void check_launch_bounds(unsigned max_threads, const Where& where = Where::current());

template <typename T>
inline void check_aligned(const T* p, const Where& where) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) fail("misaligned address (a GPU faults on it)", where);
}

// ---- shared memory -----------------------------------------------------------------------------

void* shared_variable(const void* key, size_t bytes, size_t align, const char* name, const Where& where);
void* dynamic_shared_memory(size_t align);

template <typename T, size_t Align>
T& static_shared(const void* key, const char* name, const Where& where = Where::current()) {
  return *static_cast<T*>(shared_variable(key, sizeof(T), Align, name, where));
}
template <typename T, size_t Align>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_memory(Align));
}

// ---- launches ----------------------------------------------------------------------------------

struct LaunchSite {
  const char* kernel;  // the kernel expression as written
  Where where;
};
#define SIMT_LAUNCH_SITE(text) (::simt::LaunchSite{text, std::source_location::current()})

struct KernelLaunch {
  const void* kernel;              // the kernel function, for its name and attributes
  void (*run)(const void* state);  // runs the kernel in the calling fiber
  const void* state;
  LaunchSite site;
  dim3 grid;
  dim3 block;
  size_t dynamic_smem;
  bool programmatic = false;  // cudaLaunchAttributeProgrammaticStreamSerialization (PDL)
};
// Runs the launch to its end; returns its error, which also goes to cudaGetLastError.
cudaError_t launch_kernel(const KernelLaunch& launch);

template <typename... P>
class Launcher {
 public:
  Launcher(LaunchSite site, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
           bool programmatic = false)
      : site_(site), kernel_(kernel), grid_(grid), block_(block), smem_(smem), programmatic_(programmatic) {}

  template <typename... A>
  cudaError_t operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    // Converted once, like the kernel parameter buffer; each thread gets its own copies.
    using Params = std::tuple<std::decay_t<P>...>;
    const Params params(std::forward<A>(args)...);
    struct State {
      void (*kernel)(P...);
      const Params* params;
    } state{kernel_, &params};
    auto run = [](const void* s) {
      const State& st = *static_cast<const State*>(s);
      std::apply(st.kernel, *st.params);
    };
    return launch_kernel(
        KernelLaunch{reinterpret_cast<const void*>(kernel_), run, &state, site_, grid_, block_, smem_, programmatic_});
  }

 private:
  LaunchSite site_;
  void (*kernel_)(P...);
  dim3 grid_, block_;
  size_t smem_;
  bool programmatic_;
};

template <typename... P>
Launcher<P...> launch(LaunchSite site, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0,
                      cudaStream_t stream = nullptr) {
  return Launcher<P...>(site, kernel, grid, block, smem, stream);
}

// cudaLaunchKernelEx(config, kernel, args...) as translate.py rewrites it. Launches run one after
// another here, so programmatic stream serialization (PDL) changes nothing but the launch log;
// any other attribute is refused (cudaErrorNotSupported) rather than silently ignored.
cudaError_t refuse_launch(LaunchSite site, const void* kernel, dim3 grid, dim3 block, size_t smem, cudaError_t error);

template <typename... P, typename... A>
cudaError_t launch_ex(LaunchSite site, const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
  bool programmatic = false;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const cudaLaunchAttribute& attribute = config->attrs[i];
    if (attribute.id != cudaLaunchAttributeProgrammaticStreamSerialization) {
      return refuse_launch(site, reinterpret_cast<const void*>(kernel), config->gridDim, config->blockDim,
                           config->dynamicSmemBytes, cudaErrorNotSupported);
    }
    programmatic = attribute.val.programmaticStreamSerializationAllowed != 0;
  }
  return Launcher<P...>(site, kernel, config->gridDim, config->blockDim, config->dynamicSmemBytes, config->stream,
                        programmatic)(std::forward<A>(args)...);
}

// ---- helpers of the collectives ------------------------------------------------------------

template <typename T>
uint64_t to_bits(const T& v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp collectives move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const void*>(&v), sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(static_cast<void*>(&v), &bits, sizeof(T));
  return v;
}

template <typename T>
T shuffle(WarpOp op, unsigned mask, const T& var, int lane_arg, int width, const Where& where) {
  return from_bits<T>(warp_collective(op, mask, to_bits(var), lane_arg, width, where));
}

}  // namespace simt

// cuda_runtime.h's typed overload, which it declares for nvcc only.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// ---- execution-space keywords and built-in variables -------------------------------------------

#undef __launch_bounds__
#define __launch_bounds__(...)  // translate.py turns it into check_launch_bounds
#undef __shared__
#define __shared__ __shared___must_be_translated_by_tools_simt_translate_py
#undef __constant__
#define __constant__  // read-only global memory: an ordinary variable here

#define threadIdx (::simt::t_current->thread_idx)
#define blockIdx (::simt::t_current->block_idx)
#define blockDim (::simt::t_current->block_dim)
#define gridDim (::simt::t_current->grid_dim)
#ifndef warpSize
#define warpSize 32
#endif

// ---- barriers ----------------------------------------------------------------------------------

inline void __syncthreads(const simt::Where& w = simt::Where::current()) {
  simt::block_barrier(simt::BarrierOp::kSync, 0, w);
}
inline int __syncthreads_count(int p, const simt::Where& w = simt::Where::current()) {
  return simt::block_barrier(simt::BarrierOp::kCount, p != 0, w);
}
inline int __syncthreads_and(int p, const simt::Where& w = simt::Where::current()) {
  return simt::block_barrier(simt::BarrierOp::kAnd, p != 0, w);
}
inline int __syncthreads_or(int p, const simt::Where& w = simt::Where::current()) {
  return simt::block_barrier(simt::BarrierOp::kOr, p != 0, w);
}
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, const simt::Where& w = simt::Where::current()) {
  simt::warp_collective(simt::WarpOp::kSync, mask, 0, 0, 32, w);
}
// The live lanes of the warp (a GPU reports the lanes converged at this instruction, which
// code must not rely on).
inline unsigned __activemask() { return simt::live_lanes(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { simt::yield_fiber(); }

// ---- warp collectives --------------------------------------------------------------------------

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const simt::Where& w = simt::Where::current()) {
  return simt::shuffle(simt::WarpOp::kShflIdx, mask, var, src_lane, width, w);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const simt::Where& w = simt::Where::current()) {
  return simt::shuffle(simt::WarpOp::kShflUp, mask, var, int(delta), width, w);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const simt::Where& w = simt::Where::current()) {
  return simt::shuffle(simt::WarpOp::kShflDown, mask, var, int(delta), width, w);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const simt::Where& w = simt::Where::current()) {
  return simt::shuffle(simt::WarpOp::kShflXor, mask, var, lane_mask, width, w);
}
inline unsigned __ballot_sync(unsigned mask, int p, const simt::Where& w = simt::Where::current()) {
  return unsigned(simt::warp_collective(simt::WarpOp::kBallot, mask, p != 0, 0, 32, w));
}
inline int __any_sync(unsigned mask, int p, const simt::Where& w = simt::Where::current()) {
  return __ballot_sync(mask, p, w) != 0;
}
inline int __all_sync(unsigned mask, int p, const simt::Where& w = simt::Where::current()) {
  return __ballot_sync(mask, p, w) == mask;
}
inline int __uni_sync(unsigned mask, int p, const simt::Where& w = simt::Where::current()) {
  const unsigned b = __ballot_sync(mask, p, w);
  return b == 0 || b == mask;
}
template <typename T>
unsigned __match_any_sync(unsigned mask, T value, const simt::Where& w = simt::Where::current()) {
  return unsigned(simt::warp_collective(simt::WarpOp::kMatchAny, mask, simt::to_bits(value), 0, 32, w));
}
template <typename T>
unsigned __match_all_sync(unsigned mask, T value, int* pred, const simt::Where& w = simt::Where::current()) {
  const unsigned r = unsigned(simt::warp_collective(simt::WarpOp::kMatchAll, mask, simt::to_bits(value), 0, 32, w));
  *pred = r != 0;
  return r;
}
#define SIMT_REDUCE(name, type, op)                                                                    \
  inline type name(unsigned mask, type value, const simt::Where& w = simt::Where::current()) {           \
    return type(simt::warp_collective(simt::WarpOp::op, mask, uint64_t(uint32_t(value)), 0, 32, w));     \
  }
SIMT_REDUCE(__reduce_add_sync, unsigned, kReduceAddU)
SIMT_REDUCE(__reduce_add_sync, int, kReduceAddU)
SIMT_REDUCE(__reduce_min_sync, unsigned, kReduceMinU)
SIMT_REDUCE(__reduce_min_sync, int, kReduceMinS)
SIMT_REDUCE(__reduce_max_sync, unsigned, kReduceMaxU)
SIMT_REDUCE(__reduce_max_sync, int, kReduceMaxS)
SIMT_REDUCE(__reduce_and_sync, unsigned, kReduceAnd)
SIMT_REDUCE(__reduce_or_sync, unsigned, kReduceOr)
SIMT_REDUCE(__reduce_xor_sync, unsigned, kReduceXor)
#undef SIMT_REDUCE

// ---- loads and stores with cache hints: plain accesses here, alignment checked -------------------

#define SIMT_LOAD(name)                                                                 \
  template <typename T>                                                                 \
  inline T name(const T* p, const simt::Where& w = simt::Where::current()) {            \
    simt::check_aligned(p, w);                                                          \
    return *p;                                                                          \
  }
SIMT_LOAD(__ldg)
SIMT_LOAD(__ldca)
SIMT_LOAD(__ldcg)
SIMT_LOAD(__ldcs)
SIMT_LOAD(__ldlu)
SIMT_LOAD(__ldcv)
#undef SIMT_LOAD
#define SIMT_STORE(name)                                                                \
  template <typename T>                                                                 \
  inline void name(T* p, T v, const simt::Where& w = simt::Where::current()) {          \
    simt::check_aligned(p, w);                                                          \
    *p = v;                                                                             \
  }
SIMT_STORE(__stwb)
SIMT_STORE(__stcg)
SIMT_STORE(__stcs)
SIMT_STORE(__stwt)
#undef SIMT_STORE

#include "simt_intrinsics.h"
