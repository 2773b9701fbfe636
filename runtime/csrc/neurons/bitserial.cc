// BitSerialNeuron (key "bitserial"): accumulate, then fire the bits of the quantized value.
// State planes: acc, q.   B = bits or T ; L = float(2^B - 1) ; unit = theta / L ; inv_unit = L / theta
//   folded (no state; needs B == T): acc = sum_t x_t ; U = acc * (1/B) + v_init * unit
//          (const_input: U = x + v_init * unit) ; q = clip(floor(U * inv_unit), 0, L)
//          slice k carries bit k of q: y_k = bit_k(q) ? float(B * 2^k) * unit : 0 ; state_out = (0, q)
//   decoded (folded, attribute decoded=1): y = q * unit, one row per sample ([N, ...]): the mean of
//          the B bit slices (the window-collapsed schedule's output; events = popcount(q))
//   streaming (state given), slice at global step g, k = g mod B:
//          y = bit_k(q) ? float(B * 2^k) * unit : 0 ; acc = acc + x ;
//          if k == B-1: q = clip(floor((acc * (1/B) + v_init * unit) * inv_unit), 0, L), acc = 0
#include "../neuron_common.h"

namespace snncc {

constexpr int64_t kMaxBits = 16;  // as snncc/neurons/bitserial.py MAX_BITS

struct BitSerialNeuron {
  BitSerialNeuron(const OrtApi*, const OrtKernelInfo* info) : BitSerialNeuron(AttrReader(info, "BitSerialNeuron")) {}
  explicit BitSerialNeuron(const AttrReader& attrs)
      : attrs_(attrs, 0.5f), bits_(attrs.Int("bits", 0)), decoded_(attrs.Int("decoded", 0)) {
    if (decoded_ != 0 && decoded_ != 1)
      attrs.Fail("attribute 'decoded' must be 0 or 1, got " + std::to_string(decoded_));
    if (bits_ < 0 || bits_ > kMaxBits)
      attrs.Fail("attribute 'bits' must be in [0, 16] (0: use T), got " + std::to_string(bits_));
    if (bits_ == 0 && attrs_.T > kMaxBits)
      attrs.Fail("attribute 'T' must be <= 16 when 'bits' is 0 (B = T bits), got " + std::to_string(attrs_.T));
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, OptionalInput state,
                      OptionalStep step, Tensor<float>& y, OptionalOutput state_out) {
    Call call;
    const bool streaming = state.has_value();
    if (streaming && decoded_)
      return InvalidArgument(attrs_.where, "decoded=1 is a folded-schedule output (no state input)");
    Ort::Status status = PrepareCall(attrs_, 2, x, state, step, y, state_out, call, decoded_ != 0);
    if (!status.IsOK()) return status;
    const int64_t B = bits_ > 0 ? bits_ : attrs_.T;
    if (!streaming && B != attrs_.T)
      return InvalidArgument(attrs_.where, "the folded schedule (no state input) needs bits == T or bits == 0, got bits=" +
                                               std::to_string(bits_) + ", T=" + std::to_string(attrs_.T));
    const float L = static_cast<float>((int64_t{1} << B) - 1);
    const float inv_B = 1.0f / static_cast<float>(B);
    const float v_init = attrs_.v_init;
    if (decoded_) return Decoded(context, call, L, inv_B);
    auto chunk = [&](int64_t begin, int64_t len) {
      float unit[kChunk], inv_unit[kChunk], shift[kChunk], acc[kChunk], q[kChunk];
      call.FillTheta(begin, len, unit);
      for (int64_t j = 0; j < len; ++j) Constants(unit[j], L, v_init, unit[j], inv_unit[j], shift[j]);
      if (streaming) {
        Stream(call, begin, len, B, L, inv_B, unit, inv_unit, shift, acc, q);
      } else {
        Fold(call, begin, len, B, L, inv_B, unit, inv_unit, shift, acc, q);
      }
      if (call.state_out) {
        std::copy_n(acc, len, call.StateOut(0) + begin);
        std::copy_n(q, len, call.StateOut(1) + begin);
      }
    };
    ForEachChunk(context, call.E, chunk);
    return status;
  }

  // unit = theta / L, inv_unit = L / theta, shift = v_init * unit: the op doc's float32
  // expressions, shared by the chunked path and the decoded one (bit-exact with each other).
  static void Constants(float theta, float L, float v_init, float& unit, float& inv_unit, float& shift) {
    inv_unit = L / theta;
    unit = theta / L;
    shift = v_init * unit;
  }

  // decoded=1: y = q * unit per element, with the per-channel constants computed once per call
  // and applied per run of one channel.
  Ort::Status Decoded(OrtKernelContext* context, const Call& call, float L, float inv_B) const {
    const size_t n_theta = attrs_.theta.size();
    std::vector<float> unit(n_theta), inv_unit(n_theta), shift(n_theta);
    for (size_t i = 0; i < n_theta; ++i) Constants(attrs_.theta[i], L, attrs_.v_init, unit[i], inv_unit[i], shift[i]);
#if defined(__AVX512F__)
    if (call.block == 16) {
      // ORT's NCHWc layout, blocks of 16 channels: the constants are one register per run of a
      // block; the same arithmetic as `run` below, in registers
      const FloorClip16 clip(L);
      const __m512 vB = _mm512_set1_ps(inv_B);
      auto chunk16 = [&](int64_t begin, int64_t len) {
        if (call.state_out) std::fill_n(call.StateOut(0) + begin, len, 0.0f);
        float* q_out = call.state_out ? call.StateOut(1) : nullptr;
        ForEachBlockRun<16>(call, begin, len, [&](int64_t e, int64_t stop, int64_t c0) {
          const __m512 u = Lanes16(unit, c0), iu = Lanes16(inv_unit, c0), sh = Lanes16(shift, c0);
          for (; e < stop; e += 16) {
            const __m512 q = clip(WindowCurrent16(call.x + e, call.E, call.T, call.const_input,
                                                  vB, sh, iu));
            _mm512_storeu_ps(call.y + e, _mm512_mul_ps(q, u));
            if (q_out) _mm512_storeu_ps(q_out + e, q);
          }
        });
      };
      ForEachChunk(context, call.E, chunk16, 16 * kChunk);
      return Ort::Status(nullptr);
    }
#endif
#if defined(__AVX2__)
    if (call.block == 8) {  // the same, one AVX2 register of 8 channels at a time
      const FloorClip8 clip(L);
      const __m256 vB = _mm256_set1_ps(inv_B);
      auto chunk8 = [&](int64_t begin, int64_t len) {
        if (call.state_out) std::fill_n(call.StateOut(0) + begin, len, 0.0f);
        float* q_out = call.state_out ? call.StateOut(1) : nullptr;
        ForEachBlockRun<8>(call, begin, len, [&](int64_t e, int64_t stop, int64_t c0) {
          const __m256 u = Lanes8(unit, c0), iu = Lanes8(inv_unit, c0), sh = Lanes8(shift, c0);
          for (; e < stop; e += 8) {
            const __m256 q = clip(WindowCurrent8(call.x + e, call.E, call.T, call.const_input,
                                                 vB, sh, iu));
            _mm256_storeu_ps(call.y + e, _mm256_mul_ps(q, u));
            if (q_out) _mm256_storeu_ps(q_out + e, q);
          }
        });
      };
      ForEachChunk(context, call.E, chunk8, 16 * kChunk);
      return Ort::Status(nullptr);
    }
#endif
    auto chunk = [&](int64_t begin, int64_t len) {
      float acc[kChunk], cu[kChunk], ciu[kChunk], csh[kChunk];
      if (call.state_out) std::fill_n(call.StateOut(0) + begin, len, 0.0f);
      float* q_out = call.state_out ? call.StateOut(1) : nullptr;
      const int64_t end = begin + len;
      // q = FloorClip(U * inv_unit) and y = q * unit on elements [e, e + n), with the constants
      // of element j given by u(j), iu(j), sh(j)
      auto run = [&](int64_t e, int64_t n, auto u, auto iu, auto sh) {
        float* y = call.y + e;
        if (call.const_input) {
          const float* x = call.x + e;
          for (int64_t j = 0; j < n; ++j) acc[j] = (x[j] + sh(j)) * iu(j);
        } else {
          const float* x0 = call.XSlice(0) + e;
          for (int64_t j = 0; j < n; ++j) acc[j] = 0.0f + x0[j];
          for (int64_t t = 1; t < call.T; ++t) {
            const float* xt = call.XSlice(t) + e;
            for (int64_t j = 0; j < n; ++j) acc[j] = acc[j] + xt[j];
          }
          for (int64_t j = 0; j < n; ++j) acc[j] = (acc[j] * inv_B + sh(j)) * iu(j);
        }
        FloorClipArray(acc, n, L);
        for (int64_t j = 0; j < n; ++j) y[j] = acc[j] * u(j);
        if (q_out) std::copy_n(acc, n, q_out + e);
      };
      // NCHWc (the channels cycle within a run) or short runs of one channel (a dense layer's
      // [N, C]: runs of one element): constants per element
      if (n_theta > 1 && (call.block > 1 || call.inner < kShortRun)) {
        for (int64_t e = begin; e < end; e += kChunk) {
          const int64_t n = std::min(end - e, kChunk);
          call.FillPerChannel(e, n, unit.data(), cu);
          call.FillPerChannel(e, n, inv_unit.data(), ciu);
          call.FillPerChannel(e, n, shift.data(), csh);
          run(e, n, [&](int64_t j) { return cu[j]; }, [&](int64_t j) { return ciu[j]; },
              [&](int64_t j) { return csh[j]; });
        }
        return;
      }
      for (int64_t e = begin; e < end;) {  // runs of one channel, at most kChunk long
        const int64_t stop = std::min({end, (e / call.inner + 1) * call.inner, e + kChunk});
        const size_t c = n_theta == 1 ? 0 : static_cast<size_t>((e / call.inner) % call.C);
        const float u = unit[c], iu = inv_unit[c], sh = shift[c];
        run(e, stop - e, [u](int64_t) { return u; }, [iu](int64_t) { return iu; },
            [sh](int64_t) { return sh; });
        e = stop;
      }
    };
    ForEachChunk(context, call.E, chunk, 16 * kChunk);
    return Ort::Status(nullptr);
  }

  // y = bit k of q times float(B * 2^k) * unit, for one slice.
  static void EmitBit(float* yt, const float* q, const float* unit, int64_t len, int64_t B, int64_t k) {
    const float weight = static_cast<float>(B << k);
    for (int64_t j = 0; j < len; ++j) {
      const float value = weight * unit[j];
      const int32_t bit = (static_cast<int32_t>(q[j]) >> k) & 1;
      yt[j] = bit != 0 ? value : 0.0f;
    }
  }

  static void Fold(const Call& call, int64_t begin, int64_t len, int64_t B, float L, float inv_B,
                   const float* unit, const float* inv_unit, const float* shift, float* acc, float* q) {
    if (call.const_input) {
      const float* x0 = call.XSlice(0) + begin;
      for (int64_t j = 0; j < len; ++j) q[j] = (x0[j] + shift[j]) * inv_unit[j];
      FloorClipArray(q, len, L);
    } else {
      std::fill(acc, acc + len, 0.0f);
      for (int64_t t = 0; t < call.T; ++t) {
        const float* xt = call.XSlice(t) + begin;
        for (int64_t j = 0; j < len; ++j) acc[j] = acc[j] + xt[j];
      }
      for (int64_t j = 0; j < len; ++j) q[j] = (acc[j] * inv_B + shift[j]) * inv_unit[j];
      FloorClipArray(q, len, L);
    }
    std::fill(acc, acc + len, 0.0f);
    for (int64_t k = 0; k < B; ++k) EmitBit(call.YSlice(k) + begin, q, unit, len, B, k);
  }

  static void Stream(const Call& call, int64_t begin, int64_t len, int64_t B, float L, float inv_B,
                     const float* unit, const float* inv_unit, const float* shift, float* acc, float* q) {
    if (call.state_in) {
      std::copy_n(call.StateIn(0) + begin, len, acc);
      std::copy_n(call.StateIn(1) + begin, len, q);
    } else {
      std::fill(acc, acc + len, 0.0f);
      std::fill(q, q + len, 0.0f);
    }
    for (int64_t t = 0; t < call.T; ++t) {
      const int64_t k = (call.step + t) % B;
      // x_t is read before y_t is written: y may take x's buffer (ops.cc, MayInplace)
      const float* xt = call.XSlice(t) + begin;
      for (int64_t j = 0; j < len; ++j) acc[j] = acc[j] + xt[j];
      EmitBit(call.YSlice(t) + begin, q, unit, len, B, k);
      if (k == B - 1) {
        for (int64_t j = 0; j < len; ++j) {
          q[j] = FloorClip((acc[j] * inv_B + shift[j]) * inv_unit[j], L);
          acc[j] = 0.0f;
        }
      }
    }
  }

  CommonAttrs attrs_;
  int64_t bits_;
  int64_t decoded_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(BitSerialNeuron)
