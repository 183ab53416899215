"""A newcomer's wrong inputs: every one ends as ONE line on stderr naming the key or file and the
fix, exit status 2, no traceback, before any training starts, nothing in the workdir changed.

The catalogue (`CASES`) runs `jkd.main` in this process (`run`: flags parsed as `python -m jkd.main`
parses them, SystemExit caught, stderr captured) and `jkd.convert` through its `main`; two cases
also run as real subprocesses. Every case gets a workdir that already holds a file (and, in some,
a config.json of another run) and snapshots its files' bytes and mtimes before and after.
Each configuration is tiny (`configs/windows.py` on 3 subjects of 16-step windows, wrn10_1, 1 epoch),
so a case that wrongly started training would still end quickly; a correct one fails before.

Teacher sources (`teachers.<name>.source`) are checked before any stage trains as well.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from absl import flags

from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/windows.py", "--config.data.path={d}/w.npz", "--config.model.name=wrn10_1",
        "--config.train.epochs=1", "--config.train.batch_size=8", "--config.train.eval_batch_size=64"]


def _pamap2_dat(path, bad_line=None):
  """A Protocol-format file of 40 rows (54 columns); `bad_line` replaces row 31."""
  rows = []
  for i in range(40):
    rows.append(" ".join([f"{i / 100:.2f}", "1"] + ["1.5"] * 52))
  if bad_line is not None:
    rows[30] = bad_line
  path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def d(tmp_path_factory):
  """The data files every case may point at."""
  root = tmp_path_factory.mktemp("inputs")
  write_sine_windows(root / "w.npz", [6, 6, 6])     # 3 subjects x 18 windows, 16 x 3
  with np.load(root / "w.npz") as f:
    x, y, s = f["x"], f["y"], f["subject"]
  np.savez(root / "no_subject.npz", x=x, y=y)
  np.savez(root / "x_2d.npz", x=x[:, :, 0], y=y, subject=s)
  np.savez(root / "short_y.npz", x=x, y=y[:-1], subject=s)
  nan = x.copy()
  nan[3, 2, 1] = np.nan
  np.savez(root / "nan.npz", x=nan, y=y, subject=s)
  np.savez(root / "streams.npz", x=x.reshape(-1, 3), y=np.repeat(y, 16), subject=np.repeat(s, 16))
  (root / "text.npz").write_text("x,y,subject\n1,2,3\n")
  protocol = root / "PAMAP2_Dataset" / "Protocol"
  protocol.mkdir(parents=True)
  _pamap2_dat(protocol / "subject101.dat", bad_line=" ".join(["1"] * 53))
  (root / "pairs.data").write_bytes(pickle.dumps([(np.zeros((3, 40)), np.zeros(3))] * 2, protocol=2))
  good = os.path.join(REPO, "tests", "fixtures", "wrn10_1_2d.pth.tar")
  raw = open(good, "rb").read()
  (root / "truncated.pth.tar").write_bytes(raw[: len(raw) // 2])
  flipped = bytearray(raw)
  with zipfile.ZipFile(good) as z:    # one byte of the first storage: its CRC no longer matches
    info = next(i for i in z.infolist() if "/data/" in i.filename)
  name_len, extra_len = np.frombuffer(raw, "<u2", 2, info.header_offset + 26)   # local header
  flipped[info.header_offset + 30 + int(name_len) + int(extra_len) + 5] ^= 0xFF
  (root / "flipped.pth.tar").write_bytes(bytes(flipped))
  (root / "garbage.pth.tar").write_bytes(b"\x00" * 64)
  with zipfile.ZipFile(root / "nopickle.pth.tar", "w") as z:
    z.writestr("archive/version", "3\n")
  (root / "a_file").write_text("not a directory\n")
  shutil.copy(os.path.join(REPO, "tests", "fixtures", "wrn10_2_1d.pth.tar"), root / "wrn10_2.pth.tar")
  return str(root)


# (id, argv ({d}: the data folder, {w}: the case's workdir), substrings the one line must hold).
CASES = [
    # -- config keys and types
    ("unknown_key", ["--config.train.epoch=3"], ["'train.epoch'", "train.epochs"]),
    ("wrong_type", ["--config.optim.lr=fast"], ["--config.optim.lr=fast", "takes a float"]),
    ("wrong_tuple", ["--config.data.test_subjects=one"], ["data.test_subjects", "integers"]),
    ("unknown_flag", ["--epochs=3"], ["--epochs", "did you mean --config.train.epochs"]),
    ("no_workdir", ["--workdir="], ["--workdir"]),
    ("missing_config_file", ["--config=configs/nope.py"], ["configs/nope.py", "no such file"]),
    ("stray_argument", ["train"], ["unexpected arguments", "train"]),
    # -- config values
    ("lr_negative", ["--config.optim.lr=-1"], ["optim.lr=-1.0", "must be > 0"]),
    ("lr_nan", ["--config.optim.lr=nan"], ["optim.lr=nan", "> 0"]),
    ("momentum_one", ["--config.optim.momentum=1.0"], ["optim.momentum", "in [0, 1)"]),
    ("weight_decay_negative", ["--config.optim.weight_decay=-0.1"],
     ["optim.weight_decay", ">= 0"]),
    ("label_smoothing_one", ["--config.loss.ce.label_smoothing=1.0"],
     ["loss.ce.label_smoothing", "in [0, 1)"]),
    ("warmup_negative", ["--config.optim.warmup_epochs=-1"], ["optim.warmup_epochs", ">= 0"]),
    ("epochs_zero", ["--config.train.epochs=0"], ["train.epochs", ">= 1"]),
    ("batch_size_zero", ["--config.train.batch_size=0"], ["train.batch_size", ">= 1"]),
    ("seeds_zero", ["--config.train.seeds=0"], ["train.seeds", ">= 1"]),
    ("sweep_lr_negative", ['--config.sweep={"optim": {"lr": [0.1, -1]}}'],
     ["sweep.optim.lr", "-1.0", "> 0"]),
    ("sweep_unknown_key", ['--config.sweep={"optim": {"lrr": [0.1]}}'], ["optim.lrr", "optim.lr"]),
    ("schedule_unknown", ["--config.optim.schedule=cosin"], ["optim.schedule='cosin'", "cosine"]),
    ("optimizer_unknown", ["--config.optim.name=sgdd"], ["optim.name='sgdd'", "adamw"]),
    ("milestones_decreasing", ["--config.optim.milestones=(120,60)"],
     ["optim.milestones", "increasing"]),
    ("model_depth", ["--config.model.name=wrn15_1"], ["model.name", "wrn15_1", "6n + 4"]),
    ("model_unknown", ["--config.model.name=foo"], ["model.name", "unknown model 'foo'", "wrn16_1"]),
    ("model_kwargs", ['--config.model.kwargs={"dropot": 0.1}'], ["model.kwargs", "dropot", "dropout"]),
    ("jitter_negative", ["--config.augment.jitter=-0.1"], ["augment.jitter", ">= 0"]),
    ("rotation_without_groups", ["--config.augment.rotation=True"],
     ["augment.sensor_groups", "rotation"]),
    ("sensor_groups_past_channels", ["--config.augment.rotation=True",
                                     "--config.augment.sensor_groups=(1,)"],
     ["augment.sensor_groups=(1,)", "3 (0..2)"]),
    ("matmul_precision", ["--config.train.matmul_precision=float64"],
     ["train.matmul_precision='float64'", "highest"]),
    ("batch_larger_than_folds", ["--config.train.batch_size=1000"],
     ["train.batch_size=1000", "lower --config.train.batch_size"]),
    ("init_from_not_a_workdir", ["--config.train.init_from={d}"],
     ["train.init_from", "not a trained jkd workdir"]),
    # -- a pipeline's stages (configs/demo.py: the KD stage's loss terms, teachers, the student)
    ("kd_reduction", ["--config=configs/demo.py", "--config.stages.student_kd.loss.kd.reduction=sum"],
     ["stages.student_kd.loss.kd.reduction='sum'", "batchmean"]),
    ("sp_layers", ["--config=configs/demo.py", "--config.stages.student_kd.loss.sp.layers=(5,)"],
     ["stages.student_kd.loss.sp.layers=(5,)", "choose from"]),
    ("kd_temperature_zero", ["--config=configs/demo.py",
                             "--config.stages.student_kd.loss.kd.temperature=0"],
     ["stages.student_kd.loss.kd.temperature", "> 0"]),
    ("kd_alpha_above_one", ["--config=configs/demo.py", "--config.stages.student_kd.loss.alpha=1.5"],
     ["stages.student_kd.loss.alpha=1.5", "[0, 1]"]),
    ("teacher_model_depth", ["--config=configs/demo.py", "--config.teachers.image.model.name=wrn15_1"],
     ["teachers.image.model.name", "6n + 4", "set --config.teachers.image.model.name"]),
    ("student_model_unknown", ["--config=configs/demo.py",
                               "--config.stages.student_scratch.model.name=foo"],
     ["stages.student_scratch.model.name", "unknown model 'foo'"]),
    ("teacher_source_not_workdir", ["--config=configs/demo.py",
                                    "--config.teachers.signal.source={d}/a_file"],
     ["teachers.signal.source", "is not a jkd workdir"]),
    ("teacher_source_missing_pth", ["--config=configs/demo.py",
                                    "--config.teachers.image.source={d}/img_f{fold}.pth.tar"],
     ["teachers.image.source", "img_f0.pth.tar (fold 0, seed 1234) does not exist"]),
    ("teacher_which", ["--config=configs/demo.py", "--config.teachers.signal.which=first"],
     ["teachers.signal.which='first'", "last, best"]),
    ("teacher_epoch_negative", ["--config=configs/demo.py", "--config.teachers.signal.epoch=-1"],
     ["teachers.signal.epoch=-1", ">= 0"]),
    ("teacher_source_at_unknown", ["--config=configs/demo.py", "--config.teachers.signal.source=@nope"],
     ["teachers.signal.source='@nope'", "names another declared teacher"]),
    ("teacher_image_size_zero", ["--config=configs/demo.py",
                                 "--config.teachers.image.model.image_size=0"],
     ["teachers.image.model.image_size=0", ">= 1"]),
    ("teacher_image_unknown", ["--config=configs/demo.py", "--config.teachers.image.model.image=png"],
     ["teachers.image.model.image='png'", "gaf, pi"]),
    ("teacher_model_kwargs", ["--config=configs/demo.py",
                              '--config.teachers.signal.model.kwargs={"dropot": 0.1}'],
     ["teachers.signal.model.kwargs", "dropot"]),
    ("teacher_pth_wrong_architecture", ["--config=configs/demo.py",
                                        "--config.teachers.signal.source={d}/wrn10_2.pth.tar"],
     ["teachers.signal", "wrn10_2.pth.tar holds wrn10_2", "the config says wrn16_1"]),
    ("pi_spread_negative", ["--config=configs/demo.py", "--config.teachers.image.model.image=pi",
                            "--config.teachers.image.model.pi.spread=-0.1"],
     ["teachers.image.model.pi.spread=-0.1", ">= 0"]),
    ("pi_threshold_negative", ["--config=configs/demo.py", "--config.teachers.image.model.image=pi",
                               "--config.teachers.image.model.pi.threshold=-1"],
     ["teachers.image.model.pi.threshold=-1.0", ">= 0"]),
    ("pi_birth_range_reversed", ["--config=configs/demo.py", "--config.teachers.image.model.image=pi",
                                 "--config.teachers.image.model.pi.birth_range=(1.0,-1.0)"],
     ["teachers.image.model.pi.birth_range=(1.0, -1.0)", "low < high"]),
    ("student_image_size_zero", ["--config.model.ndim=2", "--config.model.image_size=0"],
     ["model.image_size=0", ">= 1"]),
    ("import_missing", ["--import=no_such_terms_module"],
     ["--import=no_such_terms_module", "No module named", "PYTHONPATH"]),
    ("term_unknown_alone", ["--config.loss.terms=('ce','kd')"],
     ["'kd' reads teachers", "trains alone"]),
    ("kd_teacher_undeclared", ["--config=configs/demo.py",
                               "--config.stages.student_kd.distill.teachers=('signal','nope')"],
     ["'nope'", "not declared"]),
    ("sweep_of_unlisted_term", ["--config=configs/demo.py",
                                "--config.stages.student_kd.loss.terms=('ce','kd')",
                                "--config.stages.student_kd.loss.sp.weight=3000.0"],
     ["'sp' is not in stages.student_kd.loss.terms"]),
    ("unknown_term", ["--config=configs/demo.py",
                      "--config.stages.student_kd.loss.terms=('ce','kd','sp','nope')"],
     ["'nope' is not a distillation term"]),
    ("stage_batch_larger_than_folds", ["--config=configs/demo.py",
                                       "--config.stages.teacher_signal.train.batch_size=100000"],
     ["stages.teacher_signal.train.batch_size=100000", "lower"]),
    # -- data config
    ("source_unknown", ["--config.data.name=mnist"], ["data.name='mnist'", "windows"]),
    ("key_of_another_source", ["--config.data.subjects=(101,)"],
     ["data.subjects", "pamap2", "--config.data.name"]),
    ("window_zero", ["--config=configs/streams.py", "--config.data.path={d}/streams.npz",
                     "--config.data.window=0"], ["config.data.window=0", ">= 1"]),
    ("label_rule_unknown", ["--config.data.label_rule=first"], ["label_rule='first'", "majority"]),
    ("test_subject_unknown", ["--config.data.test_subjects=(9,)"], ["test_subjects", "[9]",
                                                                     "[1, 2, 3]"]),
    ("num_folds_one", ["--config.data.num_folds=1"], ["num_folds=1", "needs 2..3"]),
    ("val_leaves_no_training", ["--config.data.num_val_subjects=2"],
     ["num_val_subjects=2", "lower it"]),
    # -- data files
    ("path_missing", ["--config.data.path={d}/nope.npz"], ["nope.npz", "is not a file"]),
    ("path_empty", ["--config.data.path="], ["config.data.path is empty"]),
    ("npz_lacks_subject", ["--config.data.path={d}/no_subject.npz"],
     ["no_subject.npz", "['subject']"]),
    ("npz_x_2d", ["--config.data.path={d}/x_2d.npz"], ["x_2d.npz", "(N, L, C)"]),
    ("npz_y_short", ["--config.data.path={d}/short_y.npz"], ["short_y.npz", "one entry per row"]),
    ("npz_not_npz", ["--config.data.path={d}/text.npz"], ["text.npz", "numpy.savez"]),
    ("npz_nan", ["--config.data.path={d}/nan.npz"], ["nan.npz", "NaN", "(3, 2, 1)"]),
    ("switched_source_missing_path", ["--config=configs/watch.py", "--config.data.name=streams",
                                      "--config.data.path={d}/nope.npz"],
     ["nope.npz", "is not a file", "streams"]),
    ("pamap2_malformed_line", ["--config=configs/pamap2.py",
                               "--config.data.path={d}/PAMAP2_Dataset",
                               "--config.data.subjects=(101,)", "--config.data.cache_dir="],
     ["subject101.dat, line 31", "53 columns, expected 54"]),
    ("pamap2_pickle_pairs", ["--config=configs/pamap2.py", "--config.data.path={d}/pairs.data"],
     ["pairs.data", "2 (X, y) pairs, expected 9"]),
    ("pamap2_path_missing", ["--config=configs/pamap2.py", "--config.data.path={d}/PAMAP3"],
     ["PAMAP3", "does not exist"]),
    # -- checkpoints
    ("eval_without_checkpoint", ["--mode=eval"], ["no checkpoint under", "train first"]),
    ("eval_step_missing", ["--mode=eval", "--step=7", "@checkpoint2"], ["--step=7", "[2]"]),
    ("convert_truncated", ["@convert", "{d}/truncated.pth.tar", "{w}/out"],
     ["jkd.convert: error:", "truncated.pth.tar", "not a PyTorch checkpoint"]),
    ("convert_flipped_byte", ["@convert", "{d}/flipped.pth.tar", "{w}/out"],
     ["flipped.pth.tar", "corrupt checkpoint", "copy it again"]),
    ("convert_garbage", ["@convert", "{d}/garbage.pth.tar", "{w}/out"],
     ["garbage.pth.tar", "torch.save writes a zip"]),
    ("convert_zip_without_pickle", ["@convert", "{d}/nopickle.pth.tar", "{w}/out"],
     ["nopickle.pth.tar", "data.pkl"]),
    ("convert_missing", ["@convert", "{d}/nope.pth.tar", "{w}/out"], ["nope.pth.tar", "no such file"]),
    # -- workdirs
    ("workdir_is_a_file", ["--workdir={d}/a_file"], ["a_file is a file", "directory"]),
    ("workdir_under_a_file", ["--workdir={d}/a_file/w"], ["a_file is a file", "another --workdir"]),
    ("workdir_unwritable", ["--workdir=/proc/sys/jkd_user_errors"],
     ["/proc/sys", "not writable", "--workdir you can write to"]),
    ("workdir_other_config", ["@other_config"], ["holds a different config",
                                                 "train.epochs: 3 -> 1", "--overwrite"]),
    ("workdir_config_unreadable", ["@garbage_config"], ["config.json is unreadable", "--overwrite"]),
    ("pipeline_stage_other_config", ["--config=configs/demo.py", "@stage_other_config"],
     ["teacher_signal holds stage teacher_signal of a different config", "train.epochs: 3 -> 15",
      "--overwrite"]),
    ("pipeline_stage_config_unreadable", ["--config=configs/demo.py", "@stage_garbage_config"],
     ["teacher_signal/config.json is unreadable", "--overwrite"]),
    ("report_empty_workdir", ["--mode=report"], ["results.json"]),
]


def _reset_flags():
  """Flags as before any parse: absl keeps values and the config overrides it defined."""
  fv = flags.FLAGS
  for name in [n for n in fv if n.startswith("config.")]:
    delattr(fv, name)
  fv.unparse_flags()


def run(argv: list[str]) -> tuple[int, str]:
  """`python -m jkd.main *argv` in this process: (exit status, stderr)."""
  from jkd import main as main_lib
  _reset_flags()
  err, old_argv = io.StringIO(), sys.argv
  sys.argv = ["jkd/main.py", *argv]          # config_flags reads its overrides from sys.argv
  code = 0
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      try:
        main_lib.main(main_lib.parse_flags(sys.argv))
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
      except Exception:  # noqa: BLE001 - a traceback is what the catalogue must never see
        import traceback
        traceback.print_exc()
        code = 1
  finally:
    sys.argv = old_argv
    _reset_flags()
  return code, err.getvalue()


def run_convert(argv: list[str]) -> tuple[int, str]:
  from jkd import convert
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = convert.main(argv)
    except SystemExit as e:
      code = e.code
  return code, err.getvalue()


def snapshot(root: str) -> dict:
  out = {}
  for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
      p = os.path.join(dirpath, name)
      st = os.stat(p)
      out[os.path.relpath(p, root)] = (st.st_mtime_ns, None if name in dirs else open(p, "rb").read())
  return out


def _sub(arg: str, d: str, w: str = "") -> str:
  return arg.replace("{d}", d).replace("{w}", w)


def _argv(case_argv: list[str], d: str, w: str) -> tuple[str, list[str]]:
  """('main' | 'convert', the argv): TINY and --workdir={w} unless the case sets them."""
  marks = {a for a in case_argv if a.startswith("@")}
  args = [_sub(a, d, w) for a in case_argv if not a.startswith("@")]
  if "@convert" in marks:
    return "convert", args
  if "@checkpoint2" in marks:
    os.makedirs(os.path.join(w, "checkpoints", "2"))
  if "@other_config" in marks or "@garbage_config" in marks:
    text = "{not json" if "@garbage_config" in marks else None
    if text is None:
      from jkd import config as config_lib
      c = config_lib.load_file("configs/windows.py")
      c.data.path, c.model.name, c.train.epochs = f"{d}/w.npz", "wrn10_1", 3
      c.train.batch_size, c.train.eval_batch_size = 8, 64
      text = config_lib.to_json(c)
    with open(os.path.join(w, "config.json"), "w") as f:
      f.write(text)
  if "@stage_other_config" in marks or "@stage_garbage_config" in marks:
    from jkd import config as config_lib, pipeline
    c = config_lib.load_file("configs/demo.py")
    c.model.name, c.train.epochs, c.train.batch_size, c.train.eval_batch_size = "wrn10_1", 3, 8, 64
    c.stages.teacher_signal.train.epochs = 3     # the demo's teacher stage sets its own epochs
    os.makedirs(os.path.join(w, "teacher_signal"))
    with open(os.path.join(w, "teacher_signal", "config.json"), "w") as f:
      f.write("[1, 2" if "@stage_garbage_config" in marks
              else config_lib.to_json(pipeline.stage_config(c, "teacher_signal", w)))
  base = [_sub(a, d) for a in TINY]
  keys = {a.split("=", 1)[0] for a in args}
  if "--config" in keys:    # another config file (first, as absl wants): its own data path
    base = [a for a in base if not a.startswith(("--config=", "--config.data.path="))]
    first = [a for a in args if a.startswith("--config=")]
    base, args = first + base, [a for a in args if not a.startswith("--config=")]
  if "--mode=report" in args:
    base = []
  workdir = [] if "--workdir" in keys else [f"--workdir={w}"]
  return "main", [*base, *workdir, *args]


@pytest.mark.parametrize("case_id,case_argv,expected", CASES, ids=[c[0] for c in CASES])
def test_wrong_input_is_one_line_and_exit_2(case_id, case_argv, expected, d, tmp_path, monkeypatch):
  if case_id == "workdir_unwritable" and (not os.path.isdir("/proc/sys")
                                          or os.access("/proc/sys", os.W_OK)):
    pytest.skip("needs a directory this user cannot write (/proc/sys)")
  monkeypatch.chdir(REPO)
  w = str(tmp_path / "w")
  os.makedirs(w)
  with open(os.path.join(w, "notes.txt"), "w") as f:
    f.write("the user's own file\n")
  kind, argv = _argv(case_argv, d, w)
  before, data_before = snapshot(w), snapshot(d)
  code, err = (run_convert if kind == "convert" else run)(argv)
  lines = err.strip().splitlines()
  assert code == 2, (case_id, code, err)
  assert "Traceback" not in err and len(lines) == 1, err
  for part in expected:
    assert part in lines[0], (part, lines[0])
  assert lines[0].startswith(("jkd.main: ", "jkd.convert: error: ")), lines[0]
  assert snapshot(w) == before, "the workdir changed"
  assert snapshot(d) == data_before, "the data folder changed"
  assert len(lines[0]) < 600, lines[0]


def test_catalogue_size():
  assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# -- the same through real processes: the exit status itself and nothing else on stderr

@pytest.mark.parametrize("argv,expected", [
    (["-m", "jkd.main", "--config=configs/watch.py", "--config.model.name=wrn15_1"], "model.name"),
    (["-m", "jkd.convert", "{d}/truncated.pth.tar", "{w}/out"], "truncated.pth.tar"),
], ids=["main_model_name", "convert_truncated"])
def test_subprocess_exit_status_2(argv, expected, d, tmp_path):
  w = tmp_path / "w"
  w.mkdir()
  (w / "notes.txt").write_text("mine\n")
  before = snapshot(str(w))
  args = [_sub(a, d, str(w)) for a in argv]
  if "jkd.main" in args:
    args += [f"--workdir={w}", "--config.train.epochs=1"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                     timeout=120, env=env)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2, p.stderr
  assert len(lines) == 1 and expected in lines[0] and "Traceback" not in p.stderr, p.stderr
  assert snapshot(str(w)) == before


# -- what must work: a data source switched by override takes that source's keys and defaults

def _parsed(argv, monkeypatch, target):
  """Run main with `target` ('jkd.engine.loop.train' or 'jkd.pipeline.run') replaced by a
  recorder; returns (exit status, stderr, the config it got)."""
  got = {}

  def record(config, workdir, overwrite=False, *a, **k):
    got["config"] = config
    return {}

  module, name = target.rsplit(".", 1)
  monkeypatch.setattr(__import__(module, fromlist=[name]), name, record)
  code, err = run(argv)
  return code, err, got.get("config")


def test_switching_source_takes_its_keys_and_defaults(d, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  w = str(tmp_path / "w")
  # configs/watch.py was written for `watch`; --config.data.name=windows brings windows' keys
  code, err, config = _parsed(["--config=configs/watch.py", f"--workdir={w}",
                               "--config.data.name=windows", f"--config.data.path={d}/w.npz",
                               "--config.data.ignore_label=2", "--config.train.batch_size=8"],
                              monkeypatch, "jkd.engine.loop.train")
  assert code == 0, err
  assert config.data.name == "windows" and config.data.ignore_label == 2
  assert config.data.path == f"{d}/w.npz"
  # the command: the demo pipeline on a streams npz (its own defaults: window 100, step 50)
  code, err, config = _parsed(["--config=configs/demo.py", f"--workdir={w}",
                               "--config.data.name=streams", f"--config.data.path={d}/streams.npz",
                               "--config.data.window=16", "--config.data.step=8",
                               "--config.train.batch_size=8"],
                              monkeypatch, "jkd.pipeline.run")
  assert code == 0, err
  import jkd.data
  expected = jkd.data.default_config("streams")
  expected.update(path=f"{d}/streams.npz", window=16, step=8)
  assert config.data.to_dict() == expected.to_dict()       # demo's num_folds=5 does not carry over
  assert not os.path.exists(w)
  # a key of the file's source is not silently kept once another source is chosen
  code, err = run(["--config=configs/pamap2.py", f"--workdir={w}", "--config.data.name=windows",
                   f"--config.data.path={d}/w.npz", "--config.data.downsample=2"])
  assert code == 2 and "data.downsample" in err and "pamap2" in err, err


def test_ranges_reach_every_stage_and_sweep():
  from jkd import config as config_lib
  assert config_lib.in_range(0.5, "[0, 1)") and not config_lib.in_range(1.0, "[0, 1)")
  assert config_lib.in_range(1.0, "(0, 1]") and not config_lib.in_range(0.0, "(0, 1]")
  assert not config_lib.in_range(float("inf"), ">= 0") and config_lib.in_range(0.0, ">= 0")
  c = config_lib.load_file("configs/watch.py")
  c.sweep = {"optim": {"momentum": [0.9, 1.5]}}
  with pytest.raises(config_lib.ConfigError, match=r"1\.5 of sweep\.optim\.momentum"):
    config_lib.validate(c)
