"""Dates and times as the console shows them: ISO-like, 24-hour, UTC (settings.TIME_ZONE).

Django's English formats read "Nov. 28, 2026, 10:44 p.m."; every time the admin renders
itself (Run and schedule lists, read-only fields) follows these instead.
"""

DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
