"""What a training run leaves in its folder, and what ``--resume`` reads back.

``state.safetensors`` (the commit point of each epoch) holds the weights, the optimizer's tensors, both
random generators and the method's own tensors; its metadata holds the rest as JSON (config, progress,
optimizer settings). ``metrics.jsonl`` and ``metrics.csv`` hold one row per epoch; ``summary.json`` the
outcome. Nothing is ever unpickled: a damaged or foreign state is a one-line error, never a crash.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from advlab.errors import AdvlabError
from advlab.files import atomic_write_text, read_json
from advlab.schema import check_fields
from advlab.tensor_files import load_tensors, save_tensors
from advlab.train.config import TrainConfig
from advlab.train.preempt import EpochProgress

STATE_FORMAT = 2  # bump when state.safetensors' layout changes incompatibly
# Settings that may differ between an interrupted run and its resumption: they do not change the result.
RESUME_FREE_KEYS = frozenset({"data_dir", "recipe"})  # recipe: a name, derived from the rest

METRIC_FIELDS = (
    "epoch",
    "lr",
    "eps",
    "train_loss",
    "train_clean_acc",
    "train_adv_acc",
    "val_clean_acc",
    "val_robust_acc",
    "val_fgsm_acc",
    "seconds",
    "val_seconds",
    "val_verified_acc",
)


@dataclass
class RunProgress:
    """What a resume restores besides tensors; stored as JSON in state.safetensors' metadata."""

    epoch: int = 0  # completed passes
    step: int = 0  # optimizer steps done
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_robust: float | None = None  # the best epoch's score: val PGD accuracy (val clean for standard)
    last_good_epoch: int | None = None  # the epoch whose weights model.safetensors holds
    collapses: list[dict[str, Any]] = field(default_factory=list)  # each time the guard fired (advlab.train.guard)
    stopped: bool = False  # the guard stopped the run
    alpha_scale: float = 1.0  # the smaller-step remedy's factor on α
    active_method: str | None = None  # the fallback remedy's method, once it switched
    kept_weights: str | None = None  # where model.safetensors' weights come from ("the end of epoch 3", ...)
    checks: list[dict[str, Any]] = field(default_factory=list)  # every check of the guard (guard.jsonl)
    warnings: list[str] = field(default_factory=list)  # lines said during the run (a model at chance, ...)

    @property
    def finished(self) -> bool:
        return self.stopped


def write_metrics(out: Path, rows: list[dict[str, Any]], checks: list[dict[str, Any]] = ()) -> None:
    """``metrics.jsonl`` and ``metrics.csv`` (a row per epoch), and ``guard.jsonl`` (every check of the
    catastrophic-overfitting guard) when there are checks."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    if checks:
        atomic_write_text(out / "guard.jsonl", "".join(json.dumps(check) + "\n" for check in checks))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    atomic_write_text(out / "metrics.csv", text.getvalue())


def _pack_optimizer(prefix: str, optim: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Put an optimizer state_dict's tensors into ``tensors`` (``PREFIX.INDEX.NAME``); return the rest."""
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    return plain_state


def _unpack_optimizer(
    prefix: str, tensors: dict[str, torch.Tensor], plain_state: dict[str, dict[str, Any]], param_groups: list
) -> dict[str, Any]:
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            optim_state.setdefault(int(index), {})[name] = value
    for index, values in plain_state.items():
        optim_state.setdefault(int(index), {}).update(values)
    return {"state": optim_state, "param_groups": param_groups}


class StateOwner(Protocol):
    """What a training state is made of (:class:`advlab.train.trainer.Trainer` is one)."""

    out: Path
    config: TrainConfig
    run: RunProgress
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: Any  # its state(): tensors a resume needs (free AT's carried perturbation)
    shuffle_rng: torch.Generator
    attack_rng: torch.Generator
    snapshot: Any  # the guard's last good weights (advlab.train.guard.Snapshot)
    world: Any
    scaler: torch.amp.GradScaler | None


def write_state(owner: StateOwner, *, position: EpochProgress | None = None) -> None:
    """The commit point: at the end of an epoch, or with ``position`` (and the guard's ``snapshot``) in the
    middle of one (:mod:`advlab.train.preempt`). Under torchrun (``world``) every rank calls it: each hands
    rank 0 what is its own (its attack generator, its method state), saved under ``rank{R}.``; rank 0 writes."""
    out, config, run, world, scaler, snapshot = (
        owner.out,
        owner.config,
        owner.run,
        owner.world,
        owner.scaler,
        owner.snapshot,
    )
    own = {f"method.{k}": v.cpu() for k, v in owner.method.state().items()}
    own["rng.attack"] = owner.attack_rng.get_state()
    parts = world.gather(own) if world is not None else [own]
    if world is not None and not world.main:
        return
    tensors = {f"model.{k}": v for k, v in owner.model.state_dict().items()}
    optim = owner.optimizer.state_dict()
    plain_state = _pack_optimizer("optimizer", optim, tensors)
    for rank, part in enumerate(parts):  # rank 0's under the names one process uses
        tensors.update({(f"rank{rank}." if rank else "") + key: value for key, value in part.items()})
    tensors["rng.shuffle"] = owner.shuffle_rng.get_state()
    meta = {
        "format": STATE_FORMAT,
        "config": config.to_dict(),
        "progress": dataclasses.asdict(run),
        "device": owner.attack_rng.device.type,  # a generator's state fits only a generator of its device type
        "world_size": len(parts),
        "grad_scaler": scaler.state_dict() if scaler is not None else None,  # fp16: its scale and growth
        "param_groups": optim["param_groups"],
        "optimizer_plain_state": plain_state,
    }
    if position is not None:
        epoch_tensors, meta["position"] = position.to_state()
        tensors.update(epoch_tensors)
        tensors.update({f"snapshot.model.{k}": v for k, v in snapshot.weights.items()})
        meta["snapshot"] = {
            "epoch": snapshot.epoch,
            "step": snapshot.step,
            "reading": snapshot.reading,
            "param_groups": snapshot.optim["param_groups"],
            "optimizer_plain_state": _pack_optimizer("snapshot.optimizer", snapshot.optim, tensors),
        }
    save_tensors(out / "state.safetensors", tensors, metadata={"advlab_state": json.dumps(meta)})


def restore_position(state, snapshot, device: torch.device) -> EpochProgress | None:
    """For a state saved in the middle of an epoch: where that epoch stood, with ``snapshot`` (the guard's
    last good weights) set back to what it held then; None for a state saved at an epoch's end."""
    tensors, meta = state
    if "position" not in meta:
        return None
    try:
        check_fields(meta["position"], EpochProgress, what="mid-epoch state field")
        position = EpochProgress.from_state(tensors, meta["position"], device)
        saved = meta["snapshot"]
        snapshot.epoch, snapshot.step, snapshot.reading = saved["epoch"], saved["step"], saved["reading"]
        snapshot.weights = {
            k[len("snapshot.model.") :]: v.to(device) for k, v in tensors.items() if k.startswith("snapshot.model.")
        }
        snapshot.optim = _unpack_optimizer(
            "snapshot.optimizer", tensors, saved["optimizer_plain_state"], saved["param_groups"]
        )
        return position
    except (KeyError, ValueError, TypeError) as err:
        raise AdvlabError(
            f"the saved mid-epoch training state is damaged ({err}); start afresh with --overwrite"
        ) from None


def read_state(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    path = out / "state.safetensors"
    if not path.is_file():
        return None
    tensors, metadata = load_tensors(path)
    try:
        meta = json.loads(metadata["advlab_state"])
        if meta["format"] != STATE_FORMAT:
            raise KeyError("format")
    except (KeyError, TypeError, json.JSONDecodeError):
        raise AdvlabError(f"{path} is not a training state advlab can resume; start afresh with --overwrite") from None
    return tensors, meta


def check_same_config(out: Path, config: TrainConfig, state) -> None:
    if state is not None:
        saved = state[1]["config"]
    elif (out / "config.json").is_file():
        saved = read_json(out / "config.json").get("config", {})
    else:
        return  # nothing there yet: a resume of a run that never started is a fresh start
    current = config.to_dict()
    # A setting added since the run was saved reads as its default, or as its recipe would fill it in (augment).
    # (Runs saved before the guard's settings existed are refused anyway: their state has an older STATE_FORMAT.)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    if any(k not in saved for k in defaults):
        # A run saved before `augment` existed trained without augmentation, whatever its recipe says now; one
        # saved before `clip_start` existed clipped its random start.
        given = (
            {k: v for k, v in saved.items() if k in defaults}
            | ({} if "augment" in saved else {"augment": "none"})
            | ({} if "clip_start" in saved else {"clip_start": True})
        )
        try:
            defaults = TrainConfig.from_dict(given).to_dict()
        except AdvlabError:
            pass  # a setting no longer valid: it is reported as differing below
    differing = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUME_FREE_KEYS and saved.get(k, defaults.get(k)) != current.get(k, "<missing>")
    )
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in differing)
        raise AdvlabError(
            f"cannot resume {out}: it holds a run with other settings ({details}); "
            "use the same settings, --overwrite, or another --out"
        )


def restore(state, owner: StateOwner, *, rank: int = 0) -> RunProgress:
    """Set the owner's model, optimizer, method, generators and fp16 gradient scaler back as the state holds
    them, and return the run's progress; ``rank``: whose own tensors to take (torchrun)."""
    tensors, meta = state
    model, optimizer, method, attack_rng, scaler = (
        owner.model,
        owner.optimizer,
        owner.method,
        owner.attack_rng,
        owner.scaler,
    )
    prefix = f"rank{rank}." if rank else ""
    own = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)} if rank else tensors
    saved_on = meta.get("device", "cpu")
    if saved_on != attack_rng.device.type:
        raise AdvlabError(
            f"this run was trained on {saved_on} and its random state only resumes there; "
            f"resume it with --device {saved_on}, or start afresh with --overwrite"
        )
    try:
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(
            _unpack_optimizer("optimizer", tensors, meta["optimizer_plain_state"], meta["param_groups"])
        )
        method.load_state({k[len("method.") :]: v for k, v in own.items() if k.startswith("method.")})
        owner.shuffle_rng.set_state(tensors["rng.shuffle"])
        attack_rng.set_state(own["rng.attack"])
        if scaler is not None and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        return RunProgress(**check_fields(meta["progress"], RunProgress, what="training state field"))
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise AdvlabError(
            f"the saved training state does not fit this run ({str(err).splitlines()[0]}); "
            "start afresh with --overwrite"
        ) from None


def scores_better(candidate: tuple[float, float], held: tuple[float, float | None] | None) -> bool:
    """Whether an epoch scoring ``candidate`` (its selection score, its clean accuracy) replaces the best
    epoch so far, ``held`` (None before the first): a higher score, or the same score and a higher clean
    accuracy. Ties are common on 1,000 validation images: MNIST's seed 1 kept epoch 7 (98.2% clean on
    validation) over an equally robust epoch 10 (98.6%; BENCHMARKS.md, "Reproducing the papers")."""
    if held is None or candidate[0] > held[0]:
        return True
    return candidate[0] == held[0] and held[1] is not None and candidate[1] > held[1]


def summarize(out: Path, config: TrainConfig, run: RunProgress, ending: list[str] = ()) -> dict[str, Any]:
    """summary.json: the outcome; ``ending``: what is wrong with the weights the run ends with (the guard's
    :func:`~advlab.train.guard.end_of_run_warnings`), kept with the lines said during the run."""
    by_epoch = {row["epoch"]: row for row in run.rows}
    last = by_epoch.get(run.last_good_epoch, {})
    best = by_epoch.get(run.best_epoch, {})
    return {
        "run_dir": str(out),
        "method": config.method,
        "epochs_completed": run.epoch,
        "epochs_planned": config.passes,
        "finished": run.finished or run.epoch >= config.passes,
        "final_epoch": run.last_good_epoch,
        "best_epoch": run.best_epoch,
        "val_clean_accuracy": last.get("val_clean_acc"),
        "val_robust_accuracy": last.get("val_robust_acc"),
        "best_val_clean_accuracy": best.get("val_clean_acc"),
        "best_val_robust_accuracy": best.get("val_robust_acc"),
        "check_attack": f"PGD-{config.check_steps}",
        "eps": config.eps,
        "seconds": sum(row["seconds"] + row["val_seconds"] for row in run.rows),
        "recipe": config.recipe,
        "catastrophic_overfitting": bool(run.collapses),
        "catastrophic_overfitting_message": run.collapses[-1]["message"] if run.collapses else None,
        "collapses": run.collapses,
        "stopped_by_guard": run.stopped,
        "remedy": config.co_remedy,
        "final_method": run.active_method or config.method,
        "alpha_scale": run.alpha_scale,
        "model_weights_from": run.kept_weights,
        "warnings": [*run.warnings, *ending],
        "ends_without_robustness": any(note.startswith("the run ends without robustness") for note in ending),
        "paths": {
            name: str(out / f"{name}.safetensors")
            for name in ("model", "best", "state")
            if (out / f"{name}.safetensors").is_file()
        },
    }
