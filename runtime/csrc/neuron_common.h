// Shared machinery of the snncc neuron kernels (contract: docs/neuron-ops.md).
//
// Every kernel is a struct-form ONNX Runtime lite custom op with the signature
//   Compute(ctx, x, optional state, optional step) -> y, optional state_out
// Attributes are read and validated once in the constructor (a bad attribute throws, which makes
// session creation fail); shapes are checked per call and reported as an INVALID_ARGUMENT status.
// Kernel members are read-only after construction: the membrane state lives only in tensors, so one
// session may be run from many threads at once.
//
// Work split: one slice holds E = N*C*inner elements. They are cut into chunks of kChunk contiguous
// elements that ORT's intra-op thread pool runs in parallel; each chunk keeps its state in local
// arrays and loops over the slices in order, with a branch-free, vectorisable inner loop.
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"

#include <algorithm>
#include <cmath>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace snncc {

using Ort::Custom::Tensor;
using OptionalInput = std::optional<const Tensor<float>*>;
using OptionalStep = std::optional<const Tensor<int64_t>*>;
using OptionalOutput = std::optional<Tensor<float>*>;

constexpr int64_t kChunk = 1024;  // elements per parallel work item (fits the local arrays in L1)
constexpr int64_t kShortRun = 64;  // runs of one channel shorter than this take per-element constants

// ---------------------------------------------------------------------------------------------
// Attributes

// Reads node attributes with defaults; every problem throws an Ort::Exception whose message names
// the op, the node and the attribute (ORT turns it into a failed session creation).
class AttrReader {
 public:
  AttrReader(const OrtKernelInfo* info, const char* op_type);

  int64_t Int(const char* name, int64_t fallback) const;
  float Float(const char* name, float fallback) const;
  std::vector<float> Floats(const char* name, const std::vector<float>& fallback) const;
  std::vector<int64_t> Ints(const char* name, const std::vector<int64_t>& fallback) const;
  std::string String(const char* name, const std::string& fallback) const;

  [[noreturn]] void Fail(const std::string& what) const;
  const std::string& where() const { return where_; }
  // Inputs must be (x) or (x, state, step), outputs (y) or (y, state_out), none left unnamed.
  void CheckArity() const;

 private:
  bool Present(const char* name) const;
  Ort::ConstKernelInfo info_;
  std::string where_;  // "snncc.ops::IFNeuron node 'name'"
};

// Attributes present on every neuron op.
struct CommonAttrs {
  CommonAttrs(const AttrReader& attrs, float v_init_default);

  std::string where;          // for messages
  int64_t T;                  // slices per call
  bool const_input;           // x is [N, ...] and repeats over the slices
  std::vector<float> theta;   // length 1 or C, > 0
  float v_init;
  int64_t channel_block;      // 0 or 1: x is [.., C, ...] plain; B > 1: ORT's NCHWc blocks of B channels
};

// ---------------------------------------------------------------------------------------------
// One call: geometry, pointers, validated inputs

struct Call {
  int64_t T = 1, N = 0, C = 0, inner = 1;
  int64_t E = 0;                  // elements per slice = N*C*inner
  bool const_input = false;
  const float* x = nullptr;
  float* y = nullptr;
  const float* state_in = nullptr;  // nullptr: start from the initial state
  float* state_out = nullptr;       // nullptr: not requested
  int64_t step = 0;                 // global index of slice 0
  const std::vector<float>* theta = nullptr;
  // Channels per block of ONNX Runtime's NCHWc layout (1: plain). Blocked, the 4-D shape
  // [N, C, H, W] holds [N, C/B, H, W, B] in memory: element e of a slice belongs to channel
  // ((e / (B*inner)) % (C/B)) * B + e % B, instead of (e / inner) % C.
  int64_t block = 1;

  // Input current of slice t (time-major rows t*N + n; const_input repeats row n).
  const float* XSlice(int64_t t) const { return const_input ? x : x + t * E; }
  float* YSlice(int64_t t) const { return y + t * E; }
  // Plane p of the incoming / outgoing state ([S, N, C, ...]).
  const float* StateIn(int64_t p) const { return state_in + p * E; }
  float* StateOut(int64_t p) const { return state_out + p * E; }
  // theta broadcast along axis 1 for elements [begin, begin + len) of a slice.
  void FillTheta(int64_t begin, int64_t len, float* out) const;
  // Membrane of elements [begin, begin + len): state plane 0 when a state is carried in, else
  // the initial v_init * scale[j] (scale: theta, or the neuron's unit, per element).
  void StartMembrane(int64_t begin, int64_t len, float v_init, const float* scale, float* v) const {
    if (state_in) {
      std::copy_n(StateIn(0) + begin, len, v);
    } else {
      for (int64_t j = 0; j < len; ++j) v[j] = v_init * scale[j];
    }
  }
  // table[channel of e] for elements [begin, begin + len) of a slice (table: C values).
  void FillPerChannel(int64_t begin, int64_t len, const float* table, float* out) const;
};

// Checks shapes, reads step, allocates y (and state_out). A non-OK status names the op and the problem.
// `state_planes` is S of the neuron. `decoded`: y is the window mean, [N, ...] instead of [T*N, ...].
Ort::Status PrepareCall(const CommonAttrs& attrs, int64_t state_planes, const Tensor<float>& x,
                        const OptionalInput& state, const OptionalStep& step, Tensor<float>& y,
                        const OptionalOutput& state_out, Call& call, bool decoded = false);

Ort::Status InvalidArgument(const std::string& where, const std::string& what);

// ---------------------------------------------------------------------------------------------
// Definitions (inline, so that the kernel files share them without a separate source file)

inline AttrReader::AttrReader(const OrtKernelInfo* info, const char* op_type) : info_(info) {
  std::string node;
  try {
    node = info_.GetNodeName();
  } catch (const Ort::Exception&) {
  }
  where_ = std::string("snncc.ops::") + op_type + " node '" + node + "'";
}

inline void AttrReader::Fail(const std::string& what) const {
  throw Ort::Exception(where_ + ": " + what, ORT_INVALID_ARGUMENT);
}

// True when the node carries the attribute with any type (ORT has no direct query).
inline bool AttrReader::Present(const char* name) const {
  const OrtKernelInfo* p = info_;
  const OrtApi& api = Ort::GetApi();
  int64_t i = 0;
  float f = 0;
  size_t n = 0;
  auto ok = [](OrtStatus* s) {
    const bool good = s == nullptr;
    Ort::GetApi().ReleaseStatus(s);
    return good;
  };
  return ok(api.KernelInfoGetAttribute_int64(p, name, &i)) ||
         ok(api.KernelInfoGetAttribute_float(p, name, &f)) ||
         ok(api.KernelInfoGetAttribute_string(p, name, nullptr, &n)) ||
         ok(api.KernelInfoGetAttributeArray_float(p, name, nullptr, &n)) ||
         ok(api.KernelInfoGetAttributeArray_int64(p, name, nullptr, &n));
}

inline void AttrReader::CheckArity() const {
  const size_t inputs = info_.GetInputCount(), outputs = info_.GetOutputCount();
  if (inputs != 1 && inputs != 3)
    Fail("inputs must be (x) or (x, state, step), got " + std::to_string(inputs) + " inputs");
  if (outputs != 1 && outputs != 2)
    Fail("outputs must be (y) or (y, state_out), got " + std::to_string(outputs) + " outputs");
  for (size_t i = 0; i < inputs; ++i)
    if (info_.GetInputName(i).empty()) Fail("input " + std::to_string(i) + " has an empty name (omitted)");
  for (size_t i = 0; i < outputs; ++i)
    if (info_.GetOutputName(i).empty()) Fail("output " + std::to_string(i) + " has an empty name (omitted)");
}

inline int64_t AttrReader::Int(const char* name, int64_t fallback) const {
  int64_t value = 0;
  OrtStatus* s = Ort::GetApi().KernelInfoGetAttribute_int64(info_, name, &value);
  if (s == nullptr) return value;
  Ort::GetApi().ReleaseStatus(s);
  if (Present(name)) Fail(std::string("attribute '") + name + "' must be an int");
  return fallback;
}

inline float AttrReader::Float(const char* name, float fallback) const {
  float value = 0;
  OrtStatus* s = Ort::GetApi().KernelInfoGetAttribute_float(info_, name, &value);
  if (s == nullptr) {
    if (!std::isfinite(value)) Fail(std::string("attribute '") + name + "' must be finite");
    return value;
  }
  Ort::GetApi().ReleaseStatus(s);
  if (Present(name)) Fail(std::string("attribute '") + name + "' must be a float");
  return fallback;
}

inline std::vector<int64_t> AttrReader::Ints(const char* name, const std::vector<int64_t>& fallback) const {
  size_t n = 0;
  OrtStatus* s = Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, nullptr, &n);
  if (s != nullptr) {
    Ort::GetApi().ReleaseStatus(s);
    if (Present(name)) Fail(std::string("attribute '") + name + "' must be a list of ints");
    return fallback;
  }
  std::vector<int64_t> values(n);
  if (n > 0) Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, values.data(), &n));
  return values;
}

inline std::vector<float> AttrReader::Floats(const char* name, const std::vector<float>& fallback) const {
  size_t n = 0;
  OrtStatus* s = Ort::GetApi().KernelInfoGetAttributeArray_float(info_, name, nullptr, &n);
  if (s != nullptr) {
    Ort::GetApi().ReleaseStatus(s);
    if (Present(name)) Fail(std::string("attribute '") + name + "' must be a list of floats");
    return fallback;
  }
  if (n == 0) {  // ORT reads an ints attribute as an empty float list
    OrtStatus* ints = Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, nullptr, &n);
    const bool has_ints = ints == nullptr && n > 0;
    Ort::GetApi().ReleaseStatus(ints);
    if (has_ints) Fail(std::string("attribute '") + name + "' must be a list of floats, got ints");
    n = 0;
  }
  std::vector<float> values(n);
  if (n > 0) Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttributeArray_float(info_, name, values.data(), &n));
  for (float v : values)
    if (!std::isfinite(v)) Fail(std::string("attribute '") + name + "' must hold finite values");
  return values;
}

inline std::string AttrReader::String(const char* name, const std::string& fallback) const {
  size_t n = 0;
  OrtStatus* s = Ort::GetApi().KernelInfoGetAttribute_string(info_, name, nullptr, &n);
  if (s != nullptr) {
    Ort::GetApi().ReleaseStatus(s);
    if (Present(name)) Fail(std::string("attribute '") + name + "' must be a string");
    return fallback;
  }
  std::string value(n, '\0');
  Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttribute_string(info_, name, &value[0], &n));
  value.resize(n > 0 ? n - 1 : 0);  // n counts the terminating NUL
  return value;
}

inline CommonAttrs::CommonAttrs(const AttrReader& attrs, float v_init_default)
    : where(attrs.where()),
      T(attrs.Int("T", 1)),
      const_input(attrs.Int("const_input", 0) != 0),
      theta(attrs.Floats("theta", {1.0f})),
      v_init(attrs.Float("v_init", v_init_default)),
      channel_block(attrs.Int("channel_block", 0)) {
  attrs.CheckArity();
  if (channel_block < 0) attrs.Fail("attribute 'channel_block' must be >= 0, got " + std::to_string(channel_block));
  if (T < 1) attrs.Fail("attribute 'T' must be an integer >= 1, got " + std::to_string(T));
  const int64_t ci = attrs.Int("const_input", 0);
  if (ci != 0 && ci != 1) attrs.Fail("attribute 'const_input' must be 0 or 1, got " + std::to_string(ci));
  if (theta.empty()) attrs.Fail("attribute 'theta' must hold 1 or C values, got an empty list");
  for (float t : theta)
    if (!(t > 0.0f)) attrs.Fail("attribute 'theta' must be > 0, got " + std::to_string(t));
}

inline Ort::Status InvalidArgument(const std::string& where, const std::string& what) {
  return Ort::Status((where + ": " + what).c_str(), ORT_INVALID_ARGUMENT);
}

inline std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// out[k] = base[k % B] for k < count, a multiple of B.
template <int64_t B>
inline void RepeatBlock(const float* base, float* out, int64_t count) {
  for (int64_t k = 0; k < count; k += B)
    for (int64_t l = 0; l < B; ++l) out[k + l] = base[l];
}

inline void Call::FillTheta(int64_t begin, int64_t len, float* out) const {
  const std::vector<float>& th = *theta;
  if (th.size() == 1) {
    std::fill(out, out + len, th[0]);
    return;
  }
  FillPerChannel(begin, len, th.data(), out);
}

inline void Call::FillPerChannel(int64_t begin, int64_t len, const float* table, float* out) const {
  int64_t e = begin;
  const int64_t end = begin + len;
  if (block > 1) {
    // runs of one channel block (B*inner elements) repeat its B values, lane e % B first
    const int64_t span = block * inner;
    while (e < end) {
      const int64_t run_end = std::min(end, (e / span + 1) * span);
      const float* base = table + ((e / span) % (C / block)) * block;
      if (e % block == 0 && (run_end - e) % block == 0) {  // whole blocks: the usual case
        if (block == 16 || block == 8) {
          if (block == 16) RepeatBlock<16>(base, out + (e - begin), run_end - e);
          if (block == 8) RepeatBlock<8>(base, out + (e - begin), run_end - e);
          e = run_end;
          continue;
        }
      }
      int64_t lane = e % block;
      for (; e < run_end; ++e) {
        out[e - begin] = base[lane];
        lane = lane + 1 == block ? 0 : lane + 1;
      }
    }
    return;
  }
  if (inner == 1) {  // [N, C] (a dense layer): the table itself repeats along the slice
    while (e < end) {
      const int64_t c = e % C;
      const int64_t n = std::min(end - e, C - c);
      std::copy_n(table + c, n, out + (e - begin));
      e += n;
    }
    return;
  }
  // element e of a slice belongs to channel (e / inner) % C; walk runs of equal channel
  while (e < end) {
    const int64_t run_end = std::min(end, (e / inner + 1) * inner);
    std::fill(out + (e - begin), out + (run_end - begin), table[(e / inner) % C]);
    e = run_end;
  }
}

inline Ort::Status PrepareCall(const CommonAttrs& attrs, int64_t state_planes, const Tensor<float>& x,
                               const OptionalInput& state, const OptionalStep& step, Tensor<float>& y,
                               const OptionalOutput& state_out, Call& call, bool decoded) {
  const std::string& where = attrs.where;
  const std::vector<int64_t>& xs = x.Shape();
  if (xs.size() < 2) return InvalidArgument(where, "input x must have rank >= 2 ([T*N, C, ...]), got " + ShapeText(xs));
  call.T = attrs.T;
  call.const_input = attrs.const_input;
  if (!attrs.const_input && xs[0] % attrs.T != 0)
    return InvalidArgument(where, "dim 0 of x (" + std::to_string(xs[0]) + ") is not a multiple of T=" +
                                      std::to_string(attrs.T) + " (x is time-major [T*N, C, ...])");
  call.N = attrs.const_input ? xs[0] : xs[0] / attrs.T;
  call.C = xs[1];
  call.inner = 1;
  for (size_t i = 2; i < xs.size(); ++i) call.inner *= xs[i];
  call.E = call.N * call.C * call.inner;
  if (attrs.theta.size() != 1 && static_cast<int64_t>(attrs.theta.size()) != call.C)
    return InvalidArgument(where, "attribute 'theta' has " + std::to_string(attrs.theta.size()) +
                                      " values but x has C=" + std::to_string(call.C) + " channels (need 1 or C)");
  call.theta = &attrs.theta;
  call.block = attrs.channel_block > 1 ? attrs.channel_block : 1;
  if (call.block > 1 && (xs.size() < 3 || call.C % call.block != 0))
    return InvalidArgument(where, "attribute 'channel_block' is " + std::to_string(call.block) +
                                      " but x " + ShapeText(xs) + " has no spatial axes or C is not a multiple of it");
  call.x = x.Data();

  std::vector<int64_t> state_shape{state_planes, call.N};
  state_shape.insert(state_shape.end(), xs.begin() + 1, xs.end());
  call.step = 0;
  call.state_in = nullptr;
  if (state.has_value() && step.has_value()) {  // both or neither: CommonAttrs checked the node's arity
    if ((*step)->NumberOfElement() != 1)
      return InvalidArgument(where, "input step must be an int64 scalar, got shape " + ShapeText((*step)->Shape()));
    call.step = *(*step)->Data();
    if (call.step < 0) return InvalidArgument(where, "input step must be >= 0, got " + std::to_string(call.step));
    if ((*state)->Shape() != state_shape)
      return InvalidArgument(where, "input state must have shape " + ShapeText(state_shape) + " ([S, N, C, ...]), got " +
                                        ShapeText((*state)->Shape()));
    if (call.step > 0) call.state_in = (*state)->Data();  // at global step 0 the initial state replaces it
  }

  std::vector<int64_t> y_shape(xs);
  y_shape[0] = decoded ? call.N : call.T * call.N;  // decoded: one window mean per row
  call.y = y.Allocate(y_shape);
  call.state_out = state_out.has_value() ? (*state_out)->Allocate(state_shape) : nullptr;
  return Ort::Status(nullptr);
}

// ---------------------------------------------------------------------------------------------
// Parallel loop over the elements of one slice, in chunks of kChunk: fn(begin, len).

// `chunk` (a multiple of kChunk for kernels that keep kChunk-sized local arrays per call of fn)
// sets the work item size; a larger one pays the thread pool's per-item cost less often.
template <class Fn>
void ForEachChunk(OrtKernelContext* context, int64_t E, Fn& fn, int64_t chunk = kChunk) {
  struct Job {
    Fn* fn;
    int64_t E, chunk;
  } job{&fn, E, chunk};
  const int64_t chunks = (E + chunk - 1) / chunk;
  if (chunks == 0) return;
  if (chunks == 1) {
    fn(int64_t{0}, E);
    return;
  }
  Ort::KernelContext(context).ParallelFor(
      [](void* data, size_t i) {
        const Job& j = *static_cast<const Job*>(data);
        const int64_t begin = static_cast<int64_t>(i) * j.chunk;
        (*j.fn)(begin, std::min(j.chunk, j.E - begin));
      },
      static_cast<size_t>(chunks), 0, &job);
}

// ORT's pooled size of one axis (onnxruntime pool_attributes.h ComputeOutputSize): input size
// `in`, kernel k, stride s, pads p0/p1, dilation d, ceil mode `ceil`. Shared by the gate kernel
// and the shape inference of ops.cc.
inline int64_t PooledSize(int64_t in, int64_t k, int64_t s, int64_t p0, int64_t p1, int64_t d, bool ceil) {
  const int64_t span = (k - 1) * d + 1;
  const int64_t room = in + p0 + p1 - span;
  if (!ceil) return room / s + 1;
  int64_t out = (room + s - 1) / s + 1;
  if ((out - 1) * s >= in + p0) --out;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Exact float helpers (bit-identical to NumPy float32)

// clip(floor(z), 0, hi) for hi >= 0 an integer-valued float below 2^24, using SSE2-vectorisable
// conversions: z is first clamped to [-1, hi + 1], which leaves the result unchanged. A NaN
// clamps to -1 and gives 0, as in FloorClipArray's vector bodies (the NumPy references give NaN;
// converting a NaN to int is undefined, and GCC's -march=native code kept it NaN here). A zero
// level is +0, as the vector bodies' max(floored, +0) gives it: the truncation of -0.0 (z in
// (-1, -0]) keeps its sign, and `floored < 0 ? 0 : floored` had returned -0.0 in scalar tails
// only. (The NumPy references and the ONNX function bodies may give -0.0 there: equal values.)
inline float FloorClip(float z, float hi) {
  float zc = z >= -1.0f ? z : -1.0f;
  zc = zc > hi + 1.0f ? hi + 1.0f : zc;
  const float truncated = static_cast<float>(static_cast<int32_t>(zc));
  const float floored = truncated > zc ? truncated - 1.0f : truncated;
  const float low = floored > 0.0f ? floored : 0.0f;
  return low > hi ? hi : low;
}

// Runs of one channel block in elements [begin, begin + len) of a slice of a call in ORT's NCHWc
// layout with W-channel blocks (call.block == W; begin and len multiples of W, as ForEachChunk's
// items are): run(e, stop, c0) per run [e, stop) of whole W-element vectors, each holding
// channels c0 ... c0 + W - 1 in lane order. A per-channel constant is then one register per run
// (Lanes16 / Lanes8), not a per-element table. W = 16: AVX-512's blocks; W = 8: AVX2's.
template <int W, class Run>
inline void ForEachBlockRun(const Call& call, int64_t begin, int64_t len, Run&& run) {
  const int64_t span = W * call.inner, blocks = call.C / W, end = begin + len;
  for (int64_t e = begin; e < end;) {
    const int64_t stop = std::min(end, (e / span + 1) * span);
    run(e, stop, ((e / span) % blocks) * W);
    e = stop;
  }
}

#if defined(__AVX2__)
// table[c0 ... c0 + 7] as one register (a table of one value: that value in every lane).
inline __m256 Lanes8(const std::vector<float>& table, int64_t c0) {
  return table.size() == 1 ? _mm256_set1_ps(table[0]) : _mm256_loadu_ps(&table[c0]);
}
#endif

// a[j] = FloorClip(a[j], hi) for j < n. 16, 8 or 4 lanes at a time (AVX-512, AVX2, or SSE2: every
// x86-64; the widest the build targets) through max/min/truncate, which GCC does not derive from FloorClip's NaN-safe selects (those compile to
// about 3x more blend instructions). Equal to FloorClip for every input, NaN included (both give
// 0: max(NaN, -1) = -1 here, and FloorClip's first select sends a NaN to -1), and -0.0 (both +0).
// (GCC 12 flags its own AVX-512 conversion intrinsics with -Wmaybe-uninitialized: a false alarm.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(__AVX512F__)
// FloorClip of 16 lanes (FloorClipArray's AVX-512 body; for kernels that keep values in registers)
struct FloorClip16 {
  explicit FloorClip16(float hi)
      : lo(_mm512_set1_ps(-1.0f)), top(_mm512_set1_ps(hi + 1.0f)), h(_mm512_set1_ps(hi)),
        zero(_mm512_setzero_ps()), one(_mm512_set1_ps(1.0f)) {}
  __m512 operator()(__m512 z) const {
    const __m512 zc = _mm512_min_ps(_mm512_max_ps(z, lo), top);
    const __m512 t = _mm512_cvtepi32_ps(_mm512_cvttps_epi32(zc));
    const __m512 floored = _mm512_mask_sub_ps(t, _mm512_cmp_ps_mask(t, zc, _CMP_GT_OQ), t, one);
    return _mm512_min_ps(_mm512_max_ps(floored, zero), h);
  }
  __m512 lo, top, h, zero, one;
};

// The decoded bit-serial quantizer's input for 16 lanes, (window mean + shift) * inv_unit: from
// one constant current at x, or from the T slices x, x + stride, ... (summed in slice order).
// Shared by BitSerialNeuron and BitSerialAveragePool, which must decode alike.
inline __m512 WindowCurrent16(const float* x, int64_t stride, int64_t T, bool const_input,
                              __m512 inv_B, __m512 shift, __m512 inv_unit) {
  if (const_input) return _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(x), shift), inv_unit);
  __m512 acc = _mm512_add_ps(_mm512_setzero_ps(), _mm512_loadu_ps(x));
  for (int64_t t = 1; t < T; ++t) acc = _mm512_add_ps(acc, _mm512_loadu_ps(x + t * stride));
  return _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(acc, inv_B), shift), inv_unit);
}

// table[c0 ... c0 + 15] as one register (a table of one value: that value in every lane).
inline __m512 Lanes16(const std::vector<float>& table, int64_t c0) {
  return table.size() == 1 ? _mm512_set1_ps(table[0]) : _mm512_loadu_ps(&table[c0]);
}
#endif

#if defined(__AVX2__)
// FloorClip of 8 lanes (FloorClipArray's AVX2 body, for kernels that keep values in registers:
// AVX2's 8-channel blocks)
struct FloorClip8 {
  explicit FloorClip8(float hi)
      : lo(_mm256_set1_ps(-1.0f)), top(_mm256_set1_ps(hi + 1.0f)), h(_mm256_set1_ps(hi)),
        zero(_mm256_setzero_ps()), one(_mm256_set1_ps(1.0f)) {}
  __m256 operator()(__m256 z) const {
    const __m256 zc = _mm256_min_ps(_mm256_max_ps(z, lo), top);
    const __m256 t = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(zc));
    const __m256 floored = _mm256_sub_ps(t, _mm256_and_ps(_mm256_cmp_ps(t, zc, _CMP_GT_OQ), one));
    return _mm256_min_ps(_mm256_max_ps(floored, zero), h);
  }
  __m256 lo, top, h, zero, one;
};

// WindowCurrent16 for 8 lanes: the same sums in the same order.
inline __m256 WindowCurrent8(const float* x, int64_t stride, int64_t T, bool const_input,
                             __m256 inv_B, __m256 shift, __m256 inv_unit) {
  if (const_input) return _mm256_mul_ps(_mm256_add_ps(_mm256_loadu_ps(x), shift), inv_unit);
  __m256 acc = _mm256_add_ps(_mm256_setzero_ps(), _mm256_loadu_ps(x));
  for (int64_t t = 1; t < T; ++t) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + t * stride));
  return _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(acc, inv_B), shift), inv_unit);
}
#endif

inline void FloorClipArray(float* a, int64_t n, float hi) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const FloorClip16 clip(hi);
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(a + j, clip(_mm512_loadu_ps(a + j)));
#elif defined(__AVX2__)
  const FloorClip8 clip(hi);
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(a + j, clip(_mm256_loadu_ps(a + j)));
#endif
#if defined(__SSE2__)
  const __m128 lo = _mm_set1_ps(-1.0f), top = _mm_set1_ps(hi + 1.0f), h = _mm_set1_ps(hi);
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
  for (; j + 4 <= n; j += 4) {
    const __m128 zc = _mm_min_ps(_mm_max_ps(_mm_loadu_ps(a + j), lo), top);
    const __m128 t = _mm_cvtepi32_ps(_mm_cvttps_epi32(zc));
    const __m128 floored = _mm_sub_ps(t, _mm_and_ps(_mm_cmpgt_ps(t, zc), one));
    _mm_storeu_ps(a + j, _mm_min_ps(_mm_max_ps(floored, zero), h));
  }
#endif
  for (; j < n; ++j) a[j] = FloorClip(a[j], hi);
}
#pragma GCC diagnostic pop

}  // namespace snncc

// Defines the factory `snncc::Make<Op>()` that ops.cc lists; Op is both the struct and the op name.
#define SNNCC_DEFINE_OP(Op)                                                   \
  namespace snncc {                                                           \
  Ort::Custom::OrtLiteCustomOp* Make##Op() {                                  \
    return Ort::Custom::CreateLiteCustomOp<Op>(#Op, "CPUExecutionProvider"); \
  }                                                                           \
  }
