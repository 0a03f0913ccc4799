"""Periodic jobs for `manage.py rqcron taskqueue.cron` (run exactly one such process)."""
