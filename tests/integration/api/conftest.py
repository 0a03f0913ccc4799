"""API tests share the base path."""

BASE = "/api/system/maintenance"
