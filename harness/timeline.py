"""The timeline plot of a run: throughput and jobs in flight, faults shaded."""

from __future__ import annotations

import io
from typing import Any

BIN_S = 0.5


def plot(ops: list[dict[str, Any]], record: dict[str, Any]) -> bytes:
    """A PNG of completions per second and executions in flight over time.

    Fault windows are shaded and labelled; the first op of each anomalous job
    is marked with a red tick on the time axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = ops[0]["t"] if ops else 0
    seconds = [(op["t"] - t0) / 1e9 for op in ops]
    end_s = max(seconds, default=1.0) + BIN_S
    bins = int(end_s / BIN_S) + 1
    done = [0] * bins
    in_flight = []
    running = 0
    for op, t_s in zip(ops, seconds):
        if op["f"] != "execute":
            continue
        if op["type"] == "invoke":
            running += 1
        else:
            running -= 1
            if op["type"] == "ok":
                done[int(t_s / BIN_S)] += 1
        in_flight.append((t_s, max(running, 0)))

    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    xs = [i * BIN_S for i in range(bins)]
    ax.step(xs, [d / BIN_S for d in done], where="post", label="completed / s")
    if in_flight:
        ax.step([t for t, _ in in_flight], [n for _, n in in_flight], where="post",
                label="in flight (started, not ended)", alpha=0.7)

    starts: dict[int, float] = {}
    for op, t_s in zip(ops, seconds):
        if op["f"] != "fault":
            continue
        if op["type"] == "invoke":
            starts[op["id"]] = t_s
        elif op["id"] in starts:
            begin = starts.pop(op["id"])
            ax.axvspan(begin, max(t_s, begin + 0.05), color="orange", alpha=0.25)
            ax.text(begin, ax.get_ylim()[1] * 0.95, op["fault"], fontsize=7,
                    rotation=90, va="top")

    first_seen: dict[str, float] = {}
    for op, t_s in zip(ops, seconds):
        key = op.get("key")
        if key is not None and key not in first_seen:
            first_seen[key] = t_s
    for anomaly in record.get("anomalies", []):
        if anomaly["kind"] in ("recovered", "duplicated"):
            continue
        t_s = first_seen.get(anomaly["key"])
        if t_s is not None:
            ax.plot([t_s], [0], marker="|", color="red", markersize=14)

    verdict = {True: "valid", False: "INVALID", "unknown": "unknown"}[record["valid"]]
    ax.set_title(f"{record['scenario']} / {record['adapter']} / seed "
                 f"{record['seed']}: {verdict}")
    ax.set_xlabel("seconds since the run started")
    ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
