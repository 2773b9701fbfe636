#!/usr/bin/env bash
# Issue 4's committed reports: every neuron at T = 4 on the MNIST CNN (real data, 256 test images)
# and on the ResNet-18 example (random weights and inputs: accuracy is meaningless there; the
# report's SynOps, energy, cores and ORT-vs-Loihi agreement are the point). Takes ~30 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=examples/results/reports
mkdir -p "$OUT"
for neuron in if lif gn mt bitserial srp; do
  snncc report examples/mnist_cnn.onnx --data examples/mnist_test.npz --calib examples/mnist_calib.npz \
    -T 4 --neuron "$neuron" --target loihi --samples 256 -o "$OUT/mnist_$neuron.md"
done
tmp=$(mktemp -d)
python examples/export_models.py resnet18 -o "$tmp/resnet18.onnx" --dynamic-batch
python - "$tmp" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
np.savez(f"{sys.argv[1]}/data.npz", x=rng.random((16, 3, 32, 32), dtype=np.float32))
PY
for neuron in if lif gn mt bitserial srp; do
  # random weights may not fit Loihi's fixed point (SNN-E63x): say so and go on
  snncc report "$tmp/resnet18.onnx" --data "$tmp/data.npz" -T 4 --neuron "$neuron" --target loihi \
    --samples 16 -o "$OUT/resnet18_$neuron.md" || echo "loihi_reports.sh: resnet18 $neuron not written"
done
rm -rf "$tmp"
