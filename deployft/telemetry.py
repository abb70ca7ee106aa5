"""OpenVINO's tools send usage statistics unless told not to; deployft tells them not to, unless the user chose.

NNCF (which `export --quantize int8-static --provider openvino` and the bench's OpenVINO int8 peer quantize with)
and OpenVINO's model converter report events to Google Analytics through `openvino_telemetry`, which treats a
machine without a consent file (`~/intel/openvino_telemetry`) as consenting when a tool asks it not to prompt, as
NNCF does. deployft runs offline and sends nothing, so before it imports those tools it makes a missing consent
file count as declined. A choice the user made (`opt_in_out --opt_in`, a consent file holding "1") is kept.
"""

from __future__ import annotations

__all__ = ["decline_openvino_telemetry"]


def decline_openvino_telemetry() -> None:
    """Make `openvino_telemetry` decline where the user gave no consent; a no-op where it is not installed. Call
    it before importing nncf, optimum.intel or openvino.tools (their telemetry is set up at import)."""
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    checker, result = opt_in_checker.OptInChecker, opt_in_checker.ConsentCheckResult
    if getattr(checker.check, "deployft_declines", False):
        return
    original = checker.check

    def check(self, *args, **kwargs):
        found = original(self, *args, **kwargs)
        return result.DECLINED if found == result.NO_FILE else found

    check.deployft_declines = True
    checker.check = check
