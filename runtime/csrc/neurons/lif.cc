// LIFNeuron (key "lif"): IIR-SNN leaky neuron, soft reset, fires on u > theta. State planes: u.
//   init: u = v_init * theta
//   each slice: u = leak * u ; u = u + x ; s = u > theta ; u = s ? u - theta : u ; y = s ? amplitude : 0
#include "../neuron_common.h"

namespace snncc {

struct LIFNeuron {
  LIFNeuron(const OrtApi*, const OrtKernelInfo* info)
      : LIFNeuron(AttrReader(info, "LIFNeuron")) {}
  explicit LIFNeuron(const AttrReader& attrs)
      : attrs_(attrs, 0.0f), leak_(attrs.Float("leak", 1.0f)), amplitude_(attrs.Float("amplitude", 1.0f)) {
    if (!(leak_ > 0.0f && leak_ <= 1.0f)) attrs.Fail("attribute 'leak' must be in (0, 1], got " + std::to_string(leak_));
    if (!(amplitude_ > 0.0f)) attrs.Fail("attribute 'amplitude' must be > 0, got " + std::to_string(amplitude_));
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, OptionalInput state,
                      OptionalStep step, Tensor<float>& y, OptionalOutput state_out) {
    Call call;
    Ort::Status status = PrepareCall(attrs_, 1, x, state, step, y, state_out, call);
    if (!status.IsOK()) return status;
    const float v_init = attrs_.v_init, leak = leak_, amplitude = amplitude_;
    auto chunk = [&call, v_init, leak, amplitude](int64_t begin, int64_t len) {
      float th[kChunk], u[kChunk];
      call.FillTheta(begin, len, th);
      call.StartMembrane(begin, len, v_init, th, u);
      for (int64_t t = 0; t < call.T; ++t) {
        const float* xt = call.XSlice(t) + begin;
        float* yt = call.YSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) {
          const float leaked = leak * u[j];
          const float m = leaked + xt[j];
          const bool s = m > th[j];
          u[j] = s ? m - th[j] : m;
          yt[j] = s ? amplitude : 0.0f;
        }
      }
      if (call.state_out) std::copy_n(u, len, call.StateOut(0) + begin);
    };
    ForEachChunk(context, call.E, chunk);
    return status;
  }

  CommonAttrs attrs_;
  float leak_, amplitude_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(LIFNeuron)
