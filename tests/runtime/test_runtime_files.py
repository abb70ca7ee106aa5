"""`predict_file`: two runs into one output, and an error mid-file, never leave a mixed or partial file."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import sentiment_rows, write_rows

from deployft.runtime import Predictor
from deployft.runtime.files import predict_file


class _Paused:
    """A predictor that stops at its first batch until every run sharing `barrier` has reached its own."""

    def __init__(self, predictor: Predictor, barrier: threading.Barrier):
        self.task, self._predictor, self._barrier, self._waited = predictor.task, predictor, barrier, False

    def predict(self, texts, batch_size=32):
        if not self._waited:
            self._waited = True
            self._barrier.wait(timeout=60)
        return self._predictor.predict(texts, batch_size=batch_size)


def test_two_runs_into_one_output_do_not_collide(runtime_bundle, tmp_path):
    predictor = Predictor.load(runtime_bundle("bert"))
    inputs = [write_rows(tmp_path / f"in{i}.jsonl", sentiment_rows(n, seed=i)) for i, n in enumerate((30, 50))]
    output, barrier, errors, counts = tmp_path / "preds.jsonl", threading.Barrier(2), [], {}

    def run(i: int) -> None:
        try:
            counts[i] = predict_file(_Paused(predictor, barrier), inputs[i], output, batch_size=8, progress=False)
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and counts == {0: 30, 1: 50}
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(records) in (30, 50) and [r["id"] for r in records] == list(range(len(records)))  # one run, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_error_mid_file_keeps_the_previous_output(runtime_bundle, tmp_path):
    predictor = Predictor.load(runtime_bundle("bert"))
    output = tmp_path / "preds.jsonl"
    output.write_text("previous\n")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(40)) + "not json\n")
    with pytest.raises(ValueError, match="line 41 is not valid JSON"):
        predict_file(predictor, source, output, batch_size=8, progress=False)
    assert output.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["in.jsonl", "preds.jsonl"]
