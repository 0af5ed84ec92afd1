"""Training: the one Ray Train + DeepSpeed loop (:mod:`.ray_deepspeed`) and its config.

Models plug in a small task object (:class:`Task`); see :func:`train`. Importing this
package imports neither Ray nor DeepSpeed: they load when a run starts.
"""

from pipeline.train.config import TrainConfig
from pipeline.train.ray_deepspeed import PreflightError, Task, TrainResult, latest_checkpoint, preflight, train

__all__ = ["PreflightError", "Task", "TrainConfig", "TrainResult", "latest_checkpoint", "preflight", "train"]
