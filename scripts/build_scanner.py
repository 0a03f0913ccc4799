"""Compile log_statistics' line scanner (maintenance/logstats/_scan.c) for this Python.

Run by `make install` and `make install-dev` when the source is newer than the module. With
no compiler, or if compiling fails, it warns and exits 0: the install goes on and
log_statistics counts with its regular expression instead (the same results, slower).
"""

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "maintenance" / "logstats" / "_scan.c"


def target() -> Path:
    """Where the module goes: beside its source, named as this Python imports it."""
    return SOURCE.with_name("_scan" + sysconfig.get_config_var("EXT_SUFFIX"))


def command(output: Path) -> list[str]:
    """The compiler's command line: the compiler Python was built with (gcc), its flags for
    a shared module, Python's headers, and the source's hash (the tests compare it)."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "gcc")
    shared = shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    return [*compiler, "-O2", "-Wall", "-Wextra", "-std=gnu11", *shared, "-shared",
            f"-I{sysconfig.get_paths()['include']}", f'-DSOURCE_SHA256="{digest}"',
            str(SOURCE), "-o", str(output)]  # fmt: skip


def build() -> bool:
    """Compile into a temporary file renamed into place: a process that has the old module
    loaded keeps it, and a failed build leaves no module (so none out of date) behind."""
    output = target()
    partial = output.with_name(output.name + ".tmp")
    argv = command(partial)
    if shutil.which(argv[0]) is None:
        return warn(f"no compiler ({argv[0]})")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return warn(f"{argv[0]} failed:\n{done.stderr.strip()}")
    os.replace(partial, output)
    print(f"built {output.relative_to(ROOT)}")
    return True


def warn(why: str) -> bool:
    target().unlink(missing_ok=True)
    print(
        f"warning: log_statistics' compiled scanner not built: {why}\n"
        "warning: it will count with its regular expression (the same results, slower)",
        file=sys.stderr,
    )
    return False


if __name__ == "__main__":
    build()
