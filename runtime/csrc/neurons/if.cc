// IFNeuron (key "if"): QCFS integrate-and-fire, soft reset, fires on m >= theta. State planes: v.
//   init: v = v_init * theta
//   each slice: m = v + x ; s = m >= theta ; v = s ? m - theta : m ; y = s ? theta : 0
#include "../neuron_common.h"

namespace snncc {

struct IFNeuron {
  IFNeuron(const OrtApi*, const OrtKernelInfo* info) : attrs_(AttrReader(info, "IFNeuron"), 0.5f) {}

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, OptionalInput state,
                      OptionalStep step, Tensor<float>& y, OptionalOutput state_out) {
    Call call;
    Ort::Status status = PrepareCall(attrs_, 1, x, state, step, y, state_out, call);
    if (!status.IsOK()) return status;
    const float v_init = attrs_.v_init;
#if defined(__AVX512F__)
    if (call.block == 16) {  // the update below, one register of 16 channels at a time
      const __m512 vi = _mm512_set1_ps(v_init);
      auto chunk16 = [&](int64_t begin, int64_t len) {
        ForEachBlockRun<16>(call, begin, len, [&](int64_t e, int64_t stop, int64_t c0) {
          const __m512 th = Lanes16(attrs_.theta, c0);
          for (; e < stop; e += 16) {
            __m512 v = call.state_in ? _mm512_loadu_ps(call.StateIn(0) + e) : _mm512_mul_ps(vi, th);
            for (int64_t t = 0; t < call.T; ++t) {
              const __m512 m = _mm512_add_ps(v, _mm512_loadu_ps(call.XSlice(t) + e));
              const __mmask16 s = _mm512_cmp_ps_mask(m, th, _CMP_GE_OQ);
              v = _mm512_mask_sub_ps(m, s, m, th);
              _mm512_storeu_ps(call.YSlice(t) + e, _mm512_maskz_mov_ps(s, th));
            }
            if (call.state_out) _mm512_storeu_ps(call.StateOut(0) + e, v);
          }
        });
      };
      ForEachChunk(context, call.E, chunk16);
      return status;
    }
#endif
#if defined(__AVX2__)
    // the same update, one AVX2 register of 8 channels at a time: y bit for bit, and v too but
    // for which NaN's payload survives where a NaN state meets a NaN current (the add's choice)
    if (call.block == 8) {
      const __m256 vi = _mm256_set1_ps(v_init);
      auto chunk8 = [&](int64_t begin, int64_t len) {
        ForEachBlockRun<8>(call, begin, len, [&](int64_t e, int64_t stop, int64_t c0) {
          const __m256 th = Lanes8(attrs_.theta, c0);
          for (; e < stop; e += 8) {
            __m256 v = call.state_in ? _mm256_loadu_ps(call.StateIn(0) + e) : _mm256_mul_ps(vi, th);
            for (int64_t t = 0; t < call.T; ++t) {
              const __m256 m = _mm256_add_ps(v, _mm256_loadu_ps(call.XSlice(t) + e));
              const __m256 s = _mm256_cmp_ps(m, th, _CMP_GE_OQ);
              v = _mm256_blendv_ps(m, _mm256_sub_ps(m, th), s);
              _mm256_storeu_ps(call.YSlice(t) + e, _mm256_and_ps(s, th));  // theta or +0
            }
            if (call.state_out) _mm256_storeu_ps(call.StateOut(0) + e, v);
          }
        });
      };
      ForEachChunk(context, call.E, chunk8);
      return status;
    }
#endif
    auto chunk = [&](int64_t begin, int64_t len) {
      float th[kChunk], v[kChunk];
      call.FillTheta(begin, len, th);
      call.StartMembrane(begin, len, v_init, th, v);
      for (int64_t t = 0; t < call.T; ++t) {
        const float* xt = call.XSlice(t) + begin;
        float* yt = call.YSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) {
          const float m = v[j] + xt[j];
          const bool s = m >= th[j];
          v[j] = s ? m - th[j] : m;
          yt[j] = s ? th[j] : 0.0f;
        }
      }
      if (call.state_out) std::copy_n(v, len, call.StateOut(0) + begin);
    };
    ForEachChunk(context, call.E, chunk);
    return status;
  }

  CommonAttrs attrs_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(IFNeuron)
