"""The driver of ``test_ray_multinode.py``: ingest and train on the cluster named by ``RAY_ADDRESS``.

It runs as a process of its own, as a stage started by DVC or Prefect does, and joins the
cluster through the environment alone (``RAY_ADDRESS`` and the token variables that
``scripts/ray_cluster.sh start`` prints): nothing in the stage code knows about the cluster.

    python -m tests.integration.multinode_driver SPEC.json   # writes SPEC's "result" file
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.train.toy import ToyRegression


@dataclass
class NodeReportingToy(ToyRegression):
    """The toy task, whose workers also write down the Ray node they run on (``rank<R>.txt``).

    Same model, same batches as :class:`ToyRegression`: only the side file differs.
    """

    node_log: str = ""

    def build_model(self):
        import ray
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        Path(self.node_log, f"rank{rank}.txt").write_text(ray.get_runtime_context().get_node_id())
        return super().build_model()


def main(spec_path: str) -> None:
    import ray

    from pipeline import stages
    from pipeline.config import parse_params
    from pipeline.raycluster import ray_session
    from pipeline.train import TrainConfig, train
    from pipeline.train.toy import make_toy_table

    spec = json.loads(Path(spec_path).read_text())
    with ray_session() as join_s:
        nodes = [{"id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0.0)} for n in ray.nodes() if n["Alive"]]
    # Each stage joins the cluster by itself, exactly as it does when DVC runs it.
    ingest = stages.ingest_stage(parse_params(spec["params"]), "300w_lp", spec["raw"], spec["ingest_out"], engine="ray")
    Path(spec["node_log"]).mkdir(parents=True, exist_ok=True)
    result = train(
        NodeReportingToy(node_log=spec["node_log"]),
        make_toy_table(**spec["table"]),
        TrainConfig(**spec["train"]),
        Path(spec["train_out"]),
        run_name="multinode",
    )
    report = {
        "join_s": join_s,
        "nodes": nodes,
        "ingest": ingest,
        "train": {
            "steps": result.steps,
            "final_loss": result.final_loss,
            "model_dir": str(result.model_dir),
            "torch_threads": result.metrics.get("torch_threads"),
            "wall_seconds": result.wall_seconds,
        },
    }
    Path(spec["result"]).write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
