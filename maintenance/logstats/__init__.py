"""Log statistics over files of any size: exact counts at memory speed (see files.py, chunks.py)."""
