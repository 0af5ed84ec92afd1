"""Batch inference of a VLM candidate through Ray Data: one actor per worker loads the model once.

A *question table* holds the rows to ask (the head-pose Parquet columns) plus ``row`` (a unique
index), ``question`` (``grounding`` or ``headpose``) and ``eval_set``. :func:`answer_questions`
returns the generated answer text per ``row``; scoring is the caller's (and is pure).

``engine="local"`` runs the very same answerer in a plain loop (tests, debugging); both engines
give the same answers because decoding is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.vlm.examples import generate_answers, grounding_example, headpose_example
from pipeline.vlm.families import get_family

QUESTION_COLUMNS = ("row", "question", "eval_set")


@dataclass(frozen=True)
class Candidate:
    """A model to evaluate.

    Attributes:
        name: report name (``base``, ``lora:hpe``, ``merge:layer_wta``…).
        kind: ``base``, ``lora`` or ``merged``.
        model_dir: a full model folder (``save_pretrained``).
        adapter_dir: a PEFT adapter applied on ``model_dir`` (LoRA candidates).
    """

    name: str
    kind: str
    model_dir: str
    adapter_dir: str | None = None


def _blocks(questions: pa.Table, batch_size: int, workers: int) -> list[pa.Table]:
    """``questions`` cut into about four blocks per worker, each a whole number of batches."""
    n = questions.num_rows
    per = max(batch_size, -(-n // (4 * max(workers, 1)) // batch_size) * batch_size)
    return [questions.slice(i, per) for i in range(0, n, per)] or [questions]


class Answerer:
    """Loads a candidate once and answers batches of questions (a Ray Data actor)."""

    def __init__(
        self,
        family: str,
        candidate: Candidate,
        trust_remote_code: bool = False,
        max_new_tokens: int = 40,
        torch_threads: int | None = 1,
        gpus: float = 0.0,
    ):
        import torch

        from pipeline.raycluster import actor_device

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.family = get_family(family)
        self.max_new_tokens = max_new_tokens
        model, self.processor = self.family.load(candidate.model_dir, trust_remote_code=trust_remote_code)
        if candidate.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, candidate.adapter_dir)
        self.model = model.to(actor_device(gpus)).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        examples = [
            grounding_example(r, self.family) if r["question"] == "grounding" else headpose_example(r, self.family)
            for r in batch.to_pylist()
        ]
        answers = generate_answers(
            self.model,
            self.processor,
            self.family,
            [e.image for e in examples],
            [e.prompt for e in examples],
            max_new_tokens=self.max_new_tokens,
        )
        return pa.table({"row": batch.column("row"), "answer": pa.array(answers, pa.string())})


def answer_questions(
    questions: pa.Table,
    family: str,
    candidate: Candidate,
    *,
    engine: str = "ray",
    batch_size: int = 32,
    workers: int = 1,
    trust_remote_code: bool = False,
    max_new_tokens: int = 40,
    torch_threads: int | None = 1,
    gpus_per_worker: float = 0.0,
) -> dict[int, str]:
    """The candidate's answer to every question, keyed by the question's ``row``.

    Args:
        questions: a question table (module docstring).
        engine: ``ray`` (Ray Data ``map_batches`` over an actor pool of ``workers``) or ``local``.
        batch_size: questions per generation batch.
        gpus_per_worker: GPU share of each Ray actor (0: CPU); ``local`` uses it too.

    Raises:
        ValueError: a missing question column, or a row Ray did not answer (never silently lost).
    """
    missing = [c for c in QUESTION_COLUMNS if c not in questions.column_names]
    if missing:
        raise ValueError(f"question table lacks columns {missing}")
    kwargs: dict[str, Any] = dict(
        family=family,
        candidate=candidate,
        trust_remote_code=trust_remote_code,
        max_new_tokens=max_new_tokens,
        torch_threads=torch_threads,
        gpus=gpus_per_worker,
    )
    if engine == "local":
        answerer = Answerer(**kwargs)
        parts = [answerer(questions.slice(i, batch_size)) for i in range(0, questions.num_rows, batch_size)]
    elif engine == "ray":
        import ray
        import ray.data

        from pipeline.raycluster import actor_resources, ray_session

        with ray_session():
            # One block per (a few) batches: from one table Ray Data makes one block, which one
            # actor answers while the others idle.
            ds = ray.data.from_arrow(_blocks(questions, batch_size, workers)).map_batches(
                Answerer,
                fn_constructor_kwargs=kwargs,
                batch_size=batch_size,
                batch_format="pyarrow",
                concurrency=workers,
                **actor_resources(gpus_per_worker),
            )
            parts = [ray.get(ref) for ref in ds.to_arrow_refs()]
    else:
        raise ValueError(f"engine must be 'ray' or 'local', not {engine!r}")
    table = pa.concat_tables(parts) if parts else pa.table({"row": [], "answer": []})
    answers = dict(zip(table.column("row").to_pylist(), table.column("answer").to_pylist(), strict=True))
    lost = set(questions.column("row").to_pylist()) - set(answers)
    if lost:
        raise ValueError(f"{candidate.name}: {len(lost)} questions came back without an answer")
    return answers
