"""FGSM identity: advlab's FGSM against torchattacks' and ART's, pixel by pixel, on all test images.

FGSM has no randomness, so two correct implementations may differ only where the sign of a gradient
entry is not settled: an entry so close to 0 that float rounding decides it, or one that max pooling
routes to another of several equal maxima (each layout's kernel breaks such ties its own way; both are
valid subgradients). advlab runs CPU attacks in channels-last layout by default; this script compares
it both ways and prints, for each differing pixel, the gradient there in the default (NCHW) layout.

    .venv/bin/python benchmarks/bench_fgsm_identity.py --out benchmarks/results/fgsm_identity.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_attacks as B  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import advlab.attacks as A  # noqa: E402


def main() -> None:
    p = C.base_parser(
        __doc__.splitlines()[0], n=10000, repeats=1, batch_size=500, out="benchmarks/results/fgsm_identity.json"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = C.standard_model(args.model)
    x, y = C.test_data(args.n)
    cfg = B.configs(quick=True)[0]  # FGSM L∞, ε = 0.1
    assert cfg["fgsm"] and cfg["norm"] == "linf"
    outs = {"advlab (channels-last, default)": B.run_advlab(model, x, y, cfg, args.batch_size)}
    outs["advlab (NCHW)"] = B.run_advlab(model, x, y, cfg, args.batch_size, channels_last=False)
    outs["torchattacks"] = B.run_torchattacks(model, x, y, cfg, args.batch_size)
    outs["ART"] = B.run_art(model, x, y, cfg, args.batch_size)
    # The gradient in the default layout at every pixel, to say what kind each difference is.
    grads = []
    with A.eval_mode(model):
        for i in range(0, len(x), args.batch_size):
            xb = x[i : i + args.batch_size].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xb), y[i : i + args.batch_size], reduction="sum"), xb)
            grads.append(g)
    grad = torch.cat(grads)
    rows, results = [], []
    for mine in ("advlab (channels-last, default)", "advlab (NCHW)"):
        for peer in ("torchattacks", "ART"):
            diff = (outs[mine] - outs[peer]).abs() > 1e-6
            at = grad[diff].abs()
            res = dict(
                advlab=mine,
                peer=peer,
                pixels=int(diff.sum()),
                of=diff.numel(),
                images=int(diff.flatten(1).any(1).sum()),
                max_abs_diff=float((outs[mine] - outs[peer]).abs().max()),
                grad_at_diff_max=float(at.max()) if at.numel() else 0.0,
                grad_at_diff_min=float(at.min()) if at.numel() else 0.0,
            )
            results.append(res)
            rows.append(
                [
                    mine,
                    peer,
                    f"{res['pixels']} of {res['of']:,}",
                    str(res["images"]),
                    f"{res['max_abs_diff']:.3g}",
                    f"{res['grad_at_diff_min']:.1e} … {res['grad_at_diff_max']:.1e}" if at.numel() else "-",
                ]
            )
    tbl = C.table(["advlab", "peer", "pixels differing", "images", "max |Δ|", "|∇| there (NCHW)"], rows)
    typical = float(grad.abs().flatten(1).amax(1).median())
    print(f"FGSM L∞ ε = 0.1 on {len(y)} test images; median over images of the largest |∇| entry: {typical:.1e}")
    print(tbl)
    C.write_json(
        args.out,
        dict(machine=C.machine_info(), args=vars(args), results=results, table=tbl, median_max_abs_grad=typical),
    )


if __name__ == "__main__":
    main()
