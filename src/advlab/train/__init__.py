"""Standard and adversarial training, by concern:

- :mod:`~advlab.train.config`: ``TrainConfig`` (every setting, with why) and ``load_config``;
- :mod:`~advlab.train.methods`: the training methods, registered by name (``METHODS``);
- :mod:`~advlab.train.recipes`: the default settings of each data set and method, with their sources;
- :mod:`~advlab.train.optim`: optimizers and learning-rate schedules;
- :mod:`~advlab.train.guard`: catastrophic overfitting told apart from a run on its way to robustness, and its remedies;
- :mod:`~advlab.train.loop`: ``train``, the story of a run;
- :mod:`~advlab.train.trainer`: the ``Trainer`` it is told with;
- :mod:`~advlab.train.state`: the run folder's files and what ``--resume`` reads back.

Python::

    from advlab.train import TrainConfig, train
    summary = train(TrainConfig(method="pgd", eps=0.1, steps=7, epochs=10), "runs/pgd")

Command line: ``advlab train --method pgd --eps 0.1 --epochs 10 --out runs/pgd``.
"""

from advlab.train.config import TrainConfig, config_values, load_config
from advlab.train.guard import CatastrophicOverfittingWarning, Guard, collapse_signature
from advlab.train.loop import train
from advlab.train.methods import METHODS, Method, register_method
from advlab.train.recipes import RECIPES, find_recipe

__all__ = [
    "METHODS",
    "RECIPES",
    "CatastrophicOverfittingWarning",
    "Guard",
    "Method",
    "TrainConfig",
    "collapse_signature",
    "config_values",
    "find_recipe",
    "load_config",
    "register_method",
    "train",
]
