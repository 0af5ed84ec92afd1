"""The embedded default VLM: a tiny LLaVA built from a config, random init, no download.

Architecture (transformers' ``LlavaForConditionalGeneration``): a small CLIP vision tower
(``image_size``² input, ``patch_size`` patches → ``(image_size / patch_size)²`` image tokens, the
CLS token dropped), a 2-layer GELU projector, and a small Llama text model. LLaVA has the simplest
inputs of the VLMs that train on CPU in transformers 5.23: one ``<image>`` placeholder
that the processor expands into one token per patch, and plain ``pixel_values``.

Text goes through its own character-level tokenizer (``tokenizers`` WordLevel over single
characters + ``PreTrainedTokenizerFast``): every printable ASCII character and ``\\n`` is one
token, plus one token per integer 0–99 (``<0>``…``<99>``, ``pipeline.vlm.numbers``) in which the
tiny family writes box corners and angles; nothing about the tokenizer needs training. Images go
through ``CLIPImageProcessorPil`` (the variant that needs no torchvision) set to resize the *whole* frame to ``image_size``² — no centre crop, so a
box given as a fraction of the stored frame is the same fraction of the image the model sees
(``pipeline.vlm.boxes``). Both are bundled as a ``LlavaProcessor`` with a minimal chat template,
so the tiny model takes the same code path (``apply_chat_template``) as real checkpoints.

``save_vlm`` writes safetensors + processor files; ``pipeline.vlm.families.get_family("tiny").load``
reads them back with ``local_files_only=True``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.convstem import CONFIG_FIELD, DEPTH_FIELD, check_patch_size, install_conv_stem
from pipeline.vlm.numbers import NUMBER_TOKENS

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)
# Every character a prompt or answer of ours can contain: printable ASCII plus newline.
CHARACTERS = ("\n", *(chr(c) for c in range(32, 127)))

# The prompt ends with a newline, then the answer follows; only user turns with one image and
# one text are rendered because that is all the pipeline sends (training appends the answer).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n' }}{% endif %}"
)


class TinyVLMConfig(BaseModel):
    """Size of the tiny VLM (``params.yaml`` → ``vlm.tiny``).

    The defaults (~1 M parameters, 64 image tokens) are the size measured to escape the
    loss plateau on CPU; larger models and coarser patches stayed on it far longer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=16, description="side of the square image the model sees, pixels")
    patch_size: int = Field(8, ge=2, description="vision patch side; (image_size/patch_size)² image tokens")
    hidden_size: int = Field(128, ge=16, description="text model width")
    num_layers: int = Field(2, ge=1, description="text model decoder layers")
    num_heads: int = Field(4, ge=1, description="text model attention heads")
    intermediate_size: int = Field(512, ge=16, description="text model MLP width")
    vision_hidden_size: int = Field(128, ge=16, description="vision tower width")
    vision_layers: int = Field(2, ge=1, description="vision tower encoder layers")
    vision_heads: int = Field(4, ge=1, description="vision tower attention heads")
    vision_intermediate_size: int = Field(512, ge=16, description="vision tower MLP width")
    max_text_len: int = Field(256, ge=16, description="text positions (image tokens included)")
    conv_stem: int = Field(
        0, ge=0, description="first-block width of a conv stem in place of the patchify conv (0: plain CLIP)"
    )
    conv_stem_depth: int = Field(
        0, ge=0, description="residual blocks after each strided block of the conv stem (0: none)"
    )
    seed: int = Field(0, description="random init seed")

    @model_validator(mode="after")
    def _divisible(self) -> TinyVLMConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError(
                f"vision_hidden_size {self.vision_hidden_size} is not a multiple of vision_heads {self.vision_heads}"
            )
        if self.conv_stem_depth and not self.conv_stem:
            raise ValueError("conv_stem_depth needs a conv stem (conv_stem > 0)")
        if self.conv_stem:
            check_patch_size(self.patch_size)
        if self.num_image_tokens >= self.max_text_len:
            raise ValueError(
                f"max_text_len {self.max_text_len} leaves no room for text after {self.num_image_tokens} image tokens"
            )
        return self

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image: one per patch (CLIP's CLS token is dropped)."""
        return (self.image_size // self.patch_size) ** 2


def build_char_tokenizer(
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS, words: tuple[str, ...] = (), **named: str
) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: one token per character.

    Args:
        special_tokens: tokens matched whole before splitting into characters (image
            placeholders, pad, bos/eos, …); they come first in the vocabulary.
        words: ordinary (not special) tokens also matched whole, e.g. the number tokens
            ``<0>``…``<99>`` (``pipeline.vlm.numbers``); they follow the characters in the
            vocabulary, in the given order, and decode as written.
        **named: the tokenizer's named special tokens (``pad_token=PAD``, ``eos_token=EOS``, …);
            defaults to this module's pad/bos/eos/unk.

    Returns:
        The tokenizer; ``decode`` concatenates characters without added spaces.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*special_tokens, *CHARACTERS, *words))}
    unk = named.get("unk_token", UNK)
    if unk not in vocab:
        vocab[unk] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    # Longest words first so that "<12>" is never split as "<1" + "2>"; then single characters.
    alternatives = [re.escape(w) for w in sorted(words, key=len, reverse=True)] + ["."]
    core.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(alternatives)), behavior="isolated")
    core.decoder = decoders.Fuse()  # WordLevel's default decoder would join characters with spaces
    names = named or {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **names)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t not in names.values()]})
    return tokenizer


def prompt_words() -> tuple[str, ...]:
    """Whole-word tokens for the words of the pipeline's own questions (with their leading
    space) and their answer-format placeholders, as a trained tokenizer's merges would have.

    Why: spelt character by character the head-pose question is ~100 tokens, longer than the
    64 image tokens; as words it is ~28. The shorter sequence made a toy training step 1.55x
    faster (docs/vlm_learning.md) and leaves the decoder fewer constant tokens to attend to
    instead of the image. Any other text still tokenises, character by character.
    """
    from pipeline.vlm.examples import FACEPOINTS_PROMPT
    from pipeline.vlm.prompts import POSE_TEMPLATE, TINY_BOX, PromptSet

    prompts = PromptSet()
    texts = (prompts.grounding, prompts.headpose, FACEPOINTS_PROMPT, POSE_TEMPLATE, TINY_BOX.placeholder)
    words = {w for t in texts for w in re.findall(r" ?[A-Za-z]+", t)}
    # The format placeholders whole: "[[yaw,pitch,roll]]", "[[x0,y0,x1,y1]]", "[[x,y,...]]".
    words |= {w for t in texts for w in re.findall(r"\[\[[^\]{}<]*\]\]", t)}
    return tuple(sorted(w for w in words if w not in CHARACTERS))


def build_tiny_processor(cfg: TinyVLMConfig) -> Any:
    """The tiny model's ``LlavaProcessor``: character tokenizer + whole-frame resizing images.

    Args:
        cfg: model size (``image_size`` and ``patch_size`` fix the number of image tokens).

    Returns:
        A ``LlavaProcessor`` whose ``<image>`` expands to ``cfg.num_image_tokens`` tokens.
    """
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        do_center_crop=False,  # a crop would cut part of the frame away and shift every box
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        resample=2,  # bilinear, as the stored frames were resized
    )
    tokenizer = build_char_tokenizer(words=NUMBER_TOKENS + prompt_words())
    tokenizer.padding_side = "right"  # training; generation asks for left padding explicitly
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" drops again
        image_token=IMAGE,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_vlm(cfg: TinyVLMConfig) -> tuple[Any, Any]:
    """A randomly initialised tiny LLaVA and its processor.

    Args:
        cfg: model size and seed; the same config gives bit-identical weights.

    Returns:
        ``(model, processor)``: a ``LlavaForConditionalGeneration`` in train mode (float32) and
        the matching ``LlavaProcessor``.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    processor = build_tiny_processor(cfg)
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        projection_dim=cfg.vision_hidden_size,
    )
    # Saved in config.json: loading rebuilds the stem.
    setattr(vision, CONFIG_FIELD, cfg.conv_stem)
    setattr(vision, DEPTH_FIELD, cfg.conv_stem_depth)
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_text_len,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        image_seq_length=cfg.num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # with 2 vision layers the usual -2 would skip half the tower
        projector_hidden_act="gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = tiny_llava_class()(config)
        # LLaVA's own init (normal, std 0.02) gives image tokens about the norm of the text
        # embeddings and little spread between patches: with 16–64 image tokens among ~100
        # prompt characters the decoder then learns to ignore the image, and a probe of its
        # answer position stays at chance on a task the vision tower alone solves in 100 steps
        # (docs/vlm_learning.md, "the image never reached the answer"). Xavier-initialised
        # projector layers make image tokens tens of times the text embeddings' norm at step 0.
        for layer in (model.model.multi_modal_projector.linear_1, model.model.multi_modal_projector.linear_2):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, processor


@functools.cache
def tiny_llava_class() -> type:
    """``LlavaForConditionalGeneration`` that installs the conv stem its config records.

    Built in the constructor, so ``from_pretrained`` (with transformers' own key conversions)
    loads a stem model's weights into the stem; without ``conv_stem_width`` in the config it is
    LLaVA unchanged. Made on first use so that importing this module stays light.
    """
    from transformers import LlavaForConditionalGeneration

    class TinyLlavaForConditionalGeneration(LlavaForConditionalGeneration):
        def __init__(self, config: Any):
            super().__init__(config)
            vision = config.vision_config
            if install_conv_stem(self.model.vision_tower.embeddings, "patch_embedding", vision, vision.patch_size):
                self.post_init()  # transformers' init for the new modules too

    return TinyLlavaForConditionalGeneration


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def save_vlm(model: Any, processor: Any, out_dir: str | Path) -> Path:
    """Write ``model`` (safetensors) and ``processor`` to ``out_dir`` atomically.

    Everything is written into a temporary sibling folder first and renamed into place, so a
    crash leaves either the old folder or the complete new one, never half a checkpoint.

    Args:
        model: any transformers model with ``save_pretrained``.
        processor: its processor (or tokenizer) with ``save_pretrained``.
        out_dir: destination folder; replaced if it exists.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
