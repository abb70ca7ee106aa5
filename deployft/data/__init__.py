"""The user's data: files read into rows, columns mapped, cleaned, split, and re-read for a RUN.

    readers.py    a data path -> plain rows: format, encoding, Parquet, `datasets` folders, the defaults
    jsonrows.py   JSONL or a JSON list -> rows, refusing column-oriented JSON
    columns.py    the column of each role, and the refusals: an ignored flag, a missing column, chat data
    examples.py   rows of one task: cleaning, sampling, the RUN's data record and its replay
    split.py      the eval split: copies of a row on one side, every class kept in training
    labels.py     one spelling per class label, and the classes a classifier learns
    defaults.py   the embedded defaults (models and data shipped in PyPI packages)

CSV and TSV are read by the shared `deployft/delimited.py` (predict reads its CSV through it too).
Nothing here imports torch.
"""

from __future__ import annotations

from .examples import Examples, load_examples, load_run_examples, resolve_source

__all__ = ["Examples", "load_examples", "load_run_examples", "resolve_source"]
