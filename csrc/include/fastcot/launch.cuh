// Kernel launches with programmatic dependent launch (PDL) where it applies. Host code for the
// launchers (*.cu, nvcc): it uses the <<<>>> syntax.
//
// Decode replays many small dependent kernels; each pays a launch gap and ramp (~1.5 us) in
// which no weight bytes move. With the programmatic stream serialization attribute a kernel may
// start while the one before it on the stream finishes: it streams its weights, then waits
// (pdl_wait(), fastcot/common.cuh) before reading that kernel's output or storing anything. A
// kernel launched this way must call pdl_wait() before any such access.
#pragma once

#include <cstdlib>
#include <cstring>
#include <utility>

#include <cuda_runtime.h>

namespace fastcot {

// FASTCOT_PDL=0 turns PDL off; unset or any other value leaves it on. Read once per process.
inline bool pdl_allowed_by_environment() {
  static const bool allowed = [] {
    const char* value = std::getenv("FASTCOT_PDL");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return allowed;
}

// Whether launches on `device` use PDL: compute capability 9.0 or later (griddepcontrol) and
// not turned off. Queried per call like the launchers' SM counts (the runtime answers from its
// cached device properties), so a process that changes devices gets each one's answer.
inline cudaError_t pdl_enabled(int device, bool* enabled) {
  *enabled = false;
  if (!pdl_allowed_by_environment()) return cudaSuccess;
  int major = 0;
  const cudaError_t error = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  *enabled = error == cudaSuccess && major >= 9;
  return error;
}

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic stream serialization
// attribute when `pdl` (cudaLaunchKernelEx). Returns the launch's error; both paths consume
// the runtime's last error, as a launcher checking cudaGetLastError() does.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool pdl, Args&&... args) {
  if (!pdl) {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  // {gridDim, blockDim, dynamicSmemBytes, stream, attrs, numAttrs}, positionally: the emulator
  // (tools/simt) makes gridDim and blockDim macros.
  const cudaLaunchConfig_t config = {grid, block, smem, stream, &attribute, 1};
  const cudaError_t error = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  const cudaError_t last = cudaGetLastError();  // the same error, also recorded as the last one
  return error != cudaSuccess ? error : last;
}

}  // namespace fastcot
