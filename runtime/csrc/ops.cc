// The snncc.ops kernel library: op table and the RegisterCustomOps entry point that ONNX Runtime
// looks up after dlopen (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary_V2).
// Built against API-21 headers without linking ONNX Runtime: the API table comes from the caller.
#include <memory>
#include <mutex>
#include <vector>

#include "neuron_common.h"

// The op table: one line per neuron (op name = kernel struct = factory snncc::Make<name>).
// snncc/runtime/__init__.py OP_NAMES lists the same names (a test keeps them in sync).
#define SNNCC_NEURON_OPS(X) \
  X(IFNeuron)               \
  X(LIFNeuron)              \
  X(GroupNeuron)            \
  X(MTNeuron)               \
  X(BitSerialNeuron)        \
  X(SRPNeuron)

namespace snncc {
#define SNNCC_DECLARE_FACTORY(Op) Ort::Custom::OrtLiteCustomOp* Make##Op();
SNNCC_NEURON_OPS(SNNCC_DECLARE_FACTORY)
#undef SNNCC_DECLARE_FACTORY

namespace {
constexpr const char* kDomain = "snncc.ops";

// The domain and its ops must outlive every session that uses them: they live until unload.
struct Library {
  std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>> ops;
  Ort::CustomOpDomain domain{kDomain};

  Library() {
#define SNNCC_ADD_OP(Op) ops.emplace_back(Make##Op());
    SNNCC_NEURON_OPS(SNNCC_ADD_OP)
#undef SNNCC_ADD_OP
    for (auto& op : ops) domain.Add(op.get());
  }
};

Library& GetLibrary() {
  static Library library;
  return library;
}
}  // namespace
}  // namespace snncc

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Runtime older than the headers: report through the oldest API table, which always exists.
    return api_base->GetApi(1)->CreateStatus(
        ORT_FAIL, "snncc kernel library: this ONNX Runtime does not provide the C API version it was built for");
  }
  Ort::InitApi(api);
  try {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    Ort::UnownedSessionOptions(options).Add(snncc::GetLibrary().domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  } catch (const std::exception& e) {
    return Ort::Status(e).release();
  }
  return nullptr;
}
