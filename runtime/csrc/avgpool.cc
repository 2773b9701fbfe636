// BitSerialAveragePool (runtime op, not emitted by the compiler): a window-decoded bit-serial
// neuron and the AveragePool that is its only reader, in one pass. snncc.runtime.pools puts it in
// place of the pair
//     y = BitSerialNeuron(x; decoded=1) ; z = AveragePool(y; kernel_shape, strides, no padding)
// in a model that ORT has put into its blocked layout, on the machine that runs it, so the
// neuron's full-size output is never written and read back. Per input element the neuron's
// decoded value is computed exactly as BitSerialNeuron (decoded=1) does (docs/neuron-ops.md):
// const_input=1: q = FloorClip((x + shift) * inv_unit, L); else acc = ((0 + x_0) + x_1) + ...
// over the T slices, q = FloorClip((acc * (1/B) + shift) * inv_unit, L); value = q * unit. Per
// output position the values of the window are added in row-major order and the sum divided by
// the window size, as ORT's NCHWc AveragePool does (ORT's plain NCHW pool adds column sums
// instead, so the runtime fuses blocked pairs only; tests/runtime/test_pools.py checks against
// ORT itself). x: [N, C, H, W] (const_input=1) or [T*N, C, H, W] time-major; z: [N, C, Ho, Wo].
// channel_block = B > 1: x and z are ORT's NCHWc tensors (blocks of B channels).
#include "neuron_common.h"

namespace snncc {

struct BitSerialAveragePool {
  BitSerialAveragePool(const OrtApi*, const OrtKernelInfo* info)
      : BitSerialAveragePool(AttrReader(info, "BitSerialAveragePool")) {}
  explicit BitSerialAveragePool(const AttrReader& attrs)
      : where_(attrs.where()),
        T_(attrs.Int("T", 0)),
        const_input_(attrs.Int("const_input", 0)),
        bits_(attrs.Int("bits", 0)),
        v_init_(attrs.Float("v_init", 0.5f)),
        theta_(attrs.Floats("theta", {1.0f})),
        kernel_(attrs.Ints("kernel_shape", {})),
        strides_(attrs.Ints("strides", {1, 1})),
        block_(attrs.Int("channel_block", 1)) {
    // the BitSerialNeuron's own limits (bitserial.cc): B = bits or T, at most 16
    if (T_ < 1) attrs.Fail("attribute 'T' must be >= 1, got " + std::to_string(T_));
    if (T_ > 16) attrs.Fail("attribute 'T' must be <= 16 (B = T bits), got " + std::to_string(T_));
    if (bits_ != 0 && bits_ != T_) attrs.Fail("attribute 'bits' must be 0 or T");
    if (const_input_ != 0 && const_input_ != 1) attrs.Fail("attribute 'const_input' must be 0 or 1");
    if (theta_.empty()) attrs.Fail("attribute 'theta' must not be empty");
    for (float t : theta_) if (!(t > 0.0f)) attrs.Fail("attribute 'theta' must be > 0");
    if (kernel_.size() != 2 || strides_.size() != 2) attrs.Fail("a 2-D pool needs kernel_shape[2] and strides[2]");
    for (int64_t v : kernel_) if (v < 1) attrs.Fail("kernel_shape must be >= 1");
    for (int64_t v : strides_) if (v < 1) attrs.Fail("strides must be >= 1");
    if (block_ < 1) attrs.Fail("attribute 'channel_block' must be >= 1");
  }

  // One output row from the decoded input rows (kh rows of row = W * BK values): per output
  // column and lane, the window's values added in row-major order, divided by the window size.
  template <int64_t BK>
  static void PoolRow(const float* rows, float* o, int64_t Wo, int64_t kh, int64_t kw, int64_t sw,
                      int64_t row, float count) {
    for (int64_t j = 0; j < Wo; ++j) {
      const float* first = rows + j * sw * BK;
      float sum[BK];
      for (int64_t l = 0; l < BK; ++l) sum[l] = first[l];
      for (int64_t a = 0; a < kh; ++a)
        for (int64_t b = a == 0 ? 1 : 0; b < kw; ++b) {
          const float* v = first + a * row + b * BK;
          for (int64_t l = 0; l < BK; ++l) sum[l] = sum[l] + v[l];
        }
      for (int64_t l = 0; l < BK; ++l) o[j * BK + l] = sum[l] / count;
    }
  }

#if defined(__AVX512F__)
  // Groups [begin, begin + len) with Bk = 16: the same arithmetic as the generic path below, one
  // vector per position (16 lanes = 16 channels), the kh decoded rows kept in a small buffer.
  void Pool16(const float* in, float* out, int64_t begin, int64_t len, int64_t C, int64_t H,
              int64_t W, int64_t Ho, int64_t Wo, int64_t slice, float L, float inv_B,
              const std::vector<float>& unit, const std::vector<float>& inv_unit,
              const std::vector<float>& shift) const {
    const int64_t kh = kernel_[0], kw = kernel_[1], sh = strides_[0], sw = strides_[1];
    const int64_t row = W * 16;
    const FloorClip16 clip(L);
    const __m512 vB = _mm512_set1_ps(inv_B), vcount = _mm512_set1_ps(static_cast<float>(kh * kw));
    std::vector<float> rows(static_cast<size_t>(kh * row));
    for (int64_t g = begin; g < begin + len; ++g) {
      const int64_t c0 = (g % (C / 16)) * 16;
      const __m512 u = _mm512_loadu_ps(&unit[c0]), iu = _mm512_loadu_ps(&inv_unit[c0]),
                   sft = _mm512_loadu_ps(&shift[c0]);
      const int64_t in_base = g * H * row, out_base = g * Ho * Wo * 16;
      for (int64_t i = 0; i < Ho; ++i) {
        for (int64_t a = 0; a < kh; ++a) {
          const float* x0 = in + in_base + (i * sh + a) * row;
          float* r = &rows[a * row];
          for (int64_t k = 0; k < row; k += 16)
            _mm512_storeu_ps(r + k, _mm512_mul_ps(
                clip(WindowCurrent16(x0 + k, slice, T_, const_input_, vB, sft, iu)), u));
        }
        float* o = out + out_base + i * Wo * 16;
        for (int64_t j = 0; j < Wo; ++j) {
          const float* first = rows.data() + j * sw * 16;
          __m512 sum = _mm512_loadu_ps(first);
          for (int64_t a = 0; a < kh; ++a)
            for (int64_t b = a == 0 ? 1 : 0; b < kw; ++b)
              sum = _mm512_add_ps(sum, _mm512_loadu_ps(first + a * row + b * 16));
          _mm512_storeu_ps(o + j * 16, _mm512_div_ps(sum, vcount));
        }
      }
    }
  }
#endif

#if defined(__AVX2__)
  // Pool16 for AVX2's 8-channel blocks (Bk = 8): the same arithmetic in the same order.
  void Pool8(const float* in, float* out, int64_t begin, int64_t len, int64_t C, int64_t H,
             int64_t W, int64_t Ho, int64_t Wo, int64_t slice, float L, float inv_B,
             const std::vector<float>& unit, const std::vector<float>& inv_unit,
             const std::vector<float>& shift) const {
    const int64_t kh = kernel_[0], kw = kernel_[1], sh = strides_[0], sw = strides_[1];
    const int64_t row = W * 8;
    const FloorClip8 clip(L);
    const __m256 vB = _mm256_set1_ps(inv_B), vcount = _mm256_set1_ps(static_cast<float>(kh * kw));
    std::vector<float> rows(static_cast<size_t>(kh * row));
    for (int64_t g = begin; g < begin + len; ++g) {
      const int64_t c0 = (g % (C / 8)) * 8;
      const __m256 u = _mm256_loadu_ps(&unit[c0]), iu = _mm256_loadu_ps(&inv_unit[c0]),
                   sft = _mm256_loadu_ps(&shift[c0]);
      const int64_t in_base = g * H * row, out_base = g * Ho * Wo * 8;
      for (int64_t i = 0; i < Ho; ++i) {
        for (int64_t a = 0; a < kh; ++a) {
          const float* x0 = in + in_base + (i * sh + a) * row;
          float* r = &rows[a * row];
          for (int64_t k = 0; k < row; k += 8)
            _mm256_storeu_ps(r + k, _mm256_mul_ps(
                clip(WindowCurrent8(x0 + k, slice, T_, const_input_, vB, sft, iu)), u));
        }
        float* o = out + out_base + i * Wo * 8;
        for (int64_t j = 0; j < Wo; ++j) {
          const float* first = rows.data() + j * sw * 8;
          __m256 sum = _mm256_loadu_ps(first);
          for (int64_t a = 0; a < kh; ++a)
            for (int64_t b = a == 0 ? 1 : 0; b < kw; ++b)
              sum = _mm256_add_ps(sum, _mm256_loadu_ps(first + a * row + b * 8));
          _mm256_storeu_ps(o + j * 8, _mm256_div_ps(sum, vcount));
        }
      }
    }
  }
#endif

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, Tensor<float>& z) {
    const std::vector<int64_t>& shape = x.Shape();
    if (shape.size() != 4)
      return InvalidArgument(where_, "x must be 4-D [N, C, H, W], got " + ShapeText(shape));
    const int64_t S = const_input_ ? 1 : T_;
    if (shape[0] % S != 0)
      return InvalidArgument(where_, "x's first axis (" + std::to_string(shape[0]) + ") is not a multiple of T=" + std::to_string(T_));
    const int64_t N = shape[0] / S, C = shape[1], H = shape[2], W = shape[3];
    if (C % block_ != 0)
      return InvalidArgument(where_, "C=" + std::to_string(C) + " is not a multiple of channel_block=" + std::to_string(block_));
    if (theta_.size() != 1 && static_cast<int64_t>(theta_.size()) != C)
      return InvalidArgument(where_, "theta has " + std::to_string(theta_.size()) + " values for C=" + std::to_string(C));
    const int64_t kh = kernel_[0], kw = kernel_[1], sh = strides_[0], sw = strides_[1];
    if (H < kh || W < kw) return InvalidArgument(where_, "the pool window does not fit " + ShapeText(shape));
    const int64_t Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1;
    float* out = z.Allocate({N, C, Ho, Wo});
    const float* in = x.Data();
    // the BitSerialNeuron constants (bitserial.cc Constants): unit = theta / L, inv_unit = L /
    // theta, shift = v_init * unit
    const int64_t B = bits_ > 0 ? bits_ : T_;
    const float L = static_cast<float>((int64_t{1} << B) - 1);
    const float inv_B = 1.0f / static_cast<float>(B);
    std::vector<float> unit(static_cast<size_t>(C)), inv_unit(unit.size()), shift(unit.size());
    for (int64_t c = 0; c < C; ++c) {
      const float th = theta_[theta_.size() == 1 ? 0 : static_cast<size_t>(c)];
      inv_unit[c] = L / th;
      unit[c] = th / L;
      shift[c] = v_init_ * unit[c];
    }
    const int64_t Bk = block_, groups = N * (C / Bk);  // a group: Bk channels of one sample
    const int64_t slice = N * C * H * W, row = W * Bk;
    const float count = static_cast<float>(kh * kw);
#if defined(__AVX512F__)
    if (Bk == 16) {  // one channel block = one vector: decode and pool in registers
      auto work16 = [&](int64_t begin, int64_t len) {
        Pool16(in, out, begin, len, C, H, W, Ho, Wo, slice, L, inv_B, unit, inv_unit, shift);
      };
      ForEachChunk(context, groups, work16, std::max<int64_t>(1, groups / 16));
      return Ort::Status(nullptr);
    }
#endif
#if defined(__AVX2__)
    if (Bk == 8) {  // the same, AVX2's 8-channel blocks
      auto work8 = [&](int64_t begin, int64_t len) {
        Pool8(in, out, begin, len, C, H, W, Ho, Wo, slice, L, inv_B, unit, inv_unit, shift);
      };
      ForEachChunk(context, groups, work8, std::max<int64_t>(1, groups / 16));
      return Ort::Status(nullptr);
    }
#endif
    auto work = [&](int64_t begin, int64_t len) {
      // the decoded values of kh input rows, and per-element constants of one row
      std::vector<float> rows(static_cast<size_t>(kh * row)), cu(static_cast<size_t>(row)),
          ciu(cu.size()), csh(cu.size()), sum(static_cast<size_t>(Bk));
      for (int64_t g = begin; g < begin + len; ++g) {
        // element (h, w, lane) of group g sits at base + (h*W + w)*Bk + lane (plain: Bk = 1)
        const int64_t c0 = (g % (C / Bk)) * Bk;
        for (int64_t w = 0; w < W; ++w)
          for (int64_t l = 0; l < Bk; ++l) {
            cu[w * Bk + l] = unit[c0 + l];
            ciu[w * Bk + l] = inv_unit[c0 + l];
            csh[w * Bk + l] = shift[c0 + l];
          }
        const int64_t in_base = g * H * W * Bk, out_base = g * Ho * Wo * Bk;
        for (int64_t i = 0; i < Ho; ++i) {
          for (int64_t a = 0; a < kh; ++a) {
            float* r = &rows[a * row];
            const int64_t e = in_base + (i * sh + a) * row;
            if (const_input_) {
              const float* x0 = in + e;
              for (int64_t k = 0; k < row; ++k) r[k] = (x0[k] + csh[k]) * ciu[k];
            } else {
              const float* x0 = in + e;
              for (int64_t k = 0; k < row; ++k) r[k] = 0.0f + x0[k];
              for (int64_t t = 1; t < T_; ++t) {
                const float* xt = in + t * slice + e;
                for (int64_t k = 0; k < row; ++k) r[k] = r[k] + xt[k];
              }
              for (int64_t k = 0; k < row; ++k) r[k] = (r[k] * inv_B + csh[k]) * ciu[k];
            }
            FloorClipArray(r, row, L);
            for (int64_t k = 0; k < row; ++k) r[k] = r[k] * cu[k];
          }
          float* o = out + out_base + i * Wo * Bk;
          if (Bk == 16) {
            PoolRow<16>(rows.data(), o, Wo, kh, kw, sw, row, count);
          } else if (Bk == 8) {
            PoolRow<8>(rows.data(), o, Wo, kh, kw, sw, row, count);
          } else {
            for (int64_t j = 0; j < Wo; ++j) {
              const int64_t w0 = j * sw * Bk;
              std::copy_n(&rows[w0], Bk, sum.data());
              for (int64_t a = 0; a < kh; ++a)
                for (int64_t b = a == 0 ? 1 : 0; b < kw; ++b) {
                  const float* v = &rows[a * row + w0 + b * Bk];
                  for (int64_t l = 0; l < Bk; ++l) sum[l] = sum[l] + v[l];
                }
              for (int64_t l = 0; l < Bk; ++l) o[j * Bk + l] = sum[l] / count;
            }
          }
        }
      }
    };
    // work items of several groups (about 16 items): the local buffers are set up once per item.
    // (One item per output row, which spreads one sample over the threads, measured slower on
    // the MNIST nets at batch 1 and 16: 1.16-1.20 against 1.21-1.31 x ANN.)
    ForEachChunk(context, groups, work, std::max<int64_t>(1, groups / 16));
    return Ort::Status(nullptr);
  }

  std::string where_;
  int64_t T_, const_input_, bits_;
  float v_init_;
  std::vector<float> theta_;
  std::vector<int64_t> kernel_, strides_;
  int64_t block_;
};

}  // namespace snncc

SNNCC_DEFINE_OP(BitSerialAveragePool)
