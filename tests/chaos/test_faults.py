"""make chaos's fault suite: one fault at a time under a steady load, counted.

For each fault of celery_kit.chaos.FAULTS, in order: a steady load of quick,
slow, countdown, email and priority tasks through the API, the fault, the
load's end and the wait until everything accepted has run; then the counts
(accepted, refused, lost, dead-lettered, emails sent twice, redelivered
copies skipped, longest wait for a 2xx, recovery). Each fault asserts the
guarantee: nothing lost, dead-lettered, refused or emailed twice. A fault
the deployment cannot have (Redis primary loss on one Redis host) is skipped
as not applicable (reported so, never as passed). The last test prints the table and
draws the timelines (.cache/chaos-faults-<deployment>.json and .png).

KIT_CHAOS_SHORT=1 runs the shorter timings of make test's subset.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from celery_kit import chaos, chaosreport
from celery_kit.local import ROOT, Deployment, deployment

KIT = Deployment(deployment("chaos"))
RESULTS = ROOT / ".cache" / f"chaos-faults-{KIT.name}.json"
TIMING = chaos.SHORT if os.environ.get("KIT_CHAOS_SHORT") else chaos.FULL
ORDER = [fault.key for fault in chaos.FAULTS]


@pytest.fixture(scope="module", autouse=True)
def results_file():
    """A fresh results file per run: the deployment, its hosts, when it started."""
    RESULTS.parent.mkdir(exist_ok=True)
    header = {"deployment": KIT.name, "hosts": chaos.deployment_hosts(KIT), "started": time.time(), "faults": []}
    RESULTS.write_text(json.dumps(header, indent=1))


def _save(result: dict) -> None:
    RESULTS.write_text(json.dumps(chaosreport.record(json.loads(RESULTS.read_text()), result, ORDER), indent=1))
    print("FAULT COUNTS " + json.dumps(chaos.summary(result)))


@pytest.mark.parametrize("fault", chaos.FAULTS, ids=ORDER)
def test_under_fault_nothing_is_lost_refused_dead_lettered_or_sent_twice(fault):
    result = chaos.run_fault(KIT, fault, TIMING)
    _save(result)
    outcome, message = chaos.verdict(result)
    if outcome == "not applicable":
        pytest.skip(f"not applicable: {message}")
    assert outcome == "passed", message


def test_the_report_prints_the_table_and_draws_the_timelines():
    results = json.loads(RESULTS.read_text())
    assert results["faults"], "no fault ran"
    print(chaosreport.table(results))
    picture = RESULTS.with_suffix(".png")
    chaosreport.chart(results, picture)
    assert picture.stat().st_size > 10_000
    print(f"picture: {picture}")
