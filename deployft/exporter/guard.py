"""The accuracy guard: paired predictions of PyTorch and each ONNX file on the same rows, a confidence bound, and a
decision; then the int8 remedy ladder and the refusal.

Decision rule (`--max-accuracy-drop B`, in `Task.budget_unit`), one-sided 95 % confidence:

- classify: a file passes when the exact (Clopper-Pearson) upper bound of the share of rows whose top-1 class
  differs from PyTorch's is <= B %, i.e. the lower bound of top-1 agreement is >= 1 - B / 100. A flipped prediction
  is the only way a file can lose accuracy on a row, so this bounds the accuracy drop on any labels, and it is
  judged on every row rather than on the difference of two noisy accuracies (which a file that flips 3 % of its
  predictions can "win"). The labels only feed the accuracy columns, which are reported, not judged.
- generate: a file passes when the paired bootstrap upper bound of its perplexity ratio over PyTorch (whole
  sequences resampled, seed 0) is <= 1 + B / 100. Greedy token agreement is recorded beside it, not judged: a
  single near-tie changes the rest of a continuation, so a few prompts cannot tell a real loss from chance.

A classifier budget that the validation rows cannot decide (too few rows for even a file with no flipped
prediction to pass) is refused before any file is written. When int8 misses the budget, the task's remedies
(`Task.int8_remedies`, `Task.int4_remedies` for int4) are tried in order; the first that passes is kept and every
attempt is recorded (a classifier climbs them with all its int8 candidates at once, and on past files within budget
until one also reaches its agreement goal, `--min-agreement`; `select.py`). When none is within budget:
AccuracyBudgetError, and no bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any, NoReturn

from ..errors import AccuracyBudgetError, UsageError
from .agreement import CONFIDENCE, binomial_upper_bound, rows_needed
from ..tasks import Remedy, Task
from .config import ExportConfig
from .state import Budget, ExportResult, VariantResult

FEW_SEQUENCES = 20
"""Below this many generator sequences the bootstrap bound is recorded with a warning that it is approximate."""


def budget_for(config: ExportConfig, task: Task) -> Budget:
    """`--max-accuracy-drop`, or the task's default, in the task's unit; `Budget.origin` says which."""
    if config.max_accuracy_drop is not None:
        return Budget(float(config.max_accuracy_drop), task.budget_unit)
    return Budget(float(task.default_budget), task.budget_unit, f"the {task.name} default")


def agreement_goal(config: ExportConfig, task: Task) -> float:
    """The top-1 agreement a classifier's int8 remedies climb for: --min-agreement, else the task's (0: none)."""
    goal = config.min_agreement if config.min_agreement is not None else task.min_agreement
    return float(goal or 0.0)


def meets_goal(variant: VariantResult | None, goal: float) -> bool:
    """Whether a classifier file agrees with PyTorch on at least `goal` of its rows, counted exactly: its flipped
    rows against the share the goal allows, as fractions (in floats, 7 of 100 rows flipped agree on 0.9299999...,
    which would miss --min-agreement 0.93)."""
    if variant is None:
        return False
    rows, flips = variant.validation["samples"], variant.validation["flips"]
    return goal <= 0 or Fraction(rows - flips, rows) >= Fraction(repr(float(goal)))


def rule_text(task: Task, budget: Budget) -> str:
    """The decision rule with its numbers, as `export`, `info` and the model card print it."""
    if task.generates:
        return (f"pass when the one-sided {CONFIDENCE:.0%} upper bound of the perplexity ratio ONNX / PyTorch "
                f"(paired bootstrap over sequences) is <= {1 + budget.max_drop / 100:.4f} "
                f"({_flag(budget)}: {budget.measure})")
    return (f"pass when the one-sided {CONFIDENCE:.0%} lower bound of top-1 agreement with PyTorch (exact binomial, "
            f"Clopper-Pearson) is >= {1 - budget.max_drop / 100:.4f}, i.e. at most {budget.max_drop:g} % of "
            f"predictions may flip ({_flag(budget)}: {budget.measure})")


def _flag(budget: Budget) -> str:
    """`--max-accuracy-drop B`, and which default it is when the flag was not given."""
    flag = f"--max-accuracy-drop {budget.max_drop:g}"
    return flag if budget.origin == "--max-accuracy-drop" else f"{flag}, {budget.origin}"


def check_decidable(task: Task, budget: Budget, rows: int, validate_samples: int) -> None:
    """Refuse a budget that `rows` validation rows cannot decide, before any file is written.

    Raises:
        UsageError: even a file that flips no prediction would fail, so every export would be refused after
            minutes of work; the message names the rows needed, the smallest budget these rows decide, and the fixes.
            A generator's budget of 0: its fp32 files differ from PyTorch by float rounding, which puts the
            perplexity ratio's upper bound a hair above 1, so no file could pass.
    """
    if rows < 1:
        raise UsageError("the accuracy guard has no validation rows to judge: the RUN's eval and training data "
                         "encode to no usable example; re-run deployft finetune with data that has text")
    if task.generates:
        if budget.max_drop <= 0:
            raise UsageError(f"the accuracy guard cannot meet {_flag(budget)} ({budget.measure}) for a generator: "
                             "even its fp32 files differ from PyTorch by float rounding, which puts the upper bound "
                             "of the perplexity ratio above 1.0000, so every file would be refused after the whole "
                             "export; pass a budget above 0 (e.g. --max-accuracy-drop 1: perplexity at most +1 %)")
        return
    needed = rows_needed(budget.max_drop / 100)
    if needed is not None and rows >= needed:
        return
    smallest = 100 * binomial_upper_bound(0, rows)
    need = "no finite number of rows" if needed is None else f"at least {needed} rows"
    raise UsageError(
        f"the accuracy guard cannot decide {_flag(budget)} ({budget.measure}) on "
        f"{rows} validation rows: even a file that flips no prediction has an upper bound of {smallest:.2f} %, and "
        f"{need} are needed; give the RUN more eval rows (deployft finetune --eval-fraction or --eval-data), "
        f"raise --validate-samples (now {validate_samples}) if the RUN has more, or pass --max-accuracy-drop "
        f"{_round_up(smallest)} or more")


def judge(task: Task, report: dict[str, Any], budget: Budget) -> tuple[float, dict[str, Any]]:
    """How far a validated file is from PyTorch in the budget's unit (its upper bound), and the guard's record.

    Returns:
        `(drop, guard)`: `drop` is the judged bound (classify: % of predictions flipped; generate: % perplexity
        increase), `guard` what the manifest records for the file: rows, the measured value, its bound, the
        threshold and `passed`.
    """
    rows = report["samples"]
    if task.generates:
        upper = report["perplexity_ratio_upper_95"]
        drop = 100.0 * (upper - 1.0)
        return drop, {"rows": rows, "target_tokens": report.get("target_tokens"),
                      "perplexity_ratio": report["perplexity_ratio"], "perplexity_ratio_upper_95": upper,
                      "max_perplexity_ratio": 1 + budget.max_drop / 100,
                      "greedy_token_agreement": report.get("greedy_token_agreement"),
                      "passed": drop <= budget.max_drop}
    flips = report["flips"]
    drop = 100.0 * binomial_upper_bound(flips, rows)
    return drop, {"rows": rows, "flips": flips, "agreement": 1 - flips / rows,
                  "agreement_lower_95": 1 - drop / 100, "min_agreement": 1 - budget.max_drop / 100,
                  "passed": drop <= budget.max_drop}


def guard_record(task: Task, budget: Budget, rows: int, rows_source: str) -> dict[str, Any]:
    """The manifest's `guard`: the rule with its numbers, the rows judged, where they came from, and warnings."""
    return {"rule": rule_text(task, budget), "confidence": CONFIDENCE, "max_drop": budget.max_drop,
            "measure": budget.measure, "origin": budget.origin, "rows": rows, "rows_source": rows_source,
            "warnings": rows_warnings(task, rows, rows_source)}


def rows_warnings(task: Task, rows: int, rows_source: str) -> list[str]:
    """What the manifest and `info` say about rows that weaken the guard's numbers."""
    warnings = []
    if rows_source == "train":
        warnings.append("validated on the RUN's TRAINING rows (it has no eval split): the model has seen them, so "
                        "agreement is measured where PyTorch is most confident and overstates held-out agreement; "
                        "fine-tune with --eval-fraction or --eval-data")
    elif rows_source == "random":
        warnings.append("validated on random token sequences (no RUN data): the bounds are about parity on inputs "
                        "unlike real text; the task metrics are absent")
    if task.generates and rows < FEW_SEQUENCES:
        warnings.append(f"only {rows} sequences: a bootstrap over fewer than {FEW_SEQUENCES} is approximate "
                        "(it understates the spread); raise --validate-samples")
    return warnings


HIGHER_PRECISION = "{looser} or export with a higher precision (--quantize none)"
"""What to do when a reduced-precision file misses the budget (`{looser}`: `looser_budget`)."""
FP32_MISMATCH = ("the fp32 files disagree with their PyTorch original, which points at the model or its export, not "
                 "at precision: check that the model gives the same outputs on every load (no randomly initialized "
                 "or stochastic layers in eval mode), or {looser}")
"""What to do when even the fp32 files miss the budget."""


FUSED_FP32_MAX_LOGIT_DIFF = 1e-2
"""The largest max |Δlogit| against PyTorch a fused fp32 generator file may show. The fusion rewrites the attention,
not its precision, so a correct file differs only in the order of float sums, far below this; a wrong rotary table
or a different model is off by whole units, which the perplexity ratio's bound on random-token rows can miss."""


def fused_fp32_mismatch(variant: VariantResult, derived: str | None = None) -> str | None:
    """Hold a fused fp32 generator file to exactness as well as to the budget: None when its logits are within
    FUSED_FP32_MAX_LOGIT_DIFF of PyTorch's, else why it is not deployable (`derived`: the file then made from the
    plain export instead, if any). Its guard record keeps the budget's verdict as `within_budget` and fails."""
    diff, guard = variant.validation["max_abs_logit_diff"], variant.validation["guard"]
    guard["max_abs_logit_diff"], guard["max_fp32_logit_diff"] = diff, FUSED_FP32_MAX_LOGIT_DIFF
    if diff <= FUSED_FP32_MAX_LOGIT_DIFF:
        return None
    guard["within_budget"], guard["passed"] = guard["passed"], False
    made = f", and {derived} is made from it" if derived else ""
    return (f"{variant.name} is not deployable: its logits differ from PyTorch's by up to {diff:.3g}, over the "
            f"{FUSED_FP32_MAX_LOGIT_DIFF:g} a fused fp32 file (exact but for float rounding) may show, so its fusion "
            f"computes something else; the plain export (model.onnx) is the fp32 file instead{made}")


def looser_budget(drops: list[float]) -> str:
    """The --max-accuracy-drop that lets the closest of the attempts with these `drops` through."""
    return f"pass --max-accuracy-drop {_round_up(min(drops))} or more (the closest attempt's bound)"


def first_within_budget(result: ExportResult, names: list[str], source_name: str, fix: str = HIGHER_PRECISION) -> str:
    """The first of `names` whose drop meets the budget; AccuracyBudgetError (ending with `fix`, its `{looser}`
    filled in) when none does."""
    for name in names:
        if result.variants[name].drop <= result.budget.max_drop:
            return name
    tried = "; ".join(f"{n}: {result.variants[n].drop:.2f}" for n in names)
    raise AccuracyBudgetError(
        f"every candidate exceeded {_flag(result.budget)} ({result.budget.measure}) "
        f"against PyTorch on {source_name} ({tried}); no bundle written; "
        f"{fix.format(looser=looser_budget([result.variants[n].drop for n in names]))}",
        budget=result.budget.to_manifest(), attempts=[attempt_record(n, result.variants[n]) for n in names])


def climb(remedies: tuple[Remedy, ...], budget: Budget,
          attempt: Callable[[Remedy], tuple[dict[str, Any], VariantResult] | None], mode: str = "int8"
          ) -> tuple[Remedy, dict[str, Any], list[dict[str, Any]]]:
    """Try `remedies` in order until one meets `budget` (`mode`, int8 or int4, names them in the refusal).

    `attempt(remedy)` quantizes and validates, returning `(settings, variant)`, or None when the remedy would
    change nothing over the attempts before it (it is then skipped).

    Returns:
        The remedy that met the budget, its quantization settings, and every attempt
        `[{"remedy", "drop", "guard"}]`.
    """
    tried: list[dict[str, Any]] = []
    for remedy in remedies:
        outcome = attempt(remedy)
        if outcome is None:
            continue
        settings, variant = outcome
        tried.append(attempt_record(remedy.name, variant))
        if variant.drop <= budget.max_drop:
            return remedy, settings, tried
    refuse(mode, tried, budget)


def attempt_record(name: str, variant: VariantResult) -> dict[str, Any]:
    """One int8 attempt as `quantization.attempts` and the refusal record it: `{"remedy", "drop", "guard"}`."""
    return {"remedy": name, "drop": variant.drop, "guard": dict(variant.validation.get("guard") or {})}


def refuse(mode: str, tried: list[dict[str, Any]], budget: Budget) -> NoReturn:
    """AccuracyBudgetError naming every `mode` (int8 or int4) attempt, the closest one's bound first."""
    attempts_text = ", ".join(f"{t['remedy']}: {t['drop']:.2f}" for t in tried)
    instead = "--quantize int8 (or none)" if mode == "int4" else "--quantize none"
    closest = min(tried, key=lambda t: t["drop"])
    raise AccuracyBudgetError(
        f"{mode} reached {closest['drop']:.2f} at best ({budget.measure}) against PyTorch, over {_flag(budget)} "
        f"after every remedy ({attempts_text}); no bundle written; "
        f"{looser_budget([t['drop'] for t in tried])} or use {instead}",
        budget=budget.to_manifest(), attempts=tried)


def _round_up(value: float) -> str:
    return f"{int(value * 10 + 0.999999) / 10:g}"
