"""Which figure of which benchmark's JSON document goes into ``run_all``'s summary and the
README's table: ``name → (script, path)``, and the words for each name.

A path that a document lacks (a script skipped, failed, or run with options
that leave a part out) gives null, never an error.
"""

from __future__ import annotations

FIGURES: dict[str, tuple[str, tuple]] = {
    # Issue 10: exact expiry (real hub, default 5 s tick)
    "expiry.decision_p50_s": ("meter", ("enforcement", "decision_s", "p50")),
    "expiry.decision_p99_s": ("meter", ("enforcement", "decision_s", "p99")),
    "expiry.gone_p50_s": ("meter", ("enforcement", "overrun_s", "p50")),
    "expiry.gone_p99_s": ("meter", ("enforcement", "overrun_s", "p99")),
    "expiry.plain_stop_p50_s": ("meter", ("enforcement", "plain_stop_s", "p50")),
    # Issue 10: reconciliation at 10,000 running servers (real hub)
    "hub_scale.page25_stall_p99_ms": ("hub_scale", ("hub", "list_page", "25", "hub_loop_stall",
                                                    "p99_ms")),
    "hub_scale.page200_stall_p99_ms": ("hub_scale", ("hub", "list_page", "200",
                                                     "hub_loop_stall", "p99_ms")),
    "hub_scale.tick_p99_ms.sqlite": ("hub_scale", ("tick", "sqlite", "after", "tick", "p99_ms")),
    "hub_scale.tick_p99_ms.postgresql": ("hub_scale", ("tick", "postgresql", "after", "tick",
                                                       "p99_ms")),
    "hub_scale.tick_before_p50_ms.postgresql": ("hub_scale", ("tick", "postgresql", "before",
                                                              "tick", "p50_ms")),
    # the meter's per-tick database work
    "meter.scan_p99_ms.postgresql.largest": ("meter", ("tick", "postgresql", -1, "scan", "p99_ms")),
    "meter.scan_p99_ms.sqlite.largest": ("meter", ("tick", "sqlite", -1, "scan", "p99_ms")),
    # the ledger against pgbench
    "ledger.pg_transfers_per_s.8_processes": (
        "ledger", ("postgresql", "throughput", "transfers", "8_processes", "transfers_per_s")),
    "ledger.pg_vs_pgbench.8_processes": ("ledger", ("postgresql", "vs_pgbench", "server_functions",
                                                    "transfers", "8_processes")),
    "ledger.pg_vs_pgbench_tpcb_like.8_processes": ("ledger", ("postgresql", "vs_pgbench_tpcb_like",
                                                              "8_processes")),
    "ledger.pg_vs_pgbench.8_processes.python_path": ("ledger", (
        "postgresql", "vs_pgbench", "python_path", "transfers", "8_processes")),
    # Issue 10: faults and load
    "faults.ok": ("faults", ("ok",)),
    "faults.hub_killed.back_s": ("faults", ("scenarios", "hub_killed", "rounds", 0, "fault",
                                            "hub_back_s")),
    "load.ok": ("load", ("ok",)),
    "load.spawn_p50_ms": ("load", ("credits", "spawn_latency", "all", "p50_ms")),
    "load.spawn_p99_ms": ("load", ("credits", "spawn_latency", "all", "p99_ms")),
    "load.me_direct_p99_ms": ("load", ("credits", "api_latency", "me_direct", "p99_ms")),
    "load.meter_tick_p99_ms": ("load", ("credits", "meter_tick", "p99_ms")),
    "load.service_loop_lag_max_ms": ("load", ("aim_no_credits_code_blocks_a_loop_over_50ms",
                                              "service_max_ms")),
    "load.hub_stalls_in_credits_code": ("load", ("aim_no_credits_code_blocks_a_loop_over_50ms",
                                                 "hub_stalls_in_credits_code")),
    # earning events, spawn admission, pages, lab polls
    "events.best_batch_events_per_s": ("events", ("aim", "best_through_proxy")),
    "spawn.admission_p50_ms.postgresql": ("spawn", ("postgresql", "admission_overhead", "p50_ms")),
    "pages.my_credits_heavy_p99_ms": ("pages", ("timings_ms", "build_my_credits.heavy", "p99_ms")),
    "lab_poll.open_loop_p99_ms": ("lab_poll", ("summary", "open_loop", "p99_ms")),
    "lab_poll.open_loop_rate": ("lab_poll", ("summary", "open_loop", "achieved_rate")),
    # Issue 10: side by side with jupyterhub-credit-service 0.4.2 (theirs / ours)
    "peer.tick_1000_all_due_ms.ours": ("peer", ("tick", "compare", "1000/all_due/tick_p50_ms",
                                                "ours")),
    "peer.tick_1000_all_due_ms.theirs": ("peer", ("tick", "compare",
                                                  "1000/all_due/tick_p50_ms", "theirs")),
    "peer.stall_1000_all_due_ms.ours": ("peer", ("tick", "compare",
                                                 "1000/all_due/stall_max_ms", "ours")),
    "peer.stall_1000_all_due_ms.theirs": ("peer", ("tick", "compare",
                                                   "1000/all_due/stall_max_ms", "theirs")),
    "peer.tick_1000_all_due_ratio": ("peer", ("tick", "compare", "1000/all_due/tick_p50_ms",
                                              "ratio_theirs_over_ours")),
    "peer.overrun_matched_p50_s.ours": ("peer", ("overrun", "compare", "matched_decision_p50",
                                                 "ours")),
    "peer.overrun_matched_p50_s.theirs": ("peer", ("overrun", "compare", "matched_decision_p50",
                                                   "theirs")),
    "peer.overrun_default_p50_s.theirs": ("peer", ("overrun", "compare", "default_decision_p50",
                                                   "theirs")),
}

WORDS = {
    "expiry.decision_p50_s": "Expiry: paid_until → stop decided, p50 (s)",
    "expiry.decision_p99_s": "Expiry: paid_until → stop decided, p99 (s)",
    "expiry.gone_p50_s": "Expiry: paid_until → server gone, p50 (s)",
    "expiry.gone_p99_s": "Expiry: paid_until → server gone, p99 (s)",
    "expiry.plain_stop_p50_s": "A server's own stop (admin DELETE → gone), p50 (s)",
    "hub_scale.page25_stall_p99_ms": "Hub stall per listing page of 25 at 10,000 servers, p99 (ms)",
    "hub_scale.page200_stall_p99_ms": "… a page of 200 (the old size), p99 (ms)",
    "hub_scale.tick_p99_ms.sqlite": "Meter tick with reconciliation, 10,000 sessions, SQLite, p99 (ms)",
    "hub_scale.tick_p99_ms.postgresql": "… PostgreSQL, p99 (ms)",
    "hub_scale.tick_before_p50_ms.postgresql": "… the old full reconciliation tick, PostgreSQL, p50 (ms)",
    "meter.scan_p99_ms.postgresql.largest": "Meter tick database work, largest size, PostgreSQL, p99 (ms)",
    "meter.scan_p99_ms.sqlite.largest": "Meter tick database work, largest size, SQLite, p99 (ms)",
    "ledger.pg_transfers_per_s.8_processes": "Ledger transfers/s, PostgreSQL, 8 writers",
    "ledger.pg_vs_pgbench.8_processes": "Ledger transfers/s ÷ pgbench simple-update tps, 8 writers (server functions)",
    "ledger.pg_vs_pgbench_tpcb_like.8_processes": "… ÷ pgbench's default tpcb-like tps, 8 writers",
    "ledger.pg_vs_pgbench.8_processes.python_path": "… the same with the statement-by-statement path",
    "faults.ok": "Six fault scenarios: verify, settled once, no event lost or twice, no GPU twice",
    "faults.hub_killed.back_s": "Hub killed with SIGKILL: back and serving after (s)",
    "load.ok": "Load, 50 users for 5 minutes: end check passes",
    "load.spawn_p50_ms": "Load: spawn request → ready, p50 (ms)",
    "load.spawn_p99_ms": "Load: spawn request → ready, p99 (ms)",
    "load.me_direct_p99_ms": "Load: /api/me, p99 (ms)",
    "load.meter_tick_p99_ms": "Load: meter tick, p99 (ms)",
    "load.service_loop_lag_max_ms": "Load: longest stall of the credits service's event loop (ms)",
    "load.hub_stalls_in_credits_code": "Load: hub event-loop stalls > 50 ms inside credits code",
    "events.best_batch_events_per_s": "Earning events/s stored (batches, through the proxy)",
    "spawn.admission_p50_ms.postgresql": "Credits admission added to a spawn, PostgreSQL, p50 (ms)",
    "pages.my_credits_heavy_p99_ms": "My credits page built, heavy user, p99 (ms)",
    "lab_poll.open_loop_p99_ms": "JupyterLab status polls, 10,000 users, p99 (ms)",
    "lab_poll.open_loop_rate": "JupyterLab status polls answered per second",
    "peer.tick_1000_all_due_ms.ours": "Billing tick, 1,000 users, every server due: ours, p50 (ms)",
    "peer.tick_1000_all_due_ms.theirs": "… jupyterhub-credit-service 0.4.2 (ms)",
    "peer.stall_1000_all_due_ms.ours": "Longest event-loop stall in that tick: ours (ms)",
    "peer.stall_1000_all_due_ms.theirs": "… jupyterhub-credit-service 0.4.2, the hub's loop (ms)",
    "peer.tick_1000_all_due_ratio": "Billing tick, 1,000 users, all due: theirs ÷ ours",
    "peer.overrun_matched_p50_s.ours": "Past paid credit, matched 5 s intervals: ours, p50 (s)",
    "peer.overrun_matched_p50_s.theirs": "… jupyterhub-credit-service 0.4.2, p50 (s)",
    "peer.overrun_default_p50_s.theirs": "… jupyterhub-credit-service 0.4.2 at its defaults, p50 (s)",
}


def describe(name: str) -> str:
    return WORDS.get(name, name)
