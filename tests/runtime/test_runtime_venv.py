"""A fresh virtual environment with only `pip install "deployft[runtime]"` loads bundles and predicts, without torch."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from deployft.runtime import Predictor

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, sys
from deployft.runtime import Predictor
clf, gen = Predictor.load(sys.argv[1]), Predictor.load(sys.argv[2])
out = {"labels": [p.label for p in clf.predict(["the film was great", "the plot was dull", ""])],
       "scores": [p.score for p in clf.predict(["the film was great", "the plot was dull", ""])],
       "greedy": gen.generate(["what color is the sky", "hi"], max_new_tokens=8),
       "sampled": gen.generate("hi", max_new_tokens=8, temperature=0.8, seed=1),
       "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_runtime_extra_alone_serves_bundles(runtime_bundle, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{REPO}[runtime]"], check=True, timeout=600)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                               text=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"deployft", "onnxruntime", "tokenizers", "numpy"} <= names
    assert not names & {"torch", "transformers", "optimum", "optimum-onnx", "datasets"}, names

    clf, gen = runtime_bundle("bert"), runtime_bundle("llama")
    result = subprocess.run([python, "-c", SCRIPT, str(clf), str(gen)], check=True, capture_output=True, text=True,
                            cwd=tmp_path)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    here_clf, here_gen = Predictor.load(clf), Predictor.load(gen)
    expected = here_clf.predict(["the film was great", "the plot was dull", ""])
    assert got["labels"] == [p.label for p in expected]
    assert got["scores"] == pytest.approx([p.score for p in expected], abs=1e-5)
    assert got["greedy"] == here_gen.generate(["what color is the sky", "hi"], max_new_tokens=8)
    assert got["sampled"] == here_gen.generate("hi", max_new_tokens=8, temperature=0.8, seed=1)

    cli = subprocess.run([env_dir / "bin" / "deployft", "predict", str(clf), "the film was great", "--json"],
                         check=True, capture_output=True, text=True, cwd=tmp_path)
    assert json.loads(cli.stdout)["label"] == expected[0].label
