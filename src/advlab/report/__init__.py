"""Presentation: the HTML report of a study, its figures and the galleries of adversarial examples.

Everything here is drawn from saved files (``metrics.json``, ``gallery.safetensors``, an attack's
``adversarial.safetensors``), never from live objects, so each picture can be redrawn later::

    from advlab.report import build_report, save_attack_gallery
    build_report("runs/quick")                     # report.html and figures/*.png of a study
    save_attack_gallery("runs/standard/attack")    # gallery.png of an `advlab attack` output
    save_photo_figure("panda")                      # figure.png/.svg: photos with their top-5, Goodfellow-style

Command line: ``advlab report RUN_DIR``; ``advlab study`` and ``advlab attack`` draw theirs at the end.
"""

from advlab.report.figures import figure_bytes
from advlab.report.gallery import gallery_figure, save_attack_gallery, save_gallery
from advlab.report.page import build_report
from advlab.report.photo import photo_figure, save_photo_figure
from advlab.report.story import story, summary_text

__all__ = [
    "build_report",
    "figure_bytes",
    "gallery_figure",
    "photo_figure",
    "save_attack_gallery",
    "save_photo_figure",
    "save_gallery",
    "story",
    "summary_text",
]
