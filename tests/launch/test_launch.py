"""The TPU VM launcher (``launch/``), run against a fake ``gcloud`` first on PATH.

The fake records every call as a JSON line and keeps just enough state (TPU nodes, queued resources,
files "in GCS", files "scp'd to the workers") to answer like gcloud would. Each test launches from a
small temporary git repository (a config file, requirements.txt, an AOT-compile stub), so the shipped
revision, the tarball and its checksum are all checked against git. Nothing here reaches GCP.
"""

import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from launch import tpu
from launch.slices import TpuSlice

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None, reason="the launcher ships git revisions"
)

REPO = pathlib.Path(__file__).resolve().parents[2]

FAKE_GCLOUD = r"""
import json, os, pathlib, re, shutil, sys
argv = sys.argv[1:]
state = pathlib.Path(os.environ["FAKE_GCLOUD_STATE"])
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(argv) + "\n")
pos = [a for a in argv if not a.startswith("-")]
def opt(name):
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
def hosts(kind):
    family, n = kind.rsplit("-", 1)
    n = int(n)
    if family in ("v2", "v3", "v4", "v5p"):
        return max(1, n // 8)
    return 1 if n <= 8 else n // 4
def node_file(name):
    return state / "nodes" / f"{name}.json"
def make_node(name, kind):
    node_file(name).parent.mkdir(exist_ok=True)
    node = {"name": name, "state": "READY", "acceleratorType": kind,
            "networkEndpoints": [{"ipAddress": f"10.0.0.{i}"} for i in range(hosts(kind))]}
    node_file(name).write_text(json.dumps(node))
def gcs(url):
    return state / "gcs" / url.removeprefix("gs://")
def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)

if argv[:2] == ["auth", "list"]:
    print("" if os.environ.get("FAKE_NOAUTH") else "tester@example.com")
elif argv[:3] == ["config", "get-value", "project"]:
    print("fake-project")
elif argv[:3] == ["storage", "buckets", "describe"]:
    print(json.dumps({"name": pos[3], "location": "US-CENTRAL2"}))
elif argv[:2] == ["storage", "cp"]:
    src, dst = pos[2], pos[3]
    target = gcs(dst) if dst.startswith("gs://") else pathlib.Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(gcs(src) if src.startswith("gs://") else src, target)
elif argv[:2] == ["storage", "cat"]:
    if not gcs(pos[2]).exists():
        fail(f"ERROR: {pos[2]} not found: 404")
    print(gcs(pos[2]).read_text(), end="")
elif argv[:3] == ["compute", "tpus", "tpu-vm"]:
    verb, name = argv[3], pos[4]
    if verb == "create":
        make_node(name, opt("accelerator-type"))
    elif verb == "describe":
        if not node_file(name).exists():
            fail(f"ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: {name}")
        print(node_file(name).read_text())
    elif verb == "delete":
        node_file(name).unlink()
    elif verb == "scp":
        src, dst = pos[4], pos[5]
        if ":" in src:
            pathlib.Path(dst).write_bytes(b"TFL3 fake model")
        else:
            (state / "scp").mkdir(exist_ok=True)
            shutil.copy(src, state / "scp" / pathlib.Path(src).name)
    elif verb == "ssh":
        if not node_file(name).exists():
            fail(f"ERROR: TPU {name} not found")
        n = len(json.loads(node_file(name).read_text())["networkEndpoints"])
        cmd, worker = opt("command"), opt("worker")
        workers = range(n) if worker == "all" else [int(worker)]
        if "@@revision" in cmd:
            expected = re.search(r"expected=([0-9a-f]{40})", cmd).group(1)
            bad = os.environ.get("FAKE_BAD_WORKER")
            for i in workers:
                print(f"@@revision t1v-w-{i} {'0' * 40 if str(i) == bad else expected}")
            sys.exit(1 if bad else 0)
        elif "@@status" in cmd:
            print("@@status " + os.environ.get("FAKE_TRAIN_STATUS", "EXITED 0"))
            print("step 100: loss 1.23")
        else:
            print("ok")
elif argv[:3] == ["compute", "tpus", "queued-resources"]:
    verb, name = argv[3], pos[4]
    qr = state / "queued" / name
    if verb == "create":
        qr.parent.mkdir(exist_ok=True)
        qr.write_text(opt("node-id"))
        make_node(opt("node-id"), opt("accelerator-type"))
    elif verb == "describe":
        if not qr.exists():
            fail("ERROR: NOT_FOUND")
        print(json.dumps({"state": {"state": "ACTIVE"}}))
    elif verb == "delete":
        node_file(qr.read_text()).unlink(missing_ok=True)
        qr.unlink()
else:
    fail(f"fake gcloud: unhandled {argv}")
"""

TINY_CONFIG = """
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "mobiledet_edgetpu", "image_size": 320})
    c.train = ml_collections.ConfigDict({"batch_size": 512, "num_steps": 400000})
    c.eval = ml_collections.ConfigDict({"batch_size": 64})
    c.lock()
    return c
"""

NO_BATCH_CONFIG = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": "mobiledet_edgetpu"})
    c.lock()
    return c
"""

AOT_STUB = """
import json, os, sys
with open(os.environ["FAKE_AOT_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_AOT_FAIL"):
    print("RESOURCE_EXHAUSTED: 17.2G of HBM needed, 16G available", file=sys.stderr)
    sys.exit(1)
"""


def _git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    out = subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True)
    return out.stdout.decode().strip()


class Fake:
    def __init__(self, root: pathlib.Path):
        self.state = root / "gcloud_state"
        self.repo = root / "repo"

    def calls(self) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def ssh_commands(self) -> list[tuple[str, str]]:
        """(worker, command) of every ``tpu-vm ssh``."""
        out = []
        for c in self.calls():
            if c[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
                flags = dict(a[2:].split("=", 1) for a in c if a.startswith("--") and "=" in a)
                out.append((flags["worker"], flags["command"]))
        return out

    def index(self, *prefix: str) -> int:
        """Index of the first call starting with ``prefix`` (-1 if none)."""
        for i, c in enumerate(self.calls()):
            if c[: len(prefix)] == list(prefix):
                return i
        return -1

    def gcs(self, url: str) -> pathlib.Path:
        return self.state / "gcs" / url.removeprefix("gs://")

    def set_node_state(self, name: str, value: str) -> None:
        path = self.state / "nodes" / f"{name}.json"
        node = json.loads(path.read_text())
        node["state"] = value
        path.write_text(json.dumps(node))

    def head(self) -> str:
        return _git(self.repo, "rev-parse", "HEAD")

    def run(self, *argv: str) -> int:
        return tpu.main([*argv, f"--repo_dir={self.repo}"])


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Fake:
    f = Fake(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcloud = bindir / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    gcloud.chmod(0o755)
    f.state.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(f.state))
    monkeypatch.setenv("FAKE_AOT_LOG", str(tmp_path / "aot.jsonl"))
    for var in ("FAKE_NOAUTH", "FAKE_BAD_WORKER", "FAKE_TRAIN_STATUS", "FAKE_AOT_FAIL"):
        monkeypatch.delenv(var, raising=False)
    # The temporary repository the launcher ships.
    repo = f.repo
    (repo / "configs").mkdir(parents=True)
    (repo / "mobiledet_jax").mkdir()
    (repo / "configs" / "tiny.py").write_text(TINY_CONFIG)
    (repo / "configs" / "no_batch.py").write_text(NO_BATCH_CONFIG)
    (repo / "mobiledet_jax" / "__init__.py").write_text("")
    (repo / "mobiledet_jax" / "aot_compile.py").write_text(AOT_STUB)
    (repo / "requirements.txt").write_text("jax==0.10.2\njaxlib==0.10.2\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "tiny")
    return f


SLICES = {
    # accelerator flag, gcloud type, runtime image, hosts, zone
    "v4-32": ("v4-32", "tpu-ubuntu2204-base", 4, "us-central2-b"),
    "v5e-16": ("v5litepod-16", "v2-alpha-tpuv5-lite", 4, "us-west4-a"),
}


def _up(fake: Fake, accel: str, *extra: str, workdir="gs://bkt/run") -> int:
    zone = SLICES.get(accel, (None, None, None, "us-central2-b"))[3]
    return fake.run(
        "up", "--name=md", f"--zone={zone}", f"--accelerator={accel}", "--config=configs/tiny.py",
        f"--workdir={workdir}", "--spot", "--no_tail", "--poll_s=0", *extra,
    )  # fmt: skip


# -- accelerator types ------------------------------------------------------------------------------


def test_slice_shapes():
    s = TpuSlice.parse("v4-32")
    assert (s.chips, s.devices, s.hosts, s.gcloud_type, s.topology) == (16, 16, 4, "v4-32", "v4-32")
    s = TpuSlice.parse("v5e-16")
    assert (s.chips, s.devices, s.hosts, s.gcloud_type, s.topology) == (
        16, 16, 4, "v5litepod-16", "v5e-16",
    )  # fmt: skip
    assert TpuSlice.parse("v5litepod-16") == s
    assert (TpuSlice.parse("v5litepod-8").hosts, TpuSlice.parse("v5e-8").chips) == (1, 8)
    assert TpuSlice.parse("v5e-256").hosts == 64
    assert (TpuSlice.parse("v4-8").chips, TpuSlice.parse("v4-8").hosts) == (4, 1)
    assert (TpuSlice.parse("v5p-16").chips, TpuSlice.parse("v5p-16").hosts) == (8, 2)
    assert (TpuSlice.parse("v6e-8").hosts, TpuSlice.parse("v6e-64").hosts) == (1, 16)
    assert TpuSlice.parse("v3-32").devices == 32  # v3 exposes each TensorCore
    assert TpuSlice.parse("v6e-16").runtime_version == "v2-alpha-tpuv6e"
    for bad in ("v4-12", "v5e-12", "v9-8", "tpu"):
        with pytest.raises(ValueError):
            TpuSlice.parse(bad)


# -- up on a v4-32 and a v5e-16 ---------------------------------------------------------------------


@pytest.mark.parametrize("accel", sorted(SLICES))
def test_up_addresses_all_workers_with_one_revision(fake, accel, capsys):
    gcloud_type, runtime, hosts, zone = SLICES[accel]
    overrides = ["--config.train.batch_size=256", "--config.train.num_steps", "1000",
                 "--config.model.name=mobiledet_cpu"]  # fmt: skip
    assert _up(fake, accel, "--skip_aot", *overrides) == 0, capsys.readouterr().err
    calls, rev = fake.calls(), fake.head()

    # Preflight queries come first; then exactly one create, with the right type and image.
    creates = [c for c in calls if c[:4] == ["compute", "tpus", "tpu-vm", "create"]]
    assert creates == [[
        "compute", "tpus", "tpu-vm", "create", "md", f"--zone={zone}", "--project=fake-project",
        f"--accelerator-type={gcloud_type}", f"--version={runtime}", "--spot",
    ]]  # fmt: skip
    first_create = fake.index("compute", "tpus", "tpu-vm", "create")
    assert 0 <= fake.index("auth", "list") < first_create
    assert 0 <= fake.index("storage", "buckets", "describe") < first_create

    # The same tarball (git archive of HEAD, checksum in the setup script) to every worker.
    scps = [c for c in calls if c[:4] == ["compute", "tpus", "tpu-vm", "scp"]]
    assert len(scps) == 1 and "--worker=all" in scps[0]
    shipped = fake.state / "scp" / f"mobiledet_jax-{rev[:12]}.tar.gz"
    with tarfile.open(shipped) as tar:
        assert "configs/tiny.py" in tar.getnames()
    ssh = fake.ssh_commands()
    setup = [cmd for w, cmd in ssh if "sha256sum" in cmd]
    assert len(setup) == 1 and ssh[0] == ("all", setup[0])
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() in setup[0]
    assert rev in setup[0] and "jax[tpu]==0.10.2" in setup[0]
    assert "requirements.txt" in setup[0]

    # Every worker asked for its revision; training started once, on all workers at once.
    assert sum(1 for w, cmd in ssh if "@@revision" in cmd and w == "all") == 1
    train = [(w, cmd) for w, cmd in ssh if "mobiledet_jax.train" in cmd]
    assert len(train) == 1 and train[0][0] == "all"
    cmd = train[0][1]
    expected = shlex.join([
        ".venv/bin/python", "-m", "mobiledet_jax.train", "--config=configs/tiny.py", *overrides,
        "--workdir=gs://bkt/run",
    ])  # fmt: skip
    assert expected in cmd  # overrides verbatim, in order
    assert f"export JAX_COMPILATION_CACHE_DIR=gs://bkt/run/xla_cache/{accel}" in cmd
    assert f"export MOBILEDET_JAX_REVISION={rev}" in cmd
    assert f'test "$(cat "$CODE/REVISION")" = {rev}' in cmd
    assert "nohup setsid" in cmd and "train.log" in cmd
    # jax.distributed.initialize() discovers the slice itself: no per-host coordinator settings,
    # and nothing that would hide the TPU.
    for forbidden in ("JAX_PLATFORMS", "coordinator", "process_id", "num_processes"):
        assert forbidden not in cmd
    assert all(w == "all" for w, c in ssh), "every ssh of `up` addresses all workers"

    # The run record (for resume) is in the workdir.
    record = json.loads(fake.gcs("gs://bkt/run/launch/run.json").read_text())
    assert (record["revision"], record["accelerator"], record["capacity"]) == (rev, accel, "spot")
    assert record["overrides"] == overrides and record["config"] == "configs/tiny.py"
    assert record["history"][0]["event"] == "up"


def test_dry_run_prints_commands_and_calls_no_gcloud(fake, capsys):
    assert _up(fake, "v4-32", "--dry_run", "--config.train.batch_size=256") == 0
    out = capsys.readouterr().out
    assert fake.calls() == []
    assert "$ gcloud compute tpus tpu-vm create md --zone=us-central2-b" in out
    assert "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot" in out
    assert "$ gcloud compute tpus tpu-vm scp" in out and "mobiledet_jax.train" in out
    assert out.count("--worker=all") >= 4  # scp, setup, revision check, train
    # Every other command too.
    common = ["--name=md", "--zone=us-central2-b", "--workdir=gs://bkt/run", "--dry_run"]
    for argv in (
        ["status"], ["logs"], ["stop"], ["delete"], ["delete", "--queued"],
        ["evaluate", "--accelerator=v4-32"],
        ["export", "--accelerator=v4-32", "--target=edgetpu", "--output=m.tflite"],
        ["export", "--local", "--target=cpu", "--output=m.tflite"],
        ["resume", "--accelerator=v4-32", "--config=configs/tiny.py", "--skip_aot", "--no_tail"],
        ["run", "--accelerator=v5e-16", "--config=configs/tiny.py", "--skip_aot",
         "--target=edgetpu"],
    ):  # fmt: skip
        assert fake.run(*argv, *common) == 0, (argv, capsys.readouterr().err)
        out = capsys.readouterr().out
        assert "$ gcloud" in out or "$ " + sys.executable in out or argv == ["status"], argv
        assert "gcloud compute tpus" in out or argv[:2] == ["export", "--local"], argv
    assert fake.calls() == []


def test_dry_run_cli_entry_point(fake):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.tpu", "delete", "--name=md", "--zone=z1-a", "--dry_run"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "$ gcloud compute tpus tpu-vm delete md --zone=z1-a --quiet" in proc.stdout
    assert fake.calls() == []


# -- preflight rejections: nothing is created ----------------------------------------------------------


def _nothing_created(fake: Fake) -> bool:
    return not any(len(c) > 3 and c[3] == "create" for c in fake.calls())


@pytest.mark.parametrize("accel,batch", [("v4-32", 1000), ("v5e-16", 100), ("v5e-16", 8)])
def test_indivisible_batch_rejected_before_create(fake, accel, batch, capsys):
    assert _up(fake, accel, "--skip_aot", f"--config.train.batch_size={batch}") == 1
    err = capsys.readouterr().err
    assert f"global batch {batch} does not divide by the 16 devices" in err
    assert _nothing_created(fake) and fake.ssh_commands() == []


@pytest.mark.parametrize(
    "extra,env,message",
    [
        (["--config.train.batchsize=512"], {}, "does not load"),
        (["--config=configs/no_batch.py"], {}, "no integer train.batch_size"),
        (["--config=configs/missing.py"], {}, "is not in revision"),
        ([], {"FAKE_NOAUTH": "1"}, "no active gcloud account"),
        ([], {"FAKE_AOT_FAIL": "1"}, "AOT compile for v4-32 failed"),
    ],
)  # fmt: skip
def test_preflight_failures_create_nothing(fake, monkeypatch, capsys, extra, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = extra if "AOT" in message else ["--skip_aot", *extra]
    assert _up(fake, "v4-32", *argv) == 1
    assert message in capsys.readouterr().err
    assert _nothing_created(fake)


def test_aot_compile_runs_for_the_topology(fake, tmp_path):
    assert _up(fake, "v5e-16", "--config.train.batch_size=256") == 0
    (aot,) = [json.loads(x) for x in (tmp_path / "aot.jsonl").read_text().splitlines()]
    assert aot == ["--config=configs/tiny.py", "--topology=v5e-16", "--config.train.batch_size=256"]


def test_workdir_and_dirty_tree_checks(fake, capsys):
    assert _up(fake, "v4-32", "--skip_aot", workdir="/data/run") == 1
    assert "must share it" in capsys.readouterr().err
    assert _up(fake, "v4-32", "--skip_aot", workdir="relative/run") == 1
    (fake.repo / "configs" / "tiny.py").write_text(TINY_CONFIG + "\n# edit\n")
    assert _up(fake, "v4-32", "--skip_aot") == 1
    assert "uncommitted changes (configs/tiny.py)" in capsys.readouterr().err
    assert _nothing_created(fake)
    # A single-host slice may keep its workdir on the VM; --allow_dirty ships HEAD as committed.
    assert _up(fake, "v5e-8", "--skip_aot", "--allow_dirty", workdir="/data/run") == 0


def test_workers_that_disagree_on_the_revision_stop_the_launch(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_BAD_WORKER", "2")
    assert _up(fake, "v4-32", "--skip_aot") == 1
    assert "do not all run revision" in capsys.readouterr().err
    assert not any("mobiledet_jax.train" in cmd for _, cmd in fake.ssh_commands())


# -- resume, queued resources, the whole pipeline ------------------------------------------------------


def test_resume_after_preemption_uses_the_recorded_job(fake, capsys):
    assert _up(fake, "v5e-16", "--skip_aot", "--config.train.batch_size=256") == 0
    first_rev = fake.head()
    # The slice is preempted, and meanwhile the local checkout moved on.
    fake.set_node_state("md", "PREEMPTED")
    (fake.repo / "new.txt").write_text("later work\n")
    _git(fake.repo, "add", ".")
    _git(fake.repo, "commit", "-q", "-m", "later")
    assert _up(fake, "v5e-16", "--skip_aot") == 1  # `up` refuses a preempted slice...
    assert "resume" in capsys.readouterr().err
    n = len(fake.calls())
    assert fake.run("resume", "--workdir=gs://bkt/run", "--skip_aot", "--no_tail") == 0
    calls = fake.calls()[n:]
    verbs = [c[3] for c in calls if c[:3] == ["compute", "tpus", "tpu-vm"]]
    assert verbs[:3] == ["describe", "delete", "create"]
    assert ["storage", "cat", "gs://bkt/run/launch/run.json"] in calls
    (train,) = [cmd for w, cmd in fake.ssh_commands() if "mobiledet_jax.train" in cmd][1:]
    assert f"MOBILEDET_JAX_REVISION={first_rev}" in train
    assert "--config.train.batch_size=256 --workdir=gs://bkt/run" in train
    assert (fake.state / "scp" / f"mobiledet_jax-{first_rev[:12]}.tar.gz").exists()
    record = json.loads(fake.gcs("gs://bkt/run/launch/run.json").read_text())
    assert [h["event"] for h in record["history"]] == ["up", "resume"]
    # Resuming on another slice size replaces the slice; the batch is checked against it first.
    n = len(fake.calls())
    assert fake.run("resume", "--workdir=gs://bkt/run", "--skip_aot", "--no_tail",
                    "--accelerator=v5e-256", "--config.train.batch_size=128") == 1  # fmt: skip
    assert "global batch 128 does not divide by the 256 devices" in capsys.readouterr().err
    assert not any(len(c) > 3 and c[3] in ("create", "delete") for c in fake.calls()[n:])
    assert fake.run("resume", "--workdir=gs://bkt/run", "--skip_aot", "--no_tail",
                    "--accelerator=v5e-32") == 0  # fmt: skip
    assert fake.calls()[-1][:2] == ["storage", "cp"]
    creates = [c for c in fake.calls() if c[:4] == ["compute", "tpus", "tpu-vm", "create"]]
    assert "--accelerator-type=v5litepod-32" in creates[-1]
    train = [cmd for w, cmd in fake.ssh_commands() if "mobiledet_jax.train" in cmd][-1]
    assert "xla_cache/v5e-32" in train and f"MOBILEDET_JAX_REVISION={first_rev}" in train


def test_queued_resources(fake):
    assert _up(fake, "v4-32", "--skip_aot", "--queued") == 0
    calls = fake.calls()
    (create,) = [c for c in calls if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
    assert create[4:] == [
        "md", "--node-id=md", "--zone=us-central2-b", "--project=fake-project",
        "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot",
    ]  # fmt: skip
    assert fake.run("delete", "--workdir=gs://bkt/run") == 0  # name, zone, queued: from the record
    assert fake.calls()[-1][:6] == [
        "compute", "tpus", "queued-resources", "delete", "md", "--zone=us-central2-b",
    ]  # fmt: skip
    assert "--force" in fake.calls()[-1]


def test_run_trains_evaluates_exports_fetches_and_deletes(fake, tmp_path, capsys):
    out = tmp_path / "model.tflite"
    argv = ["--target=edgetpu", f"--output={out}", "--checkpoint_step=5000", "--outputs=raw"]
    assert fake.run(
        "run", "--name=md", "--zone=us-west4-a", "--accelerator=v5e-16",
        "--config=configs/tiny.py", "--workdir=gs://bkt/run", "--skip_aot", "--poll_s=0", *argv,
    ) == 0, capsys.readouterr().err  # fmt: skip
    assert out.read_bytes().startswith(b"TFL3")
    ssh = fake.ssh_commands()
    (evaluate,) = [(w, c) for w, c in ssh if "mobiledet_jax.evaluate" in c]
    assert evaluate[0] == "all"
    assert "--workdir=gs://bkt/run --checkpoint_step=5000" in evaluate[1]
    assert "JAX_COMPILATION_CACHE_DIR=gs://bkt/run/xla_cache/v5e-16" in evaluate[1]
    (export,) = [(w, c) for w, c in ssh if "mobiledet_jax.export" in c]
    assert export[0] == "0" and "JAX_PLATFORMS=cpu" in export[1]
    assert "--target=edgetpu --outputs=raw" in export[1]
    calls = fake.calls()
    fetch = [c for c in calls if c[:4] == ["compute", "tpus", "tpu-vm", "scp"] and str(out) in c]
    assert fetch and fetch[0][4] == "md:mobiledet_jax_run/exports/model.tflite"
    assert calls[-1][:5] == ["compute", "tpus", "tpu-vm", "delete", "md"]


def test_run_survives_a_preemption(fake, monkeypatch, tmp_path):
    """The slice is lost while training: `run` recreates it, reinstalls the same revision and
    restarts training (which resumes from the workdir's checkpoint)."""
    calls = {"n": 0}
    real = tpu.steps.training_status

    def status(gc, job, lines=20, echo=True):
        calls["n"] += 1
        if calls["n"] == 1:  # first poll: the VM gets preempted under us
            fake.set_node_state("md", "PREEMPTED")
            return "RUNNING 1234", "step 10"
        return real(gc, job, lines, echo)

    monkeypatch.setattr(tpu.steps, "training_status", status)
    out = tmp_path / "m.tflite"
    assert fake.run(
        "run", "--name=md", "--zone=us-central2-b", "--accelerator=v4-32", "--config=configs/tiny.py",
        "--workdir=gs://bkt/run", "--skip_aot", "--poll_s=0", "--target=cpu", f"--output={out}",
    ) == 0  # fmt: skip
    creates = [c for c in fake.calls() if c[:4] == ["compute", "tpus", "tpu-vm", "create"]]
    assert len(creates) == 2
    trains = [c for _, c in fake.ssh_commands() if "mobiledet_jax.train" in c]
    assert len(trains) == 2 and trains[0] == trains[1]
    assert out.exists()


# -- the worker-side scripts, run for real under bash with a stub trainer -----------------------------

STUB_TRAINER = """#!/bin/bash
echo "stub train $*"
trap 'echo "SIGTERM: checkpointing"; exit 0' TERM
if [ -n "${STUB_EXIT:-}" ]; then exit "$STUB_EXIT"; fi
while true; do sleep 0.05; done
"""


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs util-linux setsid")
def test_worker_scripts_start_report_and_stop_training(tmp_path):
    from launch import remote

    rev = "ab" * 20
    code = tmp_path / "mobiledet_jax_run" / rev[:12]
    (code / ".venv" / "bin").mkdir(parents=True)
    (code / "REVISION").write_text(rev + "\n")
    stub = code / ".venv" / "bin" / "python"
    stub.write_text(STUB_TRAINER)
    stub.chmod(0o755)
    (tmp_path / "mobiledet_jax_run" / "current").symlink_to(code)

    def bash(script, **env):
        full_env = {**os.environ, "HOME": str(tmp_path), **env}
        return subprocess.run(["bash", "-c", script], env=full_env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    def status():
        out = bash(remote.status()).stdout
        return out.splitlines()[0], out

    args = ["--config=configs/x.py", "--config.train.batch_size=8", "--workdir=gs://b/it's"]
    env = {"JAX_COMPILATION_CACHE_DIR": "gs://b/it's/xla_cache/v4-8"}
    assert status()[0] == "@@status NOT_STARTED"
    assert bash(remote.check_revision("cd" * 20)).returncode != 0
    assert "@@revision" in bash(remote.check_revision(rev)).stdout
    started = bash(remote.start_training(rev, env, args))
    assert started.returncode == 0, started.stderr
    for _ in range(100):  # the detached trainer writes its first line
        line, out = status()
        if "stub train" in out:
            break
        time.sleep(0.05)
    assert line.startswith("@@status RUNNING"), out
    assert "stub train -m mobiledet_jax.train " + " ".join(args) in out  # quoting survives
    assert "[launch]" in out and f"revision {rev[:12]}" in out
    # A second start, and evaluation, refuse while it runs; a wrong revision refuses too.
    assert bash(remote.start_training(rev, env, args)).returncode == 3
    assert bash(remote.evaluate(env, ["--workdir=gs://b"])).returncode == 3
    assert bash(remote.start_training("cd" * 20, env, args)).returncode == 1
    # stop: SIGTERM to the process group; the trainer's own exit status is recorded.
    assert "training stopped" in bash(remote.stop()).stdout
    line, out = status()
    assert line == "@@status EXITED 0" and "SIGTERM: checkpointing" in out
    # A trainer that fails reports its status.
    assert bash(remote.start_training(rev, env, args), STUB_EXIT="7").returncode == 0
    for _ in range(200):
        line = status()[0]
        if line.startswith("@@status EXITED"):
            break
        time.sleep(0.05)
    assert line == "@@status EXITED 7"
