"""spark-submit entry point: `dsel run`. Takes the same flags and --config TOML as the CLI.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/run.py --raw ... --out ...
"""
import sys

from dsel.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
