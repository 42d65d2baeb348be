#include "runtime/cuda/nccl_comm.h"

#include <cstdlib>

#include <fmt/format.h>

#ifdef CARTSERVE_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace cartserve::cuda {

#ifdef CARTSERVE_WITH_NCCL

namespace {

Status nccl_status(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return {};
  return make_error(ErrorCode::kInternal, "NCCL error in {}: {}", what, ncclGetErrorString(r));
}

#define CS_NCCL(expr) CS_RETURN_IF_ERROR(nccl_status((expr), #expr))

// NVLink multicast (NVLS) off unless the environment decides (issue 12).
void keep_multicast_off() {
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
}

}  // namespace

NcclComm::~NcclComm() {
  if (void* c = comm_.load()) ncclCommDestroy(static_cast<ncclComm_t>(c));
}

Result<std::vector<std::unique_ptr<NcclComm>>> NcclComm::create_all(
    const std::vector<int>& devices) {
  if (devices.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "NCCL: no devices");
  }
  int available = 0;
  if (cudaGetDeviceCount(&available) != cudaSuccess) available = 0;
  for (int d : devices) {
    if (d < 0 || d >= available) {
      return make_error(ErrorCode::kInvalidArgument,
                        "tensor parallel over {} GPUs needs device {}, but {} GPU(s) are visible",
                        devices.size(), d, available);
    }
  }
  keep_multicast_off();
  const int n = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(devices.size());
  CS_NCCL(ncclCommInitAll(comms.data(), n, devices.data()));
  std::vector<std::unique_ptr<NcclComm>> out;
  for (int r = 0; r < n; ++r) {
    out.emplace_back(
        new NcclComm(comms[static_cast<size_t>(r)], r, n, devices[static_cast<size_t>(r)]));
  }
  return out;
}

Status NcclComm::all_reduce_sum(void* data, size_t count, DType dtype, void* stream) {
  void* comm = comm_.load();
  if (!comm) return make_error(ErrorCode::kUnavailable, "NCCL: the communicator was aborted");
  ncclDataType_t t;
  if (dtype == DType::kF32) {
    t = ncclFloat32;
  } else if (dtype == DType::kBF16) {
    t = ncclBfloat16;
  } else {
    return make_error(ErrorCode::kInvalidArgument, "NCCL all-reduce of {} is not supported",
                      dtype_name(dtype));
  }
  CS_NCCL(ncclAllReduce(data, data, count, t, ncclSum, static_cast<ncclComm_t>(comm),
                        static_cast<cudaStream_t>(stream)));
  return {};
}

Status NcclComm::broadcast(void* data, size_t bytes, int root, void* stream) {
  void* comm = comm_.load();
  if (!comm) return make_error(ErrorCode::kUnavailable, "NCCL: the communicator was aborted");
  CS_NCCL(ncclBroadcast(data, data, bytes, ncclUint8, root, static_cast<ncclComm_t>(comm),
                        static_cast<cudaStream_t>(stream)));
  return {};
}

Status NcclComm::abort() {
  if (void* c = comm_.exchange(nullptr)) CS_NCCL(ncclCommAbort(static_cast<ncclComm_t>(c)));
  return {};
}

Status NcclComm::group_start() {
  CS_NCCL(ncclGroupStart());
  return {};
}

Status NcclComm::group_end() {
  CS_NCCL(ncclGroupEnd());
  return {};
}

std::string NcclComm::version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch (since 2.9).
  return fmt::format("{}.{}.{}", v / 10000, v / 100 % 100, v % 100);
}

#else  // no NCCL in this build

NcclComm::~NcclComm() = default;

Result<std::vector<std::unique_ptr<NcclComm>>> NcclComm::create_all(const std::vector<int>&) {
  return make_error(ErrorCode::kUnsupported, "this build has no NCCL (libnccl was not found)");
}

Status NcclComm::all_reduce_sum(void*, size_t, DType, void*) {
  return make_error(ErrorCode::kUnsupported, "this build has no NCCL");
}

Status NcclComm::broadcast(void*, size_t, int, void*) {
  return make_error(ErrorCode::kUnsupported, "this build has no NCCL");
}

Status NcclComm::abort() {
  return {};
}

Status NcclComm::group_start() {
  return make_error(ErrorCode::kUnsupported, "this build has no NCCL");
}

Status NcclComm::group_end() {
  return make_error(ErrorCode::kUnsupported, "this build has no NCCL");
}

std::string NcclComm::version() {
  return "none";
}

#endif

}  // namespace cartserve::cuda
