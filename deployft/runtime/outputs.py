"""Checks of a predictions file's path, made before any work: not the input, not a folder, under a writable folder.

`deployft predict --output` (and the file `--ray` writes into its `--output` folder) is checked before the bundle
is loaded, so a path that cannot take the file is one line at once instead of an error after every row was
predicted, and the input file is never replaced by its own predictions.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..staging import creation_blocker, same_file


def check_output_file(output: str | Path, input_path: str | Path | None = None, fix: str = "path") -> Path:
    """`output` as a Path, refused when it cannot take the predictions file.

    `fix` is what the user passes to `--output` instead (`path`, or `folder` with --ray).

    Raises:
        UsageError: `output` is the input file, an existing folder, or under a path that is a file or a folder
            this process cannot write in (`deployft.staging.creation_blocker`).
    """
    output = Path(output)
    if input_path is not None and same_file(Path(input_path), output):
        raise UsageError(f"--output {output} is the --input file {input_path}: the predictions would replace it; "
                         f"pass another --output {fix}")
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; pass a file path such as {output / 'predictions.jsonl'}")
    blocker = creation_blocker(output)
    if blocker is not None and not blocker.is_dir():
        raise UsageError(f"--output {output} cannot be created: {blocker} is a file, not a folder; pass an --output "
                         f"{fix} under a folder")
    if blocker is not None:
        raise UsageError(f"--output {output} cannot be created: {blocker} is not writable; pass an --output {fix} "
                         "in a folder you can write to")
    return output
