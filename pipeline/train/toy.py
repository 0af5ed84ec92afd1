"""A small regression task for the training loop's tests and benchmark.

It plugs into :func:`pipeline.train.ray_deepspeed.train` exactly as the VLM and VLPose tasks
do: rows of a Parquet/Arrow table (``source_id``, ``x`` a list of floats, ``y`` a float) are
collated into tensors and an MLP with dropout (so that resuming must replay the RNG too)
regresses ``y``. Two testing hooks live here and nowhere in the loop: ``freeze`` (parameter
name prefixes kept frozen, like a LoRA task freezes its base) and ``crash_on_call`` (the
worker process dies with ``os._exit`` on that call of ``loss`` — a hard kill, not an
exception — the first time only, so that a restarted run survives), and ``loss_delay_s``
(a slower model, so that a fault test can act while a run is in flight).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn


def make_toy_table(n: int, dim: int = 8, *, seed: int = 0, noise: float = 0.05) -> pa.Table:
    """``n`` rows of ``y = sin(x·w₁)·w₂ + noise`` with ``x ~ N(0, 1)^dim``, in shuffled order.

    The rows are written in a seeded random order so that the loop's sort by ``source_id``
    is exercised: the training batches must not depend on row order.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(dim, 4)) / np.sqrt(dim)
    w2 = rng.normal(size=4)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (np.sin(x @ w1) @ w2 + noise * rng.normal(size=n)).astype(np.float32)
    order = rng.permutation(n)
    return pa.table(
        {
            "source_id": pa.array([f"toy-{i:06d}" for i in order]),
            "x": pa.array(list(x[order]), type=pa.list_(pa.float32())),
            "y": pa.array(y[order], type=pa.float32()),
        }
    )


class ToyMLP(nn.Module):
    """``depth`` hidden layers of ``hidden`` units, GELU and dropout, then one output."""

    def __init__(self, dim: int, hidden: int, depth: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


@dataclass
class ToyRegression:
    """The toy task: MSE regression of ``y`` from ``x``.

    Args:
        dim: input width (must match the table's ``x`` lists).
        hidden: hidden width; the benchmark raises it until a step costs ≳ 20 ms.
        depth: hidden layers.
        dropout: dropout probability (exercises the per-step RNG on resume).
        init_seed: seed of the initial weights (independent of the training seed).
        freeze: parameter-name prefixes left frozen (``requires_grad=False``).
        crash_on_call: testing only — ``os._exit(1)`` on this call of :meth:`loss` in each
            worker process, unless ``crash_marker`` exists (it is created first).
        crash_marker: file marking that the crash already happened.
        loss_delay_s: testing only — seconds each :meth:`loss` call sleeps.
    """

    dim: int = 8
    hidden: int = 32
    depth: int = 2
    dropout: float = 0.1
    init_seed: int = 0
    freeze: tuple[str, ...] = ()
    crash_on_call: int | None = None
    crash_marker: str | None = None
    loss_delay_s: float = 0.0

    required_columns = ("source_id", "x", "y")

    def __post_init__(self) -> None:
        self._calls = 0

    def preflight(self) -> None:
        if self.crash_on_call is not None and not self.crash_marker:
            raise ValueError("crash_on_call needs crash_marker (else every restart crashes again)")

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            model = ToyMLP(self.dim, self.hidden, self.depth, self.dropout)
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(self.freeze) if self.freeze else True)
        return model

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "x": torch.tensor(np.asarray([r["x"] for r in rows], dtype=np.float32)),
            "y": torch.tensor([r["y"] for r in rows], dtype=torch.float32),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._calls += 1
        if self.crash_on_call is not None and self._calls == self.crash_on_call:
            marker = Path(self.crash_marker)  # type: ignore[arg-type]
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # a hard kill: no exception handler, no cleanup, no report
        if self.loss_delay_s:
            time.sleep(self.loss_delay_s)
        pred = model(batch["x"])
        return nn.functional.mse_loss(pred.float(), batch["y"].float())

    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        pred = model(batch["x"]).float()
        return {"mae": float((pred - batch["y"].float()).abs().mean())}

    def save(self, model: nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / "model.safetensors"))
