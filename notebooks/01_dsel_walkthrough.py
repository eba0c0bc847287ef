# Databricks notebook source
# MAGIC %md
# MAGIC # dsel walkthrough: pick the raw documents that look like a target sample
# MAGIC
# MAGIC DSIR (Xie et al., NeurIPS 2023) in four steps, each one a Delta table under `out`:
# MAGIC
# MAGIC 1. **fit**: hash every unigram and bigram into 10,000 buckets, count the buckets in the raw corpus
# MAGIC    and in the target, and store `log_ratio = log p_target - log p_raw` per bucket (`out/log_ratios`);
# MAGIC 2. **score**: each raw document's log importance weight, the sum of its n-grams' log ratios (`out/weights`);
# MAGIC 3. **select**: seeded Gumbel-top-k on the weights, `k` documents with all their columns (`out/selected`);
# MAGIC 4. **summary**: what was read, skipped, scored and selected.
# MAGIC
# MAGIC **Setup.** Install the dsel wheel on the cluster (Compute > Libraries, or the job's `libraries`;
# MAGIC `deploy/package.sh` builds `dist/dsel-*.whl`), or run `%pip install /Volumes/.../dsel-0.1.0-py3-none-any.whl`
# MAGIC in a cell above. The Delta extension is already on Databricks clusters.
# MAGIC
# MAGIC **Parameters** (widgets at the top, or the job's parameters): `raw` and `target` take paths
# MAGIC (JSON lines, Parquet, Delta; globs) or catalog tables, comma-separated; `out` is a folder
# MAGIC such as `/Volumes/main/dsel/runs/demo`; `k` and `seed` are `--num-samples` and `--seed`.

# COMMAND ----------

dbutils.widgets.text("raw", "", "Raw corpus (comma-separated paths or tables)")
dbutils.widgets.text("target", "", "Target sample (comma-separated paths or tables)")
dbutils.widgets.text("out", "", "Output folder for the Delta tables")
dbutils.widgets.text("k", "1000", "Documents to select (k)")
dbutils.widgets.text("seed", "0", "Seed of the Gumbel noise")
dbutils.widgets.dropdown("method", "gumbel", ["gumbel", "topk"], "Selection method")

# COMMAND ----------

from pyspark.sql import functions as F

from dsel import DselConfig
from dsel.pipeline import fit, score, select
from dsel.report import Summary


def _list(value):
    return [v.strip() for v in value.split(",") if v.strip()]


cfg = DselConfig.from_mapping({
    "raw": _list(dbutils.widgets.get("raw")),
    "target": _list(dbutils.widgets.get("target")),
    "out": dbutils.widgets.get("out").strip(),
    "num_samples": int(dbutils.widgets.get("k")),
    "seed": int(dbutils.widgets.get("seed")),
    "method": dbutils.widgets.get("method"),
})
cfg.require("raw", "target", "out")
summary = Summary(command="run", run_id=cfg.default_run_id("run"))
print(cfg)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. Fit: raw and target bucket histograms, and their log ratios

# COMMAND ----------

fitted = fit(spark, cfg, summary)
log_ratios = spark.read.format("delta").load(f"{cfg.out}/log_ratios")
print(f"targets: {fitted.target_names}; target n-grams: {list(fitted.target_sizes)}")

# COMMAND ----------

# MAGIC %md
# MAGIC ### The buckets the target over-represents
# MAGIC
# MAGIC The largest log ratios: buckets that are much more frequent in the target than in the raw corpus.
# MAGIC A bucket is a hash of n-grams, so to read it we hash the n-grams of a few target documents the way
# MAGIC dsel does (lowercase, nltk's `WordPunctTokenizer` pattern, MurmurHash3) and show which fall in each bucket.

# COMMAND ----------

top_buckets = (log_ratios.where(F.col("target_count") > 0)
               .orderBy(F.col("log_ratio").desc(), "bucket")
               .select("target_name", "bucket", "raw_count", "target_count", F.round("log_ratio", 3).alias("log_ratio"))
               .limit(20))
display(top_buckets)

# COMMAND ----------

from collections import Counter, defaultdict

import mmh3
import regex

from dsel.read import read_input

TOKEN = regex.compile(r"\w+|[^\w\s]+")
wanted = {r["bucket"] for r in top_buckets.collect()}
grams_in = defaultdict(Counter)
if cfg.hash_kind == "murmur3":
    sample = read_input(spark, cfg.target, cfg.target_format, cfg, "target").select(cfg.text_column).limit(500)
    for row in sample.toLocalIterator():
        words = TOKEN.findall((row[0] or "").lower())
        for n in range(1, cfg.ngrams + 1):
            for i in range(len(words) - n + 1):
                gram = " ".join(words[i:i + n])
                bucket = mmh3.hash(gram, cfg.hash_seed, signed=False) % cfg.num_buckets
                if bucket in wanted:
                    grams_in[bucket][gram] += 1
examples = spark.createDataFrame(
    [(b, ", ".join(g for g, _ in grams_in[b].most_common(5))) for b in sorted(wanted)],
    "bucket int, target_ngrams string")
display(top_buckets.join(examples, "bucket", "left").orderBy(F.col("log_ratio").desc(), "bucket"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Score: every raw document's log importance weight

# COMMAND ----------

score(spark, cfg, summary, fitted)
weights = spark.read.format("delta").load(f"{cfg.out}/weights")
display(weights.orderBy(F.col("log_weight").desc()).limit(10))

# COMMAND ----------

import matplotlib.pyplot as plt

# A 50-bin histogram computed in Spark, so only the bin counts come to the driver.
BINS = 50
lo, hi = weights.agg(F.min("log_weight"), F.max("log_weight")).first()
width = (hi - lo) / BINS or 1.0
bin_of = F.least(F.floor((F.col("log_weight") - lo) / width), F.lit(BINS - 1)).cast("int")
counts = dict(weights.select(bin_of.alias("bin")).groupBy("bin").count().collect())
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.bar([lo + (b + 0.5) * width for b in range(BINS)], [counts.get(b, 0) for b in range(BINS)], width=width * 0.95)
ax.set_xlabel("log importance weight")
ax.set_ylabel("documents")
ax.set_title(f"log weights of {weights.count():,} raw documents")
display(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Select: seeded Gumbel-top-k (or top-k) on the weights

# COMMAND ----------

selected = select(spark, cfg, summary, fitted)
display(selected.select("rank", "id", "num_words", "log_weight", cfg.text_column).orderBy("target", "rank").limit(20))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Summary

# COMMAND ----------

summary.finish()
print(summary.format())
