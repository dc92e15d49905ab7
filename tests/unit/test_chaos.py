"""make chaos's counting, verdicts, table and results file, from made-up load records."""

import json

from celery_kit import chaos, chaosreport

T0 = 1_000_000.0


def _records(accepted_every: float, seconds: int, refused_between: tuple[float, float] | None = None) -> list[dict]:
    """A submission every accepted_every s; those sent inside refused_between answered 503."""
    records = []
    for index in range(round(seconds / accepted_every)):
        moment = T0 + index * accepted_every
        refused = refused_between and refused_between[0] <= moment - T0 < refused_between[1]
        record = {"sent": moment, "status": 503 if refused else 202, "wait": 0.05}
        if not refused:
            record["id"] = f"id-{index}"
        records.append(record)
    return records


def _count(records, succeeded, *, window=(T0 + 10, T0 + 20), emails=None, dead=0, skipped=0):
    return chaos.count_fault(
        records, succeeded=succeeded, window=window, dead_lettered=dead, emails=emails or {}, skipped=skipped
    )


def test_a_fault_that_costs_nothing_counts_every_submission_accepted_and_recovers_at_once():
    records = _records(0.1, 30)
    succeeded = {record["id"]: record["sent"] + 0.2 for record in records}
    counts = _count(records, succeeded)
    assert counts["accepted"] == len(records) == 300
    assert (counts["refused"], counts["lost"], counts["dead_lettered"], counts["emails_sent_twice"]) == (0, 0, 0, 0)
    assert counts["recovery_s"] == 0
    assert counts["baseline_per_s"] == 10
    assert sum(counts["timeline"]["accepted"]) == 300
    assert sum(counts["timeline"]["completed"]) == 300


def test_refusals_lost_tasks_and_the_longest_2xx_wait_are_counted():
    records = _records(0.1, 30, refused_between=(10, 20))
    records[5]["wait"] = 4.25
    accepted = [record for record in records if "id" in record]
    succeeded = {record["id"]: record["sent"] + 0.2 for record in accepted[3:]}  # three never succeeded
    counts = _count(records, succeeded)
    assert counts["refused"] == 100
    assert counts["refusals"] == {"503": 100}
    assert counts["accepted"] == 200
    assert counts["lost"] == 3
    assert counts["longest_wait_2xx_s"] == 4.25
    assert sum(counts["timeline"]["refused"]) == 100


def test_recovery_is_from_the_fault_end_until_completions_run_at_the_submission_rate():
    records = _records(0.1, 40)
    # Nothing completes from 10 s on; the backlog runs from 27 s on.
    succeeded = {
        record["id"]: record["sent"] + 0.2 if record["sent"] < T0 + 10 else max(record["sent"], T0 + 27) + 0.3
        for record in records
    }
    counts = _count(records, succeeded)
    assert counts["recovery_s"] == 7
    assert counts["fault_window_s"] == [10.0, 20.0]


def test_recovery_is_none_when_completions_never_come_back():
    records = _records(0.1, 30)
    succeeded = {record["id"]: record["sent"] for record in records if record["sent"] < T0 + 10}
    counts = _count(records, succeeded)
    assert counts["recovery_s"] is None
    assert counts["lost"] == 200


def test_emails_sent_twice_count_only_this_runs_ids_and_only_the_extra_copies():
    records = _records(0.5, 10)
    succeeded = {record["id"]: record["sent"] for record in records}
    emails = {"id-0": 1, "id-2": 3, "someone-else": 5}
    assert _count(records, succeeded, emails=emails, skipped=4)["emails_sent_twice"] == 2
    assert _count(records, succeeded, emails=emails, skipped=4)["redelivered_skipped"] == 4


def _result(key: str, **counts) -> dict:
    base = {"accepted": 100, "refused": 0, "lost": 0, "dead_lettered": 0, "emails_sent_twice": 0, "refusals": {}}
    return {"fault": key, "title": chaos.BY_KEY[key].title, "applicable": True, "counts": {**base, **counts}}


def test_verdicts_tell_passed_failed_and_not_applicable():
    assert chaos.verdict(_result("worker-sigkill")) == ("passed", "")
    assert chaos.verdict(_result("worker-sigkill", lost=2))[0] == "failed"
    assert chaos.verdict(_result("broker-outage", refused=40, refusals={"503": 40}))[0] == "failed"
    outage = chaos.verdict(_result("broker-outage", refused=40, lost=1))
    assert outage[0] == "failed" and "1 accepted tasks lost" in outage[1]
    assert chaos.verdict(_result("network-cut", refused=3))[0] == "failed"
    assert chaos.verdict(_result("memory-alarm", refused=3))[0] == "failed"
    # The only api host restarting: no connection while it boots is not a refusal; any answer but 2xx is.
    assert chaos.verdict(_result("api-restart-in-outage", refused=6, refusals={"0": 6}))[0] == "passed"
    assert chaos.verdict(_result("api-restart-in-outage", refused=7, refusals={"0": 6, "503": 1}))[0] == "failed"
    assert chaos.verdict(_result("network-cut", refused=2, refusals={"0": 2}))[0] == "failed"
    assert chaos.verdict(_result("worker-sigkill", accepted=0))[0] == "failed"
    missing = {"fault": "redis-primary-lost", "title": "x", "applicable": False, "reason": "one Redis host"}
    assert chaos.verdict(missing) == ("not applicable", "one Redis host")


def _full(key: str) -> dict:
    records = _records(0.1, 30)
    counts = _count(records, {record["id"]: record["sent"] + 0.2 for record in records})
    return {"fault": key, "title": chaos.BY_KEY[key].title, "seconds": 30, "applicable": True, "counts": counts}


def test_the_results_file_keeps_one_entry_per_fault_in_suite_order():
    order = [fault.key for fault in chaos.FAULTS]
    results = chaosreport.record({"deployment": "chaos", "faults": []}, _full("network-cut"), order)
    results = chaosreport.record(results, _full("worker-sigkill"), order)
    results = chaosreport.record(results, {**_full("network-cut"), "seconds": 15}, order)
    assert [entry["fault"] for entry in results["faults"]] == ["worker-sigkill", "network-cut"]
    assert results["faults"][1]["seconds"] == 15
    assert json.loads(json.dumps(results)) == results


def test_the_table_has_a_row_per_fault_and_says_not_applicable_instead_of_counts():
    missing = {
        "fault": "redis-primary-lost",
        "title": "Redis primary lost (Sentinel)",
        "seconds": 30,
        "applicable": False,
        "reason": "the deployment has 1 Redis host(s)",
    }
    text = chaosreport.table({"faults": [_full("broker-outage"), missing]})
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["fault", "rate/s", "accepted", "refused"]
    outage = next(line for line in lines if line.startswith("every RabbitMQ node stopped for 30 s"))
    assert outage.split()[-11:] == ["10.0", "300", "0", "0", "0", "0", "0", "0.05", "s", "0", "s"]
    absent = next(line for line in lines if line.startswith("Redis primary lost"))
    assert "not applicable: the deployment has 1 Redis host(s)" in absent
    assert "passed" not in text


def test_the_chart_draws_a_png_per_applicable_fault(tmp_path):
    picture = tmp_path / "chaos.png"
    chaosreport.chart({"deployment": "chaos", "hosts": {"rabbitmq": 3}, "faults": [_full("broker-outage")]}, picture)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
