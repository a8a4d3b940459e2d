"""``advlab certify``'s job: what a registered certifier proves of a model on the images given."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from advlab.certify import get_certifier
from advlab.errors import AdvlabError
from advlab.evaluate import cross_check_verified
from advlab.files import write_json
from advlab.jobs.sources import DataSource, ModelSource, ThreatModel, check_output, open_job, require_compatible
from advlab.runtime import Runtime


def certify_checkpoint(
    model: ModelSource | str | Path,
    data: DataSource,
    *,
    method: str = "ibp",
    options: dict[str, Any] | None = None,
    batch_size: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    runtime: Runtime | None = None,
    cross_check: bool = False,
) -> dict:
    """Certify ``model`` on the first ``data.n`` images (the certifier's default count when None) with the
    registered certifier ``method`` (:mod:`advlab.certify.registry`: ``ibp``, ``crown-ibp``, ``smoothing``)
    and its ``options`` (``{"eps": 0.1}``; ``{"sigma": 0.25, "n": 10000, ...}``), and write the result as JSON
    to ``out``. ``cross_check``: attack the examples the certifier proved (:func:`advlab.evaluate.
    cross_check_verified`); one broken is an error. Only for a certifier that verifies examples one by one."""
    certifier = get_certifier(method)
    settings = certifier.settings(options or {})  # an option it does not take, or a missing one: refused now
    if cross_check and certifier.flags is None:
        raise AdvlabError(f"--cross-check attacks the examples a bound verifies one by one; {method} verifies none")
    source, out = ModelSource.of(model), Path(out) if out is not None else None
    check_output(out, overwrite)
    runtime = runtime if runtime is not None else Runtime()
    n = data.n if data.n is not None else certifier.default_images
    job = open_job(source, data, ThreatModel(), device=runtime.device, progress=progress, n=n)
    require_compatible(job)
    x, y = job.data.tensors()
    start = time.perf_counter()
    result = certifier.run(
        job.model,
        x,
        y,
        options=settings,
        classes=len(job.data.info.classes),
        batch_size=batch_size,
        seed=seed,
        device=runtime.device,
        progress=progress,
        record=job.record,
    )
    summary = {
        **source.provenance(),
        "dataset": job.data.info.name,
        "split": data.split,
        "method": method,
        "training_status": source.training()["training_status"],
        "runtime": runtime.to_dict(),
        "seed": seed,
        **result,
    }
    verified = summary.pop("verified_images", None)
    if cross_check:
        summary["cross_check"] = cross_check_verified(
            job.model, x, y, verified or [], eps=settings["eps"], what=method, runtime=runtime
        )
    summary.setdefault("seconds", time.perf_counter() - start)
    if out is not None:
        write_json(out, summary)
    return summary
