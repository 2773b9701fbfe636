// SpikeGateMaxPool (runtime op, not emitted by the compiler): the spike-gated max-pool of the
// schedule-timesteps pass (passes/schedule_timesteps.py, `gate`) in one kernel. snncc.runtime.layout
// puts it in place of the pass's standard-op form on the machine that runs the model:
//     c = MatMul(tril(ones(T, T)), Reshape(x, [T, -1])) ; _, idx = MaxPool(Reshape(c, Shape(x)))
//     y = Reshape(GatherElements(Reshape(x, [-1]), Reshape(idx, [-1])), Shape(idx))
// x: [T*N, C, H, W] time-major; y: [T*N, C, Ho, Wo]. Per plane (n, c) the cumulative sum over the
// slices is c_t = c_{t-1} + x_t in float32 (the MatMul's order: one product 1 * x_u per slice,
// added in slice order); per output position and slice, y_t = x_t at the first position of the
// window, in row-major order and skipping padding, where c_t is largest (ORT's MaxPool indices:
// strict >). SpikeGateWindowMaxPool: the window gate, MatMul(K, ...) with every row of K equal to
// [0 ... 0, 1 ... 1] (ones from column key_from, the first decoded slice): every slice is keyed by
// the total of the slices key_from ... T-1 (the same sums), so one unit per pooling window passes
// its whole train. (A separate op, so that a library built before it refuses the model instead of
// running the running-sum gate in its place.) channel_block = B > 1: x and y are ORT's NCHWc
// tensors (blocks of B channels).
#include "neuron_common.h"

namespace snncc {

struct SpikeGateMaxPool {
  SpikeGateMaxPool(const OrtApi*, const OrtKernelInfo* info) : SpikeGateMaxPool(AttrReader(info, "SpikeGateMaxPool")) {}
  explicit SpikeGateMaxPool(const AttrReader& attrs, bool window = false)
      : where_(attrs.where()),
        T_(attrs.Int("T", 0)),
        kernel_(attrs.Ints("kernel_shape", {})),
        strides_(attrs.Ints("strides", {1, 1})),
        pads_(attrs.Ints("pads", {0, 0, 0, 0})),
        dilations_(attrs.Ints("dilations", {1, 1})),
        ceil_(attrs.Int("ceil_mode", 0)),
        block_(attrs.Int("channel_block", 1)),
        window_(window),
        key_from_(window ? attrs.Int("key_from", 0) : 0) {
    if (T_ < 1) attrs.Fail("attribute 'T' must be >= 1, got " + std::to_string(T_));
    if (key_from_ < 0 || key_from_ >= T_)
      attrs.Fail("attribute 'key_from' must be in [0, T), got " + std::to_string(key_from_));
    if (!window && attrs.Int("window", 0) != 0)  // an early form of the window gate: refused
      attrs.Fail("attribute 'window' is not supported: the window gate is SpikeGateWindowMaxPool");
    if (kernel_.size() != 2 || strides_.size() != 2 || pads_.size() != 4 || dilations_.size() != 2)
      attrs.Fail("a 2-D pool needs kernel_shape[2], strides[2], pads[4] and dilations[2]");
    for (int64_t v : kernel_) if (v < 1) attrs.Fail("kernel_shape must be >= 1");
    for (int64_t v : strides_) if (v < 1) attrs.Fail("strides must be >= 1");
    for (int64_t v : dilations_) if (v < 1) attrs.Fail("dilations must be >= 1");
    for (int64_t v : pads_) if (v < 0) attrs.Fail("pads must be >= 0");
    if (block_ < 1) attrs.Fail("attribute 'channel_block' must be >= 1");
  }

  // ORT's pooled size of one axis
  int64_t Pooled(int64_t in, int64_t axis) const {
    return PooledSize(in, kernel_[axis], strides_[axis], pads_[axis], pads_[axis + 2], dilations_[axis], ceil_ != 0);
  }

  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, Tensor<float>& y) {
    const std::vector<int64_t>& shape = x.Shape();
    if (shape.size() != 4)
      return InvalidArgument(where_, "x must be 4-D [T*N, C, H, W], got " + ShapeText(shape));
    if (shape[0] % T_ != 0)
      return InvalidArgument(where_, "x's first axis (" + std::to_string(shape[0]) + ") is not a multiple of T=" + std::to_string(T_));
    const int64_t N = shape[0] / T_, C = shape[1], H = shape[2], W = shape[3];
    if (C % block_ != 0)
      return InvalidArgument(where_, "C=" + std::to_string(C) + " is not a multiple of channel_block=" + std::to_string(block_));
    const int64_t Ho = Pooled(H, 0), Wo = Pooled(W, 1);
    if (Ho < 1 || Wo < 1) return InvalidArgument(where_, "the pool window does not fit " + ShapeText(shape));
    float* out = y.Allocate({shape[0], C, Ho, Wo});
    const float* in = x.Data();
    const int64_t Bk = block_, groups = N * (C / Bk);  // a group: Bk channels of one sample
    const int64_t in_slice = N * C * H * W, out_slice = N * C * Ho * Wo;
    // first valid tap of each output row/column and their count, once per call
    auto taps = [this](int64_t in, int64_t out, int64_t axis, std::vector<int64_t>& start, std::vector<int64_t>& count) {
      start.resize(out), count.resize(out);
      for (int64_t o = 0; o < out; ++o) {
        int64_t s = o * strides_[axis] - pads_[axis];
        const int64_t end = std::min(s + (kernel_[axis] - 1) * dilations_[axis] + 1, in);
        while (s < 0) s += dilations_[axis];
        start[o] = s;
        count[o] = s < end ? (end - s + dilations_[axis] - 1) / dilations_[axis] : 0;
      }
    };
    std::vector<int64_t> h0, hn, w0, wn;
    taps(H, Ho, 0, h0, hn);
    taps(W, Wo, 1, w0, wn);
    const int64_t dh = dilations_[0], dw = dilations_[1], sw = strides_[1];
    // [jlo, jhi): the output columns whose whole window is inside the row (no padding, no clip)
    int64_t jlo = 0, jhi = 0;
    while (jlo < Wo && (w0[jlo] != jlo * sw - pads_[1] || wn[jlo] != kernel_[1])) ++jlo;
    jhi = jlo;
    while (jhi < Wo && w0[jhi] == jhi * sw - pads_[1] && wn[jhi] == kernel_[1]) ++jhi;
    auto work = [&](int64_t begin, int64_t len) {
      std::vector<float> cum(static_cast<size_t>(H * W * Bk)), top(static_cast<size_t>(Bk)),
          row(static_cast<size_t>(Wo));
      for (int64_t g = begin; g < begin + len; ++g) {
        // group g holds Bk channels; element (h, w, lane) of the group sits at base + (h*W + w)*Bk + lane
        // (plain layout: Bk = 1, one channel plane)
        const int64_t in_base = g * H * W * Bk, out_base = g * Ho * Wo * Bk;
        std::fill(cum.begin(), cum.end(), 0.0f);
        if (window_) {  // the key of every slice: the total over the decoded slices
          for (int64_t t = key_from_; t < T_; ++t) {
            const float* xt = in + t * in_slice + in_base;
            for (int64_t k = 0; k < H * W * Bk; ++k) cum[k] = cum[k] + 1.0f * xt[k];
          }
        }
        for (int64_t t = 0; t < T_; ++t) {
          const float* xt = in + t * in_slice + in_base;
          float* yt = out + t * out_slice + out_base;
          if (!window_)
            for (int64_t k = 0; k < H * W * Bk; ++k) cum[k] = cum[k] + 1.0f * xt[k];
          for (int64_t i = 0; i < Ho; ++i) {
            // plain layout: the columns whose window lies inside the row run a tap at a time
            // over all of them (vectorised; the same comparisons in the same order per column)
            const bool rows = Bk == 1 && hn[i] > 0 && jhi > jlo;
            if (rows) {
              float* best = &row[0];
              float* pick = yt + i * Wo;
              bool first = true;
              for (int64_t a = 0, h = h0[i]; a < hn[i]; ++a, h += dh) {
                for (int64_t b = 0; b < kernel_[1]; ++b) {
                  const int64_t base = h * W + b * dw - pads_[1];  // + j * sw >= 0 for j >= jlo
                  const float* c = cum.data();
                  if (first) {
                    for (int64_t j = jlo; j < jhi; ++j) best[j] = c[base + j * sw], pick[j] = xt[base + j * sw];
                    first = false;
                    continue;
                  }
                  for (int64_t j = jlo; j < jhi; ++j) {  // strict >: the first maximum stays
                    const bool more = c[base + j * sw] > best[j];
                    best[j] = more ? c[base + j * sw] : best[j];
                    pick[j] = more ? xt[base + j * sw] : pick[j];
                  }
                }
              }
            }
            for (int64_t j = 0; j < Wo; ++j) {
              if (rows && j >= jlo && j < jhi) continue;
              float* best = &top[0];
              float* pick = yt + (i * Wo + j) * Bk;
              if (hn[i] == 0 || wn[j] == 0) {  // only padding under the window: 0 (ORT's index would
                // be negative; fuse_gates only fuses geometries where this cannot happen)
                std::fill(pick, pick + Bk, 0.0f);
                continue;
              }
              bool first = true;
              for (int64_t a = 0, h = h0[i]; a < hn[i]; ++a, h += dh) {
                for (int64_t b = 0, w = w0[j]; b < wn[j]; ++b, w += dw) {
                  const int64_t e = (h * W + w) * Bk;
                  const float* c = &cum[e];
                  const float* v = xt + e;
                  if (first) {
                    std::copy_n(c, Bk, best);
                    std::copy_n(v, Bk, pick);
                    first = false;
                    continue;
                  }
                  for (int64_t l = 0; l < Bk; ++l) {  // strict >: the first maximum stays
                    const bool more = c[l] > best[l];
                    best[l] = more ? c[l] : best[l];
                    pick[l] = more ? v[l] : pick[l];
                  }
                }
              }
            }
          }
        }
      }
    };
    ForEachChunk(context, groups, work, 1);
    return Ort::Status(nullptr);
  }

  std::string where_;
  int64_t T_;
  std::vector<int64_t> kernel_, strides_, pads_, dilations_;
  int64_t ceil_, block_;
  bool window_;
  int64_t key_from_;
};

struct SpikeGateWindowMaxPool : SpikeGateMaxPool {
  SpikeGateWindowMaxPool(const OrtApi*, const OrtKernelInfo* info)
      : SpikeGateMaxPool(AttrReader(info, "SpikeGateWindowMaxPool"), true) {}
  Ort::Status Compute(OrtKernelContext* context, const Tensor<float>& x, Tensor<float>& y) {
    return SpikeGateMaxPool::Compute(context, x, y);
  }
};

}  // namespace snncc

SNNCC_DEFINE_OP(SpikeGateMaxPool)
SNNCC_DEFINE_OP(SpikeGateWindowMaxPool)
