"""The experiment config: its schema (`schema`), its sweeps (`sweeps`) and its checks (`checks`).

`from jkd import config` gives the public names of all three; see each module for what it owns.
"""

from jkd.config.checks import RANGES, check_fit, in_range, validate
from jkd.config.schema import (MATMUL_PRECISIONS, NOT_RESULTS, OPTIMIZERS, SCHEDULES, ConfigError,
                               base, closest, diff, flat, get, load_file, rebase_data,
                               same_experiment, seeds, to_json, unknown_key)
from jkd.config.sweeps import (ZIP, numeric_hparams, per_run_keys, sweep, sweep_points,
                               teacher_names)

import ml_collections as mc   # noqa: E402 - `config.mc` for callers that build ConfigDicts

__all__ = ["RANGES", "check_fit", "in_range", "validate", "MATMUL_PRECISIONS", "NOT_RESULTS",
           "OPTIMIZERS", "SCHEDULES", "ConfigError", "base", "closest", "diff", "flat", "get",
           "load_file", "rebase_data", "same_experiment", "seeds", "to_json", "unknown_key", "ZIP",
           "numeric_hparams", "per_run_keys", "sweep", "sweep_points", "teacher_names", "mc"]
