"""Figures of a pipeline workdir (matplotlib, the optional `plot` extra): W/plots/*.png and *.pdf.

A pipeline is drawn as a table of one column (`jkd.report.paper_table.build_dir`, `jkd.report.figures`):

* `gains`: every distillation stage's best-epoch accuracy gain over student_scratch, mean with a
  95 % interval and the per-fold differences, grouped by number of teachers, a line at zero;
* `curves`: learning curves as small multiples by row group (at most 7 lines a panel);
* `confusion`: final-epoch test confusion of the scratch and the best student, with the data
  source's class names (W/classes.json).

`write` returns the files made, or [] when matplotlib is not installed.
"""

from __future__ import annotations

from typing import Any


def write(workdir: str, full: dict[str, Any]) -> list[str]:
  del full   # the figures read the stage workdirs themselves
  from jkd.report import figures, paper_table   # noqa: PLC0415
  return figures.write(workdir, paper_table.build_dir(workdir))
