// GPU check of csrc's PTX helpers (tests/csrc/test_ptx_helpers_gpu.py): each helper's asm path,
// run on the device, against its portable fallback (the path the SIMT emulator runs).
#include <cstdint>

#include "fastcot/common.cuh"
#include "fastcot/fp8.cuh"

namespace {

__global__ void and_or_kernel(const uint32_t* a, const uint32_t* b, const uint32_t* c, uint32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = fastcot::and_or(a[i], b[i], c[i]);
}

__global__ void ldg_stream_kernel(const uint4* src, uint4* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = fastcot::ldg_stream(src + i);
}

// One warp: the tensor-core mma and the shuffle fallback on the same fragments.
template <typename T>
__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d_mma, float* d_fallback) {
  const int lane = threadIdx.x;
  uint32_t fa[4], fb[2];
  float d0[4], d1[4];
  for (int r = 0; r < 4; ++r) fa[r] = a[lane * 4 + r];
  for (int r = 0; r < 2; ++r) fb[r] = b[lane * 2 + r];
  for (int r = 0; r < 4; ++r) d0[r] = d1[r] = c[lane * 4 + r];
  fastcot::mma_16816<T>(d0, fa, fb);
  fastcot::mma_16816_emulated<T>(d1, fa, fb);
  for (int r = 0; r < 4; ++r) {
    d_mma[lane * 4 + r] = d0[r];
    d_fallback[lane * 4 + r] = d1[r];
  }
}

// Each thread copies two 16-byte vectors into its own shared slots through cp.async (two
// commit groups), waits for them, reads them back: the pattern of the int4 GEMV's ring.
__global__ void async_copy_kernel(const uint4* src, uint4* out, int n) {
  extern __shared__ uint4 slots[];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  uint4* mine = slots + 2 * threadIdx.x;
  if (i < n) {
    fastcot::async_copy16(mine, src + 2 * i);
    fastcot::async_copy_commit();
    fastcot::async_copy16(mine + 1, src + 2 * i + 1);
    fastcot::async_copy_commit();
    fastcot::async_copy_wait<1>();
    out[2 * i] = mine[0];  // the first group has landed
    fastcot::async_copy_wait<0>();
    out[2 * i + 1] = mine[1];
  }
}

__global__ void opaque_kernel(const uint32_t* a, uint32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = fastcot::opaque_u32(a[i]);
}

// fp8 widening: the device's path (the conversion instruction on sm_89+) for each word.
__global__ void fp8_widen_kernel(const uint32_t* words, uint32_t* lo, uint32_t* hi, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) fastcot::e4m3x4_to_half2x2(words[i], lo[i], hi[i]);
}

__global__ void cvt_e4m3_kernel(const uint32_t* words, uint32_t* lo, uint32_t* hi, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) fastcot::cvt_e4m3x4_to_half2x2(words[i], lo[i], hi[i]);
}

}  // namespace

extern "C" {

// cvt_e4m3x4_to_half2x2: the instruction on the device (sm_89+), cuda_fp8.h's conversion on the host.
void ptx_cvt_e4m3_host(const uint32_t* words, uint32_t* lo, uint32_t* hi, int n) {
  for (int i = 0; i < n; ++i) fastcot::cvt_e4m3x4_to_half2x2(words[i], lo[i], hi[i]);
}

int ptx_cvt_e4m3_device(const uint32_t* words, uint32_t* lo, uint32_t* hi, int n) {
  cvt_e4m3_kernel<<<(n + 255) / 256, 256>>>(words, lo, hi, n);
  return static_cast<int>(cudaDeviceSynchronize());
}

// fp8 widening on the host (the bit operations, each value times 2^kE4m3HalfExponent) and on
// the device, with the device's exponent.
int ptx_fp8_host_exponent() { return fastcot::kE4m3HalfExponent; }

void ptx_fp8_widen_host(const uint32_t* words, uint32_t* lo, uint32_t* hi, int n) {
  for (int i = 0; i < n; ++i) fastcot::e4m3x4_to_half2x2(words[i], lo[i], hi[i]);
}

int ptx_fp8_widen_device(const uint32_t* words, uint32_t* lo, uint32_t* hi, int n) {
  fp8_widen_kernel<<<(n + 255) / 256, 256>>>(words, lo, hi, n);
  return static_cast<int>(cudaDeviceSynchronize());
}

// Host side of and_or: nvcc's host pass compiles the portable fallback.
void ptx_and_or_host(const uint32_t* a, const uint32_t* b, const uint32_t* c, uint32_t* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = fastcot::and_or(a[i], b[i], c[i]);
}

int ptx_and_or_device(const uint32_t* a, const uint32_t* b, const uint32_t* c, uint32_t* out, int n) {
  and_or_kernel<<<(n + 255) / 256, 256>>>(a, b, c, out, n);
  return static_cast<int>(cudaDeviceSynchronize());
}

int ptx_ldg_stream_device(const void* src, void* out, int n) {
  ldg_stream_kernel<<<(n + 255) / 256, 256>>>(static_cast<const uint4*>(src), static_cast<uint4*>(out), n);
  return static_cast<int>(cudaDeviceSynchronize());
}

int ptx_mma_device(const uint32_t* a, const uint32_t* b, const float* c, float* d_mma, float* d_fallback, int bf16) {
  if (bf16) {
    mma_kernel<__nv_bfloat16><<<1, 32>>>(a, b, c, d_mma, d_fallback);
  } else {
    mma_kernel<__half><<<1, 32>>>(a, b, c, d_mma, d_fallback);
  }
  return static_cast<int>(cudaDeviceSynchronize());
}

// n pairs of 16-byte vectors through shared memory by cp.async.
int ptx_async_copy_device(const void* src, void* out, int n) {
  async_copy_kernel<<<(n + 127) / 128, 128, 128 * 2 * sizeof(uint4)>>>(static_cast<const uint4*>(src),
                                                                        static_cast<uint4*>(out), n);
  return static_cast<int>(cudaDeviceSynchronize());
}

int ptx_opaque_device(const uint32_t* a, uint32_t* out, int n) {
  opaque_kernel<<<(n + 255) / 256, 256>>>(a, out, n);
  return static_cast<int>(cudaDeviceSynchronize());
}

}  // extern "C"
