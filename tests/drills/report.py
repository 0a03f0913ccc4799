"""The drill's last checks (the soak's, over every task of the run) and its report."""

import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.drills.fleet import TIMINGS, Fleet
from tests.drills.throughput import Stage
from tests.soak.run import check

BEGIN = "<!-- drill results: written by tests/drills/scale_out.py --write-docs -->"
END = "<!-- end of drill results -->"


def final_checks(fleet: Fleet) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The soak's checks, with the ledger's times of skewed workers put back on time (a
    handler writes its ledger line with its host's clock; the rows have the database's)."""
    from taskqueue.models import Task, TaskAttempt

    offsets = {}
    for task_id, number, worker in TaskAttempt.objects.values_list("task_id", "number",
                                                                     "worker_name"):  # fmt: skip
        if worker in fleet.skews:
            offsets[(task_id, number)] = fleet.skews[worker]
    lines = []
    for line in fleet.ledger.read_text().splitlines():
        event, task_id, attempt, at, pid = line.split()
        at = float(at) - offsets.get((int(task_id), int(attempt)), 0)
        lines.append(f"{event} {task_id} {attempt} {at:.6f} {pid}")
    corrected = fleet.ledger.with_name("ledger-on-time")
    corrected.write_text("\n".join(lines) + "\n")
    problems, figures = check(corrected)
    # Only the soak's types write the ledger: the POSTs' log_statistics tasks have no runs.
    unledgered = set(
        Task.objects.exclude(task_type__startswith="soak_").values_list("pk", flat=True)
    )
    name = "completed without a handler run"
    kept = [p for p in problems.get(name, []) if int(p.split()[0][1:]) not in unledgered]
    problems.pop(name, None)
    if kept:
        problems[name] = kept
    figures["not ledgered (log_statistics)"] = len(unledgered)
    return problems, figures


def _table(rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(str(cell) for cell in rows[0]) + " |"]
    out.append("|" + "---|" * len(rows[0]))
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows[1:]]
    return out


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.1f} s" for value in values) or "-"


def _rate(stage: Stage | None) -> str:
    return f"**{stage.rate:.0f}** ({stage.per_worker:.1f})" if stage else "-"


def _p50(stage: Stage | None) -> str:
    return f"{stage.attempt_p50_ms:.1f}" if stage else "-"


def throughput_section(stages: list[Stage], rtt: dict[str, float]) -> list[str]:
    by_count: dict[int, dict[str, Stage]] = defaultdict(dict)
    for stage in stages:
        by_count[stage.workers][stage.where] = stage
    rows = [["workers", "3 hosts, 5 ± 2 ms each way: tasks/s (per worker)",
             "loopback: tasks/s (per worker)", "hosts / loopback",
             "attempt p50, lease to end (hosts / loopback)", "tasks (hosts + loopback)",
             "not exactly once"]]  # fmt: skip
    for count, pair in sorted(by_count.items()):
        hosts, loop = pair.get("hosts"), pair.get("loopback")
        rows.append([count, _rate(hosts), _rate(loop),
                     f"{hosts.rate / loop.rate:.2f}" if hosts and loop and loop.rate else "-",
                     f"{_p50(hosts)} / {_p50(loop)} ms",
                     f"{hosts.tasks if hosts else 0:,} + {loop.tasks if loop else 0:,}",
                     sum(stage.not_exactly_once for stage in (hosts, loop) if stage)])  # fmt: skip
    probes = ", ".join(f"{where} {ms:.1f} ms" for where, ms in rtt.items())
    return [
        "### 1. Throughput on three hosts, and on loopback",
        "",
        "Workers spread over h1-h3 (1, then 1 per host, then 2 per host), against the same",
        "count on loopback in the same run. Rates are the steady state (10th to 90th",
        f"percentile of the tasks' ends). Redis PING round trip, p50: {probes}.",
        "",
        *_table(rows),
        "",
    ]


def faults_section(results: dict[str, Any]) -> list[str]:
    lines = []
    if part := results.get("partition"):
        lines += [
            "### 2. A worker host partitioned mid-task",
            "",
            f"h2 cut off (every packet dropped, both ways) for {part['cut_seconds']:.0f} s while",
            f"its two workers ran an 8 s task each (tasks {part['victims']}).",
            "",
            f"- attempts ended `worker_lost` by the reconciler after: "
            f"{_seconds(part['lost_after'])} (bound: 2 + 4 s of silence, then the next pass"
            " of a reconciler run every 15 s)",
            f"- completed on another host after: {_seconds(part['completed_after'])}",
            f"- after the heal, h2's workers discarded their late outcomes and took new work"
            f" within {part['late_handled_within']:.0f} s (TCP's retransmission backoff)",
            f"- reconciler actions: {part['actions']}",
            f"- problems: {part['problems'] or 'none'}",
            "",
        ]
    if redis := results.get("redis"):
        lines += [
            "### 3a. Redis unreachable from the web host for 30 s",
            "",
            f"- {redis['posts']} POSTs, {redis['accepted']} answered 202; latency p50 "
            f"{redis['latency_p50']:.2f} s, max {redis['latency_max']:.2f} s; "
            f"{redis['gets']} GETs of a task, p50 {redis['get_latency_p50']:.2f} s, max "
            f"{redis['get_latency_max']:.2f} s",
            f"- every accepted task completed {redis['all_done_after_restore']:.0f} s after"
            f" Redis was reachable again; reconciler actions: {redis['actions']}",
            f"- problems: {redis['problems'] or 'none'}",
            "",
        ]
    if pg := results.get("postgres"):
        lines += [
            "### 3b. PostgreSQL restarted (fast shutdown, 10 s down)",
            "",
            f"- while down: {pg['requests_while_down']} requests (POSTs and GETs) answered"
            f" {', '.join(pg['statuses_while_down'])} (JSON with a `code`, Retry-After),"
            f" slowest {pg['latency_max_while_down']:.1f} s",
            f"- after the start: {', '.join(pg['statuses_after'])}; the first 202"
            f" {pg['first_202_after_start']:.1f} s after the start",
            f"- {pg['accepted']} tasks accepted (6 running at the stop), all completed;"
            f" every worker took new work; reconciler actions: {pg['actions']}",
            f"- problems: {pg['problems'] or 'none'}",
            "",
        ]
    if skews := results.get("skew"):
        lines += ["### 4. One worker host's clock off (libfaketime)", ""]
        for offset, found in skews.items():
            wait = found["stats"]["wait_seconds"] or {}
            lines.append(
                f"- h3 {offset}: {found['tasks']} tasks ({found['on the skewed host']} on h3),"
                f" {found['reconciler passes on the skewed host']} extra reconciler passes on"
                f" h3; reconciler actions: {found['actions'] or 'none'}; stats wait p50"
                f" {wait.get('p50', 0):.3f} s, p95 {wait.get('p95', 0):.3f} s;"
                f" problems: {found['problems'] or 'none'}"
            )
        lines.append("")
    return lines


def checks_section(problems: dict[str, list[str]], figures: dict[str, Any]) -> list[str]:
    lines = [
        "### 5. Every task of the run, checked against the ledger (the soak's checks)",
        "",
        f"- tasks: {dict(figures['tasks'])}; attempts recorded: {figures['attempts']};"
        f" handler runs in the ledger: {figures['handler runs']} (the"
        f" {figures['not ledgered (log_statistics)']} `log_statistics` tasks the POSTs made"
        " write none)",
        f"- attempt outcomes: {dict(figures['outcomes'])}",
    ]
    if problems:
        for name, found in problems.items():
            lines.append(f"- **{name}: {len(found)}** (e.g. {'; '.join(found[:3])})")
    else:
        lines.append(
            "- every check: 0 (no attempt ran twice, every run is a recorded attempt within"
            " its lease, every row agrees with its attempts and with RQ)"
        )
    return [*lines, ""]


def render(args: Any, stages: list[Stage], results: dict[str, Any],
           checked: tuple[dict, dict], rtt: dict[str, float], failed: bool) -> str:  # fmt: skip
    problems, figures = checked
    timings = ", ".join(f"{k.removeprefix('TASKQUEUE_')}={v}" for k, v in TIMINGS.items())
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()},"
        f" {_cores()} cores, Python {platform.python_version()}, PostgreSQL and Redis of the"
        f" drill's own: `{' '.join(['python', 'tests/drills/scale_out.py', *sys.argv[1:]])}`"
        f" (delay {args.delay} ± {args.jitter} ms each way; {timings}).",
        "",
        *throughput_section(stages, rtt),
        *faults_section(results),
        *checks_section(problems, figures),
        "**FAIL**" if failed else "**PASS**",
    ]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def write(text: str, root: Path, docs: bool) -> None:
    out = root / "var" / "drills" / "scale-out.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if docs:
        path = root / "docs" / "scale-out.md"
        page = path.read_text()
        head, _, rest = page.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")
