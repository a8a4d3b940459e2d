"""Attack throughput and agreement: advlab vs torchattacks vs ART at identical settings.

Same model (standard small_cnn, 1 epoch Adam on Fashion-MNIST), same images, ε, α, steps, random start
and batch size. Per repeat every library runs every attack once, in a rotated order, so machine load
hits all alike; medians are reported. "limit" = steps × (one forward+backward w.r.t. the input) on the
same batches, with no update step: the floor any PGD implementation can reach.

    .venv/bin/python benchmarks/bench_attacks.py --quick
    .venv/bin/python benchmarks/bench_attacks.py --n 500 --repeats 3 --out benchmarks/results/attacks.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import advlab.attacks as A  # noqa: E402
from advlab.runtime import fast_layout  # noqa: E402

EPS = {"linf": 0.1, "l2": 1.5}


def configs(quick: bool) -> list[dict]:
    out = [
        dict(name="FGSM L∞", norm="linf", steps=1, rs=False, fgsm=True),
        dict(name="FGM L2", norm="l2", steps=1, rs=False, fgsm=True),
    ]
    for steps in (10,) if quick else (10, 50):
        for norm in ("linf", "l2"):
            out.append(
                dict(
                    name=f"PGD-{steps} {'L∞' if norm == 'linf' else 'L2'}", norm=norm, steps=steps, rs=True, fgsm=False
                )
            )
    # deterministic PGD (no random start): lets us compare the libraries' iterates exactly
    out.append(dict(name="PGD-10 L∞ no-rs", norm="linf", steps=10, rs=False, fgsm=False, check_only=True))
    out.append(dict(name="PGD-10 L2 no-rs", norm="l2", steps=10, rs=False, fgsm=False, check_only=True))
    for c in out:
        c["eps"] = EPS[c["norm"]]
        c["alpha"] = c["eps"] if c["fgsm"] else 2.5 * c["eps"] / c["steps"]
    return out


# ---------------------------------------------------------------- the contenders
def run_advlab(model, x, y, c, bs, early_stop=False, gen_seed=0, channels_last=True):
    g = torch.Generator().manual_seed(gen_seed)
    outs = []
    for i in range(0, len(x), bs):
        xb, yb = x[i : i + bs], y[i : i + bs]
        if c["fgsm"]:
            outs.append(
                A.fgsm(model, xb, yb, eps=c["eps"], norm=c["norm"], early_stop=early_stop, channels_last=channels_last)
            )
        else:
            outs.append(
                A.pgd(
                    model,
                    xb,
                    yb,
                    eps=c["eps"],
                    alpha=c["alpha"],
                    steps=c["steps"],
                    norm=c["norm"],
                    random_start=c["rs"],
                    generator=g,
                    early_stop=early_stop,
                    channels_last=channels_last,
                )
            )
    return torch.cat(outs)


_CHANNELS_LAST_COPIES: dict[int, torch.nn.Module] = {}


def channels_last_copy(model):
    """The model as a user of torchattacks or ART could lay it out: ``model.to(memory_format=channels_last)``
    on a copy (the peers then run oneDNN's NHWC convolutions too, whatever layout the input has)."""
    import copy

    key = id(model)
    if key not in _CHANNELS_LAST_COPIES:
        _CHANNELS_LAST_COPIES[key] = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    return _CHANNELS_LAST_COPIES[key]


def run_torchattacks(model, x, y, c, bs):
    import torchattacks

    if c["norm"] == "linf":
        atk = (
            torchattacks.FGSM(model, eps=c["eps"])
            if c["fgsm"]
            else torchattacks.PGD(model, eps=c["eps"], alpha=c["alpha"], steps=c["steps"], random_start=c["rs"])
        )
    else:  # torchattacks has no FGM-L2 class: PGDL2 with one step of size ε from x is exactly FGM-L2
        atk = torchattacks.PGDL2(model, eps=c["eps"], alpha=c["alpha"], steps=c["steps"], random_start=c["rs"])
    return torch.cat([atk(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)])


_ART_CLASSIFIERS: dict[int, object] = {}


def art_classifier(model):
    from art.estimators.classification import PyTorchClassifier

    key = id(model)
    if key not in _ART_CLASSIFIERS:
        _ART_CLASSIFIERS[key] = PyTorchClassifier(
            model=model,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
    return _ART_CLASSIFIERS[key]


def run_art(model, x, y, c, bs):
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    clf = art_classifier(model)
    norm = np.inf if c["norm"] == "linf" else 2
    if c["fgsm"]:
        atk = FastGradientMethod(clf, norm=norm, eps=c["eps"], eps_step=c["eps"], batch_size=bs)
    else:
        atk = ProjectedGradientDescent(
            clf,
            norm=norm,
            eps=c["eps"],
            eps_step=c["alpha"],
            max_iter=c["steps"],
            num_random_init=1 if c["rs"] else 0,
            batch_size=bs,
            verbose=False,
        )
    return torch.from_numpy(atk.generate(x=x.numpy(), y=y.numpy()))


def run_limit(model, x, y, c, bs, layout="channels_last"):
    """steps × forward+backward w.r.t. the input on the same batches, nothing else.

    In the fastest memory layout this CPU has for the model (channels-last, as advlab uses); the
    "limit NCHW" contender measures the default layout, which torchattacks and ART run in.
    """
    with A.eval_mode(model):
        for i in range(0, len(x), bs):
            with fast_layout(model, x[i : i + bs].clone(), enabled=layout == "channels_last") as (net, xb):
                yb = y[i : i + bs]
                for _ in range(c["steps"]):
                    xb.requires_grad_(True)
                    (g,) = torch.autograd.grad(F.cross_entropy(net(xb), yb, reduction="sum"), xb)
                    xb = xb.detach()
    return None


LIBS = {
    "advlab": run_advlab,
    "torchattacks": run_torchattacks,
    "ART": run_art,
    "limit": run_limit,
    "limit NCHW": lambda m, x, y, c, bs: run_limit(m, x, y, c, bs, layout="nchw"),
    "advlab early-stop": lambda m, x, y, c, bs: run_advlab(m, x, y, c, bs, early_stop=True),
    "advlab NCHW": lambda m, x, y, c, bs: run_advlab(m, x, y, c, bs, channels_last=False),
    "torchattacks CL": lambda m, x, y, c, bs: run_torchattacks(channels_last_copy(m), x, y, c, bs),
    "ART CL": lambda m, x, y, c, bs: run_art(channels_last_copy(m), x, y, c, bs),
    "advlab bf16": lambda m, x, y, c, bs: run_bf16(m, x, y, c, bs),
}


def run_bf16(model, x, y, c, bs):
    """advlab under bf16 autocast (as `advlab evaluate --precision bf16`); judged in fp32 like the rest."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return run_advlab(model, x, y, c, bs)


def robust_acc(model, x_adv, y) -> float:
    with torch.inference_mode():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0], n=500, repeats=3, batch_size=250, out="benchmarks/results/attacks.json")
    p.add_argument(
        "--libs",
        default="advlab,torchattacks,ART,limit,limit NCHW,advlab NCHW,torchattacks CL,ART CL",
        help="comma-separated subset of " + ",".join(LIBS),
    )
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = min(args.n, 250), min(args.repeats, 2)
    torch.set_num_threads(args.threads)
    libs = [lib for lib in args.libs.split(",") if lib]
    model = C.standard_model(args.model)
    x, y = C.test_data(args.n)
    print(C.machine_info(), "load", C.loadavg())
    cfgs = configs(args.quick)
    with torch.inference_mode():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"clean accuracy {100 * clean:.2f}% on {len(y)} images, batch {args.batch_size}, threads {args.threads}")

    # warm-up (first-call allocations, ART/torchattacks imports)
    warm = dict(cfgs[2], steps=1)
    for lib in libs:
        LIBS[lib](model, x[: args.batch_size], y[: args.batch_size], warm, args.batch_size)

    times = {(c["name"], lib): [] for c in cfgs for lib in libs}
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    loads = [C.loadavg()]
    for r in range(args.repeats):
        order = libs[r % len(libs) :] + libs[: r % len(libs)]
        for c in cfgs:
            if c.get("check_only") and r > 0:
                continue
            for lib in order:
                if c.get("check_only") and lib.startswith("limit"):
                    continue
                torch.manual_seed(1000 + r)
                t, out = C.timed(lambda: LIBS[lib](model, x, y, c, args.batch_size))
                times[(c["name"], lib)].append(t)
                if out is not None:
                    outputs[(c["name"], lib)] = out
        loads.append(C.loadavg())
        print(f"repeat {r + 1}/{args.repeats} done, load {loads[-1]}", flush=True)

    # ---------------------------------------------------------------- report
    rows, results = [], []
    for c in cfgs:
        med = {lib: C.median(times[(c["name"], lib)]) for lib in libs if times[(c["name"], lib)]}
        ips = {lib: len(x) / t for lib, t in med.items()}
        acc = {lib: robust_acc(model, outputs[(c["name"], lib)], y) for lib in libs if (c["name"], lib) in outputs}
        diff = {}
        if "advlab" in libs:
            for lib in ("torchattacks", "ART"):
                if (c["name"], lib) in outputs:
                    diff[lib] = float((outputs[(c["name"], "advlab")] - outputs[(c["name"], lib)]).abs().max())
        res = dict(
            config=c,
            median_s=med,
            images_per_s=ips,
            robust_acc=acc,
            max_abs_diff_vs_advlab=diff,
            all_s=[times[(c["name"], lib)] for lib in libs],
        )
        results.append(res)
        if c.get("check_only"):
            continue
        a = med.get("advlab")
        rows.append(
            [c["name"]]
            + [f"{ips[lib]:.0f}" if lib in ips else "-" for lib in libs]
            + [
                f"{med['torchattacks'] / a:.2f}×" if a and "torchattacks" in med else "-",
                f"{med['ART'] / a:.2f}×" if a and "ART" in med else "-",
                f"{a / med['limit']:.2f}×" if a and "limit" in med else "-",
                f"{a / med['limit NCHW']:.2f}×" if a and "limit NCHW" in med else "-",
            ]
        )
    print(
        "\nThroughput, images/s (median of %d repeats; n=%d, batch %d, %d threads)"
        % (args.repeats, len(x), args.batch_size, args.threads)
    )
    thr = C.table(
        ["attack"] + libs + ["advlab speed-up vs torchattacks", "vs ART", "advlab time / limit", "/ limit NCHW"], rows
    )
    print(thr)
    arows = []
    for res in results:
        c = res["config"]
        acc = res["robust_acc"]
        spread = max(acc.values()) - min(acc.values()) if acc else 0
        arows.append(
            [c["name"]]
            + [f"{100 * acc[lib]:.2f}" if lib in acc else "-" for lib in libs if not lib.startswith("limit")]
            + [f"{100 * spread:.2f}"]
            + [f"{res['max_abs_diff_vs_advlab'].get(lib, float('nan')):.2e}" for lib in ("torchattacks", "ART")]
        )
    print("\nAgreement: robust accuracy % (ε = 0.1 L∞ / 1.5 L2), max |x_adv(advlab) − x_adv(other)|")
    agr = C.table(
        ["attack"]
        + [lib for lib in libs if not lib.startswith("limit")]
        + ["spread (pt)", "maxdiff torchattacks", "maxdiff ART"],
        arows,
    )
    print(agr)
    print("load averages per repeat:", loads)
    C.write_json(
        args.out,
        dict(
            machine=C.machine_info(),
            args=vars(args),
            clean_accuracy=clean,
            loads=loads,
            results=results,
            tables={"throughput": thr, "agreement": agr},
        ),
    )


if __name__ == "__main__":
    main()
