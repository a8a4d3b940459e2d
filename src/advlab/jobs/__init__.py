"""Jobs on a saved checkpoint or a user's model: evaluate it over attacks and ε, attack a few images and save
them, or certify what can be proven. Python::

    from advlab.jobs import DataSource, ThreatModel, evaluate_checkpoint
    result = evaluate_checkpoint("runs/pgd", DataSource(n=1000), ThreatModel(eps=(0.1,)), suite="standard",
                                 out="runs/pgd/aa.json")

Each takes the model (:class:`ModelSource`: an advlab checkpoint, a run folder or a ``.safetensors`` file, or a
:class:`advlab.user_model.UserModel`), the images (:class:`DataSource`: a built-in data set, by default the
model's own, or the user's ``folder:PATH`` / ``npz:PATH``) and, to attack, the threat model
(:class:`ThreatModel`: norm, ε, defenses); everything is checked before any work, and results are written
atomically. ``evaluate_checkpoint`` writes a JSON file (what ``advlab evaluate`` prints and saves, with the
model warnings and the training outcome), ``attack_checkpoint`` a folder of adversarial examples that
:func:`advlab.report.save_attack_gallery` draws, ``certify_checkpoint`` a JSON file.

Command line: ``advlab evaluate RUN_DIR --suite standard --eps 0.1``; ``advlab attack RUN_DIR --eps 0.1 --out OUT``;
``advlab certify RUN_DIR --method ibp --eps 0.1``.
"""

from advlab.eval_state import EvalState
from advlab.jobs.attack import attack_checkpoint
from advlab.jobs.certify import certify_checkpoint
from advlab.jobs.evaluate import evaluate_checkpoint
from advlab.jobs.sources import DataSource, Job, ModelSource, ThreatModel, open_job, require_compatible

__all__ = [
    "DataSource",
    "EvalState",
    "Job",
    "ModelSource",
    "ThreatModel",
    "attack_checkpoint",
    "certify_checkpoint",
    "evaluate_checkpoint",
    "open_job",
    "require_compatible",
]
