"""Security defaults, one test per rule, each read off the code or exercised on it.

1. Weights load from safetensors or ``torch.load(weights_only=True)``; nothing unpickles.
2. ``trust_remote_code`` is off unless the user's params turn it on; loaders never download.
3. Servers (Prefect, MLflow, the Ray dashboard) bind to 127.0.0.1 by default.

A known exception to 1, on purpose: MLflow pyfunc models (``pipeline/registry.py``,
``pipeline/pose2d/registry.py``) are logged with ``python_model=<instance>``, which MLflow
serialises with cloudpickle; ``mlflow.pyfunc.load_model`` unpickles it. That pickle is the
wrapper class only (weights stay safetensors in the model folder), written by this project into
its own tracking store — but whoever can write that store can run code on whoever loads a
model from it. MLflow's "models from code" (``python_model`` given as the path of a ``.py`` that
calls ``mlflow.models.set_model``) stores no pickle; the source-scanning test below lists
``mlflow.pyfunc.load_model`` as the one allowed unpickling call until the registry uses it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("pipeline", "flows", "bench")


def _python_sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def _calls(path: Path) -> list[tuple[ast.Call, str]]:
    """Every call in ``path`` with its callee written out (``torch.load``, ``x.from_pretrained``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node, ast.unparse(node.func)) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)[:120]}"


# ------------------------------------------------------------------ 1. weights without pickle
_PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}
# Calls that unpickle, allowed where named, with the reason (see the module docstring).
_ALLOWED_UNPICKLING = {("pipeline/registry.py", "mlflow.pyfunc.load_model")}


def test_nothing_loads_weights_or_data_through_pickle():
    problems, torch_loads = [], 0
    for path in _python_sources():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):  # `from pickle import loads` hides the module
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in _PICKLE_MODULES:
                names = {a.name for a in node.names} & {"load", "loads", "Unpickler"}
                if names:
                    problems.append(f"{rel}:{node.lineno}: imports {', '.join(sorted(names))} from {node.module}")
        for call, callee in _calls(path):
            parts = callee.split(".")
            torch_loads += callee == "torch.load"
            if callee == "torch.load" and not _is_true(_keyword(call, "weights_only")):
                problems.append(f"torch.load without weights_only=True: {_where(path, call)}")
            elif parts[-1] in ("load", "loads", "Unpickler") and _PICKLE_MODULES & set(parts[:-1]):
                problems.append(f"unpickling: {_where(path, call)}")
            elif parts[-1] == "load" and parts[0] in ("np", "numpy") and not _is_false_or_absent(call, "allow_pickle"):
                problems.append(f"np.load with allow_pickle: {_where(path, call)}")
            elif parts[-1] == "read_pickle":
                problems.append(f"pandas read_pickle: {_where(path, call)}")
            elif callee.endswith("pyfunc.load_model") and (rel, callee) not in _ALLOWED_UNPICKLING:
                problems.append(f"MLflow pyfunc load (cloudpickle) outside the registry: {_where(path, call)}")
    assert not problems, "\n".join(problems)
    assert torch_loads >= 1  # the checkpoint loader: the scan does see the real calls


def _is_false_or_absent(call: ast.Call, name: str) -> bool:
    value = _keyword(call, name)
    return value is None or (isinstance(value, ast.Constant) and value.value is False)


def test_the_npz_reader_refuses_pickled_arrays(tmp_path):
    """BIWI_noTrack.npz holds plain arrays: an object array (a pickle inside the npz) is refused."""
    import numpy as np

    from pipeline.datasets import biwi
    from pipeline.datasets.base import LayoutError

    marker = tmp_path / "ran"
    np.savez(
        tmp_path / biwi.NPZ_NAME,
        image=np.zeros((1, 64, 64, 3), np.uint8),
        pose=np.array([[_RunsCode(marker), 0.0, 0.0]], dtype=object),
    )
    with pytest.raises(LayoutError, match="allow_pickle=False"):
        biwi.list_items_npz(tmp_path)
    assert not marker.exists()


class _RunsCode:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code in a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_training_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    """Resuming reads ``optim_rank*.pt`` with ``torch.load(weights_only=True)`` and ``model.safetensors``
    with safetensors: neither runs the code a crafted checkpoint carries."""
    import pickle

    import torch
    from torch import nn

    from pipeline.train.ray_deepspeed import (
        CHECKPOINT_FORMAT,
        MODEL_FILE,
        STATE_FILE,
        _load_model_part,
        _load_optimizer_part,
    )

    marker = tmp_path / "ran"
    torch.save({"master": [], "state": [], "groups": [], "payload": _RunsCode(marker)}, tmp_path / "optim_rank00000.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _load_optimizer_part(tmp_path, engine=None, scheduler=None, state={}, rank=0)
    assert not marker.exists()

    (tmp_path / STATE_FILE).write_text(json.dumps({"format": CHECKPOINT_FORMAT}))
    (tmp_path / MODEL_FILE).write_bytes(pickle.dumps({"weight": _RunsCode(marker)}))
    with pytest.raises(Exception, match="(?i)header"):  # safetensors: "HeaderTooLarge" / "invalid header"
        _load_model_part(tmp_path, nn.Linear(2, 2))
    assert not marker.exists()


# ------------------------------------------------------------------ 2. no remote code, no download
# PEFT adapters are folders the pipeline wrote; PeftModel.from_pretrained reads a local folder
# without any hub call and has no remote code to trust (PEFT also ignores local_files_only for
# its hub probe, so the keyword would promise nothing).
_LOCAL_BY_CONSTRUCTION = {"PeftModel.from_pretrained"}


def _kw_dict(tree: ast.AST, call: ast.Call) -> dict[str, ast.expr]:
    """Keywords passed to ``call``, including a ``**name`` whose dict literal is assigned in the file."""
    out = {k.arg: k.value for k in call.keywords if k.arg}
    for k in call.keywords:
        if k.arg is None and isinstance(k.value, ast.Name):
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == k.value.id for t in node.targets)
                    and isinstance(node.value, ast.Dict)
                ):
                    out.update(
                        {key.value: v for key, v in zip(node.value.keys, node.value.values, strict=True)
                         if isinstance(key, ast.Constant)}
                    )  # fmt: skip
    return out


def test_from_pretrained_never_trusts_remote_code_by_itself_and_never_downloads():
    problems, checked = [], 0
    for path in _python_sources():
        tree = ast.parse(path.read_text())
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            callee = ast.unparse(call.func)
            if not callee.endswith("from_pretrained"):
                continue
            checked += 1
            kw = _kw_dict(tree, call)
            if _is_true(kw.get("trust_remote_code")):
                problems.append(f"trust_remote_code=True written in the code: {_where(path, call)}")
            if callee not in _LOCAL_BY_CONSTRUCTION and not _is_true(kw.get("local_files_only")):
                problems.append(f"from_pretrained without local_files_only=True: {_where(path, call)}")
        # Every function that takes the flag defaults it to off.
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            args = fn.args.args + fn.args.kwonlyargs
            defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + fn.args.defaults + fn.args.kw_defaults
            for arg, default in zip(args, defaults, strict=True):
                if (
                    arg.arg == "trust_remote_code"
                    and default is not None
                    and not (isinstance(default, ast.Constant) and default.value is False)
                ):
                    problems.append(f"{path.relative_to(ROOT)}:{fn.lineno}: {fn.name} defaults trust_remote_code on")
    assert not problems, "\n".join(problems)
    assert checked >= 5  # the VLM family loaders, ViTPose, the text encoder, PEFT adapters


def test_trust_remote_code_is_off_in_params_and_cogvlm_refuses_without_it(tmp_path):
    import yaml

    from pipeline.config import VLMConfig, parse_params
    from pipeline.vlm.families import get_family

    assert VLMConfig().trust_remote_code is False
    assert parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).vlm.trust_remote_code is False

    # A checkpoint whose remote code would leave a marker when imported: refused before any of it runs.
    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "cogvlm", "auto_map": {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"}})
    )
    (tmp_path / "modeling_cogvlm.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(PermissionError, match="trust_remote_code"):
        get_family("cogvlm").load(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------ 3. servers on 127.0.0.1
_TEXT_FILES = ("README.md", "Makefile", "docs", "scripts", "pipeline", "flows")


def _server_commands() -> list[tuple[str, str]]:
    """``(file, line)`` for every line that starts an MLflow, Prefect or Ray server."""
    found = []
    for name in _TEXT_FILES:
        base = ROOT / name
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.suffix in (".md", ".sh", ".py"))
        for path in files:
            in_code = path.suffix != ".md"  # in Markdown only fenced code is a command; prose may name servers
            for line in path.read_text().splitlines():
                if path.suffix == ".md" and line.lstrip().startswith("```"):
                    in_code = not in_code
                    continue
                if line.lstrip().startswith("#") and path.suffix != ".md":
                    continue  # a shell or Python comment is prose too
                if in_code and re.search(r"mlflow (ui|server)\b|prefect server start|ray start\b", line):
                    found.append((path.relative_to(ROOT).as_posix(), line.strip()))
    return found


def test_documented_and_scripted_servers_bind_to_localhost():
    commands = _server_commands()
    assert any(f == "scripts/prefect_server.sh" for f, _ in commands)  # the scan does see the real ones
    assert any("mlflow ui" in line for _, line in commands)
    problems = []
    for file, line in commands:
        if "ray start" in line:
            if "--dashboard-host" in line and "--dashboard-host=127.0.0.1" not in line:
                problems.append(f"{file}: {line}")
        elif not re.search(r"--host[ =]127\.0\.0\.1\b", line):
            problems.append(f"{file}: {line}")
    assert not problems, "servers not bound to 127.0.0.1:\n" + "\n".join(problems)
    for path in _python_sources():
        assert "0.0.0.0" not in path.read_text(), f"{path.relative_to(ROOT)} names 0.0.0.0"
        for call, callee in _calls(path):
            assert not (callee.endswith(".serve") and _is_true(_keyword(call, "webserver"))), _where(path, call)


def test_prefect_server_host_setting_is_localhost():
    """What ``prefect server start`` binds to without ``--host``, under the project's PREFECT_HOME
    (a profile there could move it): the script passes ``--host 127.0.0.1`` on top of this."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_API_HOST")}
    env["PREFECT_HOME"] = str(ROOT / ".prefect")
    code = "from prefect.settings import PREFECT_SERVER_API_HOST; print(PREFECT_SERVER_API_HOST.value())"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.strip() == "127.0.0.1"
    script = (ROOT / "scripts" / "prefect_server.sh").read_text()
    assert re.search(r"prefect server start --host 127\.0\.0\.1\b", script)
    assert "PREFECT_API_URL:-http://127.0.0.1:" in script


def test_ray_starts_without_a_dashboard(monkeypatch):
    """Every way ``ray_session`` reaches Ray (a new local cluster, or RAY_ADDRESS) passes
    include_dashboard=False; no other code calls ``ray.init``."""
    import ray

    from pipeline.raycluster import ray_session

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    for address in (None, "ray://10.0.0.1:10001"):
        if address:
            monkeypatch.setenv("RAY_ADDRESS", address)
        else:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        with ray_session(num_cpus=1):
            pass
    assert [kw.get("address") for kw in seen] == ["local", "ray://10.0.0.1:10001"]
    assert all(kw.get("include_dashboard") is False for kw in seen), seen
    callers = {
        path.relative_to(ROOT).as_posix()
        for path in _python_sources()
        for _, callee in _calls(path)
        if callee == "ray.init"
    }
    assert callers == {"pipeline/raycluster.py"}
