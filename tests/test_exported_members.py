import subprocess
import sys

import deployft


def test_public_names_are_pinned():
    assert deployft.__all__ == sorted([
        "BenchConfig", "BenchReport", "ExportConfig", "FinetuneConfig", "Prediction", "Predictor",
        "__version__", "benchmark", "errors", "export", "finetune", "verify_bundle",
    ])


def test_every_public_name_resolves():
    for name in deployft.__all__:
        assert getattr(deployft, name) is not None, name


def test_import_deployft_does_not_import_torch():
    code = "import sys, deployft, deployft.errors, deployft.manifest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_export_is_the_stage_function_beside_the_exporter_package():
    code = ("import deployft, deployft.exporter; from deployft.exporter import ExportConfig; "
            "print(callable(deployft.export), deployft.ExportConfig is ExportConfig)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
