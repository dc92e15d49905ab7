"""celery-kit bench-report FILE [--chart PNG]: make bench's table and chart.

Reads the figures playbooks/bench.yml wrote (.cache/bench-<env>.json),
prints per configuration and workload the publish rate, the end-to-end rate
and the latencies, the raw kombu ceiling, and the headline ratios: the
reliable RabbitMQ configuration's end-to-end rate over the Redis broker's,
and Celery's publish rate over the raw ceiling. With --chart, draws them
(matplotlib, on the controller) into a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAMES = {
    "redis": "Redis broker",
    "quorum": "RabbitMQ quorum (kit default)",
    "classic": "RabbitMQ classic",
}
COLOURS = {"redis": "#c0392b", "quorum": "#e67e22", "classic": "#7f8c8d"}


def ordered(report: dict[str, Any]) -> list[str]:
    """The configurations in the order they ran."""
    return [config for config in report.get("order", []) if config in report["configs"]] or list(report["configs"])


def label(run: dict[str, Any]) -> str:
    guarded = run["task"].endswith("_guarded")
    return run["workload"] + ("" if guarded else " (no guard)")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The ratios the README leads with, from the guarded no-op workload."""
    configs = report["configs"]

    def noop(config: str) -> dict[str, Any] | None:
        runs = configs.get(config, {}).get("celery", [])
        return next((run for run in runs if label(run) == "noop"), None)

    figures: dict[str, Any] = {}
    redis_run, quorum_run = noop("redis"), noop("quorum")
    if redis_run and quorum_run:
        figures["quorum_over_redis_end_to_end"] = ratio(
            quorum_run["throughput"]["end_to_end_per_second"], redis_run["throughput"]["end_to_end_per_second"]
        )
    for config in ordered(report):
        data, run = configs[config], noop(config)
        if run:
            figures[f"{config}_celery_over_raw_publish"] = ratio(
                run["throughput"]["publish_per_second"], data["raw"]["publish_per_second"]
            )
            figures[f"{config}_celery_end_to_end_over_raw_consume"] = ratio(
                run["throughput"]["end_to_end_per_second"], data["raw"]["consume_per_second"]
            )
    return figures


def table(report: dict[str, Any]) -> str:
    header = (
        f"{'configuration':<30} {'workload':<18} {'publish/s':>9} {'tasks/s':>8}"
        f" {'start p50/p95/p99 ms':>22} {'result p50/p95/p99 ms':>23} {'lost':>4}"
    )
    lines = [header, "-" * len(header)]
    for config in ordered(report):
        data = report["configs"][config]
        for run in data["celery"]:
            throughput, latency = run["throughput"], run["latency"]
            start = "/".join(_ms(latency["submit_to_start"][key]) for key in ("p50_ms", "p95_ms", "p99_ms"))
            result = "/".join(_ms(latency["submit_to_result"][key]) for key in ("p50_ms", "p95_ms", "p99_ms"))
            lost = throughput["not_finished"] + latency["not_finished"]
            lines.append(
                f"{NAMES.get(config, config):<30} {label(run):<18} {throughput['publish_per_second']:>9.0f}"
                f" {throughput['end_to_end_per_second']:>8.0f} {start:>22} {result:>23} {lost:>4}"
            )
        raw = data["raw"]
        lines.append(
            f"{NAMES.get(config, config):<30} {'raw kombu':<18} {raw['publish_per_second']:>9.0f}"
            f" {raw['consume_per_second']:>8.0f} {'(consumed/s, no Celery)':>22}"
        )
    lines.append("")
    for name, value in headline(report).items():
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only the controller draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    configs = ordered(report)
    labels = [label(run) for run in report["configs"][configs[0]]["celery"]]
    figure, (rates, publish, latency) = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / len(configs)
    for index, config in enumerate(configs):
        runs = {label(run): run for run in report["configs"][config]["celery"]}
        offsets = [position + index * width for position in range(len(labels))]
        values = [runs[name]["throughput"]["end_to_end_per_second"] if name in runs else 0 for name in labels]
        rates.bar(offsets, values, width, label=NAMES.get(config, config), color=COLOURS.get(config))
        noop = runs.get("noop")
        raw = report["configs"][config]["raw"]
        publish.bar(
            [index - 0.2, index + 0.2],
            [noop["throughput"]["publish_per_second"] if noop else 0, raw["publish_per_second"]],
            0.38,
            color=[COLOURS.get(config), "#34495e"],
        )
        if noop:
            points = [noop["latency"]["submit_to_result"][key] or 0 for key in ("p50_ms", "p95_ms", "p99_ms")]
            latency.plot(["p50", "p95", "p99"], points, marker="o", color=COLOURS.get(config), label=NAMES[config])
    rates.set_xticks([position + width * (len(configs) - 1) / 2 for position in range(len(labels))], labels)
    rates.set_title("End-to-end tasks/s through the workers")
    rates.legend(fontsize=8)
    publish.set_xticks(
        [index + offset for index in range(len(configs)) for offset in (-0.2, 0.2)],
        [text for config in configs for text in (f"{config}\nCelery", f"{config}\nraw kombu")],
        fontsize=8,
    )
    publish.set_title("Publish rate, messages/s (noop)")
    latency.set_title("Submit to result, ms (noop, paced)")
    latency.legend(fontsize=8)
    hosts = report.get("hosts", {})
    figure.suptitle(
        f"make bench on {report.get('environment', '?')}: "
        + ", ".join(f"{count} {group}" for group, count in hosts.items())
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celery-kit bench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--chart", type=Path, help="draw the chart into this PNG")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.file.read_text())
    except (OSError, ValueError) as error:
        print(f"celery-kit bench-report: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    print(table(report))
    if args.chart:
        chart(report, args.chart)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
