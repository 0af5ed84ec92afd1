"""CNN head-pose baselines (6DRepNet-style, HopeNet-style): the comparison point of HPE-CogVLM.

* :data:`BASELINES` — the registry (name → model class); :func:`build_baseline` builds one
  from a :class:`BaselineConfig`.
* :mod:`.rotation` — 6D → R, geodesic loss, R ↔ Euler in torch (conventions of
  :mod:`pipeline.geometry`).
* :mod:`.backbone` — the small CNN and user backbones (registry or ``module:callable``).
* :class:`BaselineTask` — the plug-in of the one training loop; :func:`load_baseline`.
* :func:`evaluate_baseline`, :func:`train_baseline` — scoring and the stage function.
"""

from pipeline.baselines import hopenet, sixdrepnet  # noqa: F401 — fill the registry
from pipeline.baselines.config import BaselineConfig
from pipeline.baselines.predict import evaluate_baseline, predict_table
from pipeline.baselines.registry import BASELINES, build_baseline, get_baseline, register_baseline
from pipeline.baselines.stage import train_baseline
from pipeline.baselines.task import BaselineTask, load_baseline, save_baseline

__all__ = [
    "BASELINES",
    "BaselineConfig",
    "BaselineTask",
    "build_baseline",
    "evaluate_baseline",
    "get_baseline",
    "load_baseline",
    "predict_table",
    "register_baseline",
    "save_baseline",
    "train_baseline",
]
