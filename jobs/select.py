"""spark-submit entry point: `dsel select`. Takes the same flags and --config TOML as the CLI.

    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 jobs/select.py --raw ... --out ...
"""
import sys

from dsel.cli import main

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
