"""Merge methods on hand-made state dicts, against PEFT, and on real PEFT LoRA adapters.

Known answers are worked out by hand in the comments; algebraic properties (identity on identical
deltas, weight −1 negates) run over every method; PEFT's ``merge_utils`` and ``merge_and_unload``
are the references where they implement the same thing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from pipeline.merging import (
    DECISIONS_FILE,
    MERGE_METHODS,
    apply_deltas,
    get_method,
    group_keys,
    lora_deltas,
    merge,
    merge_into,
    write_merged_model,
)
from pipeline.merging.lora import LoraDeltas
from pipeline.merging.low_rank import LowRank, dense, gram
from pipeline.merging.methods import key_generator, kth_largest, magnitude_prune_tensor

os.environ["HF_HUB_OFFLINE"] = "1"

Q0 = "model.layers.0.self_attn.q_proj.weight"
UP0 = "model.layers.0.mlp.up_proj.weight"
Q1 = "model.layers.1.self_attn.q_proj.weight"
HEAD = "lm_head.weight"

ALL_METHODS = sorted(MERGE_METHODS)
# Settings under which every method is a plain weighted combination (no pruning, no randomness).
EXACT = {
    "task_arithmetic": {},
    "linear": {},
    "magnitude_prune": {"density": 1.0},
    "ties": {"density": 1.0},
    "dare_linear": {"density": 1.0, "seed": 0},
    "dare_ties": {"density": 1.0, "seed": 0},
    "layer_wta": {"threshold": 0.5},
}


def t(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)  # a 1 × n "weight matrix"


def sd(**tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(tensors)


def random_state(keys: tuple[str, ...] = (Q0, UP0, Q1, HEAD), seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(6, 5, generator=gen) for k in keys}


# ---------------------------------------------------------------- registry
def test_registry_has_every_method_and_unknown_names_list_the_valid_ones():
    assert set(ALL_METHODS) == set(EXACT)
    with pytest.raises(KeyError, match="valid: dare_linear, dare_ties, layer_wta, linear"):
        get_method("slerp")
    base, delta = random_state(), random_state(seed=1)
    with pytest.raises(ValueError, match="no parameter 'densty'.*valid: density, majority_sign_method"):
        merge("ties", base, [delta], [1.0], densty=0.5)
    with pytest.raises(ValueError, match="2 weights for 1 task deltas"):
        merge("linear", base, [delta], [1.0, 1.0])


def test_delta_keys_and_shapes_are_checked_against_the_base():
    base = random_state()
    with pytest.raises(ValueError, match="task 0: 'model.layers.9.x.weight' is not a weight of the base"):
        merge("linear", base, [{"model.layers.9.x.weight": torch.zeros(6, 5)}], [1.0])
    with pytest.raises(ValueError, match=r"has shape \(5, 6\), the base weight \(6, 5\)"):
        apply_deltas(base, {Q0: torch.zeros(5, 6)})


def test_block_granularity_groups_by_layer_index_and_keeps_other_keys_apart():
    vision = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    groups = group_keys([Q0, UP0, Q1, HEAD, vision], "block")
    assert [(g.name, g.keys) for g in groups] == [
        ("model.layers.0", (Q0, UP0)),
        ("model.layers.1", (Q1,)),
        (HEAD, (HEAD,)),
        ("model.vision_tower.encoder.layers.0", (vision,)),
    ]
    assert [g.name for g in group_keys([Q0, UP0], "module")] == [Q0, UP0]
    with pytest.raises(ValueError, match="valid: module, block"):
        group_keys([Q0], "layer")


# ---------------------------------------------------------------- known answers
def test_task_arithmetic_and_linear_by_hand():
    base = sd(w=t(1, 1, 1))
    d1, d2 = sd(w=t(2, 0, -4)), sd(w=t(0, 6, 2))
    ta = merge("task_arithmetic", base, [d1, d2], [0.5, 2.0]).state_dict["w"]
    assert torch.equal(ta, t(1 + 1, 1 + 12, 1 - 2 + 4))  # θ₀ + 0.5·δ₁ + 2·δ₂
    lin = merge("linear", base, [d1, d2], [1.0, 3.0]).state_dict["w"]
    assert torch.allclose(lin, t(1 + 0.5, 1 + 4.5, 1 - 1 + 1.5))  # θ₀ + (δ₁ + 3δ₂)/4


def test_ties_elects_the_sign_then_averages_the_agreeing_tasks():
    base = sd(w=t(0, 0, 0, 0))
    d1, d2 = sd(w=t(1, -2, 3, 0.5)), sd(w=t(-3, 1.5, 1, 0.1))
    # density 1: sums (-2, -0.5, 4, 0.6) elect (-, -, +, +); agreeing: (δ₂), (δ₁), (both), (both).
    full = merge("ties", base, [d1, d2], [1.0, 1.0], density=1.0).state_dict["w"]
    assert torch.allclose(full, t(-3, -2, 2, 0.3))
    # density 0.5 keeps 2 of 4 entries: δ₁ → (0, -2, 3, 0), δ₂ → (-3, 1.5, 0, 0); sums (-3, -0.5, 3, 0)
    # elect (-, -, +, +); zeros never vote, so the last entry has no agreeing task and stays 0.
    half = merge("ties", base, [d1, d2], [1.0, 1.0], density=0.5).state_dict["w"]
    assert torch.allclose(half, t(-3, -2, 3, 0))
    # "frequency" counts signs: entry 0 has one + and one − → elects + (ties go to +): δ₁'s 1 wins.
    freq = merge("ties", base, [d1, d2], [1.0, 1.0], density=1.0, majority_sign_method="frequency").state_dict["w"]
    assert float(freq[0, 0]) == 1.0


def test_ties_negated_task_votes_with_its_negated_sign():
    base = sd(w=t(0, 0))
    d1, d2 = sd(w=t(1, 1)), sd(w=t(3, -1))
    # weights (1, -1): weighted (1, 1) and (-3, 1); sums (-2, 2) elect (-, +).
    out = merge("ties", base, [d1, d2], [1.0, -1.0], density=1.0).state_dict["w"]
    assert torch.allclose(out, t(-3, 1))


def test_magnitude_prune_keeps_the_top_k_entries():
    base = sd(w=t(0, 0, 0, 0, 0))
    delta = sd(w=t(0.1, -5, 2, -0.3, 4))
    out = merge("magnitude_prune", base, [delta], [2.0], density=0.4).state_dict["w"]  # k = 2
    assert torch.equal(out, t(0, -10, 0, 0, 8))


def test_dare_is_exact_at_density_one_and_unbiased_with_reproducible_seeds():
    base, d1, d2 = random_state((Q0,), 0), random_state((Q0,), 1), random_state((Q0,), 2)
    ta = merge("task_arithmetic", base, [d1, d2], [0.5, 1.5]).state_dict[Q0]
    exact = merge("dare_linear", base, [d1, d2], [0.5, 1.5], density=1.0).state_dict[Q0]
    assert torch.allclose(exact, ta, rtol=0, atol=1e-6)  # the same sum, summed in another order

    one = merge("dare_linear", base, [d1, d2], [0.5, 1.5], density=0.5, seed=7).state_dict[Q0]
    assert torch.equal(one, merge("dare_linear", base, [d1, d2], [0.5, 1.5], density=0.5, seed=7).state_dict[Q0])
    assert not torch.equal(one, merge("dare_linear", base, [d1, d2], [0.5, 1.5], density=0.5, seed=8).state_dict[Q0])

    big = {Q0: torch.randn(40, 50, generator=torch.Generator().manual_seed(3))}
    zero = {Q0: torch.zeros(40, 50)}
    seeds = range(200)
    mean = sum(merge("dare_linear", zero, [big], [1.0], density=0.3, seed=s).delta[Q0] for s in seeds) / len(seeds)
    # Per entry: std of one draw = |δ|·√((1-p)/p) ≈ 1.5|δ|; over 200 seeds ≈ 0.11|δ|.
    assert float((mean - big[Q0]).abs().mean()) < 0.15
    assert abs(float((mean - big[Q0]).mean())) < 0.02
    kept = (merge("dare_linear", zero, [big], [1.0], density=0.3, seed=0).delta[Q0] != 0).float().mean()
    assert abs(float(kept) - 0.3) < 0.05


# ---------------------------------------------------------------- algebraic properties
@pytest.mark.parametrize(
    ("method", "weights"),
    [
        ("linear", [0.3, 0.7]),
        ("linear", [2.0, 2.0]),
        ("task_arithmetic", [0.25, 0.75]),
        ("ties", [1.0, 1.0]),
        ("dare_ties", [1.0, 1.0]),
        ("magnitude_prune", [0.5, 0.5]),
        ("layer_wta", [0.3, 0.7]),
    ],
)
def test_merging_identical_deltas_is_the_identity(method, weights):
    base, delta = random_state(), random_state(seed=1)
    for tau in (-1.0, 1.0) if method == "layer_wta" else (None,):
        params = dict(EXACT[method], **({"threshold": tau} if tau is not None else {}))
        out = merge(method, base, [delta, dict(delta)], weights, **params).state_dict
        for k in base:
            assert torch.allclose(out[k], base[k] + delta[k], atol=1e-6), (method, k)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_weight_minus_one_negates_a_task(method):
    base, delta = random_state(), random_state(seed=1)
    out = merge(method, base, [delta], [-1.0], **EXACT[method]).state_dict
    for k in base:
        assert torch.allclose(out[k], base[k] - delta[k], atol=1e-6), (method, k)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_merge_into_streams_the_same_weights_as_merge(method):
    base, d1, d2 = random_state(), random_state(seed=1), random_state((Q0, HEAD), seed=2)
    params = dict(EXACT[method], **({"density": 0.5} if "density" in EXACT[method] else {}))
    expected = merge(method, base, [d1, d2], [0.6, 0.4], granularity="block", **params)
    live = {k: v.clone() for k, v in base.items()}
    decisions = merge_into(live, method, [d1, d2], [0.6, 0.4], granularity="block", **params)
    assert decisions == expected.decisions
    for k in base:
        assert torch.equal(live[k], expected.state_dict[k]), k


# ---------------------------------------------------------------- low-rank (LoRA) path
def _low_rank_tasks(n_tasks: int = 2) -> tuple[dict, list[LoraDeltas]]:
    """A bf16 base and rank-2 tasks as LoraDeltas; task 1 shares task 0's factors on layer 0."""
    gen = torch.Generator().manual_seed(4)
    shapes = {Q0: (6, 5), UP0: (7, 5), Q1: (6, 5), HEAD: (3, 5)}
    base = {k: torch.randn(s, generator=gen).to(torch.bfloat16) for k, s in shapes.items()}
    tasks = []
    for i in range(n_tasks):
        factors = {
            k: LowRank(torch.randn(s[0], 2, generator=gen), torch.randn(2, s[1], generator=gen))
            for k, s in shapes.items()
        }
        if i:
            factors[Q0] = LowRank(tasks[0].factors[Q0].b * 1.1, tasks[0].factors[Q0].a)
            del factors[HEAD]
        tasks.append(LoraDeltas(Path(f"task{i}"), factors))
    return base, tasks


@pytest.mark.parametrize(
    ("method", "params"),
    [*EXACT.items(), ("layer_wta", {"threshold": 0.5, "similarity": "weight"}), ("ties", {"density": 0.3})],
)
@pytest.mark.parametrize("granularity", ["module", "block"])
def test_lora_factors_give_the_same_merge_as_full_deltas(method, params, granularity):
    base, tasks = _low_rank_tasks()
    dense_tasks = [dict(t) for t in tasks]
    low = merge(method, base, tasks, [0.7, -0.4], granularity=granularity, **params)
    full = merge(method, base, dense_tasks, [0.7, -0.4], granularity=granularity, **params)
    for k in base:
        assert torch.allclose(low.delta[k], full.delta[k], atol=1e-5), k
    for a, b in zip(low.decisions, full.decisions, strict=True):
        assert (a.action, a.winner) == (b.action, b.winner)
        assert a.norms == pytest.approx(b.norms, rel=1e-5)
        assert a.similarity == pytest.approx(b.similarity, abs=1e-6)
    live = {k: v.clone() for k, v in base.items()}
    merge_into(live, method, tasks, [0.7, -0.4], granularity=granularity, **params)
    for k in base:  # in place, in bf16 row chunks: the same weights up to bf16 rounding
        assert torch.allclose(live[k].float(), full.state_dict[k].float(), atol=2e-2), k


def test_gram_of_mixed_dense_and_low_rank_pieces():
    gen = torch.Generator().manual_seed(5)
    pieces = [
        torch.randn(9, 4, generator=gen).to(torch.bfloat16),
        LowRank(torch.randn(9, 2, generator=gen), torch.randn(2, 4, generator=gen)),
        None,
        torch.randn(9, 4, generator=gen),
        LowRank(torch.randn(9, 3, generator=gen), torch.randn(3, 4, generator=gen)),
    ]
    flat = torch.stack([torch.zeros(36) if p is None else dense(p).reshape(-1) for p in pieces]).double()
    assert torch.allclose(gram(pieces), flat @ flat.T, atol=1e-4)


def test_magnitude_cut_on_large_tensors_matches_peft_top_k():
    from peft.utils.merge_utils import magnitude_based_pruning

    gen = torch.Generator().manual_seed(6)
    spread = torch.randn(1100, 1000, generator=gen)  # > 1 M entries: the sampled bracket is used
    assert torch.equal(magnitude_prune_tensor(spread, 0.2), magnitude_based_pruning(spread, 0.2))
    # The strided sample sees only the large entries (every 16th): it overestimates the cut, the
    # bracket holds fewer than k candidates, and the full search runs.
    skewed = torch.rand(1100, 1000, generator=gen) * 0.5
    skewed.view(-1)[::16] += 1
    values = skewed.reshape(-1)
    for k in (10, 150_000, 400_000):
        assert float(kth_largest(values, k)) == float(values.sort(descending=True).values[k - 1])


# ---------------------------------------------------------------- PEFT cross-check
def _peft_seed(seed: int, key: str) -> int:
    return int(key_generator(seed, key).initial_seed())


@pytest.mark.parametrize(
    ("method", "peft_name", "weights", "params"),
    [
        ("task_arithmetic", "task_arithmetic", [0.7, -1.3, 0.4], {}),
        ("magnitude_prune", "magnitude_prune", [0.7, 1.3, 0.4], {"density": 0.3}),
        ("ties", "ties", [1.0, 1.0, 1.0], {"density": 0.3}),
        ("ties", "ties", [0.6, 0.6, 0.6], {"density": 0.6, "majority_sign_method": "frequency"}),
        ("dare_linear", "dare_linear", [0.7, 1.3, 0.4], {"density": 0.4, "seed": 5}),
        ("dare_ties", "dare_ties", [0.8, 0.8, 0.8], {"density": 0.4, "seed": 5}),
        ("dare_ties", "dare_ties", [1.0, 1.0, 1.0], {"density": 1.0, "seed": 5}),
    ],
)
def test_same_weights_as_peft_merge_utils(method, peft_name, weights, params):
    from peft.utils import merge_utils

    base = random_state((Q0, UP0))
    deltas = [random_state((Q0, UP0), seed=s) for s in (1, 2, 3)]
    ours = merge(method, base, deltas, weights, **params).delta
    peft_params = {k: v for k, v in params.items() if k != "seed"}
    for key in base:
        if "seed" in params:  # same masks: PEFT draws from the global generator, seeded as ours
            torch.manual_seed(_peft_seed(params["seed"], key))
        ref = getattr(merge_utils, peft_name)([d[key] for d in deltas], torch.tensor(weights), **peft_params)
        assert torch.allclose(ours[key], ref, atol=1e-6), key


# ---------------------------------------------------------------- layer_wta
def _two_tasks_at_cosine(cos: float) -> tuple[dict, dict, dict]:
    """δ₁ = (1, 0), δ₂ = 2·(cos, sin): their cosine is ``cos`` and δ₂ has the larger norm."""
    sin = (1 - cos**2) ** 0.5
    return sd(w=t(0, 0)), sd(w=t(1, 0)), sd(w=t(2 * cos, 2 * sin))


def test_layer_wta_combines_above_the_threshold_and_picks_the_winner_below():
    base, d1, d2 = _two_tasks_at_cosine(0.8)
    low = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.7)
    assert torch.allclose(low.state_dict["w"], (d1["w"] + d2["w"]) / 2)  # mean
    (dec,) = low.decisions
    assert (dec.action, dec.winner, dec.threshold) == ("combine", None, 0.7)
    assert dec.similarity == pytest.approx(0.8, abs=1e-6)
    assert dec.norms == pytest.approx([1.0, 2.0], abs=1e-6)

    high = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.9)
    assert torch.equal(high.state_dict["w"], d2["w"])  # the larger norm takes the layer whole
    (dec,) = high.decisions
    assert (dec.action, dec.winner, dec.winner_by) == ("winner", 1, "norm")

    summed = merge("layer_wta", base, [d1, d2], [0.5, 0.5], threshold=0.7, combine="sum").state_dict["w"]
    assert torch.allclose(summed, 0.5 * d1["w"] + 0.5 * d2["w"])
    won = merge("layer_wta", base, [d1, d2], [0.5, 0.5], threshold=0.9, combine="sum").state_dict["w"]
    assert torch.allclose(won, 0.5 * d2["w"])


def test_layer_wta_priority_winner_by_module_type():
    base = {Q0: torch.zeros(1, 2), UP0: torch.zeros(1, 2)}
    d1 = {Q0: t(1, 0), UP0: t(1, 0)}
    d2 = {Q0: t(0, 5), UP0: t(0, 5)}  # orthogonal, larger norm everywhere
    out = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.5, winner="priority", priority={"q_proj": 0})
    assert torch.equal(out.state_dict[Q0], d1[Q0])  # q_proj → task 0 despite its smaller norm
    assert torch.equal(out.state_dict[UP0], d2[UP0])  # no match: falls back to the norm
    assert [(d.winner, d.winner_by) for d in out.decisions] == [(0, "priority"), (1, "norm")]
    # The longest matching substring is the most specific: "self_attn.q_proj" beats "self_attn".
    priority = {"self_attn": 1, "self_attn.q_proj": 0}
    out = merge("layer_wta", base, [d1, d2], [1, 1], threshold=0.5, winner="priority", priority=priority)
    assert out.decisions[0].winner == 0
    with pytest.raises(ValueError, match="several tasks"):
        merge(
            "layer_wta",
            base,
            [d1, d2],
            [1, 1],
            threshold=0.5,
            winner="priority",
            priority={"q_proj": 0, "mlp": 1},
            granularity="block",
        )


def test_layer_wta_block_granularity_decides_on_the_whole_block():
    base = {Q0: torch.zeros(1, 2), UP0: torch.zeros(1, 2), Q1: torch.zeros(1, 2)}
    # In block 0, q_proj disagrees (orthogonal) but up_proj agrees and dominates the block's vectors:
    # block vectors (1, 0, 10, 0) and (0, 1, 10, 0.5): cosine 100 / (√101·√101.25) ≈ 0.989.
    d1 = {Q0: t(1, 0), UP0: t(10, 0), Q1: t(1, 0)}
    d2 = {Q0: t(0, 1), UP0: t(10, 0.5), Q1: t(0, 2)}
    module = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.95)
    assert [d.action for d in module.decisions] == ["winner", "combine", "winner"]
    block = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.95, granularity="block")
    assert [(d.group, d.action) for d in block.decisions] == [
        ("model.layers.0", "combine"),
        ("model.layers.1", "winner"),
    ]
    assert block.decisions[0].similarity == pytest.approx(100 / (101**0.5 * 101.25**0.5), abs=1e-9)
    assert torch.allclose(block.state_dict[Q0], t(0.5, 0.5))
    assert torch.equal(block.state_dict[Q1], t(0, 2))


def test_layer_wta_three_tasks_use_the_smallest_pairwise_cosine():
    base = sd(w=t(0, 0, 0))
    ds = [sd(w=t(1, 0, 0)), sd(w=t(1, 0, 0.1)), sd(w=t(1, 0, 3))]  # the third disagrees with both
    (dec,) = merge("layer_wta", base, ds, [1.0, 1.0, 1.0], threshold=0.5).decisions
    assert dec.similarity == pytest.approx(1 / 10**0.5, abs=1e-6)  # cos(task 0, task 2)
    assert (dec.action, dec.winner) == ("winner", 2)


def test_layer_wta_weight_similarity_compares_the_updated_weights():
    base = sd(w=t(10, 10))
    d1, d2 = sd(w=t(1, 0)), sd(w=t(0, 1))  # orthogonal deltas, nearly parallel updated weights
    delta_sim = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.9).decisions[0]
    weight_sim = merge("layer_wta", base, [d1, d2], [1.0, 1.0], threshold=0.9, similarity="weight").decisions[0]
    assert (delta_sim.action, weight_sim.action) == ("winner", "combine")
    assert weight_sim.similarity == pytest.approx(220 / 221, abs=1e-12)  # (11,10)·(10,11) / |(11,10)|²


def test_layer_wta_rejects_bad_parameters():
    base, d1, d2 = _two_tasks_at_cosine(0.5)
    for params, message in [
        ({"threshold": 1.5}, "cosine in"),
        ({"combine": "max"}, "combine 'max'"),
        ({"winner": "priority"}, "winner 'priority'"),
        ({"winner": "priority", "priority": {"w": 3}}, "outside 0..1"),
    ]:
        with pytest.raises(ValueError, match=message):
            merge("layer_wta", base, [d1, d2], [1.0, 1.0], **params)


# ---------------------------------------------------------------- PEFT LoRA adapters
def _adapter(model: torch.nn.Module, folder: Path, seed: int, **lora) -> torch.nn.Module:
    """Wrap ``model`` with LoRA, give lora_B random values (PEFT starts it at zero), save."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return peft_model


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A tiny VLM saved as a base folder, and one LoRA adapter on q_proj/v_proj with its PEFT merge."""
    from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm, save_vlm

    cfg = TinyVLMConfig(hidden_size=32, intermediate_size=64, vision_hidden_size=32, vision_intermediate_size=64)
    root = tmp_path_factory.mktemp("merge")
    model, processor = build_tiny_vlm(cfg)
    base_dir = save_vlm(model, processor, root / "base")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = _adapter(model, root / "lora", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    merged = {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return base_dir, base, root / "lora", merged


def test_lora_deltas_plus_base_equal_peft_merge_and_unload(tiny_vlm):
    _, base, adapter, merged = tiny_vlm
    deltas = lora_deltas(adapter)
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in deltas
    assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in deltas)
    ours = apply_deltas(base, dict(deltas))
    assert set(ours) == set(merged)
    for k in merged:
        assert torch.allclose(ours[k], merged[k], atol=1e-6), k


def test_write_merged_model_folder_and_decisions(tiny_vlm, tmp_path):
    from pipeline.vlm.families import get_family

    base_dir, _, adapter, merged = tiny_vlm
    out = tmp_path / "merged"
    # Two copies of one adapter merged with layer_wta's mean: the identity, so PEFT's merge again.
    decisions = write_merged_model(
        base_dir, [adapter, adapter], [0.5, 0.5], out, method="layer_wta", params={"threshold": 0.99}
    )
    model, _ = get_family("tiny").load(out)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, merged[k], atol=1e-6), k
    record = json.loads((out / DECISIONS_FILE).read_text())
    assert record["method"] == "layer_wta" and record["params"] == {"threshold": 0.99}
    assert [d["group"] for d in record["decisions"]] == [d.group for d in decisions]
    assert sorted(d.group for d in decisions) == sorted(lora_deltas(adapter))
    assert all(d["action"] == "combine" for d in record["decisions"])
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()


class _Net(torch.nn.Module):
    """Embedding + two linears of different shapes (rank/alpha patterns) and a GPT-2 ``Conv1D``."""

    def __init__(self):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.fc1 = torch.nn.Linear(6, 7)
        self.fc2 = torch.nn.Linear(7, 5)
        self.c_attn = Conv1D(9, 5)  # weight stored in × out (5 × 9)


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": ["embed", "fc1", "fc2"], "rank_pattern": {"fc2": 3}, "alpha_pattern": {"fc2": 12}},
        {"target_modules": ["c_attn"], "fan_in_fan_out": True},
    ],
    ids=["embedding-and-patterns", "conv1d-fan-in-fan-out"],
)
def test_patterns_embeddings_and_fan_in_fan_out_match_peft(tmp_path, lora):
    torch.manual_seed(0)
    net = _Net()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    merged = _adapter(net, tmp_path, 2, r=2, lora_alpha=4, **lora).merge_and_unload().state_dict()
    deltas = lora_deltas(tmp_path)
    assert sorted(deltas) == sorted(f"{m}.weight" for m in lora["target_modules"])
    ours = apply_deltas(base, dict(deltas))
    for k in merged:
        assert torch.allclose(ours[k], merged[k], atol=1e-6), k


def _handmade_adapter(folder: Path, **config) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "bias": "none", "use_dora": False, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    factors = {
        "base_model.model.fc.lora_A.weight": torch.ones(2, 3),
        "base_model.model.fc.lora_B.weight": torch.ones(4, 2),
    }
    save_file(factors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_dora", True),
        ("use_rslora", True),
        ("bias", "all"),
        ("modules_to_save", ["lm_head"]),
        ("peft_type", "IA3"),
        ("init_lora_weights", "pissa_niter_4"),
    ],
)
def test_unsupported_adapters_are_refused_naming_folder_and_field(tmp_path, field, value):
    folder = _handmade_adapter(tmp_path / "adapter", **{field: value})
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*{field}"):
        lora_deltas(folder)


def test_handmade_adapter_delta_and_rank_mismatch(tmp_path):
    deltas = lora_deltas(_handmade_adapter(tmp_path / "ok"))
    assert torch.equal(deltas["fc.weight"], torch.full((4, 3), 2.0 * 4 / 2))  # B·A = 2, α/r = 2
    with pytest.raises(ValueError, match="rank 2/2, the config says r = 3"):
        lora_deltas(_handmade_adapter(tmp_path / "bad", r=3))
