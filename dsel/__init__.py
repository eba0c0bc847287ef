"""dsel: DSIR data selection (Xie et al., NeurIPS 2023) on Apache Spark, writing Delta tables.

The pipeline, one module per stage: :mod:`dsel.read`, :mod:`dsel.featurize` (with the compiled
:mod:`dsel.kernel`), :mod:`dsel.fit`, :mod:`dsel.score`, :mod:`dsel.select`, :mod:`dsel.write`
and :mod:`dsel.report`; :mod:`dsel.pipeline` wires them to the tables under an output directory.
"""
__version__ = "0.1.0"

from dsel.config import DselConfig  # noqa: E402
from dsel.errors import ConfigError, DselError  # noqa: E402

__all__ = ["DselConfig", "DselError", "ConfigError", "__version__"]
