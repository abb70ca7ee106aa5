"""The shape of the package: one folder per stage, small modules, and a runtime that stays torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import deployft

PACKAGE = Path(deployft.__file__).parent
STAGES = ("data", "train", "exporter", "runtime", "bench", "serve", "cli")
SHARED = {"__init__.py", "__main__.py", "errors.py", "manifest.py", "staging.py", "configfile.py", "tasks.py",
          "metrics.py", "prompts.py", "signing.py", "tokens.py", "delimited.py", "telemetry.py"}


def test_one_folder_per_stage_and_only_shared_modules_at_the_top():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(STAGES)
    assert {p.name for p in PACKAGE.glob("*.py")} == SHARED


def test_no_module_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert long == {}


def test_runtime_imports_no_torch_transformers_or_onnx():
    code = ("import sys, deployft.runtime, deployft.runtime.files, deployft.prompts, deployft.tokens, "
            "deployft.metrics, deployft.tasks; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_imports_no_torch_transformers_or_onnx():
    code = ("import sys, deployft.serve.app, deployft.serve.server, deployft.serve.service, deployft.cli.serve; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_shared_top_imports_no_stage():
    """Imports point down: no import statement in a shared module names a stage (the runtime uses them)."""
    import ast

    for name in SHARED - {"__init__.py", "__main__.py"}:
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert not any(module.lstrip(".").split(".")[0] == stage for stage in STAGES), (name, module)
                assert not module.startswith("deployft."), (name, module)


def test_the_runtime_imports_only_itself_and_the_shared_top():
    """STYLE: `runtime` uses only the shared top, so an application embedding the Predictor needs no other stage."""
    import ast

    for path in (PACKAGE / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                assert node.module.split(".")[0] + ".py" in SHARED, (path.name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("deployft."), (path.name, node.module)
