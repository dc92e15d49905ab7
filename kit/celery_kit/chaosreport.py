"""celery-kit chaos-report FILE [--chart PNG]: make chaos's fault table and picture.

Reads the results the fault suite wrote (.cache/chaos-faults-<deployment>.json:
one entry per fault, celery_kit.chaos.run_fault's result), prints one row
per fault (accepted, refused, lost, dead-lettered, emails sent twice,
redelivered copies the guard skipped, longest wait for a 2xx, recovery) and,
with --chart, draws per fault a timeline of submissions accepted and refused
and completions per second, with the fault window shaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = [
    ("fault", 50),
    ("rate/s", 6),
    ("accepted", 8),
    ("refused", 7),
    ("lost", 4),
    ("dead-l.", 7),
    ("twice", 5),
    ("skipped", 7),
    ("max 2xx wait", 12),
    ("recovery", 8),
]
COLOURS = {"accepted": "#27ae60", "refused": "#c0392b", "completed": "#2980b9", "fault": "#f39c12"}


def record(results: dict[str, Any], result: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """The results with one fault's result added (replacing an older one), faults in suite order."""
    faults = {entry["fault"]: entry for entry in results.get("faults", [])}
    faults[result["fault"]] = result
    ranked = sorted(faults.values(), key=lambda entry: order.index(entry["fault"]) if entry["fault"] in order else 99)
    return {**results, "faults": ranked}


def title(result: dict[str, Any]) -> str:
    seconds = result.get("seconds") or 0
    return result["title"] + (f" for {seconds:g} s" if seconds else "")


def row(result: dict[str, Any]) -> list[str]:
    if not result.get("applicable", True):
        return [title(result), "not applicable: " + result.get("reason", "")]
    counts = result["counts"]
    recovery = counts["recovery_s"]
    return [
        title(result),
        f"{counts['baseline_per_s']:.1f}",
        str(counts["accepted"]),
        str(counts["refused"]),
        str(counts["lost"]),
        str(counts["dead_lettered"]),
        str(counts["emails_sent_twice"]),
        str(counts["redelivered_skipped"]),
        f"{counts['longest_wait_2xx_s']:.2f} s",
        "never" if recovery is None else f"{recovery} s",
    ]


def table(results: dict[str, Any]) -> str:
    """One line per fault; a fault that does not apply says so instead of counts."""
    widths = [width for _, width in COLUMNS]
    header = " ".join(
        f"{name:<{width}}" if index == 0 else f"{name:>{width}}" for index, (name, width) in enumerate(COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for result in results.get("faults", []):
        cells = row(result)
        if len(cells) == 2:
            lines.append(f"{cells[0]:<{widths[0]}} {cells[1]}")
        else:
            lines.append(
                " ".join(
                    f"{cell:<{widths[0]}}" if index == 0 else f"{cell:>{widths[index]}}"
                    for index, cell in enumerate(cells)
                )
            )
    lines.append("")
    lines.append(
        "rate/s: submissions accepted a second before the fault; lost: accepted, never succeeded;"
        " dead-l.: dead-lettered; twice: welcome emails sent twice;"
        " skipped: redelivered copies the at-most-once guard skipped; recovery: fault end until"
        " completions are back at 80% of the submission rate (that second and the 5 s it starts)"
    )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Per applicable fault, a timeline: accepted and refused submissions and completions per second."""
    import matplotlib  # noqa: PLC0415 (only the controller draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    faults = [result for result in results.get("faults", []) if result.get("applicable", True)]
    if not faults:
        raise ValueError("no fault ran: nothing to draw")
    columns = 2
    rows = (len(faults) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(14, 2.9 * rows), squeeze=False)
    for axis, result in zip([axis for line in axes for axis in line], faults, strict=False):
        counts = result["counts"]
        timeline = counts["timeline"]
        seconds = list(range(len(timeline["accepted"])))
        start, end = counts["fault_window_s"]
        axis.axvspan(start, max(end, start + 0.5), color=COLOURS["fault"], alpha=0.3, label="fault")
        axis.plot(seconds, timeline["accepted"], color=COLOURS["accepted"], label="accepted/s", linewidth=1.2)
        axis.plot(seconds, timeline["refused"], color=COLOURS["refused"], label="refused/s", linewidth=1.2)
        axis.plot(seconds, timeline["completed"], color=COLOURS["completed"], label="completed/s", linewidth=1.2)
        axis.set_title(f"{title(result)}: lost {counts['lost']}, refused {counts['refused']}", fontsize=9)
        axis.set_xlabel("seconds since the load started", fontsize=8)
        axis.tick_params(labelsize=8)
    for axis in [axis for line in axes for axis in line][len(faults) :]:
        axis.set_visible(False)
    axes[0][0].legend(fontsize=7, loc="upper right")
    figure.suptitle(f"make chaos on deployment {results.get('deployment', '?')}: " + hosts(results))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def hosts(results: dict[str, Any]) -> str:
    return ", ".join(f"{count} {group}" for group, count in results.get("hosts", {}).items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celery-kit chaos-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--chart", type=Path, help="draw the timelines into this PNG")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.file.read_text())
    except (OSError, ValueError) as error:
        print(f"celery-kit chaos-report: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    print(table(results))
    if args.chart:
        chart(results, args.chart)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
