"""PEFT LoRA adapter folders → full weight deltas keyed by the base model's weight names.

A LoRA adapter changes a linear weight ``W`` (out × in) by ``ΔW = B·A·α/r`` (``A``: r × in,
``B``: out × r); merge methods work on these full deltas, in weight space. The adapter is read
with ``safetensors`` only (no pickle, no PEFT model, no base model) and kept as factors
(:class:`LoraDeltas`): a 7B adapter costs its factors, not 26 GB of full deltas.

PEFT's file layout (``save_pretrained``): ``adapter_config.json`` and
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` /
``.lora_B.weight`` (linear and ``Conv1D`` layers) or ``.lora_embedding_A`` / ``.lora_embedding_B``
(embeddings, where ``ΔW = (B·A)ᵀ·α/r``); the base weight is ``<module>.weight``. With
``fan_in_fan_out`` (GPT-2's ``Conv1D`` stores W as in × out) the delta is transposed. PEFT records
one ``fan_in_fan_out`` per adapter, so an adapter mixing ``Conv1D`` and ``nn.Linear`` targets
cannot be oriented from its files alone; the base-shape check catches it unless the weights are
square — do not train such adapters for merging.
Per-module ranks and alphas (``rank_pattern`` / ``alpha_pattern``) are resolved as PEFT does: the
first pattern matching the end of the module name at a ``.`` boundary.

Adapters whose merged weight is not ``W + B·A·α/r`` are refused, naming the folder and the field:
DoRA, rsLoRA, bias training, ``modules_to_save``, trainable tokens, the newer LoRA variants, and
initialisations that rewrite the base weights (PiSSA, OLoRA, …) unless converted by PEFT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.merging.low_rank import LowRank

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
FACTOR_KEY = re.compile(r"^(?P<module>.+)\.(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<emb>[AB]))$")

# Config fields that, when set, make the merged weight something other than W + B·A·α/r.
# Each maps to the value that is safe; anything else is refused.
REFUSED_FIELDS: dict[str, Any] = {
    "use_dora": False,  # DoRA rescales W's column norms: the delta depends on W
    "use_rslora": False,  # α/√r scaling (PEFT's scaling; refused until an adapter needs it)
    "bias": "none",  # trained biases are not in B·A
    "lora_bias": False,  # a bias on lora_B
    "modules_to_save": None,  # whole modules replaced, not a low-rank delta
    "trainable_token_indices": None,  # embedding rows replaced
    "layer_replication": None,  # layers duplicated: the base's keys change
    "target_parameters": None,  # LoRA on bare nn.Parameters (e.g. MoE experts)
    "alora_invocation_tokens": None,  # activated LoRA: applies only after the invocation tokens
    "use_qalora": False,
    "use_bdlora": None,
    "velora_config": None,
    "monteclora_config": None,
    "arrow_config": None,
    "kasa_config": None,
}

# Initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) or select a
# LoRA variant (MiCA): the adapter is only a plain delta of the *original* base after PEFT's
# conversion (``save_pretrained(path_initial_model_for_weight_conversion=...)``), which saves
# ``init_lora_weights: true``.
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


class LoraDeltas(Mapping[str, torch.Tensor]):
    """Full deltas of one adapter, base weight name → float32 tensor, computed on access.

    Merging reads :meth:`low_rank` instead, which never forms the full tensor.

    Attributes:
        source: the adapter folder (named in error messages).
        factors: base weight name → its delta as :class:`~pipeline.merging.low_rank.LowRank`
            (scale and transposition folded in).
    """

    def __init__(self, source: Path, factors: dict[str, LowRank]):
        self.source = source
        self.factors = factors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.factors[key].dense()

    def __contains__(self, key: object) -> bool:
        return key in self.factors  # Mapping's default would compute the full delta to answer

    def __iter__(self) -> Iterator[str]:
        return iter(self.factors)

    def __len__(self) -> int:
        return len(self.factors)

    def low_rank(self, key: str) -> LowRank:
        """The delta of ``key`` as factors."""
        return self.factors[key]

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """Shape of every delta, without computing any."""
        return {k: tuple(f.shape) for k, f in self.factors.items()}


def check_lora_config(config: Mapping[str, Any], folder: Path) -> None:
    """Refuse adapter configs this module cannot turn into ``B·A·α/r`` deltas.

    Raises:
        ValueError: naming the folder and the field.
    """
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise ValueError(f"{folder / CONFIG_FILE}: peft_type is {peft_type!r}, only LORA adapters can be merged")
    for field, safe in REFUSED_FIELDS.items():
        value = config.get(field, safe)
        if value != safe and value not in (None, False, [], {}, ""):
            raise ValueError(
                f"{folder / CONFIG_FILE}: {field} = {value!r} is not supported by the merge "
                f"(the merged weight would not be W + B·A·alpha/r); expected {safe!r}"
            )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise ValueError(
            f"{folder / CONFIG_FILE}: init_lora_weights = {init!r} changes the base weights; save the adapter "
            "with PEFT's path_initial_model_for_weight_conversion to merge it into the original base"
        )
    for field in ("r", "lora_alpha"):
        if not isinstance(config.get(field), int | float) or config[field] <= 0:
            raise ValueError(f"{folder / CONFIG_FILE}: {field} must be a positive number, got {config.get(field)!r}")


def read_lora_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``, checked by :func:`check_lora_config`.

    Raises:
        FileNotFoundError: no config in the folder. ValueError: an unsupported or invalid config.
    """
    folder = Path(adapter_dir)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a PEFT adapter folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    check_lora_config(config, folder)
    return config


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's per-module override: the first pattern matching the end of ``module`` at a ``.``
    boundary (``"q_proj"`` matches ``...self_attn.q_proj``; patterns are regular expressions)."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):
            return value
    return default


def module_factors(
    config: Mapping[str, Any], module: str, pair: Mapping[str, Any], folder: Path
) -> tuple[str, LowRank]:
    """The base weight name and factors of one adapted module (``pair``: ``{"A", "B", "emb"?}``).

    Raises:
        ValueError: a missing factor, a conv layer, or a rank that disagrees with the config.
    """
    where = f"{folder / WEIGHTS_FILE}: module {module!r}"
    if "A" not in pair or "B" not in pair:
        raise ValueError(f"{where} has lora_A without lora_B or the reverse")
    a, b = pair["A"], pair["B"]
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"{where}: {a.dim()}-d LoRA factors (convolution layers) are not supported")
    r = pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    if a.shape[0] != r or b.shape[1] != r:
        raise ValueError(f"{where}: factors of rank {a.shape[0]}/{b.shape[1]}, the config says r = {r}")
    a, b = a.float(), b.float() * (alpha / r)  # ΔW = B·A·α/r, the scale folded into B (small)
    if pair.get("emb") or config.get("fan_in_fan_out", False):  # ΔWᵀ = Aᵀ·Bᵀ
        return f"{module}.weight", LowRank(a.T.contiguous(), b.T.contiguous())
    return f"{module}.weight", LowRank(b, a)


def lora_deltas(adapter_dir: str | Path) -> LoraDeltas:
    """Read a PEFT LoRA adapter folder into its (lazily computed) full deltas.

    Args:
        adapter_dir: folder written by PEFT's ``save_pretrained`` (safetensors weights).

    Returns:
        Base weight name (e.g. ``model.language_model.layers.0.self_attn.q_proj.weight``) → ``ΔW``.

    Raises:
        FileNotFoundError: no config or weights file. ValueError: an unsupported config
            (see :data:`REFUSED_FIELDS`) or a weights file with keys that are not LoRA factors.
    """
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    config = read_lora_config(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_FILE} (only safetensors adapters are read)")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(str(path)).items():
        match = FACTOR_KEY.match(key.removeprefix(PREFIX))
        if match is None:
            raise ValueError(f"{path}: {key!r} is not a LoRA factor (lora_A / lora_B / lora_embedding_A/B)")
        pair = pairs.setdefault(match["module"], {})
        pair[match["ab"] or match["emb"]] = tensor
        pair["emb"] = pair.get("emb", False) or match["emb"] is not None
    factors = dict(module_factors(config, module, pair, folder) for module, pair in pairs.items())
    return LoraDeltas(folder, factors)
