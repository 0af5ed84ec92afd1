"""Registry of VLM families: loader, prompts, answer formats and strict parsers per family.

A family is everything the pipeline needs to know about one kind of checkpoint:

* how to load model + processor from a local folder (``local_files_only=True``: nothing is
  ever downloaded; ``trust_remote_code`` only when the caller passes it);
* how to ask for the head's box (grounding) and for the pose of the head at a given box;
* the target answer strings it is trained on and the strict parsers of its answers;
* how a prompt becomes model text (the processor's chat template) and which token ends an answer.

Adding a family = one :class:`VLMFamily` entry in :data:`FAMILIES` + its tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.vlm.boxes import Box
from pipeline.vlm.prompts import (
    COGVLM_BOX,
    QWEN2_VL_BOX,
    TINY_BOX,
    BoxSyntax,
    Pose,
    PromptSet,
    format_pose,
    format_token_pose,
    parse_pose,
    parse_token_pose,
)

Loader = Callable[[Path, bool], tuple[Any, Any]]


@dataclass(frozen=True)
class VLMFamily:
    """One kind of VLM checkpoint.

    Attributes:
        name: registry key.
        box: how boxes are written in prompts and grounding answers.
        loader: ``(folder, trust_remote_code) -> (model, processor)``.
        prompts: the grounding and head-pose question templates.
        end_token: token that ends an answer (``None``: the tokenizer's ``eos_token``); appended
            to training targets and used to cut generated text.
        requires_remote_code: the checkpoint only loads with ``trust_remote_code=True``.
        processor_inputs: model inputs come from a transformers processor and its chat
            template. CogVLM builds them with its remote ``build_conversation_input_ids``
            instead, which is not wired in yet (no checkpoint to test it against here).
        pose_format: writes a head-pose answer from ``(yaw, pitch, roll)``.
        pose_parser: its strict parser.
        headpose_context: ``None`` — the head-pose question is asked on the whole frame (real
            checkpoints see it at their own resolution); a number ``c`` — on a square crop of
            side ``c`` × the longer side of the box, centred on the box
            (``pipeline.vlm.examples.face_crop``). The tiny model sees 64 px: on a whole frame
            the head is ≈ 4×4 patches, too few to read a pose from.
    """

    name: str
    box: BoxSyntax
    loader: Loader
    prompts: PromptSet = field(default_factory=PromptSet)
    end_token: str | None = None
    requires_remote_code: bool = False
    processor_inputs: bool = True
    pose_format: Callable[[float, float, float], str] = format_pose
    pose_parser: Callable[[str], Pose | None] = parse_pose
    headpose_context: float | None = None

    # ------------------------------------------------------------ loading
    def load(self, path: str | Path, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
        """Model and processor from a local folder, never from the network.

        Args:
            path: folder written by ``save_pretrained`` (weights as safetensors).
            trust_remote_code: allow the checkpoint's own Python code to run. Off by default;
                families that need it refuse to load without it.

        Returns:
            ``(model, processor)``, the model in eval mode.

        Raises:
            PermissionError: the family needs remote code and ``trust_remote_code`` is False.
            FileNotFoundError: ``path`` is not a folder.
        """
        if self.requires_remote_code and not trust_remote_code:
            raise PermissionError(
                f"VLM family {self.name!r} runs code shipped with the checkpoint; set trust_remote_code "
                f"to true in params.yaml only if you trust {path}"
            )
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"VLM family {self.name!r}: no checkpoint folder at {folder}")
        model, processor = self.loader(folder, trust_remote_code)
        model.eval()
        return model, processor

    # ------------------------------------------------------------ prompts and answers
    def grounding_prompt(self) -> str:
        """The question asking for the head's box in this family's box syntax."""
        return self.prompts.grounding_prompt(self.box)

    def headpose_prompt(self, head_box: Box, width: float, height: float) -> str:
        """The question asking for the pose of the head at ``head_box`` (stored-frame pixels)."""
        return self.prompts.headpose_prompt(self.format_box(head_box, width, height))

    def format_box(self, box: Box, width: float, height: float) -> str:
        """A stored-frame pixel box written in this family's syntax and grid."""
        return self.box.format(self.box.grid.box_to_grid(box, width, height))

    def grounding_answer(self, head_box: Box, width: float, height: float) -> str:
        """The target answer of a grounding example: the head box in this family's syntax."""
        return self.format_box(head_box, width, height)

    def parse_grounding(self, text: str, width: float, height: float) -> Box | None:
        """The box of a grounding answer in stored-frame pixels, or ``None`` if invalid."""
        grid_box = self.box.parse(text)
        return None if grid_box is None else self.box.grid.box_from_grid(grid_box, width, height)

    def headpose_answer(self, yaw: float, pitch: float, roll: float) -> str:
        """The target answer of a head-pose example (see ``pipeline.vlm.prompts``)."""
        return self.pose_format(yaw, pitch, roll)

    def parse_headpose(self, text: str) -> Pose | None:
        """``(yaw, pitch, roll)`` of a head-pose answer, or ``None`` if invalid."""
        return self.pose_parser(text)

    # ------------------------------------------------------------ model inputs
    def model_text(self, processor: Any, prompt: str) -> str:
        """The full text the model reads before its answer: one image and the prompt, rendered
        by the processor's own chat template with the generation prompt (e.g. Qwen's
        ``<|im_start|>assistant\\n``) so training and inference see the same prefix.

        Raises:
            NotImplementedError: for a family whose inputs do not come from a processor.
        """
        if not self.processor_inputs:
            raise NotImplementedError(
                f"VLM family {self.name!r} builds its inputs with the checkpoint's own code "
                "(model.build_conversation_input_ids); that path is not implemented yet"
            )
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_inputs(self, processor: Any, images: list[Any], prompts: list[str], padding_side: str) -> Any:
        """Tokenised prompts (image placeholders expanded) and pixel values for a batch.

        Args:
            processor: the family's processor.
            images: one H×W×3 uint8 array (or PIL image) per prompt.
            prompts: the questions (``grounding_prompt`` / ``headpose_prompt``).
            padding_side: ``"left"`` for generation (every prompt ends where the answer
                starts), ``"right"`` for training.

        Returns:
            The processor's ``BatchFeature`` (``input_ids``, ``attention_mask``,
            ``pixel_values`` and whatever else the family needs, e.g. ``image_grid_thw``).

        Raises:
            ValueError: when there are not as many images as prompts.
            NotImplementedError: for a family whose inputs do not come from a processor.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        texts = [self.model_text(processor, p) for p in prompts]
        return processor(images=list(images), text=texts, return_tensors="pt", padding=True, padding_side=padding_side)

    def end_text(self, processor: Any) -> str:
        """The token that closes an answer (appended to training targets)."""
        return self.end_token or tokenizer_of(processor).eos_token

    def end_token_ids(self, processor: Any) -> list[int]:
        """Token ids that stop generation: the answer's end token and the tokenizer's eos."""
        tok = tokenizer_of(processor)
        ids = {tok.convert_tokens_to_ids(self.end_text(processor))}
        if tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        return sorted(ids)


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer inside a processor (or the processor itself when it is a tokenizer)."""
    return getattr(processor, "tokenizer", processor)


# ---------------------------------------------------------------- loaders
def _load_tiny(folder: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import LlavaProcessor

    from pipeline.vlm.tiny import tiny_llava_class

    model = tiny_llava_class().from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    processor = LlavaProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    return model, processor


@functools.cache
def qwen2_vl_image_processor_class() -> type:
    """``Qwen2VLProcessor`` without its video processor.

    transformers' ``Qwen2VLProcessor`` cannot even be constructed without torchvision: its
    video-processor slot is type-checked against a class that only exists with torchvision
    installed. The pipeline sends images only, so this subclass drops the slot; it reads a real
    checkpoint's ``tokenizer*``, ``preprocessor_config.json`` and chat template and ignores
    ``video_preprocessor_config.json``. Built lazily so importing this module stays cheap.
    """
    from transformers import ProcessorMixin, Qwen2VLProcessor

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        video_processor = None

        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2VLImageOnlyProcessor


def _load_qwen2_vl(folder: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, trust_remote_code=trust_remote_code, dtype="auto"
    )
    processor = qwen2_vl_image_processor_class().from_pretrained(folder, local_files_only=True)
    return model, processor


def _load_cogvlm(folder: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    """CogVLM ships its modelling code with the weights (``AutoModelForCausalLM`` + remote code).

    Its tokenizer (Vicuna's Llama tokenizer) must be saved in the same folder. CogVLM has no
    transformers processor: its inputs come from the remote ``model.build_conversation_input_ids``;
    the returned "processor" is the tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, trust_remote_code=trust_remote_code, dtype="auto"
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    return model, tokenizer


# Crop side around the (already margin-expanded) head box for the tiny model's head-pose
# question: enough context for the head's outline, the face still ≈ 50 of its 64 pixels.
TINY_HEADPOSE_CONTEXT = 1.25

FAMILIES: dict[str, VLMFamily] = {
    "tiny": VLMFamily(
        name="tiny",
        box=TINY_BOX,
        loader=_load_tiny,
        pose_format=format_token_pose,
        pose_parser=parse_token_pose,
        headpose_context=TINY_HEADPOSE_CONTEXT,
    ),
    "qwen2_vl": VLMFamily(
        name="qwen2_vl",
        box=QWEN2_VL_BOX,
        loader=_load_qwen2_vl,
        end_token="<|im_end|>",
    ),
    "cogvlm": VLMFamily(
        name="cogvlm",
        box=COGVLM_BOX,
        loader=_load_cogvlm,
        requires_remote_code=True,
        processor_inputs=False,
    ),
}
DEFAULT_FAMILY = "tiny"


def get_family(name: str) -> VLMFamily:
    """The family registered as ``name``.

    Raises:
        KeyError: for an unknown name; the message lists the valid ones.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown VLM family {name!r}; valid: {', '.join(sorted(FAMILIES))}") from None
