// Kernel launches: the driver's configuration checks, blocks spread over worker threads, the
// sticky error state behind cudaGetLastError, and the C interface Python sets the emulator up
// with (thread order, workers, emulated device, failure messages, launch log).
#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "runtime.h"

namespace simt {
namespace {

// H100 SXM and A100: the limits a launch must respect (cudaDeviceProp of each).
constexpr Device kDevices[] = {
    {"sm_90", 132, 9, 0, 48 * 1024, 227 * 1024, 228 * 1024},
    {"sm_80", 108, 8, 0, 48 * 1024, 163 * 1024, 164 * 1024},
};
const Device* g_device = &kDevices[0];

struct Runtime {
  std::mutex launch_mutex;  // one launch at a time: workers are shared
  std::vector<std::unique_ptr<Worker>> workers;
  std::mutex state_mutex;   // everything below
  std::vector<std::pair<const void*, size_t>> max_dynamic_smem;  // cudaFuncSetAttribute
  std::string failure;      // of the last failed kernel, until taken
  std::string log;          // one JSON object per launch, until cleared
  size_t logged = 0;
};

Runtime& runtime() {
  static Runtime* r = new Runtime;  // never destroyed: worker threads may outlive static teardown
  return *r;
}

std::string demangled(const char* symbol) {
  int status = 0;
  char* name = abi::__cxa_demangle(symbol, nullptr, nullptr, &status);
  std::string out = status == 0 && name ? name : symbol;
  std::free(name);
  return out;
}

std::string kernel_name(const KernelLaunch& k) {
  Dl_info info;
  std::string name = k.site.kernel;
  if (dladdr(k.kernel, &info) != 0 && info.dli_saddr == k.kernel && info.dli_sname != nullptr) {
    name = demangled(info.dli_sname);
  }
  return name + " launched at " + k.site.where.file_name() + ":" + std::to_string(k.site.where.line());
}

size_t allowed_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(runtime().state_mutex);
  for (const auto& [k, bytes] : runtime().max_dynamic_smem) {
    if (k == kernel) return bytes;
  }
  return device().smem_per_block;
}

// What the driver refuses before any block runs, as the error it would return.
cudaError_t check_configuration(const KernelLaunch& k) {
  const dim3 g = k.grid, b = k.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024) {
    return cudaErrorInvalidConfiguration;
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7FFFFFFFu || g.y > 65535 || g.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (k.dynamic_smem > allowed_dynamic_smem(k.kernel)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

void log_launch(const KernelLaunch& k, const std::string& name, cudaError_t status) {
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> lock(rt.state_mutex);
  if (rt.logged >= 10000) return;  // a log nobody clears must not grow without bound
  ++rt.logged;
  std::string escaped;
  for (char c : name) {
    if (c == '"' || c == '\\') escaped += '\\';
    escaped += c;
  }
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "\"grid\": [%u, %u, %u], \"block\": [%u, %u, %u], \"dynamic_smem\": %zu, \"programmatic\": %s, "
                "\"error\": \"%s\"}\n",
                k.grid.x, k.grid.y, k.grid.z, k.block.x, k.block.y, k.block.z, k.dynamic_smem,
                k.programmatic ? "true" : "false", cudaGetErrorName(status));
  rt.log += "{\"kernel\": \"" + escaped + "\", " + buf;
}

unsigned worker_count(uint64_t blocks) {
  int wanted = settings().workers.load();
  if (wanted <= 0) wanted = int(std::thread::hardware_concurrency());
  return unsigned(std::max<uint64_t>(1, std::min<uint64_t>(uint64_t(std::max(wanted, 1)), blocks)));
}

}  // namespace

thread_local cudaError_t t_last_error = cudaSuccess;

Settings& settings() {
  static Settings* s = [] {
    auto* s = new Settings;
    const char* order = std::getenv("SIMT_ORDER");
    if (order != nullptr) s->order = !std::strcmp(order, "reverse") ? 1 : !std::strcmp(order, "random") ? 2 : 0;
    if (const char* seed = std::getenv("SIMT_SEED")) s->seed = std::strtoull(seed, nullptr, 0);
    if (const char* workers = std::getenv("SIMT_WORKERS")) s->workers = std::atoi(workers);
    if (const char* dev = std::getenv("SIMT_DEVICE")) select_device(dev);
    return s;
  }();
  return *s;
}

const Device& device() { return *g_device; }

bool select_device(const char* name) {
  for (const Device& d : kDevices) {
    if (!std::strcmp(d.name, name)) {
      g_device = &d;
      return true;
    }
  }
  return false;
}

void set_max_dynamic_smem(const void* kernel, size_t bytes) {
  std::lock_guard<std::mutex> lock(runtime().state_mutex);
  for (auto& [k, b] : runtime().max_dynamic_smem) {
    if (k == kernel) {
      b = bytes;
      return;
    }
  }
  runtime().max_dynamic_smem.emplace_back(kernel, bytes);
}

cudaError_t refuse_launch(LaunchSite site, const void* kernel, dim3 grid, dim3 block, size_t smem, cudaError_t error) {
  const KernelLaunch k{kernel, nullptr, nullptr, site, grid, block, smem};
  log_launch(k, kernel_name(k), error);
  t_last_error = error;
  return error;
}

cudaError_t launch_kernel(const KernelLaunch& k) {
  Runtime& rt = runtime();
  std::lock_guard<std::mutex> serial(rt.launch_mutex);
  settings();  // the environment is read before the first launch
  Launch launch;
  launch.kernel = &k;
  launch.name = kernel_name(k);
  const cudaError_t config = check_configuration(k);
  log_launch(k, launch.name, config);
  if (config != cudaSuccess) {
    t_last_error = config;
    return config;
  }
  launch.threads = k.block.x * k.block.y * k.block.z;
  launch.blocks = uint64_t(k.grid.x) * k.grid.y * k.grid.z;
  const unsigned workers = worker_count(launch.blocks);
  while (rt.workers.size() < workers) rt.workers.push_back(std::make_unique<Worker>());
  std::atomic<uint64_t> next{0};
  auto work = [&](Worker& w) {
    for (uint64_t b = next++; b < launch.blocks; b = next++) {
      if (!run_block(w, launch, b)) break;
    }
  };
  if (workers == 1) {
    work(*rt.workers[0]);
  } else {
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < workers; ++i) threads.emplace_back(work, std::ref(*rt.workers[i]));
    for (std::thread& t : threads) t.join();
  }
  if (launch.failed) {
    t_last_error = launch.error;
    std::lock_guard<std::mutex> lock(rt.state_mutex);
    rt.failure = launch.failure;
    return launch.error;
  }
  return cudaSuccess;
}

}  // namespace simt

// ---- the emulator's own controls, for tools/simt/emulator.py -----------------------------------

extern "C" {

// order: "forward", "reverse" or "random" (reshuffled every round, from `seed`).
int simt_set_order(const char* order, unsigned long long seed) {
  const int code = !std::strcmp(order, "forward") ? 0 : !std::strcmp(order, "reverse") ? 1
                 : !std::strcmp(order, "random")  ? 2 : -1;
  if (code < 0) return -1;
  simt::settings().order = code;
  simt::settings().seed = seed;
  return 0;
}

int simt_set_workers(int workers) {
  simt::settings().workers = workers;
  return 0;
}

int simt_set_device(const char* name) { return simt::select_device(name) ? 0 : -1; }

// Copies and clears the message of the last kernel the emulator stopped (a failed check, a
// deadlock); returns its length, 0 when there is none.
int simt_take_failure(char* buf, int size) {
  auto& rt = simt::runtime();
  std::lock_guard<std::mutex> lock(rt.state_mutex);
  const int n = int(rt.failure.size());
  if (n > 0 && size > 0) std::snprintf(buf, size_t(size), "%s", rt.failure.c_str());
  rt.failure.clear();
  return n;
}

// Copies the launch log (one JSON object a line) and clears it; returns its full length.
int simt_take_launch_log(char* buf, int size) {
  auto& rt = simt::runtime();
  std::lock_guard<std::mutex> lock(rt.state_mutex);
  const int n = int(rt.log.size());
  if (size > 0) std::snprintf(buf, size_t(size), "%s", rt.log.c_str());
  if (n < size) {
    rt.log.clear();
    rt.logged = 0;
  }
  return n;
}

int simt_is_asan() { return SIMT_ASAN; }

}  // extern "C"
