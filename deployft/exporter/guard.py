"""The accuracy guard: how much worse than PyTorch a file is, the budget it must meet, and the int8 remedy ladder.

The drop is counted in the task's unit (`Task.budget_unit`): accuracy points lost on the RUN's eval rows for a
classifier (top-1 disagreement points when there are no labels), perplexity increase in percent for a
generator. When int8 exceeds the budget, the task's remedies (`Task.int8_remedies`) are tried in order; the
first that meets it is kept and every attempt is recorded. When none does: AccuracyBudgetError, and no bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import AccuracyBudgetError
from ..tasks import Remedy, Task
from .config import ExportConfig
from .state import Budget, ExportResult, VariantResult


def budget_for(config: ExportConfig, task: Task) -> Budget:
    """`--max-accuracy-drop`, or the task's default, in the task's unit."""
    limit = config.max_accuracy_drop if config.max_accuracy_drop is not None else task.default_budget
    return Budget(float(limit), task.budget_unit)


def drop(task: Task, report: dict[str, Any]) -> tuple[float, str]:
    """How much worse than PyTorch a validated file is, and the unit (negative: better)."""
    if task.validation_metric == "perplexity":
        return report["perplexity_increase_pct"], task.budget_unit
    if report.get("accuracy") is not None:
        return 100.0 * (report["accuracy_pytorch"] - report["accuracy"]), task.budget_unit
    return 100.0 * (1.0 - report["top1_agreement"]), "top-1 disagreement points (no labels)"


def first_within_budget(result: ExportResult, names: list[str], source_name: str) -> str:
    """The first of `names` whose drop meets the budget; AccuracyBudgetError when none does."""
    for name in names:
        if result.variants[name].drop <= result.budget.max_drop:
            return name
    tried = "; ".join(f"{n}: {result.variants[n].drop:.2f}" for n in names)
    raise AccuracyBudgetError(
        f"every candidate lost more than --max-accuracy-drop {result.budget.max_drop} ({result.budget.measure}) "
        f"against PyTorch on {source_name} ({tried}); no bundle written; raise --max-accuracy-drop or export "
        "with a higher precision (--quantize none)",
        budget=result.budget.to_manifest(), attempts=[{"remedy": n, "drop": result.variants[n].drop} for n in names])


def climb(remedies: tuple[Remedy, ...], budget: Budget,
          attempt: Callable[[Remedy], tuple[dict[str, Any], VariantResult] | None]
          ) -> tuple[Remedy, dict[str, Any], list[dict[str, Any]]]:
    """Try `remedies` in order until one meets `budget`.

    `attempt(remedy)` quantizes and validates, returning `(settings, variant)`, or None when the remedy would
    change nothing over the attempts before it (it is then skipped).

    Returns:
        The remedy that met the budget, its quantization settings, and every attempt `[{"remedy", "drop"}]`.
    """
    tried: list[dict[str, Any]] = []
    for remedy in remedies:
        outcome = attempt(remedy)
        if outcome is None:
            continue
        settings, variant = outcome
        tried.append({"remedy": remedy.name, "drop": variant.drop})
        if variant.drop <= budget.max_drop:
            return remedy, settings, tried
    _refuse_int8(tried, budget)


def _refuse_int8(tried: list[dict[str, Any]], budget: Budget) -> NoReturn:
    attempts_text = ", ".join(f"{t['remedy']}: {t['drop']:.2f}" for t in tried)
    raise AccuracyBudgetError(
        f"int8 lost {tried[-1]['drop']:.2f} {budget.measure} against PyTorch, over --max-accuracy-drop "
        f"{budget.max_drop} after every remedy ({attempts_text}); no bundle written; raise --max-accuracy-drop "
        "or use --quantize none", budget=budget.to_manifest(), attempts=tried)
