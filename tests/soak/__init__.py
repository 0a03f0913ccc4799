"""The soak: 20,000 tasks through real workers under chaos (`python -m tests.soak.run`)."""
