"""Peak memory of reading a training data file, as a multiple of the file's size.

Writes a synthetic CSV of about --size-mb MB (columns text, label, id, source; texts of 10 to 40 words, two labels;
seeded), then measures, each in a fresh Python process:

    read     `deployft.data.readers.read_rows`: the file decoded and parsed into rows
    load     `deployft.data.examples.load_examples("classify", ..., max_samples=1000)`: what `finetune` does
             before it tokenizes (read, columns, cleaning, the split)

The peak is the process's maximum resident set (ru_maxrss) less its resident set once deployft is imported, so
the figure is what the data costs. `--repo` measures another checkout of deployft (e.g. an earlier commit made with
`git worktree add`), so a change's before and after are measured by the same script on the same file.

    python benchmarks/data_memory.py --size-mb 100 --output benchmarks/results/data_memory
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

WORDS = ("the film was great and the cast was charming but the plot dragged in places with a weak ending "
         "overall").split()

_CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
import deployft.data.examples, deployft.data.readers

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

base = rss_mb()
if {what!r} == "read":
    rows = deployft.data.readers.read_rows(Path({path!r}), "csv")
    count = len(rows)
else:
    examples = deployft.data.examples.load_examples("classify", {path!r}, max_samples=1000)
    count = len(examples.train) + len(examples.eval)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"base_mb": base, "peak_mb": peak, "rows": count}}))
"""


def write_data(path: Path, size_mb: float, seed: int = 0) -> int:
    """A CSV of about `size_mb` MB; returns its rows."""
    rng, rows, size = random.Random(seed), 0, 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "id", "source"])
        while size < size_mb * 1e6:
            text = " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))
            writer.writerow([text, rng.choice(["pos", "neg"]), rows, "web"])
            size += len(text) + 20
            rows += 1
    return rows


def measure(repo: Path, path: Path, what: str) -> dict:
    code = _CHILD.format(repo=str(repo), what=what, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    data_mb = result["peak_mb"] - result["base_mb"]
    return {**result, "data_mb": data_mb, "x_file": data_mb / (path.stat().st_size / 2**20)}


def markdown(result: dict) -> str:
    lines = ["# Peak memory of reading a training data file", "",
             f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
             f"Machine: {result['machine']}; Python {result['python']}; deployft from `{result['repo']}` "
             f"(commit {result['commit']})", "",
             f"File: a synthetic CSV of {result['file_mb']:.1f} MiB, {result['rows']} rows (text, label, id, source).",
             "Peak: the process's maximum resident set less its resident set once deployft is imported.", "",
             "| step | peak MiB | x file size |", "| --- | ---: | ---: |"]
    for what, row in result["steps"].items():
        lines.append(f"| {what} | {row['data_mb']:.0f} | {row['x_file']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="The deployft checkout to measure (default: this one).")
    parser.add_argument("--data", type=Path, default=Path("/tmp/deployft-data-memory.csv"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/data_memory"))
    args = parser.parse_args()
    rows = write_data(args.data, args.size_mb)
    steps = {what: measure(args.repo.resolve(), args.data, what) for what in ("read", "load")}
    commit = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(args.repo), "status", "--porcelain", "deployft"], capture_output=True,
                           text=True).stdout.strip()
    from deployft.bench.machine import cpu_info

    cpu = cpu_info()["model"]
    result = {"command": "python " + " ".join(sys.argv), "repo": str(args.repo), "commit": commit + (
        " with uncommitted changes to deployft/" if dirty else ""), "machine": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(), "rows": rows, "file_mb": args.data.stat().st_size / 2**20,
        "steps": steps, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
