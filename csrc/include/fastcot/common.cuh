// Device helpers shared by fastcot's kernels. Framework-free: CUDA headers only.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// Element codes as in fastcot/api.h (DType), repeated here so device code needs no host header.
constexpr int kCodeFloat32 = 0;
constexpr int kCodeFloat16 = 1;
constexpr int kCodeBFloat16 = 2;

// One element of a tensor whose float dtype is only known at run time. Used off the hot
// loops (scales, biases, query and output rows), where a uniform branch costs nothing.
__device__ __forceinline__ float load_float(const void* ptr, int code, int64_t index) {
  if (code == kCodeFloat32) return __ldg(static_cast<const float*>(ptr) + index);
  if (code == kCodeFloat16) return __half2float(__ldg(static_cast<const __half*>(ptr) + index));
  return __bfloat162float(__ldg(static_cast<const __nv_bfloat16*>(ptr) + index));
}

__device__ __forceinline__ void store_float(void* ptr, int code, int64_t index, float value) {
  if (code == kCodeFloat32) {
    static_cast<float*>(ptr)[index] = value;
  } else if (code == kCodeFloat16) {
    static_cast<__half*>(ptr)[index] = __float2half_rn(value);
  } else {
    static_cast<__nv_bfloat16*>(ptr)[index] = __float2bfloat16_rn(value);
  }
}

// Eight consecutive elements as fp32 with 16-byte loads through the read-only path; `src`
// must be 16-byte aligned.
__device__ __forceinline__ void load8_as_float(const float* src, float (&dst)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(src));
  const float4 b = __ldg(reinterpret_cast<const float4*>(src) + 1);
  dst[0] = a.x; dst[1] = a.y; dst[2] = a.z; dst[3] = a.w;
  dst[4] = b.x; dst[5] = b.y; dst[6] = b.z; dst[7] = b.w;
}

// Widening of 8 packed 16-bit elements (in memory order) to fp32. Host-callable so tests can
// check them without a GPU.
__host__ __device__ __forceinline__ float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

__host__ __device__ __forceinline__ void unpack8_as_float(const uint4 raw, const __half*, float (&dst)[8]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 pair;
    memcpy(&pair, &words[i], sizeof(pair));
    const float2 f = __half22float2(pair);
    dst[2 * i] = f.x;
    dst[2 * i + 1] = f.y;
  }
}

__host__ __device__ __forceinline__ void unpack8_as_float(const uint4 raw, const __nv_bfloat16*,
                                                          float (&dst)[8]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // bf16 is the top half of an fp32: widening is a shift, exact.
    dst[2 * i] = bits_to_float(words[i] << 16);
    dst[2 * i + 1] = bits_to_float(words[i] & 0xFFFF0000u);
  }
}

template <typename T>
__device__ __forceinline__ void load8_as_float(const T* src, float (&dst)[8]) {
  unpack8_as_float(__ldg(reinterpret_cast<const uint4*>(src)), src, dst);
}


// ---- PTX helpers: the asm for nvcc's device pass, a portable fallback for the host and the
// emulator (same values; only the GPU's timing and the tensor core's rounding differ).

// (a & b) | c in one LOP3 (the compiler, given two immediates, emits two).
__host__ __device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  return (a & b) | c;
#endif
}

// A 16-byte streaming load through the read-only path that does not allocate in L1, so that
// weights read once do not evict the activations every block re-reads.
__device__ __forceinline__ uint4 ldg_stream(const uint4* ptr) {
#if defined(__CUDA_ARCH__)
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
#else
  return __ldg(ptr);
#endif
}

// Element e (0 low, 1 high) of a packed pair of 16-bit floats, as fp32 (fallback helpers).
template <typename T>
__host__ __device__ __forceinline__ float pair_element(uint32_t pair, int e) {
  const uint16_t bits = static_cast<uint16_t>(e == 0 ? pair : pair >> 16);
  if constexpr (std::is_same<T, __half>::value) {
    __half h;
    memcpy(&h, &bits, sizeof(h));
    return __half2float(h);
  } else {
    return bits_to_float(uint32_t(bits) << 16);  // bf16: the top half of an fp32
  }
}

// D = A * B + C for one warp, m16n8k16, A row-major and B column-major 16-bit (T = __half or
// __nv_bfloat16), fp32 accumulators. Fragments as PTX documents them, with g = lane / 4 and
// c = lane % 4: a[0] holds A[g][2c..2c+1], a[1] A[g+8][2c..2c+1], a[2] A[g][2c+8..2c+9],
// a[3] A[g+8][2c+8..2c+9]; b[0] holds B[2c..2c+1][g], b[1] B[2c+8..2c+9][g]; d[0..1] hold
// D[g][2c..2c+1], d[2..3] D[g+8][2c..2c+1]. Every lane of the warp must call it together.
// The host fallback gathers the fragments with shuffles and sums in fp32 in k order (the
// tensor core's own summation order and rounding are the GPU's).
template <typename T>
__device__ __forceinline__ void mma_16816_emulated(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  uint32_t rows[4][4];     // [source lane c'][register]: A rows g and g + 8
  uint32_t cols[2][4][2];  // [column 2c + j][source lane c'][register]
  for (int src = 0; src < 4; ++src) {
    for (int r = 0; r < 4; ++r) rows[src][r] = __shfl_sync(0xFFFFFFFFu, a[r], g * 4 + src);
    for (int j = 0; j < 2; ++j) {
      for (int r = 0; r < 2; ++r) cols[j][src][r] = __shfl_sync(0xFFFFFFFFu, b[r], (2 * c + j) * 4 + src);
    }
  }
  for (int i = 0; i < 4; ++i) {
    const int upper = i / 2, j = i % 2;  // row g + 8 * upper, column 2c + j
    float sum = d[i];
    for (int k = 0; k < 16; ++k) {
      const int src = (k % 8) / 2, hi = k / 8, e = k % 2;
      sum += pair_element<T>(rows[src][upper + 2 * hi], e) * pair_element<T>(cols[j][src][hi], e);
    }
    d[i] = sum;
  }
}

__device__ __forceinline__ void mma_16816_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  mma_16816_emulated<__half>(d, a, b);
#endif
}

__device__ __forceinline__ void mma_16816_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  mma_16816_emulated<__nv_bfloat16>(d, a, b);
#endif
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __half>::value) {
    mma_16816_f16(d, a, b);
  } else {
    mma_16816_bf16(d, a, b);
  }
}

// ---- Asynchronous global -> shared copies (cp.async, sm_80+). A thread that copies into a
// shared slot and later reads the same slot itself needs no barrier: async_copy_wait makes
// its own copies visible to it. The fallback copies at once, so the waits have nothing to do.

// 16 bytes from global to shared, cached in L2 only (.cg): streamed weights do not evict the
// activations from L1. Both addresses 16-byte aligned.
__device__ __forceinline__ void async_copy16(void* shared_dst, const void* global_src) {
#if defined(__CUDA_ARCH__)
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(global_src) : "memory");
#else
  memcpy(shared_dst, global_src, 16);
#endif
}

// Closes the group of copies this thread issued since the last commit (an empty group is fine).
__device__ __forceinline__ void async_copy_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;" ::: "memory");
#else
  // nothing in flight: async_copy16 copied at once
#endif
}

// Waits until at most `Pending` of this thread's committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void async_copy_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
#else
  // nothing in flight: async_copy16 copied at once
#endif
}

// ---- Programmatic dependent launch (PDL, sm_90+). A kernel launched with the programmatic
// stream serialization attribute (fastcot/launch.cuh) may start while the kernel before it on the
// stream is still running: what it does before pdl_wait() must not touch memory that kernel
// writes (its weights are safe; x, bias and every store are not). pdl_wait() returns once the
// previous kernel has finished and its writes are visible; pdl_launch_dependents() lets the
// next kernel start once every block of this one has called it (or exited). Both are no-ops
// for a kernel launched without the attribute, before sm_90, and on the host and the emulator
// (whose launches run one after another).
//
// ptxas moves a plain load (even ld.global.nc of __restrict__ data) written before the wait to
// after it; only cp.async and asm volatile loads stay ahead (check for LDGSTS before ACQBULK,
// the wait's SASS, in the listing).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#else
  // sm_80, the host and the emulator: a kernel starts after the one before it has finished
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#else
  // sm_80, the host and the emulator: the next kernel starts after this one has finished
#endif
}

// A load issued ahead of pdl_wait() that stays there: asm volatile, which ptxas does not sink
// below the wait as it does a plain load. Only for memory no earlier kernel writes (weights).
__device__ __forceinline__ uint4 ldg_before_wait(const uint4* ptr) {
#if defined(__CUDA_ARCH__)
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(ptr));
  return v;
#else
  return __ldg(ptr);
#endif
}

__device__ __forceinline__ uint32_t ldg_before_wait(const uint32_t* ptr) {
#if defined(__CUDA_ARCH__)
  uint32_t v;
  asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(ptr));
  return v;
#else
  return __ldg(ptr);
#endif
}

// `v` unchanged, but opaque to the compiler: a loop-invariant value (a constant, an address)
// passed through it once before a loop stays in a register instead of being rebuilt from its
// parts in every iteration. No instruction is emitted.
__device__ __forceinline__ uint32_t opaque_u32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+r"(v));
  return v;
#else
  return v;
#endif
}

}  // namespace fastcot

#include <cuda_fp8.h>

namespace fastcot {

// Four float8 e4m3 bytes (memory order b0..b3 in `w`) to two float16 pairs, exactly: `lo` holds
// (b0, b1), `hi` holds (b2, b3), low half first; NaN codes give NaN. Two cvt.rn.f16x2.e4m3x2
// on sm_89 and later (the second reads the upper half of `w` directly, no shift); elsewhere
// cuda_fp8.h's conversion (the host and the emulator; sm_80 has no fp8 instructions, and its
// kernels widen by bit operations instead, fastcot/fp8.cuh).
__host__ __device__ __forceinline__ void cvt_e4m3x4_to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
      : "=r"(lo), "=r"(hi)
      : "r"(w));
#else
  const __half2_raw l = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xFFFFu), __NV_E4M3);
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3);
  lo = uint32_t(l.x) | (uint32_t(l.y) << 16);
  hi = uint32_t(h.x) | (uint32_t(h.y) << 16);
#endif
}

}  // namespace fastcot
