// classify: run a compiled snncc model (.onnx with snncc.ops nodes) with ONNX Runtime from C++.
//
//   classify MODEL.onnx KERNEL_LIB [INPUT.f32]
//
// KERNEL_LIB is libsnncc_ops.so (scripts/build_runtime.sh). INPUT.f32 holds the raw little-endian
// float32 values of the model's first input; without it a deterministic input is generated.
// Dynamic input dims are taken as 1. Prints the logits of the first output and their argmax per row.
#include <onnxruntime_cxx_api.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<float> ReadRawFloats(const std::string& path, size_t count) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open input file " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (bytes.size() != count * sizeof(float))
    throw std::runtime_error(path + " holds " + std::to_string(bytes.size()) + " bytes, the model input needs " +
                             std::to_string(count * sizeof(float)) + " (" + std::to_string(count) + " float32)");
  std::vector<float> values(count);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(values.data()));
  return values;
}

// A fixed, platform-independent pattern in [-1, 1] (multiples of 1/64).
std::vector<float> DeterministicInput(size_t count) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = static_cast<float>(static_cast<int>((i * 37) % 129) - 64) / 64.0f;
  return values;
}

int Run(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s MODEL.onnx KERNEL_LIB [INPUT.f32]\n", argv[0]);
    return 2;
  }
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "snncc-classify");
  Ort::SessionOptions options;
  options.RegisterCustomOpsLibrary(argv[2]);  // RegisterCustomOpsLibrary_V2: ORT dlopens and owns the handle
  Ort::Session session(env, argv[1], options);

  Ort::AllocatorWithDefaultOptions allocator;
  // A streaming model takes neuron states and a step counter besides the image, one call per
  // time step (snncc's compile --help, --schedule); this program makes one call per image.
  const Ort::AllocatedStringPtr schedule =
      session.GetModelMetadata().LookupCustomMetadataMapAllocated("snncc.schedule", allocator);
  if (schedule && std::string(schedule.get()) == "streaming") {
    throw std::runtime_error(std::string(argv[1]) + " is a streaming model (a call per step, or "
                             "per K steps, with states); classify runs folded and window models: "
                             "compile without --schedule streaming");
  }
  // Any ONNX model runs; one without the schedule metadata is not a compiled SNN: say so.
  if (!schedule) {
    std::fprintf(stderr, "classify: note: %s has no snncc.schedule metadata, so it is not a "
                 "spiking model from snncc compile (an ANN or a --target qann model); running it "
                 "as a plain ONNX model\n", argv[1]);
  }
  const std::string input_name = session.GetInputNameAllocated(0, allocator).get();
  const std::string output_name = session.GetOutputNameAllocated(0, allocator).get();
  std::vector<int64_t> shape = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
  size_t count = 1;
  for (int64_t& d : shape) {
    if (d < 0) d = 1;
    count *= static_cast<size_t>(d);
  }
  std::vector<float> input = argc == 4 ? ReadRawFloats(argv[3], count) : DeterministicInput(count);

  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value tensor = Ort::Value::CreateTensor<float>(memory, input.data(), input.size(), shape.data(), shape.size());
  const char* input_names[] = {input_name.c_str()};
  const char* output_names[] = {output_name.c_str()};
  std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, input_names, &tensor, 1, output_names, 1);

  const Ort::TensorTypeAndShapeInfo out_info = outputs[0].GetTensorTypeAndShapeInfo();
  if (out_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    throw std::runtime_error("the first output '" + output_name + "' is not float32 logits "
                             "(element type " + std::to_string(out_info.GetElementType()) +
                             "); classify prints float logits");
  }
  const std::vector<int64_t> out_shape = out_info.GetShape();
  const float* logits = outputs[0].GetTensorData<float>();
  const size_t classes = out_shape.empty() ? 1 : static_cast<size_t>(out_shape.back());
  const size_t total = out_info.GetElementCount();
  for (size_t row = 0; classes > 0 && row < total / classes; ++row) {
    const float* r = logits + row * classes;
    size_t best = 0;
    std::printf("logits:");
    for (size_t k = 0; k < classes; ++k) {
      std::printf(" %.9g", r[k]);
      if (r[k] > r[best]) best = k;
    }
    std::printf("\nclass: %zu\n", best);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "classify: error: %s\n", e.what());
    return 1;
  }
}
