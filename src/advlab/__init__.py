"""advlab: adversarial robustness of image classifiers — attacks, adversarial training, honest evaluation.

Command line: ``advlab --help``. Python, one module per concern (``docs/architecture.md`` maps them)::

    from advlab.models import create_model
    from advlab.attacks import pgd
    model = create_model("small_cnn", dataset="fashion-mnist")
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.01, steps=20)

The package itself exports only what the command line needs before torch is imported.
"""

from __future__ import annotations

__version__ = "0.1.0"

from advlab.errors import AdvlabError

__all__ = ["AdvlabError", "__version__"]
