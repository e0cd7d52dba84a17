"""Data-parallel training for real on one machine: two `imgtrain train` processes joined over a localhost port, and
two virtual CPU devices in one process (XLA's host device count), against a one-process run of the same config."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import IMGTRAIN, ROOT, free_port, run_cli

ARGS = [
    "train",
    "--dataset",
    "mnist",
    "--model",
    "mlp",
    "--epochs",
    "2",
    "--train-limit",
    "4000",
    "--batch-size",
    "64",
    "--backend",
    "jax",
    "--no-report",
    "--set",
    "tensorboard=false",
    "--set",
    "test_limit=2000",
]
DP = ["--distribute", "data-parallel"]
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def read(run, name):
    return json.loads((run / name).read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    run_cli(*ARGS, "--out", out)
    return out


def start_job(out, port: int) -> list[subprocess.Popen]:
    job = [*ARGS, *DP, "--num-processes", "2", "--coordinator", f"127.0.0.1:{port}", "--out", str(out)]
    return [
        subprocess.Popen(
            [*IMGTRAIN, *job, "--process-id", str(i)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]


def wait_for(path, procs, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs) and time.time() < deadline, [p.communicate() for p in procs]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The same config as two processes on 127.0.0.1 (global batch 64 = 2 x 32), both killed (SIGKILL) after epoch
    1 and started again with the same command (on another port: the coordinator's address may change)."""
    out = tmp_path_factory.mktemp("two") / "run"
    procs = start_job(out, free_port())
    wait_for(out / "last.keras", procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    assert read(out, "run.json")["status"] == "running"
    procs = start_job(out, free_port())
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, f"process exited {p.returncode}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    return out, [stdout for stdout, _ in results]


def test_two_processes_train_as_one_process(single, two_processes):
    out, _ = two_processes
    one, two = read(single, "metrics.json"), read(out, "metrics.json")
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 0.005, (one["test_accuracy"], two["test_accuracy"])
    assert abs(one["best_val_accuracy"] - two["best_val_accuracy"]) <= 0.005
    assert two["test_images"] == one["test_images"] == 2000 and two["epochs_run"] == 2


def test_the_run_directory_is_written_once_by_process_0(two_processes):
    out, stdouts = two_processes
    assert f"run directory: {out}" in stdouts[0] and "test accuracy" in stdouts[0]
    last = stdouts[1].strip().splitlines()[-1]
    assert re.fullmatch(
        r"done; peak RSS of this process [\d,]+ MiB; process 0 writes the run directory: " + re.escape(str(out)), last
    ), last
    info = read(out, "run.json")
    assert info["status"] == "done" and info["versions"]["backend"] == "jax"
    assert info["distribution"] == {
        "distribute": "data-parallel",
        "num_processes": 2,
        "devices": 2,
        "global_batch": 64,
        "per_process_batch": 32,
    }
    log = (out / "train.log").read_text()  # the first start and the resumed one, each written by process 0 alone
    assert log.count("data-parallel: 2 processes, 2 devices") == 2 and log.count(" done: ") == 1
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 epochs, written by one process
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_two_virtual_devices_give_the_weights_of_two_processes_killed_and_resumed(tmp_path, two_processes):
    """One process over 2 virtual CPU devices runs the same program as 2 processes of 1 device: bit-identical
    weights, which also shows that the killed and resumed two-process run ended as an uninterrupted one."""
    out = tmp_path / "run"
    run_cli(*ARGS, *DP, "--out", out, env=TWO_DEVICES)
    assert read(out, "run.json")["distribution"] == {
        "distribute": "data-parallel",
        "num_processes": 1,
        "devices": 2,
        "global_batch": 64,
        "per_process_batch": 64,
    }
    two = two_processes[0]
    assert read(two, "run.json")["resumed"] == [1]
    assert read(out, "metrics.json")["weights_sha256"] == read(two, "metrics.json")["weights_sha256"]
    assert (out / "history.csv").read_text().split("\n")[0] == (two / "history.csv").read_text().split("\n")[0]


@pytest.mark.parametrize(
    "args, env, expect",
    [
        (["--backend", "tensorflow"], {}, "error: distribute 'data-parallel' runs on backend 'jax' (got 'tensorflow')"),
        (
            ["--batch-size", "63"],
            TWO_DEVICES,
            "error: batch_size 63 does not split over 2 devices (1 process); use a multiple of 2, e.g. 62 or 64",
        ),
        (
            ["--num-processes", "2", "--process-id", "2"],
            {},
            "error: process_id 2 is not below num_processes 2; valid: 0 to 1",
        ),
        (["--num-processes", "2"], {}, "error: num_processes 2 needs coordinator HOST:PORT"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path, args, env, expect):
    proc = run_cli(*ARGS, *DP, *args, "--out", tmp_path / "run", env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(expect), proc.stderr[-2000:]
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_coordinator_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli(
            *ARGS,
            *DP,
            "--num-processes",
            "2",
            "--process-id",
            "0",
            "--coordinator",
            f"127.0.0.1:{port}",
            "--out",
            tmp_path / "run",
            check=False,
        )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"error: process 0 cannot listen on port {port} as the coordinator: Address already in use; choose another "
        "port in --coordinator"
    )
    assert not (tmp_path / "run").exists()


def test_process_shards_make_up_the_one_process_batches():
    import numpy as np

    from imgtrain.data.batches import ArrayBatches

    x, y = np.arange(1003)[:, None], np.arange(1003)  # 15 batches of 64 and 43 rows: the last trimmed to 42
    one = ArrayBatches(x, y, 64, seed=3, epoch=1, multiple=2)  # one process, two devices
    two = [ArrayBatches(x, y, 64, seed=3, epoch=1, shard=(p, 2), multiple=2) for p in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 16 and one.rows_per_pass == 1002
    for i in range(16):
        a, b = two[0][i][1], two[1][i][1]
        assert len(a) == len(b) and np.array_equal(np.concatenate([a, b]), one[i][1])
    plain = ArrayBatches(x, y, 64, seed=3, epoch=1)  # a one-device run keeps every row, as before
    assert len(plain) == 16 and len(plain[15][1]) == 43 and np.array_equal(plain[3][1], one[3][1])
    assert len(ArrayBatches(x, y, 64, seed=3, multiple=64)) == 15  # 43 rows cannot fill 64 devices: dropped


def test_the_job_shape_comes_from_flags_then_the_engines_variables(monkeypatch):
    from imgtrain.core.config import make_config
    from imgtrain.training.cluster import resolve

    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:2345")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    cfg = resolve(make_config(backend="jax", distribute="data-parallel"))
    assert (cfg.num_processes, cfg.process_id, cfg.coordinator) == (2, 1, "10.0.0.1:1234")
    cfg = resolve(make_config(backend="jax", distribute="data-parallel", process_id=0, coordinator="h:1"))
    assert (cfg.num_processes, cfg.process_id, cfg.coordinator) == (2, 0, "h:1")


def test_learning_rate_scales_with_the_global_batch_only_when_asked():
    from imgtrain.core.config import make_config
    from imgtrain.training.schedules import peak_lr

    cfg = dict(learning_rate=1e-3, batch_size=512, lr_base_batch=128)
    assert peak_lr(make_config(**cfg)) == 1e-3
    assert peak_lr(make_config(**cfg, lr_scaling="linear")) == pytest.approx(4e-3)
    assert peak_lr(make_config(**cfg, lr_scaling="sqrt")) == pytest.approx(2e-3)


# ----- a folder too large for memory: streamed batches, each process decoding only its shard -----


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2,400 MNIST training images as PNG files in one folder per class (train/ and test/ splits), one of them
    corrupt; the runs below force it to stream (decoded per batch, never held in memory)."""
    from conftest import write_pngs

    from imgtrain import load_dataset

    ds = load_dataset("mnist", val_split=0, train_limit=2000, test_limit=400)
    root = tmp_path_factory.mktemp("digits") / "digits"
    names = [str(i) for i in range(10)]
    write_pngs(root / "train", ds.train.x, ds.train.y, names)
    write_pngs(root / "test", ds.test.x, ds.test.y, names)
    (root / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def streamed(root, out) -> list[str]:
    return [
        "train",
        "--dataset",
        f"folder:{root}",
        "--set",
        "stream=true",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--backend",
        "jax",
        "--no-report",
        "--set",
        "tensorboard=false",
        "--out",
        str(out),
    ]


def start_streamed_job(root, out, port: int) -> list[subprocess.Popen]:
    job = [*streamed(root, out), *DP, "--num-processes", "2", "--coordinator", f"127.0.0.1:{port}"]
    return [
        subprocess.Popen(
            [*IMGTRAIN, *job, "--process-id", str(i)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]


def test_a_streamed_folder_trains_on_two_processes_killed_and_resumed_as_on_two_devices(folder, tmp_path):
    """Two processes, each decoding half of every global batch of 64, killed after epoch 1 and resumed: the same
    weights, bit for bit, as one process over two virtual devices, and the accuracy of one plain JAX process."""
    out = tmp_path / "two"
    procs = start_streamed_job(folder, out, free_port())
    wait_for(out / "last.keras", procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    procs = start_streamed_job(folder, out, free_port())
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, f"process exited {p.returncode}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    run_cli(*streamed(folder, tmp_path / "devices"), *DP, env=TWO_DEVICES)
    run_cli(*streamed(folder, tmp_path / "one"))
    two, devices, one = (read(tmp_path / r, "metrics.json") for r in ("two", "devices", "one"))
    info = read(out, "run.json")
    assert info["data"]["streamed"] is True and info["resumed"] == [1] and info["skipped"] == 1
    assert two["weights_sha256"] == devices["weights_sha256"]
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.005 and two["test_images"] == one["test_images"]
    assert two["test_accuracy"] > 0.8
    peaks = [
        info["peak_rss_mib"],
        float(re.search(r"peak RSS of this process ([\d,]+) MiB", results[1][0]).group(1).replace(",", "")),
    ]
    assert all(100 < mib < 4096 for mib in peaks), peaks
    print(
        f"peak RSS per process (MiB): {peaks}; test accuracy two processes {two['test_accuracy']:.4f}, "
        f"one process {one['test_accuracy']:.4f}"
    )


def test_streamed_shards_make_up_the_one_process_batch_and_replace_a_bad_file(folder):
    from imgtrain import load_dataset
    from imgtrain.data.stream import ImageBatches

    split = load_dataset(f"folder:{folder}", stream=True, val_split=0).train
    bad = split.paths.index(str(folder / "train" / "3" / "broken.png"))
    one = ImageBatches(split, (28, 28, 1), 64, shuffle=True, seed=5, epoch=1, shard=(0, 1), multiple=2)
    two = [
        ImageBatches(split, (28, 28, 1), 64, shuffle=True, seed=5, epoch=1, shard=(p, 2), multiple=2) for p in (0, 1)
    ]
    assert len(one) == len(two[0]) == len(two[1]) == 32 and one.rows_per_pass == 2000  # 2,001 files: 1 trimmed
    b = next(i for i in range(len(one)) if bad in one._shard_rows(i))
    (x0, y0), (x1, y1), (x, y) = two[0][b], two[1][b], one[b]
    assert len(x0) == len(x1) == 32 and len(x) == 64  # the bad file replaced, not dropped: every process feeds 32
    np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
    np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    assert split.paths[bad] in one.skipped


# ----- two "hosts": the same job across two network namespaces joined by a veth pair -----

NETNS = ("imgtrain-h0", "imgtrain-h1")  # the namespaces, and the host names of the processes in them
ETC_NETNS = Path("/etc/netns")
ADDRS = ("10.77.0.1", "10.77.0.2")


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_hosts():
    """Two network namespaces, each with its loopback and one end of a veth pair (10.77.0.1/24 and 10.77.0.2/24):
    the coordinator is reached over a non-loopback address, as between two hosts, and no traffic leaves them."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns); this process runs as uid %d" % os.geteuid())
    for ns in NETNS:
        _sh("ip", "netns", "del", ns)  # a namespace left by an earlier, killed run
    made = _sh("ip", "netns", "add", NETNS[0])
    if made.returncode:
        pytest.skip(f"ip netns add is not allowed here: {made.stderr.strip()}")
    try:
        steps = [
            ("ip", "netns", "add", NETNS[1]),
            (
                "ip",
                "link",
                "add",
                "imgtrain-v0",
                "netns",
                NETNS[0],
                "type",
                "veth",
                "peer",
                "name",
                "imgtrain-v1",
                "netns",
                NETNS[1],
            ),
        ]
        for i, ns in enumerate(NETNS):
            steps += [
                ("ip", "-n", ns, "addr", "add", f"{ADDRS[i]}/24", "dev", f"imgtrain-v{i}"),
                ("ip", "-n", ns, "link", "set", f"imgtrain-v{i}", "up"),
                ("ip", "-n", ns, "link", "set", "lo", "up"),
            ]
        for step in steps:
            done = _sh(*step)
            assert done.returncode == 0, (step, done.stderr)
        # each "host" has its own name that resolves to its own address, as on a cluster: Gloo, JAX's collectives on
        # CPU, tells the others the address its host name resolves to (`ip netns exec` mounts /etc/netns/NS/hosts)
        for ns in NETNS:
            (ETC_NETNS / ns).mkdir(parents=True, exist_ok=True)
            (ETC_NETNS / ns / "hosts").write_text(
                "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for a, n in zip(ADDRS, NETNS))
            )
        yield NETNS
    finally:
        for ns in NETNS:
            _sh("ip", "netns", "del", ns)  # deletes the veth pair with it
            shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)


def test_two_processes_in_two_network_namespaces_train_as_two_processes_on_localhost(
    two_hosts, two_processes, tmp_path
):
    """Process 0 in one namespace listens on 10.77.0.1; process 1 in the other reaches it over the veth pair.
    The weights are those of the localhost pair (itself bit-identical to one process over two devices)."""
    out, port = tmp_path / "run", 29500
    job = [*ARGS, *DP, "--num-processes", "2", "--coordinator", f"{ADDRS[0]}:{port}", "--out", str(out)]
    # in its own UTS namespace too, so that each process has its host's name
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "unshare",
                "--uts",
                "sh",
                "-c",
                'hostname "$0" && exec "$@"',
                ns,
                *IMGTRAIN,
                *job,
                "--process-id",
                str(i),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, ns in enumerate(two_hosts)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, f"process exited {p.returncode}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    assert read(out, "metrics.json")["weights_sha256"] == read(two_processes[0], "metrics.json")["weights_sha256"]
    assert read(out, "run.json")["distribution"]["num_processes"] == 2
