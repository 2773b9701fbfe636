// The snncc.ops kernel library: op table and the RegisterCustomOps entry point that ONNX Runtime
// looks up after dlopen (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary_V2).
// Built against API-21 headers without linking ONNX Runtime: the API table comes from the caller.
#include <memory>
#include <mutex>
#include <string>
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

// Runtime ops: not emitted by the compiler; snncc.runtime.layout substitutes them on the machine
// that runs a model (snncc/runtime/__init__.py RUNTIME_OP_NAMES lists the same names).
#define SNNCC_RUNTIME_OPS(X) X(SpikeGateMaxPool) X(SpikeGateWindowMaxPool) X(BitSerialAveragePool)

namespace snncc {
#define SNNCC_DECLARE_FACTORY(Op) Ort::Custom::OrtLiteCustomOp* Make##Op();
SNNCC_NEURON_OPS(SNNCC_DECLARE_FACTORY)
SNNCC_RUNTIME_OPS(SNNCC_DECLARE_FACTORY)
#undef SNNCC_DECLARE_FACTORY

namespace {
constexpr const char* kDomain = "snncc.ops";

// Output 0 may reuse input 0's buffer (ORT decides: only when both have the same known size and
// input 0 has no other reader). Every kernel reads an element of x before writing the same element
// of y, and never reads an x element after writing it.
size_t ORT_API_CALL MayInplace(int** input_index, int** output_index) {
  *input_index = new int[1]{0};
  *output_index = new int[1]{0};
  return 1;
}
void ORT_API_CALL ReleaseMayInplace(int* input_index, int* output_index) {
  delete[] input_index;
  delete[] output_index;
}

// Output 0's shape from input 0's, so that ORT knows when the two have the same size (the
// condition for the in-place reuse above) and can plan memory: y = x, except that a constant-input
// folded neuron repeats its rows T times ([N, ...] -> [T*N, ...]) and a decoded one averages them
// ([T*N, ...] -> [N, ...]). A symbolic batch "b" becomes "<T>*b" (and back). Where the shape cannot
// be told (unknown rank, an attribute unreadable), the output's shape is left unknown.
int64_t IntAttr(Ort::ShapeInferContext& ctx, const char* name, int64_t fallback) {
  try {
    return ctx.GetAttrInt(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

// Output 0 := float tensor of `shape` (through the C API: the C++ wrapper's SetOutputShape writes
// -2 for a symbolic dimension, which ORT rejects). A shape ORT does not take stays unknown.
void SetShape(OrtShapeInferContext* ctx, const Ort::ShapeInferContext::Shape& shape) {
  const OrtApi& api = Ort::GetApi();
  std::vector<int64_t> dims;
  std::vector<const char*> symbols;
  for (const auto& dim : shape) {
    dims.push_back(dim.IsInt() ? dim.AsInt() : -1);
    symbols.push_back(dim.IsInt() ? "" : dim.AsSym());
  }
  auto ok = [&api](OrtStatus* status) {
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
  };
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (!ok(api.CreateTensorTypeAndShapeInfo(&info))) return;
  ok(api.SetTensorElementType(info, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)) &&
      ok(api.SetDimensions(info, dims.data(), dims.size())) &&
      ok(api.SetSymbolicDimensions(info, symbols.data(), symbols.size())) &&
      ok(api.ShapeInferContext_SetOutputTypeShape(ctx, 0, info));
  api.ReleaseTensorTypeAndShapeInfo(info);
}

OrtStatusPtr ORT_API_CALL InferShape(const OrtCustomOp*, OrtShapeInferContext* ort_ctx) {
  try {
    Ort::ShapeInferContext ctx(&Ort::GetApi(), ort_ctx);
    Ort::ShapeInferContext::Shape y = ctx.GetInputShape(0);
    if (y.empty()) return nullptr;
    for (const auto& dim : y)  // an unnamed unknown dimension cannot be written back
      if (dim.IsInt() && dim.AsInt() < 0) return nullptr;
    const int64_t T = IntAttr(ctx, "T", 0);
    const bool const_input = IntAttr(ctx, "const_input", 0) != 0, decoded = IntAttr(ctx, "decoded", 0) != 0;
    if (T < 1) return nullptr;
    const std::string prefix = std::to_string(T) + "*";
    std::string symbol;
    if (const_input && !decoded) {  // [N, ...] -> [T*N, ...]
      if (y[0].IsInt()) {
        y[0] = Ort::ShapeInferContext::SymbolicInteger(y[0].AsInt() * T);
      } else {
        symbol = prefix + y[0].AsSym();
        y[0] = Ort::ShapeInferContext::SymbolicInteger(symbol.c_str());
      }
    } else if (decoded && !const_input) {  // [T*N, ...] -> [N, ...]
      if (y[0].IsInt()) {
        if (y[0].AsInt() % T != 0) return nullptr;
        y[0] = Ort::ShapeInferContext::SymbolicInteger(y[0].AsInt() / T);
      } else {
        const std::string dim = y[0].AsSym();
        if (dim.compare(0, prefix.size(), prefix) != 0) return nullptr;
        symbol = dim.substr(prefix.size());
        y[0] = Ort::ShapeInferContext::SymbolicInteger(symbol.c_str());
      }
    }
    SetShape(ort_ctx, y);
  } catch (const std::exception&) {
  }
  return nullptr;
}

std::vector<int64_t> IntsAttr(Ort::ShapeInferContext& ctx, const char* name, std::vector<int64_t> fallback) {
  try {
    return ctx.GetAttrInts(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

// SpikeGateMaxPool, SpikeGateWindowMaxPool: y = [T*N, C, Ho, Wo] from x = [T*N, C, H, W] with ORT's MaxPool size, when H
// and W are known numbers (else unknown). Without it ORT's optimised model has no shape for the
// gate's output, and snncc.runtime.layout cannot tell that a residual Add reading it adds two
// tensors of one shape.
OrtStatusPtr ORT_API_CALL InferGateShape(const OrtCustomOp*, OrtShapeInferContext* ort_ctx) {
  try {
    Ort::ShapeInferContext ctx(&Ort::GetApi(), ort_ctx);
    Ort::ShapeInferContext::Shape y = ctx.GetInputShape(0);
    if (y.size() != 4 || !y[2].IsInt() || !y[3].IsInt()) return nullptr;
    for (const auto& dim : y)
      if (dim.IsInt() && dim.AsInt() < 0) return nullptr;
    const std::vector<int64_t> k = IntsAttr(ctx, "kernel_shape", {}), s = IntsAttr(ctx, "strides", {1, 1}),
                               p = IntsAttr(ctx, "pads", {0, 0, 0, 0}), d = IntsAttr(ctx, "dilations", {1, 1});
    if (k.size() != 2 || s.size() != 2 || p.size() != 4 || d.size() != 2) return nullptr;
    const bool ceil = IntAttr(ctx, "ceil_mode", 0) != 0;
    for (int axis = 0; axis < 2; ++axis) {
      if (k[axis] < 1 || s[axis] < 1 || d[axis] < 1) return nullptr;
      const int64_t out = PooledSize(y[2 + axis].AsInt(), k[axis], s[axis], p[axis], p[axis + 2], d[axis], ceil);
      if (out < 1) return nullptr;
      y[2 + axis] = Ort::ShapeInferContext::SymbolicInteger(out);
    }
    SetShape(ort_ctx, y);
  } catch (const std::exception&) {
  }
  return nullptr;
}

// The domain and its ops must outlive every session that uses them: they live until unload.
struct Library {
  std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>> ops;
  Ort::CustomOpDomain domain{kDomain};

  Library() {
#define SNNCC_ADD_OP(Op) ops.emplace_back(Make##Op());
    SNNCC_NEURON_OPS(SNNCC_ADD_OP)
    for (auto& op : ops) {  // neurons: y has x's shape (or T times / 1/T of its rows)
      op->GetMayInplace = MayInplace;
      op->ReleaseMayInplace = ReleaseMayInplace;
      op->InferOutputShapeFn = InferShape;
    }
    const size_t neurons = ops.size();
    SNNCC_RUNTIME_OPS(SNNCC_ADD_OP)
#undef SNNCC_ADD_OP
    for (size_t i = neurons; i < ops.size(); ++i) {  // the gates: their pooled shape
      const std::string name = ops[i]->GetName(ops[i].get());
      if (name == "SpikeGateMaxPool" || name == "SpikeGateWindowMaxPool") ops[i]->InferOutputShapeFn = InferGateShape;
    }
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
