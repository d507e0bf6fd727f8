"""A cron schedule in words, for the dashboard: `0 10 * * 1-5` → "at 10:00, Monday to Friday"."""

from __future__ import annotations

from edgeruntime.jobs.schedule import Schedule

__all__ = ["describe_schedule"]

WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("", "January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")  # fmt: skip


def _plural(n: int, unit: str) -> str:
    return f"every {unit}" if n == 1 else f"every {n} {unit}s"


def _weekdays(field: str) -> str:
    def one(part: str) -> str:
        if "-" in part:
            a, _, b = part.partition("-")
            return f"{_weekday(a)} to {_weekday(b)}"
        return _weekday(part)

    return ", ".join(one(p) for p in field.split(","))


def _weekday(value: str) -> str:
    return WEEKDAYS[int(value)] if value.isdigit() and int(value) < len(WEEKDAYS) else value


def _month(value: str) -> str:
    return MONTHS[int(value)] if value.isdigit() and 1 <= int(value) <= 12 else value


def _time_of_day(minute: str, hour: str) -> str | None:
    if minute.isdigit() and hour.isdigit():
        return f"at {int(hour):02d}:{int(minute):02d}"
    if minute.isdigit() and "," in hour and all(h.isdigit() for h in hour.split(",")):
        return "at " + ", ".join(f"{int(h):02d}:{int(minute):02d}" for h in hour.split(","))
    return None


def describe_schedule(schedule: Schedule) -> str:
    """`schedule` in plain English; falls back to naming each field when the form is unusual."""
    zone = "" if schedule.timezone == "UTC" else f" ({schedule.timezone})"
    if schedule.every_sec is not None:
        return _plural(schedule.every_sec, "second")
    assert schedule.expression is not None
    minute, hour, dom, month, dow = schedule.expression.split()
    days: str | None = ""
    if dom == "*" and month == "*" and dow != "*":
        days = f", {_weekdays(dow)}"
    elif dom != "*" and month == "*" and dow == "*":
        days = ", on the last day of the month" if dom == "L" else f", on day {dom} of the month"
    elif dom != "*" and month != "*" and dow == "*":
        days = f", on {_month(month)} {dom}"
    elif not (dom == "*" and month == "*" and dow == "*"):
        days = None  # an unusual mix of fields: named one by one below
    if days is not None:
        if (minute, hour) == ("*", "*"):
            return "every minute" + days + zone
        if minute.startswith("*/") and minute[2:].isdigit() and hour == "*":
            return _plural(int(minute[2:]), "minute") + days + zone
        if minute.isdigit() and hour == "*":
            return f"every hour at minute {int(minute)}" + days + zone
        if minute.isdigit() and hour.startswith("*/") and hour[2:].isdigit():
            return f"{_plural(int(hour[2:]), 'hour')} at minute {int(minute)}" + days + zone
        at = _time_of_day(minute, hour)
        if at is not None:
            return (at + (days or ", every day")) + zone
    parts = [f"{label} {value}" for label, value in
             (("minute", minute), ("hour", hour), ("day of month", dom), ("month", month), ("weekday", dow))
             if value != "*"]  # fmt: skip
    return ("every minute" if not parts else "at " + ", ".join(parts)) + zone
