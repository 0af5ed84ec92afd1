"""Domain prompts and the frozen text encoder: one encoder pass per new prompt, never per batch."""

from __future__ import annotations

import pickle

import pytest
import torch

from pipeline.keypoints import HUMANART_SCENES
from pipeline.pose2d.text import PromptConfig, TextEncoder, lookup


def test_default_prompts_name_the_domain():
    pc = PromptConfig()
    assert pc.prompt("photo") == "a photo of a person"
    assert pc.prompt("sketch", "2D_virtual_human") == "a sketch of a person"
    assert pc.prompt("oil_painting") == "an oil painting of a person"
    known = pc.known_prompts()
    assert len(known) == len(set(known)) == 1 + len(HUMANART_SCENES) == 21


def test_templates_and_styles_are_configurable():
    pc = PromptConfig(template="{domain}: {style} ({scene})", styles={"sketch": "a pencil sketch"})
    assert pc.prompt("sketch") == "2D virtual human: a pencil sketch (sketch)"
    assert PromptConfig().prompt("new_scene", "real_human") == "a new scene of a person"  # unknown: its name
    with pytest.raises(ValueError, match="unknown field"):
        PromptConfig(template="a {medium} of a person").prompt("photo")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()  # the bundled all-MiniLM-L6-v2, offline


def test_encoder_embeds_each_prompt_once(encoder):
    known = PromptConfig().known_prompts()
    first = encoder.encode(known)
    assert first.shape == (21, 384) and encoder.dim == 384
    assert torch.allclose(first.norm(dim=-1), torch.ones(21), atol=1e-5)
    calls = encoder.forward_calls
    again = encoder.encode(list(reversed(known)) * 3)  # a "batch" of cached prompts
    assert encoder.forward_calls == calls
    assert torch.equal(again[:21], first.flip(0))
    encoder.encode(["a marble statue of a person", known[0]])
    assert encoder.forward_calls == calls + 1  # only the new prompt went through the encoder
    alone = encoder._forward([known[3]])  # no padding: the mean pool ignores pad tokens
    assert torch.allclose(alone[0], first[3], atol=1e-5)
    sims = first @ first.T
    assert sims[0, 1:].max() < 0.999  # prompts are told apart


def test_lookup_uses_the_table_and_the_encoder_only_for_gaps(encoder):
    table = encoder.table(["a photo of a person"])
    calls = encoder.forward_calls
    out = lookup(table, ["a photo of a person"] * 4, encoder)
    assert out.shape == (4, 384) and encoder.forward_calls == calls
    with pytest.raises(KeyError, match="no text encoder"):
        lookup(table, ["a mural of a person"], None)


def test_vlpose_task_precomputes_prompts_and_pickles_without_the_encoder(tmp_path):
    from pipeline.pose2d.task import VLPoseTask

    task = VLPoseTask(base_dir=str(tmp_path))
    enc = task.encoder
    assert enc.forward_calls == 1 and len(enc.cached) == 21  # one pass for every known prompt
    rows = [{"scene": s, "super_category": d} for s, d in list(HUMANART_SCENES.items())[:6]] * 3
    emb = task.text_embeds(rows + [{"scene": "photo", "super_category": "real_human"}])
    assert emb.shape == (19, 384) and enc.forward_calls == 1
    clone = pickle.loads(pickle.dumps(task))
    assert clone._encoder is None and clone.base_dir == task.base_dir
