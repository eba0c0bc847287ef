# Databricks notebook source
# MAGIC %md
# MAGIC # dsel run: fit, score and select in one go (for a scheduled job)
# MAGIC
# MAGIC The same run as `dsel run --raw R --target T --out OUT --num-samples K --seed S`, through the
# MAGIC Python facade `dsel.pipeline.execute`, which also records the run in `OUT/runs`. With `catalog`
# MAGIC and `schema` set, the output tables are also registered as catalog tables
# MAGIC (`<catalog>.<schema>.dsel_selected` and so on) over the Delta folders under `out`.

# COMMAND ----------

dbutils.widgets.text("raw", "", "Raw corpus (comma-separated paths or tables)")
dbutils.widgets.text("target", "", "Target sample (comma-separated paths or tables)")
dbutils.widgets.text("out", "", "Output folder for the Delta tables")
dbutils.widgets.text("k", "1000", "Documents to select (k)")
dbutils.widgets.text("seed", "0", "Seed of the Gumbel noise")
dbutils.widgets.text("catalog", "", "Catalog to register the tables in (optional)")
dbutils.widgets.text("schema", "", "Schema to register the tables in (optional)")

# COMMAND ----------

import json

from dsel import DselConfig
from dsel.pipeline import execute


def _list(value):
    return [v.strip() for v in value.split(",") if v.strip()]


cfg = DselConfig.from_mapping({
    "raw": _list(dbutils.widgets.get("raw")),
    "target": _list(dbutils.widgets.get("target")),
    "out": dbutils.widgets.get("out").strip(),
    "num_samples": int(dbutils.widgets.get("k")),
    "seed": int(dbutils.widgets.get("seed")),
})
summary = execute(spark, cfg, "run")
print(summary.format())

# COMMAND ----------

catalog, schema = dbutils.widgets.get("catalog").strip(), dbutils.widgets.get("schema").strip()
registered = []
if schema:
    namespace = f"`{catalog}`.`{schema}`" if catalog else f"`{schema}`"
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {namespace}")
    for table in ("log_ratios", "weights", "skipped", "selected", "runs"):
        name = f"{namespace}.`dsel_{table}`"
        location = f"{cfg.out.rstrip('/')}/{table}".replace("'", "\\'")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING DELTA LOCATION '{location}'")
        registered.append(name)
print("registered:", ", ".join(registered) or "nothing (set the schema widget to register the tables)")

# COMMAND ----------

runs = spark.read.format("delta").load(f"{cfg.out}/runs")
display(runs.where(runs.run_id == summary.run_id).select("run_id", "command", "started_at", "finished_at", "counts"))
result = {"run_id": summary.run_id, **summary.counts()}
print(json.dumps(result))
