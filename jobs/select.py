"""spark-submit entry point: `dsel select`. Takes the same flags and --config TOML as the CLI.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/select.py --raw ... --out ...
"""
import os
import sys

# Python puts this folder first on sys.path, where jobs/select.py would shadow the standard
# library's `select` module (imported by socket, and so by pyspark): take it off first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from dsel.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
