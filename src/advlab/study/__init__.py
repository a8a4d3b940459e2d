"""The trade-off study: train standard and adversarially trained models, attack them all, check the results.

One command runs the whole experiment into a run folder; each stage (training a model, evaluating it,
the sanity checks, the gallery) is cached there, so an interrupted study picks up where it stopped::

    advlab study --preset quick --out runs/quick        # minutes on a 2-core CPU (BENCHMARKS.md)
    advlab study mine.toml --out runs/mine               # a config of your own (--show-preset quick to start)
    advlab report runs/quick                             # rebuild report.html from the saved files

Python: ``run_study(load_study_config(preset="quick"), "runs/quick")``, then
``advlab.report.build_report("runs/quick")`` for the page (the command line does both).

Layout of the run folder: ``config.json`` (resolved), ``models/NAME/`` (a training run folder each, plus
``eval.json`` and ``checks.json``), ``gallery.safetensors``, ``metrics.json``, ``figures/``, ``report.html``.
"""

from advlab.study.config import StudyConfig, load_study_config
from advlab.study.metrics import collect_metrics
from advlab.study.run import run_study

__all__ = ["StudyConfig", "collect_metrics", "load_study_config", "run_study"]
