"""Typed configuration: ``params.yaml`` loaded into pydantic models.

Every model forbids unknown keys, so a typo (``crop_sz``) fails at load time with the
dotted path of the key instead of being silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.pose2d.config import PoseConfig

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """``params.yaml`` is missing, does not parse, or holds an unknown or mistyped key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- synthetic writers
class Synth300WLP(_Strict):
    n_per_subset: int = Field(40, ge=1)


class SynthAFLW2000(_Strict):
    n: int = Field(160, ge=1)


class SynthBIWI(_Strict):
    n_sequences: int = Field(4, ge=1, le=24)
    frames_per_sequence: int = Field(40, ge=1)


class SynthCOCO(_Strict):
    n_train_images: int = Field(48, ge=1)
    n_val_images: int = Field(24, ge=1)


class SynthHumanArt(_Strict):
    n_train_per_scene: int = Field(3, ge=1)
    n_val_per_scene: int = Field(2, ge=1)


class SyntheticConfig(_Strict):
    w300lp: Synth300WLP | None = Field(default_factory=Synth300WLP, alias="300w_lp")
    aflw2000: SynthAFLW2000 | None = Field(default_factory=SynthAFLW2000)
    biwi: SynthBIWI | None = Field(default_factory=SynthBIWI)
    coco: SynthCOCO | None = Field(default_factory=SynthCOCO)
    humanart: SynthHumanArt | None = Field(default_factory=SynthHumanArt)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def get(self, name: str) -> _Strict:
        """Settings of the synthetic dataset ``name`` (``300w_lp``, ``aflw2000``, …)."""
        for field_name, info in type(self).model_fields.items():
            if name in (field_name, info.alias):
                value = getattr(self, field_name)
                if value is None:
                    raise ConfigError(f"params.yaml: synthetic.{name} is disabled (null)")
                return value
        raise ConfigError(f"params.yaml: synthetic.{name}: unknown synthetic dataset")


# ---------------------------------------------------------------- ingestion
class DatasetIngest(_Strict):
    raw_root: Path
    crop_margin: tuple[float, float] = (0.2, 0.2)

    @field_validator("crop_margin")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= v[0] <= v[1] <= 2.0):
            raise ValueError("crop_margin must be [lo, hi] with 0 <= lo <= hi <= 2")
        return v


class IngestConfig(_Strict):
    crop_size: int = Field(96, ge=16, le=1024)
    frame_size: int = Field(128, ge=16, le=4096)
    head_margin: float = Field(0.2, ge=0.0, le=2.0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    error_budget: float = Field(0.05, ge=0.0, le=1.0)
    max_abs_angle: float = Field(99.0, gt=0.0, le=180.0)
    min_box_inside: float = Field(0.5, ge=0.0, le=1.0)
    pose_input: tuple[int, int] = (192, 256)
    pose_padding: float = Field(1.25, ge=1.0, le=3.0)
    shard_rows: int = Field(2048, ge=1)
    batch_size: int = Field(256, ge=1)
    num_cpus: int | None = Field(None, ge=1)
    datasets: dict[str, DatasetIngest] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_datasets(self) -> IngestConfig:
        from pipeline.datasets import DATASETS  # local: keeps config importable on its own

        for name in self.datasets:
            if name not in DATASETS:
                raise ValueError(f"unknown dataset {name!r} under datasets; valid: {', '.join(sorted(DATASETS))}")
        return self

    def dataset(self, name: str) -> DatasetIngest:
        """Settings of dataset ``name``; unknown names list the configured ones."""
        try:
            return self.datasets[name]
        except KeyError:
            raise ConfigError(
                f"params.yaml: ingest.datasets.{name} is not configured; configured: {', '.join(sorted(self.datasets))}"
            ) from None


# ---------------------------------------------------------------- tracking / orchestration
class TrackingConfig(_Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "hpe"
    enabled: bool = True

    def resolved_uri(self) -> str:
        """The tracking URI in force: ``MLFLOW_TRACKING_URI`` wins over params."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri


# ---------------------------------------------------------------- VLM (HPE-CogVLM)
def _tiny_config() -> Any:
    from pipeline.vlm.tiny import TinyVLMConfig

    return TinyVLMConfig


def _train_config() -> Any:
    from pipeline.train.config import TrainConfig

    return TrainConfig


def _validated_by(model: Any) -> Any:
    """A dict section that must validate as ``model()`` (a lazily imported pydantic model).

    The section stays a plain dict (it is passed on as such), but unknown or mistyped keys fail
    at load time with their dotted path.
    """

    def check(v: dict[str, Any]) -> dict[str, Any]:
        model().model_validate(v)
        return v

    return Annotated[dict[str, Any], AfterValidator(check)]


def _baseline_config() -> Any:
    from pipeline.baselines.config import BaselineConfig

    return BaselineConfig


def _augment_config() -> Any:
    from pipeline.baselines.augment import AugmentConfig

    return AugmentConfig


TinySection = _validated_by(_tiny_config)
AugmentSection = _validated_by(_augment_config)
BaselineSection = _validated_by(_baseline_config)
TrainSection = _validated_by(_train_config)


class VLMConfig(_Strict):
    """Which VLM, and the data its grounding skill is trained and checked on."""

    family: str = "tiny"
    checkpoint: Path | None = None  # a real VLM folder: pretrain_base validates and links it
    trust_remote_code: bool = False
    tiny: TinySection = Field(default_factory=dict)
    grounding_data: list[str] = Field(default_factory=lambda: ["300w_lp"])
    heldout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    eval_rows: int = Field(64, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    # Training questions are asked on random crops of crop_min_scale–1 of the frame: heads sit
    # alike in a dataset's frames and without it the model learns one constant box.
    crop_min_scale: float | None = Field(0.6, gt=0.0, le=1.0)
    torch_threads: int | None = Field(1, ge=1)  # per training worker (2 cores: oversubscription is 10× slower)
    # Families that ask head pose on a crop around the box (tiny): random scale/shift of that
    # crop in training (pipeline/vlm/examples.py face_window).
    headpose_jitter: float = Field(0.1, ge=0.0, lt=0.5)
    # Families that ask head pose on a crop around the box: the crop's context widened in training
    # by a log-uniform factor in [1, headpose_zoom] (1 = off), for boxes looser than 300W-LP's
    # landmark box (a detector's; BIWI's 200 mm head square before its face box, where the base's
    # vision features carried no yaw: docs/vlm_learning.md, run I; 2.2 gave them some, yaw r
    # -0.03 -> 0.49, at an in-domain cost).
    headpose_zoom: float = Field(1.0, ge=1.0, le=4.0)
    # Families that ask head pose on a crop around the box: the CNN baseline's augmentation of
    # that crop in training (rotation with the exact pose update, zoom, shift, colour, blur;
    # pipeline/vlm/examples.py augment_face); AugmentConfig fields, {"enabled": false} = off.
    headpose_augment: AugmentSection = Field(default_factory=lambda: {"enabled": False})
    # Gaussian soft target over neighbouring number tokens (pipeline/vlm/numbers.py), in values
    # (grid cells, degrees); 0 = plain cross-entropy. Families without number tokens ignore it.
    number_sigma: float = Field(1.5, ge=0.0)

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        from pipeline.vlm.families import FAMILIES

        if v not in FAMILIES:
            raise ValueError(f"unknown VLM family {v!r}; valid: {', '.join(sorted(FAMILIES))}")
        return v


class PretrainConfig(_Strict):
    train: TrainSection = Field(default_factory=dict)
    # Fraction of the tiny base's questions that ask for five facial points on a face crop
    # instead of the head box (pipeline/vlm/examples.py facepoints_example); 0 = grounding only.
    facepoints: float = Field(0.0, ge=0.0, lt=1.0)


class AdapterConfig(_Strict):
    rehearsal: float = Field(0.0, ge=0.0, le=1.0)  # fraction of grounding questions mixed in
    steps: int | None = Field(None, ge=1)  # overrides lora.train.steps for this adapter


class LoraParams(_Strict):
    r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0.0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    adapters: dict[str, AdapterConfig] = Field(default_factory=dict)
    train: TrainSection = Field(default_factory=dict)


# ---------------------------------------------------------------- merging, evaluation, registry
class MergeConfig(_Strict):
    """Which adapters are merged, and by which methods (``pipeline/merge.py`` registry).

    ``methods`` maps a registry name to that method's own parameters; the merge functions
    validate those (an unknown parameter fails naming the method).
    """

    inputs: list[str] = Field(default_factory=lambda: ["hpe", "grounding"])  # lora.adapters, in task order
    weights: list[float] = Field(default_factory=lambda: [1.0, 1.0])
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_weight_per_input(self) -> MergeConfig:
        if len(self.weights) != len(self.inputs):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.inputs)} inputs")
        return self


class EvaluateConfig(_Strict):
    """Cross-dataset head-pose evaluation and the grounding check of every candidate."""

    headpose_sets: list[str] = Field(default_factory=lambda: ["aflw2000", "biwi_hpdb"])  # ingested, split "test"
    rows_per_set: int | None = Field(None, ge=1)  # first N rows (by source_id) of each set; null = all
    grounding_rows: int = Field(64, ge=1)  # held-out 300W-LP frames asked for the head's box
    batch_size: int = Field(32, ge=1)
    workers: int = Field(1, ge=1)  # Ray Data actors (each loads the model once)
    # GPU share per actor (head-pose and keypoint evaluation): 1 = a GPU each, 0.5 = two per GPU.
    gpus_per_worker: float = Field(0.0, ge=0.0)
    engine: Literal["ray", "local"] = "ray"
    max_new_tokens: int = Field(40, ge=1)


class RegistryConfig(_Strict):
    """MLflow model registry: every merged model is a version with alias ``candidate``;
    ``champion`` moves to one only if its mean MAE beats the current champion's, its
    grounding accuracy is within ``grounding_tolerance`` of the base model's and at most
    ``max_invalid_rate`` of its head-pose answers on any test set are invalid."""

    enabled: bool = True
    model_name: str = "hpe-vlm"
    grounding_tolerance: float = Field(0.1, ge=0.0, le=1.0)
    max_invalid_rate: float = Field(0.05, ge=0.0, le=1.0)


class OrchestrationConfig(_Strict):
    use_dvc: bool = True
    # One Ray instance for every stage of a flow run (started by the flow when RAY_ADDRESS is
    # unset, joined by each stage through RAY_ADDRESS): each stage starting its own Ray cost
    # 10-15 s, ~20 times a run. false: each stage starts (and stops) its own.
    shared_ray: bool = True
    ray_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the run's Ray (null: the machine's, plus one per parallel stage)"
    )
    # Stages the DAG allows side by side run at once, up to this many (null: one per CPU). Every
    # stage computes on one thread, so on 2 cores a second stage doubles the work done per
    # minute. Direct mode (use_dvc: false) always runs one at a time: its stages share one
    # process (working directory, torch threads, the Ray driver).
    parallel_stages: int | None = Field(None, ge=1)

    def stage_slots(self) -> int:
        """How many stages may run at once."""
        if not self.use_dvc:
            return 1
        return self.parallel_stages or os.cpu_count() or 1


class Params(_Strict):
    seed: int = 0
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    vlm: VLMConfig = Field(default_factory=VLMConfig)
    pretrain_base: PretrainConfig = Field(default_factory=PretrainConfig)
    lora: LoraParams = Field(default_factory=LoraParams)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    baseline: BaselineSection = Field(default_factory=dict)  # pipeline/baselines/config.py BaselineConfig
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    pose: PoseConfig = Field(default_factory=PoseConfig)  # VLPose (pipeline/pose2d/config.py)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="after")
    def _cross_references(self) -> Params:
        # A merge input or an evaluation set that names nothing would only fail stages later.
        if self.merge.methods:
            unknown = [a for a in self.merge.inputs if a not in self.lora.adapters]
            if unknown:
                raise ValueError(f"merge.inputs {unknown} are not in lora.adapters ({', '.join(self.lora.adapters)})")
        unknown = [d for d in self.evaluate.headpose_sets if d not in self.ingest.datasets]
        if unknown:
            raise ValueError(f"evaluate.headpose_sets {unknown} are not in ingest.datasets")
        return self


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def parse_params(data: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping.

    Raises:
        ConfigError: naming the file and the dotted key of every problem.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_params(path: str | os.PathLike[str] = DEFAULT_PARAMS) -> Params:
    """Load and validate ``params.yaml``.

    Raises:
        ConfigError: the file is missing, is not YAML, or has an unknown/mistyped key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read params file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, str(path))
