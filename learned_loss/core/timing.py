"""Where a job's wall time goes, by stage: compiling XLA programs, or running them.

A process-wide account, fed by `jax.monitoring`: listeners (registered once, on first use) add
the time jax reports for tracing a jitted function, lowering it to MLIR and compiling it with
the backend, and the count of backend compiles, to the stage open at that moment.
With the persistent compilation cache on (cli.use_compilation_cache) it also counts the
programs read back from the cache (`cache_hits`; they are backend compiles whose seconds are
the cache read) and those written to it (`cache_writes`).

    timing.reset()
    with timing.stage("pre-training"):
        ...
    print(timing.table(timing.breakdown()))

A stage's `compile` seconds are the time its compile events covered (a compile inside another's
trace, e.g. a jitted call on constants while tracing, is not counted twice; the sums
`trace_s`, `lower_s` and `backend_s` can overlap), its `run` seconds its wall seconds less its
compile seconds. Stages nest; time and compiles count to the innermost open stage only (an
outer stage's clock pauses while an inner one runs), so that no second is counted twice and
the stages' walls add up to the time spent in stages. A stage opened again under the same name
adds to its row (`entered` counts the openings). Time and compiles outside every stage are the
`outside` row, the whole the `total` row (wall since `reset`, or since the first use).

The account is process-wide, not per thread: a compile on any thread counts to the stage
open at the time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import jax

# jax.monitoring's time-span events of one compile, and the field whose sum each adds to.
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_s",
}
BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"
# The persistent compilation cache's count events (jax/_src/compiler.py, compilation_cache.py):
# a program read back, and one written after a compile.
CACHE_EVENTS = {
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_writes",
}
COUNTS = ("entered", "skipped", "programs", "cache_hits", "cache_writes")
SECONDS = ("wall_s", "trace_s", "lower_s", "backend_s")


def _new_row() -> dict[str, Any]:
    # "spans": the [start, end] of each of its compile events (time.time() seconds).
    return {**{k: 0.0 for k in SECONDS}, **{k: 0 for k in COUNTS}, "spans": [], "notes": []}


_lock = threading.RLock()
_rows: dict[str, dict[str, Any]] = {}  # name -> row, in the order of first opening
_outside = _new_row()  # compiles while no stage is open
_open: list[list] = []  # [name, resumed at]: the open stages, innermost last
_started = time.perf_counter()
_listening = False


def _current() -> dict[str, Any]:
    """The row that compile events go to now: the innermost open stage's, or `outside`."""
    return _rows[_open[-1][0]] if _open else _outside


def covered(spans: list[tuple[float, float]]) -> float:
    """The seconds that the union of the [start, end] intervals `spans` covers."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _on_span(event: str, start_time: float, end_time: float, **_) -> None:
    field = COMPILE_EVENTS.get(event)
    if field is None:
        return
    with _lock:
        row = _current()
        row[field] += end_time - start_time
        row["spans"].append((start_time, end_time))
        if event == BACKEND_EVENT:
            row["programs"] += 1


def _on_event(event: str, **_) -> None:
    field = CACHE_EVENTS.get(event)
    if field is None:
        return
    with _lock:
        _current()[field] += 1


def listen() -> None:
    """Registers the jax.monitoring listeners, once per process (stage and reset call it)."""
    global _listening
    with _lock:
        if not _listening:
            jax.monitoring.register_event_time_span_listener(_on_span)
            jax.monitoring.register_event_listener(_on_event)
            _listening = True


def reset() -> None:
    """Starts a new account: no stages, nothing outside, the total's clock at zero. Call it
    outside every stage (a job's start)."""
    global _outside, _started
    listen()
    with _lock:
        _rows.clear()
        _open.clear()
        _outside = _new_row()
        _started = time.perf_counter()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Counts the block's wall seconds and the compiles inside it to stage `name` (module
    docstring: nested stages count to the innermost)."""
    listen()
    with _lock:
        now = time.perf_counter()
        if _open:  # The enclosing stage's clock pauses.
            _rows[_open[-1][0]]["wall_s"] += now - _open[-1][1]
        _rows.setdefault(name, _new_row())["entered"] += 1
        frame = [name, now]
        _open.append(frame)
    try:
        yield
    finally:
        with _lock:
            now = time.perf_counter()
            if _open and _open[-1] is frame:  # Not when a reset in the block cleared it.
                _rows[name]["wall_s"] += now - frame[1]
                _open.pop()
                if _open:
                    _open[-1][1] = now


def note(text: str) -> None:
    """Adds `text` to the innermost open stage's notes, once (nothing when none is open)."""
    with _lock:
        if _open and text not in _rows[_open[-1][0]]["notes"]:
            _rows[_open[-1][0]]["notes"].append(text)


def skipped(name: str, why: str = "done before") -> None:
    """Counts one skip of stage `name` (work a resumed job found done), with `why` as a note."""
    with _lock:
        row = _rows.setdefault(name, _new_row())
        row["skipped"] += 1
        if why not in row["notes"]:
            row["notes"].append(why)


def _finished(row: dict[str, Any], name: str) -> dict[str, Any]:
    """A row as `breakdown` returns it: rounded seconds, `run_s` added, no spans."""
    compile_s = covered(row["spans"])
    out = {"stage": name, "wall_s": round(row["wall_s"], 3), "compile_s": round(compile_s, 3),
           "run_s": round(row["wall_s"] - compile_s, 3)}
    out.update({k: round(row[k], 3) for k in ("trace_s", "lower_s", "backend_s")})
    out.update({k: row[k] for k in COUNTS})
    out["notes"] = list(row["notes"])
    return out


def breakdown() -> dict[str, Any]:
    """The account so far: {"stages": [row, ...] (in the order first opened), "outside": row,
    "total": row}. A row: stage, wall_s, compile_s (the time its compile events covered),
    run_s (wall_s - compile_s), trace_s, lower_s and backend_s (sums of the events' seconds),
    entered, skipped, programs (backend compiles, cache hits included), cache_hits,
    cache_writes, notes. Open stages count up to now."""
    with _lock:
        now = time.perf_counter()
        rows = {name: dict(row, spans=list(row["spans"])) for name, row in _rows.items()}
        if _open:
            rows[_open[-1][0]]["wall_s"] += now - _open[-1][1]
        total_wall = now - _started
        outside = dict(_outside, spans=list(_outside["spans"]), notes=[])
        outside["wall_s"] = max(total_wall - sum(r["wall_s"] for r in rows.values()), 0.0)
        total = _new_row()
        for row in list(rows.values()) + [outside]:
            for key in SECONDS[1:] + COUNTS[2:] + ("spans",):
                total[key] += row[key]
        total["wall_s"] = total_wall
    return {"stages": [_finished(row, name) for name, row in rows.items()],
            "outside": _finished(outside, "(outside stages)"),
            "total": _finished(total, "total")}


def stage_row(name: str) -> dict[str, Any]:
    """Stage `name`'s row of `breakdown` (a row of zeros when it was never opened)."""
    for row in breakdown()["stages"]:
        if row["stage"] == name:
            return row
    return _finished(_new_row(), name)


def table(account: dict[str, Any]) -> str:
    """`account` (from `breakdown`) as a fixed-width text table: stage, wall, compile and run
    seconds, programs compiled (of which read from the persistent cache), notes."""
    header = ("stage", "wall s", "compile s", "run s", "programs", "cache hits", "notes")
    rows = [header]
    for row in account["stages"] + [account["outside"], account["total"]]:
        notes = list(row["notes"])
        if row["skipped"]:
            notes.insert(0, f"skipped {row['skipped']} of {row['entered'] + row['skipped']}")
        rows.append((row["stage"], f"{row['wall_s']:.1f}", f"{row['compile_s']:.1f}",
                     f"{row['run_s']:.1f}", str(row["programs"]), str(row["cache_hits"]),
                     "; ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 6) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
