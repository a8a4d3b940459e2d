"""Jobs on a saved checkpoint: evaluate it over attacks and ε, or attack a few images and save them.

Each loads the checkpoint onto the runtime's device, takes the test split of its data set and writes its
results atomically: ``evaluate_checkpoint`` a JSON file (what ``advlab evaluate`` prints and saves, with the
model flags and the training outcome), ``attack_checkpoint`` a folder of adversarial examples that
:func:`advlab.report.save_attack_gallery` draws. Python::

    from advlab.jobs import evaluate_checkpoint
    result = evaluate_checkpoint("runs/pgd", suite="standard", eps=[0.1], n=1000, out="runs/pgd/aa.json")

``certify_checkpoint`` proves what it can (:mod:`advlab.certify`) and writes a JSON file.

Command line: ``advlab evaluate RUN_DIR --suite standard --eps 0.1``; ``advlab attack RUN_DIR --eps 0.1 --out OUT``;
``advlab certify RUN_DIR --method ibp --eps 0.1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec, verify_adversarial
from advlab.attacks.suites import suite_attacks
from advlab.attacks.threat import max_eps
from advlab.certify import verified_flags
from advlab.certify.smoothing import certify_dataset, check_settings
from advlab.defenses import defend, describe, parse_defense
from advlab.errors import AdvlabError, check_range
from advlab.evaluate import DEFAULT_BATCH, EvalResult, evaluate
from advlab.files import _json_default, check_writable, run_lock
from advlab.runs import (
    check_run_dir,
    load_checkpoint,
    load_tensors,
    prepare_run_dir,
    resolve_checkpoint,
    save_tensors,
    training_outcome,
    training_status,
    write_json,
)
from advlab.runtime import Runtime
from advlab.schema import check_fields

__all__ = ["CERTIFY_METHODS", "EvalState", "attack_checkpoint", "certify_checkpoint", "evaluate_checkpoint"]


@dataclass(frozen=True)
class EvalProgress:
    """What an evaluation state records beside its flags (checked with :func:`advlab.schema.check_fields`)."""

    fingerprint: dict[str, Any]
    batches: int
    sizes: list[int]  # examples per finished batch: the flags are stored concatenated
    seconds: float
    draws: int | None
    flags: list[dict[str, Any]]
    white_robust: dict[str, int]
    black_broke: dict[str, int]


class EvalState:
    """An interrupted evaluation's progress, beside its output: ``OUT.state.safetensors`` for ``--out OUT``.

    Saved atomically after every batch (the per-example flags so far, the random generator, the counts), read
    back when the same evaluation starts again and removed once the result is written. Like a training state
    it is a checksummed tensor file whose record is checked field by field, and it names what it was computed
    from (the checkpoint's content, the data, every attack setting, ε, seed, batch size, device, precision):
    a damaged state, or one from anything else, is refused with one line, never mixed in."""

    KEY = "advlab_eval_state"

    def __init__(self, out: Path, fingerprint: dict) -> None:
        self.path = out.with_name(out.name + ".state.safetensors")
        self.fingerprint = json.loads(json.dumps(fingerprint))

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        tensors, metadata = load_tensors(self.path)  # checksums verified: a damaged state is refused
        try:
            record = json.loads(metadata[self.KEY])
        except (KeyError, json.JSONDecodeError):
            raise AdvlabError(f"{self.path} is not an evaluation state; delete it to start the evaluation "
                              "afresh") from None
        check_fields(record, EvalProgress, what="evaluation state field", where=str(self.path))
        if record["fingerprint"] != self.fingerprint:
            changed = sorted(k for k in set(record["fingerprint"]) | set(self.fingerprint)
                             if record["fingerprint"].get(k) != self.fingerprint.get(k))
            raise AdvlabError(f"{self.path} holds the state of another evaluation (its {', '.join(changed)} "
                              "differ); delete it or choose another --out")
        sizes = record["sizes"]
        flags = {name: t for name, t in tensors.items() if name != "generator"}
        if (len(sizes) != record["batches"] or "generator" not in tensors or "clean" not in flags
                or any(t.dtype != torch.bool or t.dim() != 1 or t.numel() != sum(sizes) for t in flags.values())):
            raise AdvlabError(f"{self.path} is inconsistent (its flags do not match its {record['batches']} "
                              "batches); delete it to start the evaluation afresh")
        split = {name: list(t.split(sizes)) for name, t in flags.items()}
        return {"batches": record["batches"], "seconds": record["seconds"], "draws": record["draws"],
                "flags": record["flags"], "generator": tensors["generator"], "clean": split.pop("clean"),
                "worst": {int(name.removeprefix("worst.")): v for name, v in split.items()
                          if name.startswith("worst.")},
                "robust": {name.removeprefix("robust."): v for name, v in split.items() if name.startswith("robust.")},
                "white_robust": {int(k): v for k, v in record["white_robust"].items()},
                "black_broke": record["black_broke"]}

    def save(self, progress: dict) -> None:
        cat = torch.cat
        tensors = {"generator": progress["generator"], "clean": cat(progress["clean"])}
        tensors |= {f"worst.{i}": cat(flags) for i, flags in progress["worst"].items()}
        tensors |= {f"robust.{key}": cat(flags) for key, flags in progress["robust"].items()}
        record = {"fingerprint": self.fingerprint, "batches": progress["batches"],
                  "sizes": [len(t) for t in progress["clean"]], "seconds": progress["seconds"],
                  "draws": progress["draws"], "flags": progress["flags"],
                  "white_robust": {str(k): v for k, v in progress["white_robust"].items()},
                  "black_broke": progress["black_broke"]}
        save_tensors(self.path, tensors, metadata={self.KEY: json.dumps(record, default=_json_default)})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_test_data(record: dict, dataset: str | None, split: str, n: int | None, data_dir, progress: bool):
    from advlab.data import load_dataset

    name = dataset or record.get("dataset")
    if not name:
        raise AdvlabError("the checkpoint names no data set; pass --dataset")
    if n is not None and n < 1:
        raise AdvlabError(f"--n must be at least 1, got {n}")
    data = load_dataset(name, split, data_dir=data_dir, progress=progress)
    if n is not None:
        data = data.subset(min(n, len(data)))
    return data


def check_compatible(model: nn.Module, record: dict, data, where: str, *,
                     budgets: Sequence[tuple[AttackSpec, float]] = ()) -> None:
    """Refuse, before any attack, a data set whose images or classes the model was not built for: its
    channels and classes against the record, then one image through the model (any other size mismatch);
    and each (attack, ε) of ``budgets`` whose ε the images cannot hold (above 1 in L∞)."""
    info = data.info
    args = record.get("model_args", {})
    shape = f"{info.channels}×{info.height}×{info.width}"
    if isinstance(args.get("in_channels"), int) and args["in_channels"] != info.channels:
        raise AdvlabError(f"{where} takes {args['in_channels']}-channel images but {info.name} has {shape}; "
                          "evaluate it on the data set it was trained on (--dataset)")
    x, _ = data.subset(1).tensors(next((p.device for p in model.parameters()), torch.device("cpu")))
    for attack, eps in budgets:
        check_range(f"--eps for {attack.label}", eps, 0.0, max_eps(attack.norm, x))
    try:
        with torch.inference_mode():
            logits = model(x)
    except RuntimeError as err:
        raise AdvlabError(f"{where} cannot take {info.name}'s {shape} images: {str(err).splitlines()[0]}") from None
    if logits.dim() != 2 or logits.shape[1] != len(info.classes):
        raise AdvlabError(f"{where} gives {tuple(logits.shape[1:])} outputs per image but {info.name} has "
                          f"{len(info.classes)} classes; evaluate it on the data set it was trained on (--dataset)")


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    attacks: Sequence[AttackSpec] = (),
    eps: Sequence[float],
    suite: str | None = None,
    norm: str = "linf",
    n: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir=None,
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
    model, record = load_checkpoint(checkpoint, device=runtime.device)
    model = defend(model, guards)
    data = _load_test_data(record, dataset, split, n, data_dir, progress)
    if suite is not None:
        attacks = suite_attacks(suite, norm=norm, classes=len(data.info.classes)) + list(attacks)
        chain = True
    check_compatible(model, record, data, f"the model in {checkpoint}", budgets=[(a, e) for a in attacks for e in eps])
    # One writer per output: a second evaluate --out on the same file is refused (the lock sits beside it,
    # when its folder exists; a new folder is made only when the results are written).
    locked = run_lock(out) if out is not None and out.parent.is_dir() else contextlib.nullcontext()
    with locked:
        state = None
        if out is not None:  # resumable: the progress is saved beside the output after every batch
            state = EvalState(out, {"checkpoint_sha256": _digest(resolve_checkpoint(checkpoint)),
                                    "dataset": data.info.name, "split": split, "n": len(data),
                                    "defenses": describe(guards),
                                    "attacks": [a.hyperparameters(e) for a in attacks for e in eps],
                                    "eps": list(eps), "seed": seed, "batch_size": batch_size, "chain": chain,
                                    "early_stop": early_stop, "runtime": runtime.to_dict()})
        result = evaluate(model, data, attacks=attacks, eps=eps, batch_size=batch_size, chain=chain,
                          early_stop=early_stop, seed=seed, progress=progress, runtime=runtime, state=state)
        if out is not None:
            write_json(out, {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split,
                             "hyperparameters": {a.label: [a.hyperparameters(e) for e in eps] for a in attacks},
                             "attack_precision": runtime.precision, "runtime": runtime.to_dict(),
                             "batch_size": batch_size, "seed": seed,
                             "early_stop": early_stop, "chain": chain,  # the random starts depend on these
                             "suite": suite, "defenses": describe(guards),
                             "training": training_outcome(checkpoint),  # a collapsed run says so here too
                             "training_status": training_status(checkpoint),  # and an unfinished one
                             **result.to_dict()})
            state.remove()
    return result


def attack_checkpoint(
    checkpoint: str | Path,
    *,
    attack: AttackSpec,
    eps: float,
    out: str | Path,
    n: int = 8,
    target: int | None = None,
    dataset: str | None = None,
    split: str = "test",
    data_dir=None,
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
        raise AdvlabError(f"{attack.label} is targeted: name the class with --target CLASS (advlab evaluate "
                          "tries the most likely wrong classes itself)")
    if attack.targeted and attack.targets is not None:
        raise AdvlabError(f"{attack.label}: a number of target classes means nothing here; use --target CLASS")
    check_run_dir(out, overwrite=overwrite)  # refused before any work; created only when the files are written
    runtime = runtime if runtime is not None else Runtime()
    guards = [parse_defense(d) for d in defenses]
    model, record = load_checkpoint(checkpoint, device=runtime.device)
    model = defend(model, guards)
    data = _load_test_data(record, dataset, split, None, data_dir, progress)
    check_compatible(model, record, data, f"the model in {checkpoint}", budgets=[(attack, eps)])
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
    tensors = {"x": x, "x_adv": x_adv, "labels": y, "logits_clean": logits_clean, "logits_adv": logits_adv,
               "prediction_clean": logits_clean.argmax(1), "prediction_adv": prediction}
    if target is not None:
        tensors["targets"] = goal
    out = prepare_run_dir(out, overwrite=overwrite)
    save_tensors(out / "adversarial.safetensors", tensors)
    summary = {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split, "n": len(y),
               "training_status": training_status(checkpoint), "defenses": describe(guards),
               **attack.hyperparameters(eps), "label": attack.label, "target": target, "classes": list(classes),
               "runtime": runtime.to_dict(),
               "clean_accuracy": float((logits_clean.argmax(1) == y).float().mean()),
               "success_rate": float(success.float().mean()),
               "files": ["adversarial.safetensors", "attack.json"]}
    write_json(out / "attack.json", summary)
    return summary


CERTIFY_METHODS = ("ibp", "crown-ibp", "smoothing")


def certify_checkpoint(
    checkpoint: str | Path,
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
    model, record = load_checkpoint(checkpoint, device=runtime.device)
    if method == "smoothing" and sigma is None:
        trained = record.get("config") or {}
        if trained.get("method") != "gaussian":
            raise AdvlabError("this model was not trained with --method gaussian; pass --sigma for its smoothing")
        sigma = float(trained["sigma"])
        check_settings(sigma, n, n0, alpha)
    default_images = 500 if method == "smoothing" else None  # CERTIFY costs n forward passes per image
    data = _load_test_data(record, dataset, split, images if images is not None else default_images, data_dir,
                           progress)
    check_compatible(model, record, data, f"the model in {checkpoint}")
    x, y = data.tensors()
    start = time.perf_counter()
    summary: dict = {"checkpoint": str(checkpoint), "dataset": data.info.name, "split": split, "method": method,
                     "training_status": training_status(checkpoint), "runtime": runtime.to_dict(), "seed": seed}
    if method == "smoothing":
        result = certify_dataset(model, x, y, sigma=sigma, n=n, n0=n0, alpha=alpha, classes=len(data.info.classes),
                                 batch_size=batch_size, seed=seed, progress=progress)
        summary.update(result.to_dict())
    else:
        with torch.inference_mode():
            correct = torch.cat([model(x[i:i + batch_size].to(runtime.device)).argmax(1).cpu() == y[i:i + batch_size]
                                 for i in range(0, len(y), batch_size)])
        summary.update(images=len(y), eps=eps, clean_accuracy=float(correct.float().mean()))
        for bound in ("ibp", "crown-ibp") if method == "crown-ibp" else ("ibp",):
            flags = verified_flags(model, (x, y), eps, method=bound, batch_size=batch_size, device=runtime.device)
            if (flags & ~correct).any():
                raise AdvlabError(f"internal: {bound} verified an example the model misclassifies; please report it")
            summary[f"verified_accuracy_{bound.replace('-', '_')}" if bound != method else "verified_accuracy"] = \
                float(flags.float().mean())
        summary["seconds"] = time.perf_counter() - start
    if out is not None:
        write_json(out, summary)
    return summary
