"""The work folder of a fine-tune: its checkpoints, which of them are complete, and what a resume must match.

    .<output name>.work/
        state.json                   the settings as training resolved them (`runner._settings`), the data
                                     fingerprint and the eval split's name (`data_split`)
        checkpoints/checkpoint-N/    Trainer checkpoints, every `checkpoint_steps` steps and at each epoch's end;
                                     complete once deployft's marker `deployft-checkpoint.json` is in it

Trainer writes a checkpoint's files one by one into its final folder, so a kill in the middle of a write leaves
a folder that looks like a checkpoint. The marker is written (atomically) after Trainer's last file, from the
`on_save` callback; a resume starts from the newest checkpoint with a marker and deletes those without.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import DataError, OutputExistsError, UsageError
from ..manifest import read_json

MARKER = "deployft-checkpoint.json"
_PREFIX = "checkpoint-"


def work_folder(output: Path) -> Path:
    """Where the checkpoints of a fine-tune into `output` live: a hidden sibling, removed once the RUN is written."""
    return output.parent / f".{output.name}.work"


def complete_checkpoints(work: Path) -> list[Path]:
    """The checkpoints in `work` that hold a marker, oldest first."""
    return sorted((p for p in _checkpoint_folders(work) if (p / MARKER).is_file()), key=_step)


def refuse_to_discard(work: Path, output: Path) -> None:
    """Refuse to start afresh over the checkpoints of an interrupted run (a fresh start deletes them)."""
    done = complete_checkpoints(work)
    if done:
        raise OutputExistsError(f"{work} holds checkpoints of an interrupted run into {output} (the last one: "
                                f"{done[-1].name}); pass --resume to continue it, or --overwrite to delete them "
                                "and start again")


def resume_point(work: Path) -> str:
    """The newest complete checkpoint of an interrupted run; `check_same_run` then checks it is the same run.

    Raises:
        UsageError: no complete checkpoint.
    """
    done = complete_checkpoints(work)
    state = read_json(work / "state.json", UsageError)
    if not done or "settings" not in state:
        raise UsageError(f"--resume found no checkpoint in {work}; run again without --resume")
    return str(done[-1])


def check_same_run(work: Path, settings: dict[str, Any], flags: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse a resume on other settings or data than the interrupted run's; then delete its incomplete checkpoints.

    `settings` are the resolved settings (`runner._settings`), `flags` the settings as given, which a run
    started before deployft recorded resolved settings is compared on; `record` is the data record
    (`Examples.record`).

    Raises:
        UsageError: other settings (each differing one shown old -> new), or a run started by a version before
            the distinct-row split.
        DataError: the data fingerprint differs from the one recorded when the run started.
    """
    state = read_json(work / "state.json", UsageError)
    expected = settings if "columns" in state["settings"] else flags
    if state["settings"] != expected:
        _refuse_older(state, work, record["split"])
        raise _other_settings(work, state["settings"], expected)
    _check_same_data(state, work, record)
    if _is_main_process():
        done = complete_checkpoints(work)
        for folder in set(_checkpoint_folders(work)) - set(done):
            shutil.rmtree(folder, ignore_errors=True)


def check_known_settings(work: Path, known: dict[str, Any], resolved: tuple[str, ...]) -> None:
    """`check_same_run`'s settings check on what is known before the model and data load (`known`: every setting
    but those in `resolved`), so a resume on other flags is refused at once; a run that recorded its flags as given
    (before resolved settings) is left to `check_same_run`.

    Raises:
        UsageError: other settings, each differing one shown old -> new.
    """
    state = read_json(work / "state.json", UsageError)
    if "columns" not in state.get("settings", {}):
        return
    recorded = {key: value for key, value in state["settings"].items() if key not in resolved}
    if recorded != known:
        raise _other_settings(work, recorded, known)


def _other_settings(work: Path, old: dict[str, Any], new: dict[str, Any]) -> UsageError:
    return UsageError(f"--resume needs the same settings as the interrupted run (see {work / 'state.json'}); these "
                      f"differ: {_differences(old, new)}; repeat its flags or run without --resume")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`lr 5e-05 -> 0.001, max_steps 3000 -> (not set)`: each differing setting, the interrupted run's value first
    (`(no effect)`: dropped as changing nothing under the others, such as epochs under max_steps)."""
    def shown(values: dict[str, Any], key: str) -> str:
        if key not in values:
            return "(no effect)"
        return "(not set)" if values[key] is None else json.dumps(values[key])

    changed = sorted(k for k in old.keys() | new.keys() if k not in old or k not in new or old[k] != new[k])
    return ", ".join(f"{key} {shown(old, key)} -> {shown(new, key)}" for key in changed)


def _check_same_data(state: dict[str, Any], work: Path, record: dict[str, Any]) -> None:
    """Refuse a resume on other data than the interrupted run trained on (its data fingerprint differs)."""
    recorded, fingerprint = state.get("data_fingerprint"), record["fingerprint"]
    if recorded != fingerprint:
        _refuse_older(state, work, record["split"])
        files = " and ".join(str(source["path"]) for source in (record.get("train"), record.get("eval")) if source)
        raise DataError(f"--resume: the data in {files} is not what the interrupted run trained on (data "
                        f"fingerprint {str(recorded)[:12]} in {work / 'state.json'}, now {fingerprint[:12]}); "
                        "restore that data, or run without --resume and with --overwrite to start again on this data")


def _refuse_older(state: dict[str, Any], work: Path, split: str) -> None:
    """Name the version, not the data or the flags, when a run started by an earlier version differs: before the
    distinct-row split its settings spelled paths as given and its fingerprint hashed no split, so it never matches
    this version's; a run started with another split (`split`: this version's) would resume on other rows."""
    if state.get("data_split") not in (None, split):
        raise UsageError(f"--resume: the interrupted run in {work} held out its eval rows by the "
                         f"{state['data_split']!r} split of an earlier deployft, this version's is {split!r}, so "
                         "resuming would train on other rows; run again without --resume and with --overwrite to "
                         "start afresh, or finish it with the deployft version that started it")
    if "data_split" not in state:
        raise UsageError(f"--resume: the interrupted run in {work} predates deployft's distinct-row eval split (its "
                         "state.json records no split), so this version cannot resume it; run again without --resume "
                         "and with --overwrite to start afresh, or finish it with the deployft version that started it")


def start(work: Path, settings: dict[str, Any], record: dict[str, Any]) -> None:
    """A fresh work folder (an earlier one is deleted) recording what a resume must match; `record` is the RUN's
    data record (`Examples.record`)."""
    if _is_main_process():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _write_json(work / "state.json", {"settings": settings, "data_fingerprint": record["fingerprint"],
                                          "data_split": record["split"]})


def checkpoint_callback(every: int):
    """A Trainer callback: a checkpoint every `every` optimizer steps and at each epoch's end, and the marker once
    one is complete."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        saved_at: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            # an epoch's last step is saved by the epoch-end checkpoint: saving it twice would rewrite a complete one
            epoch_end = args.save_strategy == "epoch" and float(state.epoch or 0).is_integer()
            if state.global_step % every == 0 and not epoch_end:
                control.should_save = True
            return control

        def on_epoch_end(self, args, state, control, **kwargs):
            # with max_steps Trainer saves by steps only: the epoch's end is saved here, unless that step just was
            if args.save_strategy != "epoch" and state.global_step != self.saved_at:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.saved_at = state.global_step
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"{_PREFIX}{state.global_step}"
                _write_json(folder / MARKER, {"global_step": state.global_step})
            return control

    return Checkpoints()


def _checkpoint_folders(work: Path) -> list[Path]:
    folder = work / "checkpoints"
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()]


def _step(folder: Path) -> int:
    return int(folder.name[len(_PREFIX):])


def _write_json(path: Path, body: dict[str, Any]) -> None:
    """Write `path` whole or not at all: a kill mid-write leaves only a temporary file beside it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
