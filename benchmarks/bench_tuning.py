"""Knobs for advlab's PGD on CPU: profile, threads, batch size, channels_last, bf16 autocast, frozen
parameters, torch.compile, and a leaner copy of advlab's gradient loop (`perturb_opt`, see README).

    .venv/bin/python benchmarks/bench_tuning.py --out benchmarks/results/tuning.json
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

import advlab.attacks as A  # noqa: E402
from advlab.attacks import threat  # noqa: E402
from advlab.attacks.loop import attack_objective  # noqa: E402


# ---------------------------------------------------------------- candidate change to advlab.attacks.perturb
@contextlib.contextmanager
def frozen(model):
    """Parameters stop requiring grad during the attack: autograd then keeps no weight-side state."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def pgd_variant(model, x, y, *, eps, alpha, steps, norm="linf", generator=None, freeze=False, lean=False):
    """advlab.attacks.pgd (restarts=1, no early stop) with the two candidate changes switchable."""
    objective = attack_objective("ce", targeted=False)
    with A.eval_mode(model), torch.enable_grad(), frozen(model) if freeze else contextlib.nullcontext():
        if not lean:
            return A.perturb(
                model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, objective=objective, generator=generator
            )
        # lean: L∞ box precomputed once (x−ε and x+ε clipped to [0, 1]) so projection is one clamp
        x_adv = threat.random_start(x, eps, norm, generator)
        if norm == "linf":
            lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(model(x_adv), y).sum(), x_adv)
            x_adv = x_adv.detach()
            if norm == "linf":
                x_adv = torch.clamp(x_adv.add_(grad.sign_(), alpha=alpha), lo, hi)
            else:
                x_adv = threat.project(x_adv + alpha * threat.step_direction(grad, norm), x, eps, norm)
        return x_adv


def time_it(fn, repeats):
    return C.median_seconds(fn, repeats)


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0], n=500, repeats=3, batch_size=250, out="benchmarks/results/tuning.json")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats, args.steps = 250, 2, 5
    torch.set_num_threads(args.threads)
    model = C.standard_model(args.model)
    x, y = C.test_data(args.n)
    bs, steps = args.batch_size, args.steps
    eps, alpha = 0.1, 0.25 / steps
    results, rows = {}, []
    print(C.machine_info(), "load", C.loadavg())

    def pgd_all(m=model, xs=x, freeze=False, lean=False, batch=bs, autocast=False):
        g = torch.Generator().manual_seed(0)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            for i in range(0, len(xs), batch):
                pgd_variant(
                    m,
                    xs[i : i + batch],
                    y[i : i + batch],
                    eps=eps,
                    alpha=alpha,
                    steps=steps,
                    generator=g,
                    freeze=freeze,
                    lean=lean,
                )

    def record(name, fn, note=""):
        t = time_it(fn, args.repeats)
        results[name] = dict(seconds=t, img_steps_per_s=len(x) * steps / t, load=C.loadavg(), note=note)
        rows.append([name, f"{t:.3f}", f"{len(x) * steps / t:.0f}", note])
        print(rows[-1], flush=True)

    # --- profile advlab.attacks.pgd as shipped
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        A.pgd(model, x[:bs], y[:bs], eps=eps, alpha=alpha, steps=steps, generator=torch.Generator().manual_seed(0))
    prof_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(prof_table)

    record("baseline (advlab perturb, fp32, 2 threads)", lambda: pgd_all())
    record("frozen params", lambda: pgd_all(freeze=True))
    record("lean projection", lambda: pgd_all(lean=True))
    record("frozen + lean", lambda: pgd_all(freeze=True, lean=True))
    for b in (50, 100, 500, 1000):
        if b <= len(x) or b == 1000:
            record(f"batch {b}", lambda b=b: pgd_all(batch=b))
    for th in (1,):
        torch.set_num_threads(th)
        record(f"{th} thread", lambda: pgd_all())
        torch.set_num_threads(args.threads)
    cl_model = C.standard_model(args.model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    record("channels_last", lambda: pgd_all(m=cl_model, xs=x_cl))
    for b in (50, 100, 500):
        if b <= len(x):
            record(f"channels_last, batch {b}", lambda b=b: pgd_all(m=cl_model, xs=x_cl, batch=b))
    record("channels_last + bf16 autocast", lambda: pgd_all(m=cl_model, xs=x_cl, autocast=True))
    record("bf16 autocast", lambda: pgd_all(autocast=True), note=C.bf16_support())
    if not args.no_compile:
        cm = torch.compile(C.standard_model(args.model))
        t0 = time.perf_counter()
        try:
            pgd_all(m=cm)
            record(
                "torch.compile(model)",
                lambda: pgd_all(m=cm),
                note=f"compile+first run {time.perf_counter() - t0:.0f} s",
            )
        except Exception as err:  # noqa: BLE001
            rows.append(["torch.compile(model)", "failed", "", repr(err)[:80]])
    tbl = C.table(["variant", f"seconds ({len(x)} img × PGD-{steps})", "image-steps/s", "note"], rows)
    print(tbl)
    C.write_json(
        args.out, dict(machine=C.machine_info(), args=vars(args), results=results, table=tbl, profile=prof_table)
    )


if __name__ == "__main__":
    main()
