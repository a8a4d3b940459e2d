"""Standard and adversarial training, by concern:

- :mod:`~advlab.train.config`: ``TrainConfig`` (every setting, with why) and ``load_config``;
- :mod:`~advlab.train.methods`: the training methods, registered by name (``METHODS``);
- :mod:`~advlab.train.optim`: optimizers and learning-rate schedules;
- :mod:`~advlab.train.loop`: ``train``, the one loop, and the catastrophic-overfitting guard;
- :mod:`~advlab.train.state`: the run folder's files and what ``--resume`` reads back.

Python::

    from advlab.train import TrainConfig, train
    summary = train(TrainConfig(method="pgd", eps=0.1, steps=7, epochs=10), "runs/pgd")

Command line: ``advlab train --method pgd --eps 0.1 --epochs 10 --out runs/pgd``.
"""

from advlab.train.config import TrainConfig, load_config
from advlab.train.loop import CatastrophicOverfittingWarning, catastrophic_overfitting, train
from advlab.train.methods import METHODS, Method, register_method

__all__ = ["METHODS", "CatastrophicOverfittingWarning", "Method", "TrainConfig", "catastrophic_overfitting",
           "load_config", "register_method", "train"]
