// GroupNeuron (key "gn"): tau IF members sharing one membrane; multi-level output. State planes: v.
//   u = theta / float(tau) ; inv_u = float(tau) / theta ; init: v = v_init * u
//   each slice: v = v + x ; c = clip(floor(v * inv_u), 0, tau) ; v = v - c * u ; y = c * u
#include "../neuron_common.h"

namespace snncc {

struct GroupNeuron {
  GroupNeuron(const OrtApi*, const OrtKernelInfo* info) : GroupNeuron(AttrReader(info, "GroupNeuron")) {}
  explicit GroupNeuron(const AttrReader& attrs) : attrs_(attrs, 0.5f), tau_(attrs.Int("tau", 4)) {
    if (tau_ < 1 || tau_ > (1 << 23))
      attrs.Fail("attribute 'tau' must be an integer in [1, 2^23], got " + std::to_string(tau_));
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, OptionalInput state,
                      OptionalStep step, Tensor<float>& y, OptionalOutput state_out) {
    Call call;
    Ort::Status status = PrepareCall(attrs_, 1, x, state, step, y, state_out, call);
    if (!status.IsOK()) return status;
    const float v_init = attrs_.v_init, tau = static_cast<float>(tau_);
    auto chunk = [&](int64_t begin, int64_t len) {
      float u[kChunk], inv_u[kChunk], v[kChunk], m[kChunk], c[kChunk];
      call.FillTheta(begin, len, u);
      for (int64_t j = 0; j < len; ++j) {
        inv_u[j] = tau / u[j];
        u[j] = u[j] / tau;
      }
      call.StartMembrane(begin, len, v_init, u, v);
      for (int64_t t = 0; t < call.T; ++t) {
        const float* xt = call.XSlice(t) + begin;
        float* yt = call.YSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) {
          m[j] = v[j] + xt[j];
          c[j] = m[j] * inv_u[j];
        }
        FloorClipArray(c, len, tau);  // c = FloorClip(m * inv_u, tau), a vector at a time
        for (int64_t j = 0; j < len; ++j) {
          const float out = c[j] * u[j];
          v[j] = m[j] - out;
          yt[j] = out;
        }
      }
      if (call.state_out) std::copy_n(v, len, call.StateOut(0) + begin);
    };
    ForEachChunk(context, call.E, chunk);
    return status;
  }

  CommonAttrs attrs_;
  int64_t tau_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(GroupNeuron)
