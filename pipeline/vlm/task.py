"""The VLM's plug-in for the one training loop: grounding pre-training and LoRA fine-tuning.

One small picklable object (:class:`VLMTask`) serves both stages:

* ``pretrain_base`` — ``model_dir=None``: build the tiny VLM from its config (random init)
  and train every weight on grounding questions;
* ``train_lora`` — ``model_dir`` = the base model, ``lora`` set: PEFT LoRA on the target
  modules, the base frozen, on head-pose questions mixed with grounding questions at the
  adapter's *rehearsal* ratio (the paper's lever against forgetting grounding).

Which question a row becomes is a pure function of ``(seed, source_id)``, so a resumed run
sees the very same examples.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.baselines.augment import AugmentConfig
from pipeline.vlm.examples import collate, facepoints_example, grounding_example, headpose_example, random_crop
from pipeline.vlm.families import get_family, tokenizer_of
from pipeline.vlm.numbers import number_token_ids, ordinal_loss, soft_targets

REQUIRED_COLUMNS = ("source_id", "frame_jpeg", "frame_width", "frame_height", "head_box", "yaw", "pitch", "roll")
FACEPOINT_COLUMNS = ("landmarks", "source_width", "source_height")  # landmarks are in source pixels


def row_fraction(seed: int, source_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by (seed, source_id): deterministic row-level choices."""
    digest = hashlib.sha256(f"{seed}:{salt}:{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


@dataclass
class VLMTask:
    """Training task of a VLM (see module docstring).

    Attributes:
        family: VLM family name (``tiny``, ``qwen2_vl``, ``cogvlm``).
        model_dir: base model folder; ``None`` builds the tiny VLM from ``tiny``.
        tiny: :class:`~pipeline.vlm.tiny.TinyVLMConfig` fields when building from scratch.
        lora: ``{"r", "lora_alpha", "lora_dropout", "target_modules"}`` to train a LoRA adapter.
        rehearsal: fraction of rows asked the grounding question (the rest: head pose);
            1.0 = grounding only.
        seed: seed of the row-level choices.
        trust_remote_code: passed to the family's loader (params decide).
        crop_min_scale: random-crop augmentation (``examples.random_crop``): each training
            question is asked on a random crop of ``crop_min_scale``–1 of the frame holding the
            whole head; ``None`` trains on whole frames.
        torch_threads: intra-op threads per worker (oversubscribing 2 cores makes a tiny model
            10× slower); ``None`` leaves torch's default.
        headpose_jitter: for a family that asks head pose on a crop around the box
            (``headpose_context``), the crop's random scale/shift in training
            (``examples.face_window``) — instead of ``crop_min_scale``, which would cut the face.
        headpose_zoom: for such a family, the head-pose crop's context widened in training by a
            random factor up to this (``examples.face_window``; 1 = off): the face then fills
            from all of the crop down to ``1 / headpose_zoom`` of it, as under another
            dataset's looser box convention (docs/vlm_learning.md run I).
        headpose_augment: for such a family, ``AugmentConfig`` fields of the head-pose crop's
            training augmentation (``examples.augment_face``); ``None``: off.
        facepoints: fraction of training questions asked as the face-geometry question
            (``examples.facepoints_example``: eyes, nose and mouth on a face crop), drawn per
            step; rows without landmarks keep their grounding / head-pose question.
        number_sigma: width (in values) of the Gaussian soft target of number tokens
            (``pipeline.vlm.numbers.ordinal_loss``); 0, or a tokenizer without number tokens:
            the model's own cross-entropy.
    """

    family: str = "tiny"
    model_dir: str | None = None
    tiny: dict | None = None
    lora: dict | None = None
    rehearsal: float = 0.0
    seed: int = 0
    trust_remote_code: bool = False
    crop_min_scale: float | None = None
    torch_threads: int | None = 1
    headpose_jitter: float = 0.0
    headpose_zoom: float = 1.0
    headpose_augment: dict | None = None
    number_sigma: float = 0.0
    facepoints: float = 0.0
    required_columns: tuple[str, ...] = REQUIRED_COLUMNS
    _processor: Any = field(default=None, repr=False, compare=False)
    _targets: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.facepoints > 0:
            self.required_columns = tuple(dict.fromkeys((*self.required_columns, *FACEPOINT_COLUMNS)))

    @functools.cached_property
    def _augment(self) -> AugmentConfig | None:
        """``headpose_augment`` parsed once (it is read for every training example); None: off."""
        if not self.headpose_augment:
            return None
        cfg = AugmentConfig(**self.headpose_augment)
        return cfg if cfg.enabled else None

    # The processor (and the soft-target table) is rebuilt in each worker rather than pickled.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_processor"] = None
        state["_targets"] = None
        return state

    # ------------------------------------------------------------ building
    def _load_base(self) -> tuple[Any, Any]:
        if self.model_dir is None:
            from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm

            return build_tiny_vlm(TinyVLMConfig(**(self.tiny or {})))
        return get_family(self.family).load(self.model_dir, trust_remote_code=self.trust_remote_code)

    @property
    def processor(self) -> Any:
        if self._processor is None:
            if self.model_dir is None:
                from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_processor

                self._processor = build_tiny_processor(TinyVLMConfig(**(self.tiny or {})))
            else:
                _, self._processor = self._load_base()
        return self._processor

    def build_model(self) -> torch.nn.Module:
        """The base VLM (all weights trainable) or base + LoRA (adapter trainable only)."""
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        model, processor = self._load_base()
        self._processor = processor
        if self.lora is None:
            model.train()
            for p in model.parameters():
                p.requires_grad_(True)
            return model
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=self.lora["r"],
            lora_alpha=self.lora["lora_alpha"],
            lora_dropout=self.lora["lora_dropout"],
            target_modules=list(self.lora["target_modules"]),
            bias="none",
        )
        # PEFT initialises A randomly: seed it so every worker (and a resumed run) agrees.
        torch.manual_seed(self.seed)
        peft_model = get_peft_model(model, cfg)
        peft_model.train()
        return peft_model

    def preflight(self) -> None:
        """Fail in seconds: model folder and processor files, LoRA target modules present."""
        from pipeline.train.ray_deepspeed import PreflightError

        if self.model_dir is not None:
            folder = Path(self.model_dir)
            if not (folder / "config.json").is_file():
                raise PreflightError(f"{folder}: not a model folder (no config.json)")
            if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
                raise PreflightError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
        if self.lora is not None:
            model, _ = self._load_base()
            names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
            missing = [t for t in self.lora["target_modules"] if t not in names]
            if missing:
                raise PreflightError(
                    f"LoRA target modules {missing} do not exist in the model; e.g. "
                    f"{sorted(n for n in names if 'proj' in n)[:12]}"
                )

    # ------------------------------------------------------------ training
    def example(self, row: dict, rng: np.random.Generator | None = None) -> Any:
        """The question a row becomes (grounding with probability ``rehearsal``), randomly
        cropped when ``crop_min_scale`` is set and ``rng`` is given."""
        family = get_family(self.family)
        if self.facepoints > 0 and rng is not None and rng.uniform() < self.facepoints:
            points = facepoints_example(row, family, rng, self.headpose_jitter, self.headpose_zoom)
            if points is not None:
                return points
        if row_fraction(self.seed, str(row["source_id"]), "task") < self.rehearsal:
            example = grounding_example(row, family)
        elif family.headpose_context is not None:
            # Already a crop around the face: augment by moving that crop, never by cutting it.
            return headpose_example(row, family, rng, self.headpose_jitter, self.headpose_zoom, self._augment)
        else:
            example = headpose_example(row, family)
        if self.crop_min_scale is not None and rng is not None:
            example = random_crop(example, family, rng, self.crop_min_scale)
        return example

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        # The loop seeds torch per step (and rank) before collating: drawing the crop seed from
        # torch makes a resumed run see the very same crops as an uninterrupted one.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return collate([self.example(r, rng) for r in rows], get_family(self.family), self.processor)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = self._soft_targets(model)
        if targets is None:
            return model(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return ordinal_loss(model(**inputs).logits, batch["labels"], targets)

    def _soft_targets(self, model: torch.nn.Module) -> torch.Tensor | None:
        """The ordinal target table, or ``None`` for plain cross-entropy (built once per worker)."""
        if self.number_sigma <= 0:
            return None
        if self._targets is None:
            ids = number_token_ids(tokenizer_of(self.processor))
            if ids is None:
                return None
            vocab = getattr(model, "module", model).get_output_embeddings().weight.shape[0]
            self._targets = soft_targets(vocab, ids, self.number_sigma)
        return self._targets

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Base: ``save_pretrained`` model + processor. LoRA: the PEFT adapter only."""
        module = getattr(model, "module", model)  # a DeepSpeed engine wraps the module
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.lora is None:
            module.save_pretrained(out_dir, safe_serialization=True)
            self.processor.save_pretrained(out_dir)
        else:
            # Factors only: with lm_head among the targets PEFT would also store the (frozen,
            # unchanged) base output layer, which is the base's, not the adapter's.
            module.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
