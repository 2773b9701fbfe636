// MTNeuron (key "mt"): multi-threshold neuron, thresholds theta_k = theta * fractions[k]. State planes: v.
//   init: v = v_init * theta ; each slice: m = v + x, then
//   parallel: y = 0 ; for k = n-1 .. 0: y = (m >= theta_k) ? theta_k : y      (soft reset: v = m - y)
//   cascade:  r = m ; y = 0 ; for k = 0 .. n-1: if r >= theta_k: r -= theta_k, y += theta_k   (soft: v = r)
//   hard reset (both modes): v = (y > 0) ? 0 : m
#include "../neuron_common.h"

namespace snncc {

struct MTNeuron {
  MTNeuron(const OrtApi*, const OrtKernelInfo* info) : MTNeuron(AttrReader(info, "MTNeuron")) {}
  explicit MTNeuron(const AttrReader& attrs)
      : attrs_(attrs, 0.5f),
        fractions_(attrs.Floats("fractions", {1.0f})),
        cascade_(ParseChoice(attrs, "mode", "parallel", "cascade")),
        hard_reset_(ParseChoice(attrs, "reset", "soft", "hard")) {
    if (fractions_.empty()) attrs.Fail("attribute 'fractions' must hold at least one value");
    for (size_t k = 0; k < fractions_.size(); ++k) {
      if (!(fractions_[k] > 0.0f && fractions_[k] <= 1.0f)) attrs.Fail("attribute 'fractions' must be in (0, 1]");
      if (k > 0 && !(fractions_[k] < fractions_[k - 1]))
        attrs.Fail("attribute 'fractions' must be strictly descending");
    }
  }

  // false for `first`, true for `second`; anything else is an error.
  static bool ParseChoice(const AttrReader& attrs, const char* name, const char* first, const char* second) {
    const std::string value = attrs.String(name, first);
    if (value != first && value != second)
      attrs.Fail(std::string("attribute '") + name + "' must be '" + first + "' or '" + second + "', got '" +
                 value + "'");
    return value == second;
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, OptionalInput state,
                      OptionalStep step, Tensor<float>& y, OptionalOutput state_out) {
    Call call;
    Ort::Status status = PrepareCall(attrs_, 1, x, state, step, y, state_out, call);
    if (!status.IsOK()) return status;
    const float v_init = attrs_.v_init;
    const int64_t n = static_cast<int64_t>(fractions_.size());
    auto chunk = [&](int64_t begin, int64_t len) {
      if (!cascade_ && !hard_reset_ && n <= kFusedMax) return ParallelSoft(call, begin, len, n, v_init);
      float th[kChunk], v[kChunk], m[kChunk], r[kChunk], out[kChunk];
      std::vector<float> th_k(static_cast<size_t>(n * len));  // threshold k of element j at k*len + j
      call.FillTheta(begin, len, th);
      for (int64_t k = 0; k < n; ++k)
        for (int64_t j = 0; j < len; ++j) th_k[k * len + j] = th[j] * fractions_[k];
      call.StartMembrane(begin, len, v_init, th, v);
      for (int64_t t = 0; t < call.T; ++t) {
        const float* xt = call.XSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) {
          m[j] = v[j] + xt[j];
          r[j] = m[j];
          out[j] = 0.0f;
        }
        if (cascade_) {
          for (int64_t k = 0; k < n; ++k) {
            const float* tk = th_k.data() + k * len;
            for (int64_t j = 0; j < len; ++j) {
              // r - 0 == r and out + 0 == out exactly (out starts at +0 and only grows)
              const float fired = r[j] >= tk[j] ? tk[j] : 0.0f;
              r[j] = r[j] - fired;
              out[j] = out[j] + fired;
            }
          }
        } else {
          for (int64_t k = n - 1; k >= 0; --k) {
            const float* tk = th_k.data() + k * len;
            for (int64_t j = 0; j < len; ++j) out[j] = m[j] >= tk[j] ? tk[j] : out[j];
          }
        }
        float* yt = call.YSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) {
          const float soft = cascade_ ? r[j] : m[j] - out[j];
          v[j] = hard_reset_ ? (out[j] > 0.0f ? 0.0f : m[j]) : soft;
          yt[j] = out[j];
        }
      }
      if (call.state_out) std::copy_n(v, len, call.StateOut(0) + begin);
    };
    ForEachChunk(context, call.E, chunk);
    return status;
  }

  // The default form (parallel, soft reset, at most kFusedMax thresholds) in one pass per slice:
  // the same selects in the same order as the general loop, with the threshold count a
  // compile-time constant so that the element loop vectorises.
  static constexpr int64_t kFusedMax = 8;

  void ParallelSoft(const Call& call, int64_t begin, int64_t len, int64_t n, float v_init) const {
    switch (n) {
      case 1: return ParallelSoftN<1>(call, begin, len, v_init);
      case 2: return ParallelSoftN<2>(call, begin, len, v_init);
      case 3: return ParallelSoftN<3>(call, begin, len, v_init);
      case 4: return ParallelSoftN<4>(call, begin, len, v_init);
      case 5: return ParallelSoftN<5>(call, begin, len, v_init);
      case 6: return ParallelSoftN<6>(call, begin, len, v_init);
      case 7: return ParallelSoftN<7>(call, begin, len, v_init);
      default: return ParallelSoftN<8>(call, begin, len, v_init);
    }
  }

  template <int N>
  void ParallelSoftN(const Call& call, int64_t begin, int64_t len, float v_init) const {
#if defined(__AVX512F__)
    if (call.block == 16) return ParallelSoft16<N>(call, begin, len, v_init);
#endif
#if defined(__AVX2__)
    if (call.block == 8) return ParallelSoft8<N>(call, begin, len, v_init);
#endif
    float th[kChunk], v[kChunk], th_k[N][kChunk];
    call.FillTheta(begin, len, th);
    for (int k = 0; k < N; ++k)
      for (int64_t j = 0; j < len; ++j) th_k[k][j] = th[j] * fractions_[k];
    call.StartMembrane(begin, len, v_init, th, v);
    for (int64_t t = 0; t < call.T; ++t) {
      const float* xt = call.XSlice(t) + begin;
      float* yt = call.YSlice(t) + begin;
      for (int64_t j = 0; j < len; ++j) {
        const float m = v[j] + xt[j];
        float out = 0.0f;
        for (int k = N - 1; k >= 0; --k) out = m >= th_k[k][j] ? th_k[k][j] : out;
        v[j] = m - out;
        yt[j] = out;
      }
    }
    if (call.state_out) std::copy_n(v, len, call.StateOut(0) + begin);
  }

#if defined(__AVX512F__)
  // ParallelSoftN in ORT's NCHWc layout with 16-channel blocks: the N thresholds of a block are
  // N registers and the membrane a register over the T slices; the same operations in order.
  template <int N>
  void ParallelSoft16(const Call& call, int64_t begin, int64_t len, float v_init) const {
    const __m512 vi = _mm512_set1_ps(v_init);
    ForEachBlockRun<16>(call, begin, len, [&](int64_t e, int64_t stop, int64_t c0) {
      const __m512 th = Lanes16(attrs_.theta, c0);
      __m512 th_k[N];
      for (int k = 0; k < N; ++k) th_k[k] = _mm512_mul_ps(th, _mm512_set1_ps(fractions_[k]));
      for (; e < stop; e += 16) {
        __m512 v = call.state_in ? _mm512_loadu_ps(call.StateIn(0) + e) : _mm512_mul_ps(vi, th);
        for (int64_t t = 0; t < call.T; ++t) {
          const __m512 m = _mm512_add_ps(v, _mm512_loadu_ps(call.XSlice(t) + e));
          __m512 out = _mm512_setzero_ps();
          for (int k = N - 1; k >= 0; --k)
            out = _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(m, th_k[k], _CMP_GE_OQ), th_k[k]);
          v = _mm512_sub_ps(m, out);
          _mm512_storeu_ps(call.YSlice(t) + e, out);
        }
        if (call.state_out) _mm512_storeu_ps(call.StateOut(0) + e, v);
      }
    });
  }
#endif

#if defined(__AVX2__)
  // ParallelSoft16 for AVX2's 8-channel blocks: the same operations in the same order (y bit for
  // bit; v too, but for which NaN's payload survives where a NaN state meets a NaN current).
  template <int N>
  void ParallelSoft8(const Call& call, int64_t begin, int64_t len, float v_init) const {
    const __m256 vi = _mm256_set1_ps(v_init);
    ForEachBlockRun<8>(call, begin, len, [&](int64_t e, int64_t stop, int64_t c0) {
      const __m256 th = Lanes8(attrs_.theta, c0);
      __m256 th_k[N];
      for (int k = 0; k < N; ++k) th_k[k] = _mm256_mul_ps(th, _mm256_set1_ps(fractions_[k]));
      for (; e < stop; e += 8) {
        __m256 v = call.state_in ? _mm256_loadu_ps(call.StateIn(0) + e) : _mm256_mul_ps(vi, th);
        for (int64_t t = 0; t < call.T; ++t) {
          const __m256 m = _mm256_add_ps(v, _mm256_loadu_ps(call.XSlice(t) + e));
          __m256 out = _mm256_setzero_ps();
          for (int k = N - 1; k >= 0; --k)
            out = _mm256_blendv_ps(out, th_k[k], _mm256_cmp_ps(m, th_k[k], _CMP_GE_OQ));
          v = _mm256_sub_ps(m, out);
          _mm256_storeu_ps(call.YSlice(t) + e, out);
        }
        if (call.state_out) _mm256_storeu_ps(call.StateOut(0) + e, v);
      }
    });
  }
#endif

  CommonAttrs attrs_;
  std::vector<float> fractions_;
  bool cascade_, hard_reset_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(MTNeuron)
