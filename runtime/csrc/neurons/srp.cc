// SRPNeuron (key "srp"): IF neuron with a tau-slice pre-run and a residual-membrane mask.
// State planes: v, keep.   init: v = v_init * theta ; keep = 1
//   slice at global step g: m = v + x ; s = m >= theta ; v = s ? m - theta : m
//     y = (g < tau) ? (s ? theta : 0) : ((s and keep) ? theta : 0)
//     if g == tau - 1: keep = (v > tol * theta) ? 1 : 0 ; v = v_init * theta
#include "../neuron_common.h"

namespace snncc {

struct SRPNeuron {
  SRPNeuron(const OrtApi*, const OrtKernelInfo* info) : SRPNeuron(AttrReader(info, "SRPNeuron")) {}
  explicit SRPNeuron(const AttrReader& attrs)
      : attrs_(attrs, 0.5f), tau_(attrs.Int("tau", 4)), tol_(attrs.Float("tol", 0.001f)) {
    if (tau_ < 0) attrs.Fail("attribute 'tau' must be an integer >= 0, got " + std::to_string(tau_));
    if (tol_ < 0.0f) attrs.Fail("attribute 'tol' must be >= 0, got " + std::to_string(tol_));
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, OptionalInput state,
                      OptionalStep step, Tensor<float>& y, OptionalOutput state_out) {
    Call call;
    Ort::Status status = PrepareCall(attrs_, 2, x, state, step, y, state_out, call);
    if (!status.IsOK()) return status;
    const float v_init = attrs_.v_init, tol = tol_;
    const int64_t tau = tau_;
    auto chunk = [&](int64_t begin, int64_t len) {
      float th[kChunk], v[kChunk], keep[kChunk];
      call.FillTheta(begin, len, th);
      if (call.state_in) {
        std::copy_n(call.StateIn(0) + begin, len, v);
        std::copy_n(call.StateIn(1) + begin, len, keep);
      } else {
        for (int64_t j = 0; j < len; ++j) v[j] = v_init * th[j];
        std::fill(keep, keep + len, 1.0f);
      }
      for (int64_t t = 0; t < call.T; ++t) {
        const int64_t g = call.step + t;
        const bool pre_run = g < tau;
        const float* xt = call.XSlice(t) + begin;
        float* yt = call.YSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) {
          const float m = v[j] + xt[j];
          const bool s = m >= th[j];
          v[j] = s ? m - th[j] : m;
          const bool emit = pre_run ? s : (s && keep[j] != 0.0f);
          yt[j] = emit ? th[j] : 0.0f;
        }
        if (g == tau - 1) {
          for (int64_t j = 0; j < len; ++j) {
            keep[j] = v[j] > tol * th[j] ? 1.0f : 0.0f;
            v[j] = v_init * th[j];
          }
        }
      }
      if (call.state_out) {
        std::copy_n(v, len, call.StateOut(0) + begin);
        std::copy_n(keep, len, call.StateOut(1) + begin);
      }
    };
    ForEachChunk(context, call.E, chunk);
    return status;
  }

  CommonAttrs attrs_;
  int64_t tau_;
  float tol_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(SRPNeuron)
