"""The paper's table (`jkd.report.paper_table`) and its figures (`jkd.report.figures`) from hand-made results:
cells (best-epoch accuracy ± the lab's spread, final and std), rows in the lab's groups, bold
best student per column, † where the paired test over folds finds a gain, the footnote; figures
at table scale (30 rows x 4 columns) as PNG and PDF."""

import csv
import io
import os
import shutil
import subprocess

import pytest

import table_setup
from jkd.report import paper_table

SCRATCH = (0.80, 0.82, 0.84)
EXTRA = {"kd_signal": (0.021, 0.019, 0.020), "gaf_signal": (0.05, -0.04, 0.01)}


def _acc(col, stage, point, fold, trial):
  del trial   # the trials agree: fold means are the runs' values
  if stage == "teacher_signal":
    return 0.90
  a = SCRATCH[fold] + EXTRA.get(stage, (0.0,) * 3)[fold]
  if stage == "three" and point == 0:
    a += 0.03 + (0.001, -0.001, 0.0)[fold]
  if col == 1 and stage == "kd_signal":
    a += 0.05
  return a


# out of the lab's order on purpose (as ConfigDict sorts them): two teachers before one, the
# scratch student before the teacher
STAGES = [("gaf_signal", 2, 1), ("kd_signal", 1, 1), ("student_scratch", 0, 1),
          ("teacher_signal", 0, 1), ("three", 3, 2)]


@pytest.fixture
def table(tmp_path):
  w = table_setup.make(tmp_path / "W", columns=("a", "b"), stages=STAGES, folds=3, trials=2,
                       acc=_acc)
  return w, paper_table.write(w, plots=False)


def test_markdown_cells_groups_bold_and_markers(table):
  w, _ = table
  md = open(os.path.join(w, "table.md")).read()
  rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
  assert [r.split(" | ")[1] for r in rows] == [
      "signal (1-D WRN)", "from scratch (CE)", "KD: signal", "GAF + signal, base",
      "base, w gaf/pi/signal = (0.2, 0.2, 0.6)", "base, w gaf/pi/signal = (0.2, 0.3, 0.5)"]
  assert [r.split(" | ")[0] for r in rows] == [
      "| Teachers", "| Student", "| One teacher", "| Two teachers", "| Three teachers", "| "]
  cells = {r.split(" | ")[1]: r.split(" | ")[2:] for r in rows}
  # fold means 82.1, 83.9, 86.0: mean 84.00, lab ± = std / sqrt(3 folds x 2 trials - 1) = 0.71
  assert cells["KD: signal"][0] == "84.00 ± 0.71† <sub>final 83.00, std 1.59</sub>"
  assert cells["KD: signal"][1].startswith("**89.00 ± 0.71**†")               # best of column b
  assert cells["base, w gaf/pi/signal = (0.2, 0.2, 0.6)"][0].startswith("**85.00 ± 0.71**†")
  assert cells["GAF + signal, base"][0].startswith("82.67 ± ") and "†" not in cells[
      "GAF + signal, base"][0]                                     # +0.67 over 3 folds: no
  assert cells["base, w gaf/pi/signal = (0.2, 0.3, 0.5)"][0].startswith("82.00 ± 0.73 <sub>")   # 1.63 / sqrt 5
  assert cells["signal (1-D WRN)"][0].startswith("90.00 ± 0.00 ")    # teachers are never bold
  assert "two-sided paired t-test over the folds" in md and "p < 0.05" in md
  assert "## Provenance" in md and "test cpu" in md


def test_csv_and_tex(table):
  w, _ = table
  rows = list(csv.DictReader(io.StringIO(open(os.path.join(w, "table.csv")).read())))
  kd = {r["column"]: r for r in rows if r["stage"] == "kd_signal"}
  assert kd["a"]["best_acc"] == "84.0000" and kd["a"]["lab_pm"].startswith("0.71")
  assert kd["a"]["final_acc"] == "83.0000" and kd["a"]["gain_pp"] == "2.0000"
  assert (kd["a"]["significant"], kd["a"]["best_in_column"]) == ("1", "0")
  assert (kd["b"]["significant"], kd["b"]["best_in_column"]) == ("1", "1")
  assert len(rows) == 6 * 2
  tex = open(os.path.join(w, "table.tex")).read()
  assert tex.count("\\toprule") == tex.count("\\bottomrule") == 1
  assert "\\multicolumn{3}{l}{\\emph{One teacher}} \\\\" in tex
  assert "\\quad KD: signal & 84.00 $\\pm$ 0.71$^\\dagger$ & \\textbf{89.00 $\\pm$ 0.71}$^\\dagger$ \\\\" in tex
  assert "paired t-test" in tex and tex.rstrip().endswith("\\end{tabular}")
  assert "p $<$ 0.05" in tex and "p < 0.05" not in tex   # '<' is '¡' in LaTeX's text font


def test_tex_escapes_in_one_pass():
  assert paper_table._tex(r"a\b {c} p < 0.05, 50% x_y & #1 $2 ~^") == (
      r"a\textbackslash{}b \{c\} p \textless{} 0.05, 50\% x\_y \& \#1 \$2 "
      r"\textasciitilde{}\textasciicircum{}")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX installed")
def test_tex_compiles(table, tmp_path):
  """table.tex typesets inside a document with booktabs (checked where pdflatex exists)."""
  w, _ = table
  shutil.copy(os.path.join(w, "table.tex"), tmp_path / "table.tex")
  (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\n"
                                    "\\begin{document}\\input{table}\\end{document}\n")
  p = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                     cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stdout[-2000:]
  assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_console_table(table):
  _, full = table
  text = paper_table.console(full)
  assert "[Three teachers]" in text and "89.00 ± 0.71*†" in text


def test_figures_at_table_scale(tmp_path):
  pytest.importorskip("matplotlib")
  w = table_setup.make(tmp_path / "W")          # the 21 stages of jkd.pipeline.tables: 30 rows, 4 columns
  full = paper_table.write(w)
  assert len(full["rows"]) == 30 and len(full["columns"]) == 4
  made = sorted(os.listdir(os.path.join(w, "plots")))
  names = ["gains", "curves"] + [f"confusion_{c}" for c in ("WRN16-1", "WRN16-3", "WRN28-1",
                                                             "WRN28-3")]
  assert made == sorted(f"{n}.{e}" for n in names for e in ("png", "pdf"))
  for name in made:
    head = open(os.path.join(w, "plots", name), "rb").read(8)
    assert head.startswith(b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else b"%PDF")
  assert "](plots/gains.png)" in open(os.path.join(w, "table.md")).read()
