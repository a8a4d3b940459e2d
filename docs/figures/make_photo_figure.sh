#!/usr/bin/env bash
# The README's photo figure (docs/figures/photo-figure.png): advlab attack on one synthetic 320x480 photo
# through a ResNet-style model with RANDOM weights (docs/figures/resnetish.py), 1,000 class names, ImageNet
# preprocessing and normalization. Its classes and probabilities mean nothing: it shows what the figure holds.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
../../.venv/bin/python - "$tmp" <<'PY'
import sys
import numpy as np
from PIL import Image
h, w = 320, 480
y, x = np.mgrid[0:h, 0:w]
image = np.stack([(x / w) * 255, (y / h) * 255, 128 + 100 * np.sin(x / 25) * np.cos(y / 25)], axis=-1)
Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(f"{sys.argv[1]}/photo.png")
names = [f"class {i}" for i in range(1000)]
names[368], names[388] = "gibbon", "giant panda"
open(f"{sys.argv[1]}/classes.txt", "w").write("\n".join(names) + "\n")
PY
../../.venv/bin/advlab attack --model-from resnetish.py:resnetish --normalize imagenet --preprocess imagenet \
    --data "image:$tmp/photo.png" --classes "$tmp/classes.txt" --attack pgd10 --eps 4/255 --target gibbon \
    --out "$tmp/out" --quiet
cp "$tmp/out/figure.png" photo-figure.png
echo "wrote docs/figures/photo-figure.png"
