"""OpenVINO's telemetry declines in deployft's processes unless the user consented (deployft/telemetry.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("openvino_telemetry")

_PROBE = """
import json, sys
if sys.argv[1] == "declined":
    from deployft.telemetry import decline_openvino_telemetry
    decline_openvino_telemetry()
    decline_openvino_telemetry()  # twice: one wrapper
from openvino_telemetry import Telemetry
# as NNCF sets it up (nncf/telemetry/wrapper.py): no opt-in dialog, so a missing consent file counts as consent
t = Telemetry(app_name="probe", app_version="0", tid="G-PROBE", backend="ga4", enable_opt_in_dialog=False,
              disable_in_ci=True)
print(json.dumps(t.consent))
"""


def _consent(home, how: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", _PROBE, how], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_consent_file_means_consent_to_openvino_and_declined_under_deployft(tmp_path):
    assert _consent(tmp_path, "as-is") is True  # what the tools do on their own: the reason for the module
    assert _consent(tmp_path, "declined") is False


def test_a_user_who_opted_in_keeps_their_choice(tmp_path):
    consent = tmp_path / "intel" / "openvino_telemetry"
    consent.parent.mkdir()
    consent.write_text("1")
    assert _consent(tmp_path, "declined") is True
    consent.write_text("0")
    assert _consent(tmp_path, "declined") is False
