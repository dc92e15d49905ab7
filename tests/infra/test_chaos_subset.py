"""make test's counted subset of make chaos: the Redis primary loss and a
worker's pool child SIGKILLed mid-task, each under a steady load with
celery_kit.chaos's shorter timings (SHORT), counted and asserted as make
chaos asserts them (tests/chaos/test_faults.py).

The whole broker down is not in the subset: tests/infra/test_outbox.py
counts that fault in the same scenario, with the api host restarted during
it on top (the subset's copy cost 219 s of make test for nothing more).
The Redis primary loss needs Sentinel (3 Redis hosts): on one Redis host it
is skipped as not applicable. The faults drive the deployment's containers
(docker), so the subset runs on a local deployment only.
"""

from __future__ import annotations

import json

import pytest

from celery_kit import chaos
from celery_kit.local import Deployment, deployment

KIT = Deployment(deployment("molecule"))
SUBSET = ["redis-primary-lost", "worker-sigkill"]


@pytest.mark.parametrize("key", SUBSET)
def test_under_fault_nothing_is_lost_refused_dead_lettered_or_sent_twice(key):
    if not KIT.containers("api"):
        pytest.skip(f"the faults drive local containers; there is no ck-{KIT.name}-api-1 (ENV=aws?)")
    result = chaos.run_fault(KIT, chaos.BY_KEY[key], chaos.SHORT)
    print("FAULT COUNTS " + json.dumps(chaos.summary(result)))
    outcome, message = chaos.verdict(result)
    if outcome == "not applicable":
        pytest.skip(f"not applicable: {message}")
    assert outcome == "passed", message
