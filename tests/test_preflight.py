"""Every bad input is refused before anything is written: one line on stderr naming the
problem and the fix, exit 2, no traceback, no file in the results folder.

The inputs are specs (``metabench validate``), command lines, data folders and results
folders (``metabench run``), and folders given to ``report`` and ``compare``. Cases run
``bench.cli.main.main`` in this process (a traceback would fail the test); three run the real
command in a process of its own. Data cases set ``METABENCH_OFFLINE=1``: no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.core import registry
from bench.run.lock import RunLock
from tests.fake_adapters import install_plugin


@dataclass
class World:
    """A user's machine: a results folder, a data folder, a place for spec files."""

    tmp: Path
    data_dir: Path
    real_data: Path  # the test session's Omniglot (conftest), copied before damaging it

    @property
    def results(self) -> Path:
        return self.tmp / "results"

    def spec(self, text: str | bytes, name: str = "bad.toml") -> str:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def run(self, *args: str, adapter: str = "fake-steady-b", spec: str = "sinusoid-10shot") -> list[str]:
        # no parity phase: the fake adapters compute nothing parity could compare
        return ["run", "--profile", "smoke", "--device", "cpu", "--adapters", adapter, "--specs", spec,
                "--results-dir", str(self.results), "--data-dir", str(self.data_dir),
                "--phases", "timing,memory,accuracy", *args]

    def old_run(self, plan: dict, run_id: str = "old") -> Path:
        """A run folder as ``metabench run`` leaves it (its plan; the rest does not matter here)."""
        run_dir = self.results / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "plan.json").write_text(json.dumps({"run_id": run_id, **plan}))
        return run_dir

    def omniglot(self, damage=None) -> None:
        """A copy of the real Omniglot folder in ``data_dir``, then ``damage(omniglot_dir)``."""
        shutil.copytree(self.real_data / "omniglot", self.data_dir / "omniglot")
        for p in (self.data_dir / "omniglot").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        if damage:
            damage(self.data_dir / "omniglot")


def builtin(name: str) -> str:
    return resources.files("bench.core.specs").joinpath(f"{name}.toml").read_text()


def omniglot_spec(old: str, new: str) -> str:
    text = builtin("omniglot-5w1s")
    assert old in text
    return text.replace(old, new, 1)


def sinusoid_spec(old: str, new: str) -> str:
    text = builtin("sinusoid-10shot")
    assert old in text
    return text.replace(old, new, 1)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def corrupt_a_member(path: Path) -> None:
    """Flip bytes inside the first PNG's compressed data: the zip opens, a CRC fails."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".png"))
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 8
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    path.write_bytes(bytes(data))


def edit_split(name: str, change):
    def damage(omniglot: Path) -> None:
        path = omniglot / "splits" / "vinyals" / f"{name}.txt"
        path.write_text(change(path.read_text()))
    return damage


def hold_lock(world: World):
    run_dir = world.old_run({})
    return RunLock(run_dir)


# id -> (what the user does, the words of the one line)
CASES = {
    # -- specs -------------------------------------------------------------------------------
    "spec inner_lr nan": (lambda w: ["validate", w.spec(omniglot_spec("inner_lr = 0.4", "inner_lr = nan"))],
                          "maml.inner_lr: must be a finite number, got nan"),
    "spec meta_lr inf": (lambda w: ["validate", w.spec(omniglot_spec("meta_lr = 0.001", "meta_lr = inf"))],
                         "maml.meta_lr: must be a finite number, got inf"),
    "spec protonet meta_lr -inf": (
        lambda w: ["validate", w.spec(omniglot_spec("meta_lr = 0.001\nlr_halve", "meta_lr = -inf\nlr_halve"))],
        "protonet.meta_lr: must be a finite number, got -inf"),
    "spec bn_eps nan": (
        lambda w: ["validate", w.spec(omniglot_spec('batch_norm = "transductive"',
                                                    'batch_norm = "transductive"\nbn_eps = nan'))],
        "model.bn_eps: must be a finite number, got nan"),
    "spec amplitude nan": (
        lambda w: ["validate", w.spec(sinusoid_spec("amplitude = [0.1, 5.0]", "amplitude = [nan, 5.0]"))],
        "data.amplitude: must be a finite number, got nan"),
    "spec image_size 3": (
        lambda w: ["validate", w.spec(omniglot_spec("image_size = 28", "image_size = 3"))],
        "data.image_size: 3 is too small for Conv-4's 4 2x2 poolings (3 -> 1 -> 0 -> 0 -> 0); use at least 16"),
    "spec image_size 15": (
        lambda w: ["validate", w.spec(omniglot_spec("image_size = 28", "image_size = 15"))],
        "data.image_size: 15 is too small"),
    "spec not utf-8": (
        lambda w: ["validate", w.spec(omniglot_spec("Omniglot 5-way", "Omniglot caf\u00e9 5-way").encode("latin-1"))],
        "file: not UTF-8 text (byte 0xe9 at offset"),
    "spec name is a path": (
        lambda w: ["validate", w.spec(omniglot_spec('name = "omniglot-5w1s"', 'name = "../omniglot"'))],
        "name: '../omniglot' names folders and table rows"),
    "spec empty x_range": (
        lambda w: ["validate", w.spec(sinusoid_spec("x_range = [-5.0, 5.0]", "x_range = [1.0, 1.0]"))],
        "data.x_range: low must be below high"),
    "spec file is a folder": (lambda w: ["validate", str((w.tmp / "dir.toml").mkdir() or w.tmp / "dir.toml")],
                              "dir.toml: file: cannot read (Is a directory)"),
    # -- command line ------------------------------------------------------------------------
    "--threads 0": (lambda w: w.run("--threads", "0"), "--threads: must be at least 1, got 0"),
    "--threads beyond the cores": (lambda w: w.run("--threads", "100000"),
                                   "--threads: 100000 exceeds the"),
    "--cell-timeout 0": (lambda w: w.run("--cell-timeout", "0"),
                         "--cell-timeout: must be a positive number of seconds, got 0.0"),
    "--cell-timeout nan": (lambda w: w.run("--cell-timeout", "nan"),
                           "--cell-timeout: must be a positive number of seconds, got nan"),
    "--run-id is a path": (lambda w: w.run("--run-id", "../elsewhere"), "--run-id: '../elsewhere' names a folder"),
    "--resume without --run-id": (lambda w: w.run("--resume"), "--resume needs --run-id NAME"),
    "--adapters with a typo": (lambda w: w.run(adapter="torch-maml,torch-mamll"),
                               "--adapters: unknown adapter 'torch-mamll'; known: torch-maml"),
    "--frameworks unknown": (lambda w: ["run", "--profile", "smoke", "--frameworks", "torch,mxnet",
                                        "--results-dir", str(w.results)],
                             "--frameworks: unknown 'mxnet'; known: torch, jax, tensorflow"),
    "--specs twice": (lambda w: w.run(spec="sinusoid-10shot,sinusoid-10shot"),
                      "--specs: sinusoid-10shot is given twice"),
    "--specs with one name twice": (
        lambda w: w.run(spec=f"sinusoid-10shot,{w.spec(builtin('sinusoid-10shot'), 'mine.toml')}"),
        "are both named 'sinusoid-10shot'"),
    "no cell to run": (lambda w: w.run("--algorithms", "protonet"), "no cell to run: no selected adapter serves"),
    "adapter not installed": (lambda w: w.run(adapter="fake-missing"),
                              "adapter fake-missing: cannot import metabench_not_installed_anywhere (No module "
                              "named 'metabench_not_installed_anywhere'); install the package that provides "
                              "metabench_not_installed_anywhere"),
    "adapter option misspelt": (lambda w: w.run(adapter="fake-misspelt"),
                                "adapter fake-misspelt: unknown option 'dtpye'; Steady accepts: dtype; "
                                "fix its registry entry"),
    "--adapters option misspelt": (lambda w: w.run(adapter="torch-maml@compiel=true"),
                                   "adapter torch-maml@compiel=true: unknown option 'compiel'; TorchMAML accepts: "),
    "--adapters option ill-typed": (lambda w: w.run(adapter="torch-maml@compile=3"),
                                    "fix the option after '@' in --adapters"),
    "--adapters option without a value": (lambda w: w.run(adapter="torch-maml@compile"),
                                          "--adapters: adapter 'torch-maml@compile': 'compile' must be option=value"),
    # -- results folder ----------------------------------------------------------------------
    "--results-dir is a file": (lambda w: w.run() + ["--results-dir", str(w.spec("x", "a-file"))],
                                "a-file is a file, not a folder"),
    "--results-dir under a file": (lambda w: w.run() + ["--results-dir", str(w.tmp / w.spec("x", "f") / "sub")],
                                   "cannot be created: "),
    "--resume of no run": (lambda w: w.run("--resume", "--run-id", "nope"),
                           "--resume: there is no run nope in"),
    "--resume of a folder that is no run": (
        lambda w: (w.results.joinpath("notes").mkdir(parents=True), w.results.joinpath("notes", "x.txt").touch(),
                   w.run("--resume", "--run-id", "notes"))[-1],
        "--resume: " ),
    "--run-id taken": (lambda w: (w.old_run({}), w.run("--run-id", "old"))[-1],
                       "--run-id old: "),
    "--resume with another plan": (
        lambda w: (w.old_run({"profile": "cpu", "command": "metabench run --profile cpu --results-dir r"}),
                   w.run("--resume", "--run-id", "old"))[-1],
        "--resume: run old was planned with --profile cpu, not smoke; resume it with the options it started "
        "with: metabench run --profile cpu --results-dir r --run-id old --resume"),
    "--resume of a run whose plan is damaged": (
        lambda w: ((w.old_run({}) / "plan.json").write_text('{"profile": "sm'),
                   w.run("--resume", "--run-id", "old"))[-1],
        "--resume: cannot read the plan of run old (JSONDecodeError: "),
    "--resume on a machine with other cores": (
        lambda w: (w.old_run({"threads": 64, "command": "metabench run --profile smoke"}),
                   w.run("--resume", "--run-id", "old"))[-1],
        "--resume: run old was planned with --threads 64, not "),
    # -- data (METABENCH_OFFLINE=1) ------------------------------------------------------------
    "--data-dir is a file": (lambda w: w.run(spec="omniglot-5w1s") + ["--data-dir", w.spec("x", "data.zip")],
                             "--data-dir TMP/data.zip is a file, not a folder; give the folder that holds omniglot/"),
    "no omniglot, offline": (lambda w: w.run(spec="omniglot-5w1s"),
                             "missing data: omniglot/images_background.zip, omniglot/images_evaluation.zip, "
                             "omniglot/splits/vinyals/train.txt and 2 more not in"),
    "truncated zip": (lambda w: (w.omniglot(lambda o: truncate(o / "images_background.zip")),
                                 w.run(spec="omniglot-5w1s"))[-1],
                      "images_background.zip (File is not a zip file); delete it and run again"),
    "corrupted zip member": (lambda w: (w.omniglot(lambda o: corrupt_a_member(o / "images_evaluation.zip")),
                                        w.run(spec="omniglot-5w1s"))[-1],
                             "damaged data file "),
    "split names a missing class": (
        lambda w: (w.omniglot(edit_split("val", lambda t: t.replace("character01/rot000", "character99/rot000", 1))),
                   w.run(spec="omniglot-5w1s"))[-1],
        "character99, which neither zip holds: the split files and the zips do not belong together"),
    "split line malformed": (
        lambda w: (w.omniglot(edit_split("test", lambda t: "not a class\n" + t)), w.run(spec="omniglot-5w1s"))[-1],
        "test.txt, line 1: 'not a class' is not Alphabet/characterNN/rotDDD"),
    "split truncated": (
        lambda w: (w.omniglot(edit_split("train", lambda t: "\n".join(t.splitlines()[:100]))),
                   w.run(spec="omniglot-5w1s"))[-1],
        "train.txt lists 100 classes, the published one 4112 (truncated?)"),
    # -- report ------------------------------------------------------------------------------
    "report of a folder with no run": (lambda w: (w.results.mkdir(), ["report", str(w.results)])[-1],
                                       "holds no metabench run (no manifest.json, plan.json or cells/)"),
    "report of no folder": (lambda w: ["report", str(w.tmp / "nowhere")], "report: no folder"),
    "compare of a folder with no run": (lambda w: (w.results.mkdir(), ["compare", str(w.results), str(w.results)])[-1],
                                        "compare: TMP/results holds no metabench run"),
}


def files_under(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots if root.exists()
            for p in [root, *root.rglob("*")]}


@pytest.fixture
def world(tmp_path, monkeypatch, tmp_path_factory, data_dir):
    site = install_plugin(tmp_path_factory.mktemp("site"))
    monkeypatch.syspath_prepend(str(site))
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, str(site)]))
    monkeypatch.setenv("METABENCH_OFFLINE", "1")
    monkeypatch.setenv("METABENCH_CACHE_DIR", str(tmp_path / "cache"))
    registry.refresh()  # the registry is read once per process: read it again with the plugin
    yield World(tmp=tmp_path, data_dir=tmp_path / "data", real_data=data_dir)
    monkeypatch.undo()
    registry.refresh()


def refusal(argv: list[str], capsys, watched: list[Path]) -> str:
    before = files_under(*watched)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert files_under(*watched) == before  # nothing written
    return err.strip()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line_before_anything_is_written(case, world, capsys):
    make_argv, words = CASES[case]
    argv = make_argv(world)
    line = refusal(argv, capsys, [world.results, world.data_dir, world.tmp / "cache"])
    assert line.startswith("metabench: error: ") and words.replace("TMP", str(world.tmp)) in line, line


def test_a_run_being_written_cannot_be_resumed_by_a_second_command(world, capsys):
    with hold_lock(world):
        line = refusal(world.run("--resume", "--run-id", "old"), capsys, [])
    assert f"--resume: run old is being written by PID {os.getpid()}" in line


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused(world, capsys):
    line = refusal(world.run("--device", "cuda"), capsys, [world.results])
    assert "--device cuda: no NVIDIA GPU here (nvidia-smi not found); use --device cpu" in line


def test_a_missing_framework_package_names_the_extra_to_install(world, capsys, tmp_path, monkeypatch):
    """jax installed without optax: the adapter's import fails in its framework's process."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "optax.py").write_text("raise ModuleNotFoundError(\"No module named 'optax'\", name='optax')\n")
    monkeypatch.setenv("PYTHONPATH", f"{shadow}{os.pathsep}{os.environ['PYTHONPATH']}")
    line = refusal(world.run(adapter="jax-maml", spec="sinusoid-10shot"), capsys, [world.results])
    assert "adapter jax-maml: cannot import implementations.jax.maml (No module named 'optax'); " \
           "pip install 'metabench[jax]'" in line


def test_every_problem_is_listed_one_line_each(world, capsys):
    """Preflight does not stop at the first problem: a user fixes them all in one go."""
    results = world.spec("x", "a-file")
    main(world.run("--results-dir", results, adapter="fake-missing", spec="omniglot-5w1s"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("metabench: error: ") for line in err)
    assert "a-file is a file" in err[0] and "missing data" in err[1] and "fake-missing" in err[2]


@pytest.mark.parametrize("args, words", [
    (["validate", "{tmp}/latin1.toml"], "not UTF-8 text"),
    (["run", "--profile", "smoke", "--adapters", "torch-maml", "--specs", "sinusoid-10shot", "--resume", "--run-id",
      "nope", "--results-dir", "{tmp}"], "no run nope"),
    (["report", "{tmp}"], "holds no metabench run"),
])
def test_the_real_command_exits_2_with_one_line(args, words, tmp_path, data_env):
    (tmp_path / "latin1.toml").write_bytes("name = \"caf\u00e9\"\n".encode("latin-1"))
    r = subprocess.run([sys.executable, "-m", "bench.cli", *(a.format(tmp=tmp_path) for a in args)],
                       capture_output=True, text=True, env={**data_env, "METABENCH_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert words in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.toml"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_a_gpu_the_framework_cannot_use_is_refused_in_the_frameworks_own_words(world, capsys, tmp_path,
                                                                                monkeypatch):
    """nvidia-smi lists a GPU (a stand-in script), but no framework here was built for one:
    torch's own check says so, in the framework's process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-fake)'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    line = refusal(world.run("--device", "cuda", adapter="torch-maml"), capsys, [world.results])
    assert "--device cuda: torch cannot use the GPU (torch " in line
    assert "sees no GPU: torch.cuda.is_available() is False" in line and "install a CUDA build of torch" in line


def test_a_results_folder_without_write_permission_is_refused(world, capsys, monkeypatch):
    world.results.mkdir()
    world.results.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: the permission check answers as for a user
        from bench.run import preflight

        real = os.access
        monkeypatch.setattr(preflight.os, "access", lambda p, mode: False if Path(p) == world.results
                            else real(p, mode))
    try:
        line = refusal(world.run(), capsys, [world.results])
    finally:
        world.results.chmod(0o755)
    assert f"--results-dir {world.results} is not writable; give a folder you can write to" in line
