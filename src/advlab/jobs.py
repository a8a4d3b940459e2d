"""Jobs on a saved checkpoint: evaluate it over attacks and ε, or attack a few images and save them.

Each loads the checkpoint onto the runtime's device, takes the test split of its data set and writes its
results atomically: ``evaluate_checkpoint`` a JSON file (what ``advlab evaluate`` prints and saves, with the
model flags and the training outcome), ``attack_checkpoint`` a folder of adversarial examples that
:func:`advlab.report.save_attack_gallery` draws. Python::

    from advlab.jobs import evaluate_checkpoint
    result = evaluate_checkpoint("runs/pgd", suite="standard", eps=[0.1], n=1000, out="runs/pgd/aa.json")

``certify_checkpoint`` proves what it can (:mod:`advlab.certify`) and writes a JSON file. Each takes an
advlab checkpoint or a user's model (:class:`advlab.user_model.UserModel`: a factory and a safetensors file),
and a built-in data set or the user's images (``dataset="folder:PATH"`` or ``"npz:PATH"``, :mod:`advlab.data.user`).

Command line: ``advlab evaluate RUN_DIR --suite standard --eps 0.1``; ``advlab attack RUN_DIR --eps 0.1 --out OUT``;
``advlab certify RUN_DIR --method ibp --eps 0.1``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, verify_adversarial
from advlab.attacks.suites import suite_attacks
from advlab.attacks.threat import max_eps
from advlab.certify import verified_flags
from advlab.certify.smoothing import certify_dataset, check_settings
from advlab.defenses import defend, describe, parse_defense
from advlab.errors import AdvlabError, check_range
from advlab.eval_state import EvalState
from advlab.evaluate import DEFAULT_BATCH, EvalResult, evaluate
from advlab.files import check_writable, run_lock
from advlab.model_checks import ModelFlagWarning, model_flags, returns_probabilities
from advlab.runs import check_run_dir, prepare_run_dir, save_tensors, write_json
from advlab.runtime import Runtime
from advlab.user_model import UserModel, open_model, provenance, training_record, weights_digest

__all__ = ["CERTIFY_METHODS", "EvalState", "attack_checkpoint", "certify_checkpoint", "evaluate_checkpoint"]


Source = str | Path | UserModel  # an advlab checkpoint (run folder or .safetensors) or a user's model


def _where(source: Source) -> str:
    return str(source) if isinstance(source, UserModel) else f"the model in {source}"


def _open(source: Source, dataset: str | None, image_size, classes, device):
    """The model and the user's own images, if ``dataset`` names them (:mod:`advlab.data.user`): the images
    are read, and refused, before the model is looked for. ``(model, record, images or None)``."""
    from advlab.data.user import is_user_data, load_user_data

    if not is_user_data(dataset) and (image_size is not None or classes is not None):
        raise AdvlabError("--image-size and --classes are for your own images (--data folder:PATH or npz:PATH)")
    images = load_user_data(dataset, image_size=image_size, classes=classes) if is_user_data(dataset) else None
    return (*open_model(source, device=device), images)


def _load_test_data(
    record: dict, dataset: str | None, split: str, n: int | None, data_dir, progress: bool, images=None
):
    """The user's ``images`` (from :func:`_open`), else ``split`` of a built-in set: ``dataset``, by default
    the one the checkpoint was trained on; the first ``n`` examples."""
    from advlab.data import load_dataset

    name = dataset or record.get("dataset")
    if not name:
        raise AdvlabError("the model names no data set; pass --dataset NAME or --data folder:PATH (or npz:PATH)")
    if n is not None and n < 1:
        raise AdvlabError(f"--n must be at least 1, got {n}")
    data = images if images is not None else load_dataset(name, split, data_dir=data_dir, progress=progress)
    if n is not None:
        data = data.subset(min(n, len(data)))
    return data


def check_compatible(
    model: nn.Module,
    record: dict,
    data,
    where: str,
    *,
    budgets: Sequence[tuple[AttackSpec, float]] = (),
    warn_flags: bool = True,
) -> None:
    """Refuse, before any attack, a data set whose images or classes the model was not built for: its
    channels and classes against the record, then one image through the model (any other size mismatch);
    and each (attack, ε) of ``budgets`` whose ε the images cannot hold (above 1 in L∞). A user's model
    (:mod:`advlab.user_model`) also gets the model checks: probabilities are refused, other flags warned of
    (``warn_flags``; ``evaluate`` reports them with its result instead)."""
    info = data.info
    args = record.get("model_args", {})
    shape = f"{info.channels}×{info.height}×{info.width}"
    if isinstance(args.get("in_channels"), int) and args["in_channels"] != info.channels:
        raise AdvlabError(
            f"{where} takes {args['in_channels']}-channel images but {info.name} has {shape}; "
            "evaluate it on the data set it was trained on (--dataset)"
        )
    x, _ = data.subset(1).tensors(next((p.device for p in model.parameters()), torch.device("cpu")))
    for attack, eps in budgets:
        check_range(f"--eps for {attack.label}", eps, 0.0, max_eps(attack.norm, x))
    try:
        with torch.inference_mode():
            logits = model(x)
    except (RuntimeError, ValueError, TypeError) as err:
        hint = "; resize them with --image-size HxW" if info.kind == "user" else ""
        raise AdvlabError(
            f"{where} cannot take {info.name}'s {shape} images: {str(err).splitlines()[0]}{hint}"
        ) from None
    if logits.dim() != 2 or logits.shape[1] != len(info.classes):
        raise AdvlabError(
            f"{where} gives {tuple(logits.shape[1:])} outputs per image but {info.name} has "
            f"{len(info.classes)} classes; evaluate it on the data set it was trained on (--dataset)"
        )
    if record.get("source") is not None:  # a user's model: the model checks before any attack
        xs, ys = data.subset(min(64, len(data))).tensors(x.device)
        with torch.inference_mode():
            if returns_probabilities(model(xs)):
                raise AdvlabError(
                    f"{where} returns probabilities (every row in [0, 1], summing to 1): return the "
                    "logits instead (drop the final softmax), or the attacks' gradients vanish and "
                    "the robustness measured is overstated"
                )
        for flag in model_flags(model, xs, ys, training=False) if warn_flags else ():  # evaluate runs its own
            warnings.warn(f"{where}: {flag['message']}", ModelFlagWarning, stacklevel=2)


def evaluate_checkpoint(
    checkpoint: Source,
    *,
    attacks: Sequence[AttackSpec] = (),
    eps: Sequence[float],
    suite: str | None = None,
    norm: str = "linf",
    n: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir=None,
    image_size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH,
    chain: bool = False,
    early_stop: bool = True,
    seed: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
    defenses: Sequence[str] = (),
) -> EvalResult:
    """Load a checkpoint onto the runtime's device (default: CUDA when present), evaluate it on ``n``
    examples of ``split`` and write the result as JSON to ``out``. ``suite`` (``standard``, ``quick``:
    :mod:`advlab.attacks.suites`) runs that suite's attacks in ``norm`` first, as a chain, then ``attacks``.
    With ``out``, an interrupted evaluation resumes where it stopped when run again (:class:`EvalState`)."""
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise AdvlabError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out is not None:
        check_writable(out)  # before the evaluation, not after it
    if suite is not None:
        suite_attacks(suite, norm=norm)  # an unknown suite fails before the model and data load
    runtime = runtime if runtime is not None else Runtime()
    guards = [parse_defense(d) for d in defenses]  # an unknown defense fails before the model loads
    model, record, own = _open(checkpoint, dataset, image_size, classes, runtime.device)
    model = defend(model, guards)
    data = _load_test_data(record, dataset, split, n, data_dir, progress, own)
    if suite is not None:
        attacks = suite_attacks(suite, norm=norm, classes=len(data.info.classes)) + list(attacks)
        chain = True
    check_compatible(
        model, record, data, _where(checkpoint), budgets=[(a, e) for a in attacks for e in eps], warn_flags=False
    )
    # One writer per output: a second evaluate --out on the same file is refused (the lock sits beside it,
    # when its folder exists; a new folder is made only when the results are written).
    writes = out is not None and runtime.main  # under torchrun rank 0 writes the result
    locked = run_lock(out) if writes and out.parent.is_dir() else contextlib.nullcontext()
    with locked:
        state = None
        if writes and runtime.world is None:  # resumable: the progress is saved beside the output after every batch
            state = EvalState(
                out,
                {
                    "checkpoint_sha256": weights_digest(checkpoint),
                    "dataset": data.info.name,
                    "split": split,
                    "n": len(data),
                    "defenses": describe(guards),
                    "attacks": [a.hyperparameters(e) for a in attacks for e in eps],
                    "eps": list(eps),
                    "seed": seed,
                    "batch_size": batch_size,
                    "chain": chain,
                    "early_stop": early_stop,
                    "runtime": runtime.to_dict(),
                },
            )
        result = evaluate(
            model,
            data,
            attacks=attacks,
            eps=eps,
            batch_size=batch_size,
            chain=chain,
            early_stop=early_stop,
            seed=seed,
            progress=progress,
            runtime=runtime,
            state=state,
        )
        if writes:
            write_json(
                out,
                {
                    **provenance(checkpoint),
                    "dataset": data.info.name,
                    "split": split,
                    "hyperparameters": {a.label: [a.hyperparameters(e) for e in eps] for a in attacks},
                    "attack_precision": runtime.precision,
                    "runtime": runtime.to_dict(),
                    "batch_size": batch_size,
                    "seed": seed,
                    "early_stop": early_stop,
                    "chain": chain,  # the random starts depend on these
                    "suite": suite,
                    "defenses": describe(guards),
                    **training_record(checkpoint),  # a collapsed or unfinished run says so here too
                    **result.to_dict(),
                },
            )
            if state is not None:
                state.remove()
    return result


def attack_checkpoint(
    checkpoint: Source,
    *,
    attack: AttackSpec,
    eps: float,
    out: str | Path,
    n: int = 8,
    target: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir=None,
    image_size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
    defenses: Sequence[str] = (),
) -> dict:
    """Attack the first ``n`` examples of ``split`` and write ``adversarial.safetensors`` (images, labels,
    logits) and ``attack.json`` (hyperparameters, class names, success rate) into the folder ``out``;
    :func:`advlab.report.save_attack_gallery` draws ``gallery.png`` from those files.

    ``target`` makes the attack targeted at that class index (examples already of that class are skipped).
    """
    import dataclasses

    if attack.targeted and target is None:
        raise AdvlabError(
            f"{attack.label} is targeted: name the class with --target CLASS (advlab evaluate "
            "tries the most likely wrong classes itself)"
        )
    if attack.targeted and attack.targets is not None:
        raise AdvlabError(f"{attack.label}: a number of target classes means nothing here; use --target CLASS")
    check_run_dir(out, overwrite=overwrite)  # refused before any work; created only when the files are written
    runtime = runtime if runtime is not None else Runtime()
    guards = [parse_defense(d) for d in defenses]
    model, record, own = _open(checkpoint, dataset, image_size, classes, runtime.device)
    model = defend(model, guards)
    data = _load_test_data(record, dataset, split, None, data_dir, progress, own)
    check_compatible(model, record, data, _where(checkpoint), budgets=[(attack, eps)])
    classes = data.info.classes
    if target is not None:
        if not 0 <= target < len(classes):
            raise AdvlabError(f"--target must be a class index from 0 to {len(classes) - 1}, got {target}")
        keep = (data.labels != target).nonzero().squeeze(1)
        data = data.subset(keep)
        attack = dataclasses.replace(attack, targeted=True)
    data = data.subset(min(n, len(data)))
    x, y = data.tensors(runtime.device)
    goal = torch.full_like(y, target) if target is not None else y
    with runtime.autocast():
        x_adv = attack(model, x, goal, eps=eps, generator=runtime.generator(seed), channels_last=runtime.channels_last)
    x_adv = x_adv.float()
    verify_adversarial(x, x_adv, eps, attack.norm, what=attack.label)
    with torch.inference_mode():
        logits_clean, logits_adv = model(x), model(x_adv)
    prediction = logits_adv.argmax(1)
    success = prediction == goal if target is not None else prediction != y
    tensors = {
        "x": x,
        "x_adv": x_adv,
        "labels": y,
        "logits_clean": logits_clean,
        "logits_adv": logits_adv,
        "prediction_clean": logits_clean.argmax(1),
        "prediction_adv": prediction,
    }
    if target is not None:
        tensors["targets"] = goal
    out = prepare_run_dir(out, overwrite=overwrite)
    save_tensors(out / "adversarial.safetensors", tensors)
    summary = {
        **provenance(checkpoint),
        "dataset": data.info.name,
        "split": split,
        "n": len(y),
        "training_status": training_record(checkpoint)["training_status"],
        "defenses": describe(guards),
        **attack.hyperparameters(eps),
        "label": attack.label,
        "target": target,
        "classes": list(classes),
        "runtime": runtime.to_dict(),
        "clean_accuracy": float((logits_clean.argmax(1) == y).float().mean()),
        "success_rate": float(success.float().mean()),
        "files": ["adversarial.safetensors", "attack.json"],
    }
    write_json(out / "attack.json", summary)
    return summary


CERTIFY_METHODS = ("ibp", "crown-ibp", "smoothing")


def certify_checkpoint(
    checkpoint: Source,
    *,
    method: str = "ibp",
    eps: float | None = None,
    sigma: float | None = None,
    n: int = 10_000,
    n0: int = 100,
    alpha: float = 0.001,
    images: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict:
    """Certify a checkpoint on the first ``images`` examples of ``split`` (:mod:`advlab.certify`) and write the
    result as JSON to ``out``. ``ibp`` / ``crown-ibp``: the verified accuracy at L∞ ``eps`` (crown-ibp reports
    IBP's beside its own); ``smoothing``: CERTIFY with noise ``sigma`` (default: the σ the model was trained
    with by ``--method gaussian``), ``n`` estimation and ``n0`` selection samples at level ``alpha``."""
    if method not in CERTIFY_METHODS:
        raise AdvlabError(f"unknown certify method {method!r}; choose one of: {', '.join(CERTIFY_METHODS)}")
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise AdvlabError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out is not None:
        check_writable(out)
    if method == "smoothing":
        if eps is not None:
            raise AdvlabError("--eps is for ibp and crown-ibp; smoothing certifies an L2 radius per image (--sigma)")
        if sigma is not None:
            check_settings(sigma, n, n0, alpha)
    else:
        if eps is None:
            raise AdvlabError(f"--method {method} needs --eps (the L∞ budget, e.g. 0.1)")
        check_range("--eps", eps, 0.0, 1.0)
    runtime = runtime if runtime is not None else Runtime()
    model, record, own = _open(checkpoint, dataset, image_size, classes, runtime.device)
    if method == "smoothing" and sigma is None:
        trained = record.get("config") or {}
        if trained.get("method") != "gaussian":
            raise AdvlabError("this model was not trained with --method gaussian; pass --sigma for its smoothing")
        sigma = float(trained["sigma"])
        check_settings(sigma, n, n0, alpha)
    default_images = 500 if method == "smoothing" else None  # CERTIFY costs n forward passes per image
    data = _load_test_data(
        record, dataset, split, images if images is not None else default_images, data_dir, progress, own
    )
    check_compatible(model, record, data, _where(checkpoint))
    x, y = data.tensors()
    start = time.perf_counter()
    summary: dict = {
        **provenance(checkpoint),
        "dataset": data.info.name,
        "split": split,
        "method": method,
        "training_status": training_record(checkpoint)["training_status"],
        "runtime": runtime.to_dict(),
        "seed": seed,
    }
    if method == "smoothing":
        result = certify_dataset(
            model,
            x,
            y,
            sigma=sigma,
            n=n,
            n0=n0,
            alpha=alpha,
            classes=len(data.info.classes),
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        summary.update(result.to_dict())
    else:
        with torch.inference_mode():
            correct = torch.cat(
                [
                    model(x[i : i + batch_size].to(runtime.device)).argmax(1).cpu() == y[i : i + batch_size]
                    for i in range(0, len(y), batch_size)
                ]
            )
        summary.update(images=len(y), eps=eps, clean_accuracy=float(correct.float().mean()))
        for bound in ("ibp", "crown-ibp") if method == "crown-ibp" else ("ibp",):
            flags = verified_flags(model, (x, y), eps, method=bound, batch_size=batch_size, device=runtime.device)
            if (flags & ~correct).any():
                raise AdvlabError(f"internal: {bound} verified an example the model misclassifies; please report it")
            summary[f"verified_accuracy_{bound.replace('-', '_')}" if bound != method else "verified_accuracy"] = float(
                flags.float().mean()
            )
        summary["seconds"] = time.perf_counter() - start
    if out is not None:
        write_json(out, summary)
    return summary
