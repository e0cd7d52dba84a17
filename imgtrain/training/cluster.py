"""Data-parallel training on Keras 3's own engine: `keras.distribution.DataParallel` on the JAX backend, across the
devices of one process or of several processes joined by `jax.distributed.initialize`.

Why JAX: Keras 3.15.1's `fit` under TensorFlow's MultiWorkerMirroredStrategy fails with TensorFlow 2.21 ("Attempt to
convert a value (PerReplica...) to a Tensor", keras-team/keras#20585), while DataParallel on JAX trains in sync.
TensorFlow stays the default and the fastest on one CPU (JAX is ~3.5x slower there), so the backend stays a
per-run choice and `distribute: data-parallel` asks for `backend: jax`.

How a run is shared out (see docs/distributed.md):
- `batch_size` is the global batch: each of P processes feeds batch_size/P rows of every global batch, so the
  same config trains the same model on 1 or N processes (the rows of a step are the single-process step's rows);
- every process builds the model from the same seed; DataParallel replicates the weights on every device and XLA
  averages the gradients;
- the last batch of an epoch is trimmed to a multiple of the device count (at most devices-1 images a pass);
- process 0 alone writes the run directory (it saves the replicated weights it holds; no gather is needed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from imgtrain.core.backend import undistributed
from imgtrain.core.config import TrainConfig, make_config
from imgtrain.core.errors import ConfigError, ImgtrainError

# where the engine's launchers put the job's shape when no flag or config key gives it (Keras' names first)
ENV = {
    "coordinator": ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("KERAS_DISTRIBUTION_NUM_PROCESSES",),
    "process_id": ("KERAS_DISTRIBUTION_PROCESS_ID",),
}
JOIN_TIMEOUT_S = 300  # how long a process waits for the others to join
SHUTDOWN_TIMEOUT_S = 3600  # how long the others wait at exit while process 0 scores the test set and writes the report

# (coordinator, num_processes, process_id) of the job this process joined: JAX joins a process to one job for its
# life, so a second join must be refused; who is chief is the Cluster's to say, never this record's
_joined: tuple[str | None, int, int] | None = None


@dataclass(frozen=True)
class Cluster:
    """This process's place in the run: which process of how many, over how many devices (model replicas)."""

    config: TrainConfig
    num_processes: int = 1
    process_id: int = 0
    replicas: int = 1

    @property
    def chief(self) -> bool:
        return self.process_id == 0

    @property
    def sharding(self) -> dict[str, Any] | None:
        """ArrayBatches options: this process's part of each global batch, trimmed to a multiple of the devices
        (None when the run is not distributed)."""
        if self.config.distribute == "none":
            return None
        return {"shard": (self.process_id, self.num_processes), "multiple": self.replicas}

    def summary(self) -> dict[str, Any]:
        return {
            "distribute": self.config.distribute,
            "num_processes": self.num_processes,
            "devices": self.replicas,
            "global_batch": self.config.batch_size,
            "per_process_batch": cast(int, self.config.batch_size) // self.num_processes,  # resolved: no `auto`
        }

    def agree(self, what: str, value: int) -> None:
        """Check that every process holds the same `value` (a collective: also a barrier before process 0 writes)."""
        if self.num_processes == 1:
            return
        import numpy as np
        from jax.experimental import multihost_utils

        values = np.asarray(multihost_utils.process_allgather(np.int64(value))).ravel().tolist()
        if len(set(values)) > 1:
            seen = ", ".join(f"process {i}: {v}" for i, v in enumerate(values))
            raise ImgtrainError(
                f"the processes disagree on {what} ({seen}); the run directory must be on storage that every host reads"
            )

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """What process 0 does alone (saving, scoring the test set, the report): no Keras distribution meanwhile, so
        that its variables live on its own devices, not on every process's (that would wait for the others)."""
        with undistributed():
            yield


def resolve(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with num_processes, process_id and coordinator filled from the environment where not given."""
    values = {}
    for key, names in ENV.items():
        value = getattr(cfg, key)
        if value is None:
            value = next((os.environ[n] for n in names if os.environ.get(n)), None)
            if value is not None and key != "coordinator":
                if not value.strip().isdigit():
                    raise ConfigError(f"${names[0]} must be a whole number (got {value!r})")
                value = int(value)
        values[key] = value
    if values["coordinator"]:
        values["coordinator"] = values["coordinator"].split(",")[0]  # Keras' variable may list every process
    values["num_processes"] = values["num_processes"] or 1
    values["process_id"] = values["process_id"] or 0
    return make_config(**{**cfg.model_dump(), **values})


@contextlib.contextmanager
def join(cfg: TrainConfig) -> Iterator[Cluster]:
    """Yields this process's Cluster; with `distribute`, joins the job and sets Keras' DataParallel meanwhile."""
    if cfg.distribute == "none":
        yield Cluster(cfg)
        return
    cfg = resolve(cfg)
    import jax
    import keras

    # resolve() filled num_processes and process_id; setup() fixed the global batch (no `auto`) before the join
    num_processes, process_id = cast(int, cfg.num_processes), cast(int, cfg.process_id)
    batch_size = cast(int, cfg.batch_size)
    if num_processes > 1:
        _initialize(cfg.coordinator, num_processes, process_id)
    replicas = jax.device_count()
    if batch_size % replicas:
        lower, upper = batch_size // replicas * replicas, (batch_size // replicas + 1) * replicas
        procs = f"{num_processes} process" + ("es" if num_processes > 1 else "")
        raise ConfigError(
            f"batch_size {cfg.batch_size} does not split over {replicas} devices ({procs}); "
            f"use a multiple of {replicas}, e.g. {lower or upper} or {upper}"
        )
    previous = keras.distribution.distribution()
    # auto_shard_dataset=False: each process feeds its own part of every batch (ArrayBatches' shard)
    keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
    try:
        yield Cluster(cfg, num_processes, process_id, replicas)
    finally:
        keras.distribution.set_distribution(previous)


def _initialize(coordinator: str | None, num_processes: int, process_id: int) -> None:
    global _joined
    key = (coordinator, num_processes, process_id)
    if _joined == key:
        return
    if _joined is not None:
        raise ImgtrainError(
            f"this process already joined the job at {_joined[0]} as process {_joined[2]} of "
            f"{_joined[1]}; a process can join one job only"
        )
    if not coordinator:
        raise ConfigError(
            f"num_processes {num_processes} needs coordinator HOST:PORT (where process 0 listens), "
            "or $KERAS_DISTRIBUTION_JOB_ADDRESSES"
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator must be HOST:PORT, e.g. 10.0.0.1:12345 (got {coordinator!r})")
    # JAX ends the process with a C++ fatal error when the coordinator cannot be reached or its port is taken:
    # check both first, so that these common mistakes are one-line errors
    if process_id == 0:
        _check_port_free(int(port))
    else:
        _wait_for_coordinator(host.strip("[]"), int(port))
    import jax

    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            initialization_timeout=JOIN_TIMEOUT_S,
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    except (RuntimeError, ValueError) as err:
        raise ImgtrainError(
            f"cannot join the job at {coordinator} as process {process_id} of {num_processes}: "
            f"{str(err).strip().splitlines()[0][:300]}"
        ) from err
    _joined = key


def _check_port_free(port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: a port left in TIME_WAIT is free
        try:
            s.bind(("", port))
        except OSError as err:
            raise ImgtrainError(
                f"process 0 cannot listen on port {port} as the coordinator: {err.strerror}; "
                "choose another port in --coordinator"
            ) from err


def _wait_for_coordinator(host: str, port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise ImgtrainError(
                    f"cannot reach the coordinator at {host}:{port} within {JOIN_TIMEOUT_S} s "
                    f"({err.strerror or err}); start process 0 there, or check the address, "
                    "port and firewall"
                ) from err
            time.sleep(1)
