"""Agreement, untimed: robust accuracy of advlab, torchattacks and ART on the same attacks over many images.

Each library runs each attack once on the first N test images (default all 10,000) of the standard model
(and, with --robust RUN, of an adversarially trained advlab run as well). Random-start PGD draws different
starts in each library, so its spread shrinks with N; at N = 1,000 it is about a point, pure sampling.
For FGSM it also reports how many pixels differ from the peers and how small the float64 input gradient is
at those pixels (relative to the image's largest entry): a pixel whose gradient sign fp32 cannot settle
is "float rounding"; any other difference would be a bug. "advlab bf16" runs advlab's attack under bf16
autocast (judged in fp32): the accuracy cost of the faster arithmetic.

    .venv/bin/python benchmarks/bench_agreement.py --n 10000 --robust runs/q-fgsm8 \
        --out benchmarks/results/agreement.json
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_attacks as B  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LIBS = ["advlab", "torchattacks", "ART", "advlab bf16"]


def run(lib, model, x, y, c, bs):
    return B.LIBS[lib](model, x, y, c, bs)


def fgsm_rounding(model, x, y, x_a, x_b, bs) -> dict:
    """Differing pixels between two FGSM outputs and the fp64 |∇| there, relative to each image's max |∇|."""
    diff = (x_a - x_b).abs() > 1e-6
    count = int(diff.sum())
    if count == 0:
        return dict(pixels_differing=0, of=x.numel(), max_relative_grad_at_diff=0.0)
    m64 = copy.deepcopy(model).double().eval()
    worst = 0.0
    rows = diff.flatten(1).any(1).nonzero().squeeze(1)
    for i in range(0, len(rows), bs):
        idx = rows[i : i + bs]
        xb = x[idx].double().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(m64(xb), y[idx], reduction="sum"), xb)
        rel = g.abs() / g.abs().flatten(1).amax(1).clamp_min(1e-300).view(-1, 1, 1, 1)
        worst = max(worst, float(rel[diff[idx]].max()))
    return dict(pixels_differing=count, of=x.numel(), images_differing=int(len(rows)), max_relative_grad_at_diff=worst)


def agreement(model, x, y, bs, libs, only=None) -> tuple[list, list]:
    cfgs = B.configs(quick=True)  # FGSM, FGM, PGD-10 L∞/L2 with random start, PGD-10 without
    cfgs = [c for c in cfgs if not only or c["name"] in only]
    rows, res = [], []
    for c in cfgs:
        outs = {}
        for lib in libs:
            torch.manual_seed(0)
            outs[lib] = run(lib, model, x, y, c, bs)
        acc = {lib: B.robust_acc(model, out, y) for lib, out in outs.items()}
        fp32 = [acc[lib] for lib in libs if lib != "advlab bf16"]
        spread = max(fp32) - min(fp32)
        extra = {}
        if c["fgsm"]:
            for peer in [lib for lib in ("torchattacks", "ART") if lib in libs]:
                extra[peer] = fgsm_rounding(model, x, y, outs["advlab"], outs[peer], bs)
        res.append(dict(config=c, robust_acc=acc, spread=spread, fgsm_rounding=extra))
        note = "; ".join(
            f"{p}: {e['pixels_differing']} of {e['of']} pixels differ, fp64 |∇| there ≤ "
            f"{e['max_relative_grad_at_diff']:.1e} of the image max"
            for p, e in extra.items()
        )
        rows.append(
            [c["name"]]
            + [f"{100 * acc[lib]:.2f}" if lib in acc else "-" for lib in LIBS]
            + [f"{100 * spread:.2f}", f"{100 * (acc['advlab bf16'] - acc['advlab']):+.2f}", note]
        )
        print(rows[-1], flush=True)
    return rows, res


def main() -> None:
    p = C.base_parser(
        __doc__.splitlines()[0], n=10000, repeats=1, batch_size=500, out="benchmarks/results/agreement.json"
    )
    p.add_argument("--robust", help="also an advlab run folder (adversarially trained model)")
    p.add_argument("--configs", help="comma-separated subset of the attacks, e.g. 'PGD-10 L2'")
    p.add_argument(
        "--robust-libs",
        default="advlab,advlab bf16",
        help="libraries to run on the robust model (default: advlab fp32 and bf16)",
    )
    args = p.parse_args()
    if args.quick:
        args.n = min(args.n, 500)
    torch.set_num_threads(args.threads)
    x, y = C.test_data(args.n)
    models = {"standard (bench model)": C.standard_model(args.model)}
    if args.robust:
        from advlab.runs import load_checkpoint

        models[f"robust ({args.robust})"] = load_checkpoint(args.robust)[0].eval()
    print(C.machine_info(), "load", C.loadavg())
    tables, results = {}, {}
    hdr = ["attack"] + [f"{lib} %" for lib in LIBS] + ["spread fp32 (pt)", "bf16 − fp32 (pt)", "FGSM pixels"]
    for name, model in models.items():
        with torch.inference_mode():
            clean = float((model(x).argmax(1) == y).float().mean())
        print(f"\n{name}: clean {100 * clean:.2f}% on {len(y)} images")
        libs = LIBS if name.startswith("standard") else args.robust_libs.split(",")
        only = args.configs.split(",") if args.configs else None
        rows, res = agreement(model, x, y, args.batch_size, libs, only)
        tables[name] = C.table(hdr, rows)
        results[name] = dict(clean=clean, results=res)
        print(f"\nAgreement on {len(y)} test images, {name}, ε = 0.1 L∞ / 1.5 L2, α = 2.5ε/steps")
        print(tables[name])
    C.write_json(args.out, dict(machine=C.machine_info(), args=vars(args), results=results, tables=tables))


if __name__ == "__main__":
    main()
