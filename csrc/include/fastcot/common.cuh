// Device helpers shared by fastcot's kernels. Framework-free: CUDA headers only.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace fastcot {

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Every kernel does its arithmetic in fp32 and rounds once on the way out, so
// that results match the fp32 torch reference bit for bit.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);

template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Stores N elements with 16-byte transactions; the caller guarantees that
// `dst` is 16-byte aligned and that N * sizeof(T) is a multiple of 16.
template <typename T, int N>
__device__ __forceinline__ void store_vectorized(T* dst, const T (&values)[N]) {
  static_assert((N * sizeof(T)) % sizeof(uint4) == 0, "whole 16-byte chunks only");
  constexpr int kChunks = N * sizeof(T) / sizeof(uint4);
  union {
    T elements[N];
    uint4 chunks[kChunks];
  } packed;
#pragma unroll
  for (int i = 0; i < N; ++i) packed.elements[i] = values[i];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) reinterpret_cast<uint4*>(dst)[i] = packed.chunks[i];
}

}  // namespace fastcot
