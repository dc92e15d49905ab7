"""make bench's arithmetic and report: percentiles, workload mixes, figures, the table and chart."""

import json
from collections import Counter

import pytest

from celery_kit import benchreport, brokerbench


def test_percentiles_are_nearest_rank_in_milliseconds():
    values = [index / 1000 for index in range(1, 101)]  # 1 ms .. 100 ms
    assert brokerbench.percentiles(values) == {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0}
    assert brokerbench.percentiles([0.002]) == {"p50_ms": 2.0, "p95_ms": 2.0, "p99_ms": 2.0}
    assert brokerbench.percentiles([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_the_mixed_workload_holds_urgent_and_countdown_tasks_in_its_shares():
    submissions = brokerbench.plan("mixed", 2000)
    kinds = Counter((countdown > 0, priority == 9) for _, countdown, priority in submissions)
    assert len(submissions) == 2000
    assert 0.15 < kinds[(False, True)] / 2000 < 0.25
    assert 0.06 < kinds[(True, False)] / 2000 < 0.14
    assert brokerbench.plan("mixed", 50) == brokerbench.plan("mixed", 50), "the same mix on every run"
    assert set(brokerbench.plan("noop", 10)) == {(0.0, 0, None)}


def test_figures_count_what_did_not_finish_and_measure_from_the_due_time():
    run = brokerbench.Run()
    run.record("a", 100.0, 0)
    run.record("b", 100.0, 2)  # a countdown task: due at 102
    run.record("c", 100.0, 0)
    finished = {"a": (100.010, 100.020), "b": (102.005, 102.015)}
    figures = brokerbench.figures(run, finished)
    assert figures["accepted"] == 3
    assert figures["not_finished"] == 1
    assert figures["submit_to_start"]["p99_ms"] == pytest.approx(10.0)
    assert figures["submit_to_result"]["p50_ms"] == pytest.approx(15.0)


def _run(workload, guarded, publish, end_to_end, p50):
    latency = {"p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3}
    return {
        "workload": workload,
        "task": "celery_kit.bench_guarded" if guarded else "celery_kit.bench",
        "throughput": {"publish_per_second": publish, "end_to_end_per_second": end_to_end, "not_finished": 0},
        "latency": {"submit_to_start": latency, "submit_to_result": latency, "not_finished": 0},
    }


REPORT = {
    "environment": "local",
    "hosts": {"rabbitmq": 1, "redis": 1, "workers": 2, "api": 1},
    "configs": {
        "redis": {
            "raw": {"publish_per_second": 4000.0, "consume_per_second": 3000.0},
            "celery": [_run("noop", True, 1000.0, 300.0, 4.0), _run("noop", False, 1100.0, 400.0, 3.0)],
        },
        "quorum": {
            "raw": {"publish_per_second": 1500.0, "consume_per_second": 2000.0},
            "celery": [_run("noop", True, 500.0, 240.0, 8.0), _run("noop", False, 520.0, 330.0, 6.0)],
        },
    },
}


def test_the_headline_ratios_come_from_the_guarded_noop_runs():
    assert benchreport.headline(REPORT) == {
        "quorum_over_redis_end_to_end": 0.8,
        "redis_celery_over_raw_publish": 0.25,
        "redis_celery_end_to_end_over_raw_consume": 0.1,
        "quorum_celery_over_raw_publish": 0.33,
        "quorum_celery_end_to_end_over_raw_consume": 0.12,
    }


def test_the_table_names_every_configuration_and_workload(tmp_path):
    text = benchreport.table(REPORT)
    assert "RabbitMQ quorum (kit default)" in text
    assert "noop (no guard)" in text
    assert "raw kombu" in text
    assert "quorum_over_redis_end_to_end: 0.8" in text


def test_the_report_draws_a_png_and_refuses_an_unreadable_file(tmp_path, capsys):
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(REPORT))
    chart = tmp_path / "bench.png"
    assert benchreport.main([str(source), "--chart", str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    source.write_text("{not json")
    assert benchreport.main([str(source)]) == 2
    assert "cannot read" in capsys.readouterr().err
