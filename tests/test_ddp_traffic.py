"""The DDP traffic measurement: each stage all-reduces exactly the parameters it trains (issue 20, E3)."""
from __future__ import annotations

from fasterrcnn_edu.lab.ddp_traffic import measure_ddp_traffic


def test_each_stage_all_reduces_only_what_it_trains():
    report = measure_ddp_traffic("book", "alternating")
    stages = {s["stage"]: s for s in report["per_stage"]}
    assert list(stages) == ["1-rpn", "2-detector", "3-rpn-frozen", "4-detector-frozen"]
    for stage in stages.values():
        assert stage["bytes"] == stage["trained_bytes"] > 0
    # Step 1 trains the shared convs and the RPN, not the detector's fc layers; step 3 the RPN head alone.
    assert stages["1-rpn"]["bytes"] < stages["2-detector"]["bytes"]
    assert stages["3-rpn-frozen"]["bytes"] < stages["1-rpn"]["bytes"]
    assert stages["4-detector-frozen"]["bytes"] < stages["2-detector"]["bytes"]
