"""`detector demo --containment`: a sev1 in the demo makes the worker call the demo's flag
endpoint for real (signed, not a dry run), the demo prints the call, and the alert's
resolution calls the undo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import files_under, start_demo

pytestmark = pytest.mark.integration


def test_a_demo_sev1_calls_the_flag_endpoint_and_its_resolution_the_undo(tmp_path: Path
                                                                        ) -> None:
    tmp, out = tmp_path / "tmp", tmp_path / "demo.out"
    tmp.mkdir()
    # A light traffic rate so a loaded machine still streams past the first sev1's
    # resolution (event time 01:07) well before the demo's end.
    p = start_demo(tmp, out, "--duration", "60", "--rate", "5", "--containment")
    assert p.wait(180) == 0, out.read_text()
    text = out.read_text()
    path = "/tenants/t02/apps/payments-agent/flags/safe_mode"
    fired = re.search(r"sev1   firing    unauthorized_tool_call  t02/payments-agent/production",
                      text)
    resolved = re.search(r"sev1   resolved  unauthorized_tool_call  t02/payments-agent", text)
    call = re.search(rf"contain  PUT {path}  signed: 204\n +(\{{.*\}})", text)
    undo = re.search(rf"undo     PUT {path}  signed: 204\n +(\{{.*\}})", text)
    assert fired and resolved and call and undo, text
    assert '"enabled":true' in call[1] and '"enabled":false' in undo[1]
    alert_id = re.search(r'"alert":"(a-[0-9a-f]+)"', call[1])
    assert alert_id and alert_id[0] in undo[1]
    # Printed in event-time order: the alert, its call; the resolution, its undo.
    assert fired.start() < call.start() < resolved.start() < undo.start()
    assert "signature refused" not in text
    summary = re.search(r"containment: the flag endpoint http://127\.0\.0\.1:\d+ got (\d+) "
                        r"call\(s\) and (\d+) undo\(s\), (\d+) signed", text)
    assert summary and int(summary[3]) == int(summary[1]) + int(summary[2]), text
    assert files_under(tmp) == []
