"""VLM family registry: lookup, safe loading, and one end-to-end run per loadable family."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.vlm.examples import Example, collate, generate_answers
from pipeline.vlm.families import DEFAULT_FAMILY, FAMILIES, get_family, qwen2_vl_image_processor_class
from pipeline.vlm.tiny import TinyVLMConfig, build_char_tokenizer, build_tiny_vlm, count_parameters, save_vlm

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in here may reach for the hub

SMALL = TinyVLMConfig(hidden_size=64, intermediate_size=128, vision_hidden_size=64, vision_intermediate_size=128)


def test_registry_lookup():
    assert DEFAULT_FAMILY == "tiny" and set(FAMILIES) == {"tiny", "qwen2_vl", "cogvlm"}
    assert get_family("qwen2_vl").name == "qwen2_vl"
    with pytest.raises(KeyError, match="cogvlm, qwen2_vl, tiny"):
        get_family("llava_next")


def test_prompts_use_each_familys_box_syntax():
    tiny, qwen, cog = (get_family(n) for n in ("tiny", "qwen2_vl", "cogvlm"))
    assert tiny.grounding_prompt() == "Where is the head of the person? answer in [[x0,y0,x1,y1]] format."
    assert "<|box_start|>(x0,y0),(x1,y1)<|box_end|>" in qwen.grounding_prompt()
    box = (32.0, 24.0, 96.0, 72.0)  # of a 128×96 frame
    assert tiny.headpose_prompt(box, 128, 96) == (
        "What is the head pose of the person at [[<25>,<25>,<75>,<75>]]? answer in [[yaw,pitch,roll]] format."
    )
    assert "at [[250,250,750,750]]?" in cog.headpose_prompt(box, 128, 96)
    assert "at <|box_start|>(250,250),(750,750)<|box_end|>?" in qwen.headpose_prompt(box, 128, 96)


def test_cogvlm_refuses_without_trust_remote_code(tmp_path):
    with pytest.raises(PermissionError, match="trust_remote_code"):
        get_family("cogvlm").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        get_family("cogvlm").load(tmp_path / "missing", trust_remote_code=True)
    with pytest.raises(NotImplementedError, match="build_conversation_input_ids"):
        get_family("cogvlm").model_text(None, "prompt")


def test_missing_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        get_family("tiny").load(tmp_path / "nope")


def test_tiny_config_is_strict():
    from pydantic import ValidationError

    assert TinyVLMConfig().num_image_tokens == 64
    with pytest.raises(ValidationError, match="hidden_sz"):
        TinyVLMConfig(hidden_sz=128)
    with pytest.raises(ValidationError, match="not a multiple of patch_size"):
        TinyVLMConfig(image_size=60, patch_size=8)
    with pytest.raises(ValidationError, match="no room for text"):
        TinyVLMConfig(image_size=128, patch_size=8, max_text_len=256)


def _examples(family_name: str) -> list[Example]:
    fam = get_family(family_name)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)]
    box = (30.0, 20.0, 90.0, 80.0)
    return [
        Example("grounding", frames[0], fam.grounding_prompt(), fam.grounding_answer(box, 128, 96), box, "a"),
        Example(
            "headpose", frames[1], fam.headpose_prompt(box, 128, 128), fam.headpose_answer(-12.3, 4, 0.5), (0,), "b"
        ),
    ]


def _answer_labels(batch, tokenizer) -> list[str]:
    return [tokenizer.decode(row[row != -100]) for row in batch["labels"]]


def test_tiny_builds_saves_and_reloads_offline(tmp_path):
    model, processor = build_tiny_vlm(SMALL)
    again, _ = build_tiny_vlm(SMALL)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert 100_000 < count_parameters(model) < 2_000_000

    out = save_vlm(model, processor, tmp_path / "tiny")
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    loaded, loaded_processor = get_family("tiny").load(out)
    assert not loaded.training

    fam = get_family("tiny")
    batch = collate(_examples("tiny"), fam, processor)
    reloaded = collate(_examples("tiny"), fam, loaded_processor)
    assert all(torch.equal(batch[k], reloaded[k]) for k in batch)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


@pytest.fixture(scope="module")
def tiny_qwen2_vl(tmp_path_factory):
    """A randomly initialised Qwen2-VL (~0.2 M parameters) with a character tokenizer holding the
    Qwen special tokens and a minimal copy of Qwen2-VL's chat template, saved like a checkpoint."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    special = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>", "<|box_start|>", "<|box_end|>")  # fmt: skip
    tok = build_char_tokenizer(special, pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<unk>")
    template = (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system{{ '\\n' }}You are a helpful assistant.<|im_end|>{{ '\\n' }}{% endif %}"
        "<|im_start|>{{ message['role'] }}{{ '\\n' }}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = qwen2_vl_image_processor_class()(image_processor=image_processor, tokenizer=tok, chat_template=template)
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": None, "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    torch.manual_seed(0)
    return save_vlm(Qwen2VLForConditionalGeneration(config), processor, tmp_path_factory.mktemp("qwen") / "ckpt")


def test_qwen2_vl_loads_builds_inputs_trains_and_generates(tiny_qwen2_vl):
    fam = get_family("qwen2_vl")
    model, processor = fam.load(tiny_qwen2_vl)
    examples = _examples("qwen2_vl")

    text = fam.model_text(processor, examples[0].prompt)
    assert text.startswith("<|im_start|>system\n") and text.endswith("format.<|im_end|>\n<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Where is the head" in text

    batch = collate(examples, fam, processor)
    assert {"pixel_values", "image_grid_thw", "mm_token_type_ids", "labels"} <= set(batch)
    assert _answer_labels(batch, processor.tokenizer) == [
        "<|box_start|>(234,208),(703,833)<|box_end|><|im_end|>",
        "[[-12.3,+4.0,+0.5]]<|im_end|>",
    ]
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)

    answers = generate_answers(model, processor, fam, [e.image for e in examples], [e.prompt for e in examples], 6)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_pretrain_base_validates_and_links_a_real_checkpoint(tmp_path, synthetic_raw):
    """params.vlm.checkpoint: the stage loads it (validation) and writes only a link; later stages
    resolve the link to the user's folder; a missing folder is a clear error naming it."""
    import yaml

    from pipeline import stages
    from pipeline.config import parse_params
    from pipeline.vlm import stages as vlm_stages
    from pipeline.vlm.families import get_family
    from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm, save_vlm
    from tests.conftest import tiny_params_dict

    user = tmp_path / "my-vlm"
    save_vlm(*build_tiny_vlm(TinyVLMConfig()), user)
    d = tiny_params_dict()
    d["vlm"]["checkpoint"] = str(user)
    d["tracking"]["enabled"] = False
    params = parse_params(yaml.safe_load(yaml.safe_dump(d)))
    # The linked model is still scored on held-out grounding frames: its own Parquet, not the
    # project's data/ (absent on a fresh clone).
    parquet = tmp_path / "parquet"
    stages.ingest_stage(params, "300w_lp", synthetic_raw / "300w_lp", parquet / "300w_lp", engine="local")
    out = tmp_path / "models" / "base"
    summary = vlm_stages.pretrain_base(params, out, tmp_path / "runs", tmp_path / "m.json", parquet_root=parquet)
    assert summary["linked"] == str(user)
    assert set(summary["heldout"]) >= {"grounding"}  # the user's model was scored, not just linked
    assert sorted(p.name for p in out.iterdir()) == [vlm_stages.LINK_FILE]  # no copy of the weights
    assert vlm_stages.resolve_base(out) == user.resolve()
    get_family("tiny").load(vlm_stages.resolve_base(out))

    d["vlm"]["checkpoint"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        vlm_stages.pretrain_base(
            parse_params(d), tmp_path / "b2", tmp_path / "runs", tmp_path / "m2.json", parquet_root=parquet
        )
    assert not (tmp_path / "b2").exists()


def test_tiny_tokenizer_reads_its_own_questions_as_words_and_anything_else_by_character():
    from pipeline.vlm.examples import FACEPOINTS_PROMPT
    from pipeline.vlm.tiny import CHARACTERS, build_tiny_processor, prompt_words

    tok = build_tiny_processor(TinyVLMConfig()).tokenizer
    fam = get_family("tiny")
    question = fam.headpose_prompt((3, 4, 50, 60), 64, 64)
    ids = tok(question, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == question and len(ids) < 0.4 * len(question)
    assert "[[yaw,pitch,roll]]" in tok.convert_ids_to_tokens(ids)
    points = FACEPOINTS_PROMPT.format(box="[[<1>,<2>,<3>,<4>]]")
    assert tok.decode(tok(points, add_special_tokens=False)["input_ids"]) == points
    other = "Whatever is 'yawning'? 42"
    assert tok.decode(tok(other, add_special_tokens=False)["input_ids"]) == other
    # Every id is used once: no word duplicates a character token.
    assert not set(prompt_words()) & set(CHARACTERS)
    assert sorted(tok.get_vocab().values()) == list(range(len(tok)))
