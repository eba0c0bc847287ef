"""Errors that dsel raises for a user's mistake.

Each one carries a message that says what is wrong and how to fix it; the CLI prints it
on one line and exits with status 2 instead of showing a stack trace.
"""
from __future__ import annotations

import re
from typing import Optional

#: What the pyarrow JSON reader's tasks put before the file they cannot read (see user_error).
CANNOT_READ = "dsel cannot read "


class DselError(Exception):
    """A user's mistake (bad path, wrong column, bad config value, ...), with the fix in the message."""


class ConfigError(DselError):
    """A configuration key has a value that dsel cannot use."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


def user_error(exc: BaseException) -> Optional[DselError]:
    """The :class:`DselError` for a Spark job that failed on something the user can fix: a DselError
    raised in a Python worker (the job's error only carries its text), or an input file that cannot
    be read (a truncated or corrupt compressed file, a file removed while the job ran), named with
    the fix; None for any other error.  Both readers' read failures are recognised: the pyarrow JSON
    reader's tasks name the file after :data:`CANNOT_READ`, Spark's readers raise ``FAILED_READ_FILE``."""
    text = str(exc)
    raised = re.search(r"dsel\.errors\.(?:Dsel|Config)Error: ([^\n]+)", text)
    if raised:
        return DselError(raised.group(1).strip())
    found = re.search(re.escape(CANNOT_READ) + r"(\S+): ([^\n]+)", text)
    if found:
        path, cause = found.group(1), found.group(2).strip()
    else:
        found = re.search(r"FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+?)\.?\s", text)
        if not found:
            return _listing_error(text)
        path = found.group(1)
        causes = re.findall(r"Caused by: ([\w.$]+): ([^\n]*)", text)
        cause = f"{causes[-1][0].rsplit('.', 1)[-1]}: {causes[-1][1].strip()}" if causes else "read error"
    if "Relative path in absolute URI" in cause:  # Hadoop's checksum file (.NAME.crc) of a name holding ':'
        return DselError(f"cannot read {path}: Hadoop's file system, which Spark's readers use, cannot open a file "
                         f"whose name holds ':' ({cause}); rename the file without ':'")
    if "ChecksumException" in cause:
        return DselError(f"cannot read {path}: its Hadoop checksum file (.NAME.crc beside it) no longer matches it "
                         f"({cause}), as when another tool changed the file after Spark wrote it; delete the .crc file")
    if "Permission denied" in cause or "PermissionError" in cause or "AccessDenied" in cause:
        return DselError(f"cannot read {path}: permission denied ({cause}); make it readable by the user dsel runs "
                         "as (say chmod a+r), or take it out of the input")
    if "is not a Parquet file" in cause:
        return DselError(f"cannot read {path}: it is not a Parquet file ({cause}); if it holds JSON lines, pass "
                         "--raw-format or --target-format json (or auto), or take it out of the input")
    if "FileNotFound" in cause or "No such file" in cause:
        return DselError(f"cannot read {path}: it went away while dsel was reading the input ({cause}); "
                         "run again once the input no longer changes")
    whole = " (a .gz file must be one whole gzip stream)" if path.endswith(".gz") else ""
    return DselError(f"cannot read {path} ({cause}): the file is damaged or not in the format its name says{whole}; "
                     "replace it, or take it out of the input")


def _listing_error(text: str) -> Optional[DselError]:
    """The :class:`DselError` for an input Spark's file listing cannot list (a glob's directory holding a
    name with ':', which Hadoop's paths cannot hold), or None."""
    found = re.search(r"URISyntaxException: Relative path in absolute URI: ([^\n]+)", text)
    if not found:
        return None
    return DselError(f"Hadoop's file system, which Spark's file listing uses, cannot list a name holding ':' "
                     f"({found.group(1).strip()}) in a directory the input names or a glob looks into; rename it "
                     "without ':', or move it out of that directory")
