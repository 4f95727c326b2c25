// Internal state of the SIMT runtime, shared by runtime.cpp (scheduling, shared memory),
// collectives.cpp (barriers, warp collectives), launch.cpp (launches and their checks) and
// cuda_api.cpp (the CUDA runtime API).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fiber.h"
#include "simt.h"

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace simt {

// The limits a launch is checked against (cudaDeviceProp of the emulated device).
struct Device {
  const char* name;
  int sms;
  int major, minor;
  size_t smem_per_block;        // without opting in: 48 KiB
  size_t smem_per_block_optin;  // cudaFuncAttributeMaxDynamicSharedMemorySize may go up to this
  size_t smem_per_sm;
};
const Device& device();
bool select_device(const char* name);

constexpr size_t kStaticSharedLimit = 48 * 1024;  // nvcc rejects more static __shared__ per kernel

struct Launch {
  const KernelLaunch* kernel;
  std::string name;  // what error messages call the kernel
  unsigned threads;
  uint64_t blocks;
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::string failure;  // the first failure of any block
  cudaError_t error = cudaErrorLaunchFailure;  // what cudaGetLastError reports for it
};

enum class State : int { kRunnable, kBarrier, kWarp, kDone };

struct Fiber {
  Context context;
  char* stack = nullptr;  // usable stack [stack, stack + stack_size), a guard page below
  size_t stack_size = 0;
  ThreadState thread{};
  State state = State::kDone;
  uint64_t result = 0;  // of the barrier or collective it waited at
  void* asan_fake_stack = nullptr;
};

struct Pending {  // a warp collective that some of its lanes have reached
  WarpOp op;
  unsigned mask;
  unsigned arrived;
  Where site;
  uint64_t value[32];
  int8_t source[32];
};

struct Warp {
  unsigned live = 0;
  std::vector<Pending> pending;
};

// One OS thread's blocks: fibers (stacks reused across blocks and launches), the shared-memory
// arena and the state of the block it is running.
struct Worker {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Context scheduler;
  const void* scheduler_stack = nullptr;  // ASan's view of the OS thread's stack
  size_t scheduler_stack_size = 0;
  void* scheduler_fake_stack = nullptr;
  Fiber* running = nullptr;

  Launch* launch = nullptr;
  uint3 block_idx{};
  int live = 0;
  int at_barrier = 0;
  Where barrier_site;
  BarrierOp barrier_op = BarrierOp::kSync;
  int barrier_value = 0;
  bool failed = false;
  std::vector<unsigned> order;
  uint64_t rng = 0;

  char* arena = nullptr;  // shared memory: dynamic at offset 0, then static variables
  size_t arena_used = 0;
  size_t static_bytes = 0;
  size_t dynamic_bytes = 0;
  std::vector<std::pair<const void*, void*>> variables;

  ~Worker();
};

enum class Order : int { kForward, kReverse, kRandom };
struct Settings {
  std::atomic<int> order{0};
  std::atomic<uint64_t> seed{0};
  std::atomic<int> workers{0};  // 0: one per CPU
};
Settings& settings();

// Runs block `linear` of `launch` on `worker`; returns false when the launch failed.
bool run_block(Worker& worker, Launch& launch, uint64_t linear);

// Records the launch's first failure (with kernel, block and thread) and prints it.
void record_failure(Worker& worker, const std::string& what);

std::string where_text(const Where& where);

// For collectives.cpp: the worker running the calling fiber (aborts outside a kernel), switching
// back to its scheduler, and the pieces of messages.
Worker& worker_here(const Where& where);
void yield(Worker& worker);
void release_barrier(Worker& worker);
bool same_site(const Where& a, const Where& b);
std::string hex(unsigned v);
const char* op_name(WarpOp op);

// The calling thread's CUDA error state (cudaGetLastError) and cudaFuncSetAttribute's limits.
extern thread_local cudaError_t t_last_error;
void set_max_dynamic_smem(const void* kernel, size_t bytes);

}  // namespace simt
