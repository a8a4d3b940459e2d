"""advlab: adversarial robustness of image classifiers — attacks, adversarial training, honest evaluation.

Command line: ``advlab --help``. Python::

    import advlab
    model = advlab.create_model("small_cnn", dataset="fashion_mnist")
    x_adv = advlab.pgd(model, x, y, eps=0.1, alpha=0.01, steps=20)
"""

from __future__ import annotations

__version__ = "0.1.0"

from advlab.errors import AdvlabError

__all__ = ["AdvlabError", "__version__"]
