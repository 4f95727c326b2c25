// Kernels for the emulator's self-tests (tests/csrc_emu/test_emu_runtime.py): correct ones whose
// results the tests check, and buggy ones the emulator must catch. Each simt_test_* entry point
// launches one kernel and returns cudaGetLastError() as an int.
#include <cstdint>

namespace {

__global__ void block_reduce(const float* in, float* out, int n) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += in[i];
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, o);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < int(blockDim.x / 32) ? partial[lane] : 0.0f;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// Each thread reads its right neighbour's shared slot: racy without the barrier.
__global__ void neighbour_read(int* out, int with_barrier) {
  __shared__ int slots[256];
  slots[threadIdx.x] = int(threadIdx.x) + 1;
  if (with_barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
}

__global__ void barrier_at_two_sites(float* out) {
  if (threadIdx.x < 64) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void shuffle_against_barrier(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xFFFFFFFFu, 1.0f, 0);
  __syncthreads();
}

__global__ void read_past_end(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x + 1];  // the last thread reads one element too far
}

__global__ void write_past_shared(float* out) {
  __shared__ float row[32];
  row[threadIdx.x + 1] = 1.0f;  // the last thread writes one element past the array
  __syncthreads();
  out[threadIdx.x] = row[threadIdx.x];
}

// Lanes of one warp in two disjoint collectives at two sites: legal.
__global__ void half_warps(int* out) {
  const int lane = threadIdx.x;
  int v;
  if (lane < 16) {
    v = __shfl_sync(0x0000FFFFu, lane * 10, 3);
  } else {
    v = __shfl_sync(0xFFFF0000u, lane * 10, 20);
  }
  out[lane] = v;
}

__global__ void shuffles(const int* in, int* out, int op, int arg, int width) {
  const int v = in[threadIdx.x];
  int r = 0;
  if (op == 0) r = __shfl_sync(0xFFFFFFFFu, v, arg, width);
  if (op == 1) r = __shfl_up_sync(0xFFFFFFFFu, v, unsigned(arg), width);
  if (op == 2) r = __shfl_down_sync(0xFFFFFFFFu, v, unsigned(arg), width);
  if (op == 3) r = __shfl_xor_sync(0xFFFFFFFFu, v, arg, width);
  out[threadIdx.x] = r;
}

// out[8 * lane + j]: ballot, any, all, match_any, match_all (+pred), reduce add/min/max.
__global__ void votes(const int* in, int* out) {
  const int v = in[threadIdx.x];
  int* o = out + 9 * threadIdx.x;
  o[0] = int(__ballot_sync(0xFFFFFFFFu, v > 0));
  o[1] = __any_sync(0xFFFFFFFFu, v > 100);
  o[2] = __all_sync(0xFFFFFFFFu, v > -100);
  o[3] = int(__match_any_sync(0xFFFFFFFFu, v));
  int pred = -1;
  o[4] = int(__match_all_sync(0xFFFFFFFFu, v, &pred));
  o[5] = pred;
  o[6] = __reduce_add_sync(0xFFFFFFFFu, v);
  o[7] = __reduce_min_sync(0xFFFFFFFFu, v);
  o[8] = __reduce_max_sync(0xFFFFFFFFu, v);
}

__global__ void barrier_votes(const int* in, int* out) {
  const int v = in[threadIdx.x];
  const int count = __syncthreads_count(v > 0);
  const int all = __syncthreads_and(v > 0);
  const int any = __syncthreads_or(v > 0);
  if (threadIdx.x == 0) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
  }
}

__global__ void atomics(float* fsum, int* isum, unsigned* umax) {
  atomicAdd(fsum, 1.0f);
  atomicAdd(isum, int(threadIdx.x));
  atomicMax(umax, blockIdx.x * 1000u + threadIdx.x);
}

// out[t] = the rank at which thread t ran (threads never wait here).
__global__ void run_order(int* out, int* counter) { out[threadIdx.x] = atomicAdd(counter, 1); }

__global__ void coordinates(int* out) {
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  int* o = out + 6 * (b * blockDim.x * blockDim.y * blockDim.z + t);
  o[0] = threadIdx.x;
  o[1] = threadIdx.y;
  o[2] = threadIdx.z;
  o[3] = blockIdx.x;
  o[4] = blockIdx.y;
  o[5] = blockIdx.z;
}

__global__ void dynamic_reverse(float* out) {
  extern __shared__ float buffer[];
  const int n = blockDim.x * 64;  // 64 floats per thread
  for (int i = threadIdx.x; i < n; i += blockDim.x) buffer[i] = float(i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = buffer[n - 1 - i];
}

__global__ void __launch_bounds__(64) bounded(float* out) { out[threadIdx.x] = 1.0f; }

__global__ void too_much_static_shared(float* out) {
  __shared__ float big[12289];  // 48 KiB + 4 bytes
  big[threadIdx.x] = 1.0f;
  out[threadIdx.x] = big[threadIdx.x];
}

__global__ void misaligned_load(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p + 1));
  out[threadIdx.x] = v.x;
}

__global__ void trivial(float* out) { out[blockIdx.x] = 1.0f; }

int status() { return int(cudaGetLastError()); }

}  // namespace

extern "C" {

int simt_test_block_reduce(const float* in, float* out, int n, int blocks, int threads) {
  block_reduce<<<blocks, threads>>>(in, out, n);
  return status();
}
int simt_test_neighbour_read(int* out, int blocks, int threads, int with_barrier) {
  neighbour_read<<<blocks, threads>>>(out, with_barrier);
  return status();
}
int simt_test_shuffle_after_exit(float* out) {
  shuffle_after_exit<<<1, 64>>>(out);
  return status();
}
int simt_test_barrier_at_two_sites(float* out) {
  barrier_at_two_sites<<<1, 128>>>(out);
  return status();
}
int simt_test_shuffle_against_barrier(float* out) {
  shuffle_against_barrier<<<1, 64>>>(out);
  return status();
}
int simt_test_read_past_end(const float* in, float* out, int n) {
  read_past_end<<<1, n>>>(in, out);
  return status();
}
int simt_test_write_past_shared(float* out) {
  write_past_shared<<<1, 32>>>(out);
  return status();
}
int simt_test_half_warps(int* out) {
  half_warps<<<1, 32>>>(out);
  return status();
}
int simt_test_shuffles(const int* in, int* out, int op, int arg, int width) {
  shuffles<<<1, 32>>>(in, out, op, arg, width);
  return status();
}
int simt_test_votes(const int* in, int* out) {
  votes<<<1, 32>>>(in, out);
  return status();
}
int simt_test_barrier_votes(const int* in, int* out, int threads) {
  barrier_votes<<<1, threads>>>(in, out);
  return status();
}
int simt_test_atomics(float* fsum, int* isum, unsigned* umax, int blocks, int threads) {
  atomics<<<blocks, threads>>>(fsum, isum, umax);
  return status();
}
int simt_test_run_order(int* out, int* counter, int threads) {
  run_order<<<1, threads>>>(out, counter);
  return status();
}
int simt_test_coordinates(int* out, int gx, int gy, int gz, int bx, int by, int bz) {
  coordinates<<<dim3(gx, gy, gz), dim3(bx, by, bz)>>>(out);
  return status();
}
int simt_test_dynamic_reverse(float* out, int threads, long long bytes, int opt_in) {
  if (opt_in != 0) {
    const cudaError_t e = cudaFuncSetAttribute(dynamic_reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, opt_in);
    if (e != cudaSuccess) return 1000 + int(cudaGetLastError());
  }
  dynamic_reverse<<<1, threads, size_t(bytes)>>>(out);
  return status();
}
int simt_test_bounded(float* out, int threads) {
  bounded<<<1, threads>>>(out);
  return status();
}
int simt_test_too_much_static_shared(float* out) {
  too_much_static_shared<<<1, 32>>>(out);
  return status();
}
int simt_test_misaligned_load(const float* p, float* out) {
  misaligned_load<<<1, 1>>>(p, out);
  return status();
}
int simt_test_launch(float* out, int gx, int gy, int gz, int bx, int by, int bz) {
  trivial<<<dim3(gx, gy, gz), dim3(bx, by, bz)>>>(out);
  return status();
}
// cudaLaunchKernelEx with one attribute (`attribute` its id, `value` its first int); returns
// its own result, and 1000 + cudaGetLastError() when that differs.
int simt_test_launch_ex(float* out, int blocks, int threads, int attribute, int value) {
  cudaLaunchAttribute attr = {};
  attr.id = static_cast<cudaLaunchAttributeID>(attribute);
  attr.val.programmaticStreamSerializationAllowed = value;
  const cudaLaunchConfig_t config = {dim3(blocks), dim3(threads), 0, nullptr, &attr, 1};
  const cudaError_t e = cudaLaunchKernelEx(&config, trivial, out);
  const cudaError_t last = cudaGetLastError();
  return last == e ? int(e) : 1000 + int(last);
}

}  // extern "C"
