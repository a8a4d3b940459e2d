"""``advlab evaluate``'s job: a model over attacks and ε on the images given, written as JSON."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import torch

from advlab.attacks import AttackSpec
from advlab.attacks.suites import suite_attacks
from advlab.defenses import describe
from advlab.errors import AdvlabError
from advlab.eval_state import EvalState
from advlab.evaluate import DEFAULT_BATCH, POOL, EvalResult, evaluate
from advlab.files import run_lock, write_json
from advlab.jobs.sources import DataSource, ModelSource, ThreatModel, check_output, open_job, require_compatible
from advlab.memory import fitting_batch
from advlab.runtime import Runtime


def evaluate_checkpoint(
    model: ModelSource | str | Path,
    data: DataSource,
    threat: ThreatModel,
    *,
    attacks: Sequence[AttackSpec] = (),
    suite: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int | None = DEFAULT_BATCH,
    chain: bool = False,
    early_stop: bool = True,
    seed: int = 0,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``data`` against ``threat`` (its ε and defenses) and write the result as JSON to
    ``out``. ``suite`` (``standard``, ``quick``, ``rand``: :mod:`advlab.attacks.suites`) runs that suite's
    attacks in the threat model's norm first, then ``attacks``; a suite is a chain, so with one the whole
    evaluation chains (each attack on what the earlier ones left). With ``out``, an interrupted evaluation
    resumes where it stopped when run again (:class:`EvalState`)."""
    source, out = ModelSource.of(model), Path(out) if out is not None else None
    check_output(out, overwrite)
    if suite is not None:
        suite_attacks(suite, norm=threat.norm)  # an unknown suite fails before the model and data load
    runtime = runtime if runtime is not None else Runtime()
    job = open_job(source, data, threat, device=runtime.device, progress=progress)
    if suite is not None:
        attacks = suite_attacks(suite, norm=threat.norm, classes=len(job.data.info.classes)) + list(attacks)
    chain, eps = chain or suite is not None, list(threat.eps)
    if not eps and not (attacks and all(a.kind.minimum_norm for a in attacks)):
        raise AdvlabError("give --eps (only minimum-norm attacks, such as fmn or fab, need none: they give every ε)")
    require_compatible(job, budgets=[(a, e) for a in attacks for e in eps], warn=False)
    chosen, batch_size = batch_size is None, _batch_size(job, batch_size, runtime)  # None: what memory fits
    settings = {
        "dataset": job.data.info.name,
        "split": data.split,
        "defenses": describe(job.defenses),
        "seed": seed,
        "batch_size": batch_size,
        **({"batch_size_from": "the free memory"} if chosen else {}),
        "chain": chain,
        "early_stop": early_stop,
        "runtime": runtime.to_dict(),
    }
    # One writer per output (rank 0 under torchrun): a second evaluate --out on the same file is refused.
    writes = out is not None and runtime.main
    with run_lock(out) if writes and out.parent.is_dir() else contextlib.nullcontext():
        # Resumable: the progress is saved beside the output after every pool of batches (one process only).
        state = _state(out, job, attacks, eps, settings) if writes and runtime.world is None else None
        result = evaluate(
            job.model,
            job.data,
            attacks=attacks,
            eps=eps or [0.0],  # minimum-norm attacks alone: their curve below gives every ε
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
                    **source.provenance(),
                    **settings,
                    "suite": suite,
                    "attack_precision": runtime.precision,
                    "hyperparameters": {a.label: [a.hyperparameters(e) for e in eps] for a in attacks},
                    **source.training(),  # a collapsed or unfinished run says so here too
                    **result.to_dict(),
                    **({"minimum_norm": minimum_norm_curves(result, eps)} if result.minimal_norms else {}),
                },
            )
            if state is not None:
                state.remove()
    return result


def curve_grid(result: EvalResult, eps: Sequence[float] = (), points: int = 11) -> list[float]:
    """The ε at which to show a minimum-norm attack's curve: those given, else ``points`` evenly spaced from
    0 to the largest smallest-adversarial found (the curve is flat beyond it)."""
    if eps:
        return [float(e) for e in eps]
    finite = [n[torch.isfinite(n)] for n in result.minimal_norms.values()]
    top = max((float(n.max()) for n in finite if n.numel()), default=0.0)
    return [round(top * k / (points - 1), 6) for k in range(points)]


def minimum_norm_curves(result: EvalResult, eps: Sequence[float] = (), points: int = 11) -> dict:
    """Per minimum-norm attack: its robust-accuracy curve (at :func:`curve_grid`), the median smallest
    adversarial of the images it was found for, and every image's (null: none found; 0: wrong already)."""
    grid, curves = curve_grid(result, eps, points), {}
    for label, norms in result.minimal_norms.items():
        found = norms[torch.isfinite(norms) & (norms > 0)]
        curves[label] = {
            "eps": grid,
            "robust_accuracy": result.minimal_curve(label, grid),
            "median_norm": float(found.median()) if found.numel() else None,
            "norms": [None if not math.isfinite(v) else v for v in norms.tolist()],
        }
    return curves


def _batch_size(job, batch_size: int | None, runtime: Runtime) -> int:
    """The batch given, or as many images as fit in the free memory (advlab.memory), at most DEFAULT_BATCH."""
    if batch_size is not None:
        return batch_size
    x1, _ = job.data.subset(1).tensors(runtime.device)
    return fitting_batch(job.model, x1, runtime.device, ceiling=DEFAULT_BATCH)


def _state(out: Path, job, attacks: Sequence[AttackSpec], eps: list[float], settings: dict) -> EvalState:
    """The evaluation's resume state beside ``out``, named by everything it is computed from."""
    return EvalState(
        out,
        {
            "checkpoint_sha256": job.source.digest(),
            **settings,
            "pool": POOL,  # batches per unit of work (advlab.evaluate.POOL): a state counts pools
            "n": len(job.data),
            "attacks": [a.hyperparameters(e) for a in attacks for e in eps],
            "eps": eps,
        },
    )
