"""`edgeruntime jobs list|failed|retry ID` and `edgeruntime cron list|run NAME`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import UsageError
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.scheduler import cron_jobs, iso
from edgeruntime.jobs.store import JobStatus, JobStore

__all__ = ["COMMANDS", "add_commands"]

AddOptions = Callable[[argparse.ArgumentParser], None]


def _common(p: argparse.ArgumentParser, add_project_options: AddOptions) -> None:
    p.add_argument("dir", nargs="?", default=None, metavar="DIR", help="functions directory (default: functions)")
    p.add_argument("--directory", "-d", default="functions", help="functions directory (default: functions)")
    p.add_argument("--database-url", metavar="URL", help="sqlite:///path or postgresql://... (default: the project's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_project_options(p)


#: The largest job id or --limit: SQLite's INTEGER and PostgreSQL's BIGINT.
MAX_ID = 2**63 - 1


def positive_int(text: str) -> int:
    """An argument type: a whole number from 1 to MAX_ID (argparse's one-line error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 < value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number from 1 to {MAX_ID}")
    return value


def add_commands(sub: Any, add_project_options: AddOptions) -> None:
    """Add the `jobs` and `cron` subcommands to the `edgeruntime` parser."""
    jobs = sub.add_parser("jobs", help="queued jobs and failed jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=type(jobs))
    ls = jobs_sub.add_parser("list", help="list queued, running and finished jobs")
    ls.add_argument("--status", choices=[s.value for s in JobStatus])
    ls.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    _common(ls, add_project_options)
    failed = jobs_sub.add_parser("failed", help="list failed jobs (payload, error, last response)")
    failed.add_argument("--limit", type=positive_int, default=50, help="at most this many (default 50)")
    _common(failed, add_project_options)
    retry = jobs_sub.add_parser("retry", help="queue a failed job again")
    retry.add_argument("id", type=positive_int, help="failed job id (from `edgeruntime jobs failed`)")
    _common(retry, add_project_options)

    cron = sub.add_parser("cron", help="cron jobs of config.toml")
    cron_sub = cron.add_subparsers(dest="cron_command", required=True, parser_class=type(cron))
    cls = cron_sub.add_parser("list", help="list cron jobs with their next and last ticks")
    _common(cls, add_project_options)
    run = cron_sub.add_parser("run", help="run a cron job now (a manual run, through the normal request path)")
    run.add_argument("name")
    _common(run, add_project_options)


def _settings(args: argparse.Namespace, *, warn_env: bool = False) -> Settings:
    """The project's settings; the functions' env is only reported by commands that run them."""
    return Settings.build(
        args.dir or args.directory,
        config_path=args.config,
        env_file=args.env_file,
        database_url=args.database_url,
        warn_env=warn_env,
    )


def _with_store(
    args: argparse.Namespace, body: Callable[[JobStore], Coroutine[Any, Any, int]], *, writes: bool = False
) -> int:
    """Run `body` on the project's store. `writes`: prove first that the store accepts writes, so a
    read-only one fails with one line (exit status 2) before anything is done."""
    url = args.database_url or os.environ.get("EDGERUNTIME_DATABASE_URL")
    source = "--database-url" if args.database_url else "EDGERUNTIME_DATABASE_URL"
    store = open_store(url, source=source) if url else open_store(None, _settings(args).functions_dir)

    async def run() -> int:
        try:
            await store.migrate()
            if writes:
                await store.check_writable()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _when(instant: float | None) -> str:
    return "-" if instant is None else iso(instant)


def _print_table(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    cells = [[str(r[c]) if r[c] is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.jobs_command == "list":

        async def body(store: JobStore) -> int:
            status = JobStatus(args.status) if args.status else None
            jobs = await store.jobs(status, args.limit)
            rows = [
                {
                    "id": j.id,
                    "function": j.function,
                    "status": str(j.status),
                    "attempts": f"{j.attempt}/{j.max_attempts}",
                    "run_at": _when(j.run_at),
                    "last_error": (j.last_error or "")[:80] or None,
                }
                for j in jobs
            ]
            _print_table(rows, args.json)
            return 0

        return _with_store(args, body)
    if args.jobs_command == "failed":

        async def body(store: JobStore) -> int:
            failed = await store.failed_jobs(args.limit)
            if args.json:
                print(json.dumps([asdict(f) for f in failed], indent=2))
                return 0
            rows = [
                {
                    "id": f.id,
                    "job": f.job_id,
                    "function": f.function,
                    "attempts": f.attempts,
                    "failed_at": _when(f.failed_at),
                    "retried_as": f.retried_as,
                    "error": (f.error or "")[:80] or None,
                }
                for f in failed
            ]
            _print_table(rows, False)
            return 0

        return _with_store(args, body)

    async def retry(store: JobStore) -> int:
        failed = await store.failed_job(args.id)
        if failed is None:
            raise UsageError(f"no failed job {args.id} (see `edgeruntime jobs failed`)")
        if failed.retried_as is not None:  # as the dashboard's 409
            raise UsageError(f"failed job {args.id} was already retried as job {failed.retried_as}")
        try:
            new_id = await store.retry_failed(args.id, now=datetime.now(UTC).timestamp())
        except KeyError:  # deleted meanwhile
            raise UsageError(f"no failed job {args.id} (see `edgeruntime jobs failed`)") from None
        print(
            json.dumps({"failed_id": args.id, "job_id": new_id})
            if args.json
            else f"queued failed job {args.id} again as job {new_id}"
        )
        return 0

    return _with_store(args, retry, writes=True)


def cmd_cron(args: argparse.Namespace) -> int:
    settings = _settings(args, warn_env=args.cron_command == "run")  # `run` runs the function
    if args.cron_command == "list":
        from edgeruntime.functions.discovery import discover

        crons = cron_jobs(settings.config.cron, set(discover(settings.functions_dir)))

        async def body(store: JobStore) -> int:
            now = datetime.now(UTC).timestamp()
            rows = []
            for name, job in crons.items():
                last = await store.ticks(name, limit=1)
                rows.append(
                    {
                        "name": name,
                        "function": job.config.function,
                        "schedule": job.config.schedule,
                        "timezone": job.config.timezone,
                        "enabled": job.config.enabled,
                        "next": iso(job.schedule.next(now)) if job.config.enabled else None,
                        "last": f"{_when(last[0].scheduled_for)} {last[0].status}" if last else None,
                    }
                )
            _print_table(rows, args.json)
            return 0

        return _with_store(args, body)
    return asyncio.run(_cron_run(settings, args.name, args.json))


async def _cron_run(settings: Settings, name: str, as_json: bool) -> int:
    from edgeruntime.serving.build import build_app

    built = build_app(settings, background=False)  # the env, store and extensions of `serve`
    app, system = built.app, built.jobs
    if name not in system.crons:
        known = ", ".join(sorted(system.crons)) or "none configured"
        raise UsageError(f"no cron job {name!r} in {settings.config.path or 'config.toml'} (known: {known})")
    await app.startup()
    try:
        # No queue runner here: its heartbeat is what renews the tick's lease while the function runs.
        async with system.runner.renewing_leases():
            run = await system.scheduler.run_now(name)
    finally:
        await app.shutdown()
    if as_json:
        print(json.dumps({**asdict(run), "status": str(run.status)}))
    else:
        print(f"cron {name}: {run.status} (HTTP {run.http_status})")
        if run.body:
            print(run.body)
    return 0 if str(run.status) == "succeeded" else 1


COMMANDS = {"jobs": cmd_jobs, "cron": cmd_cron}
