"""Where a search's Optuna study lives: SQLite in the search's folder (one `imgtrain tune` process, the default),
or a database server (`--storage postgresql://...`) that any number of `imgtrain tune` workers on any number of
hosts share.

With a server, each worker sends Optuna's heartbeat while it runs a trial; a trial whose worker has been silent for
twice `heartbeat_s` (killed, its host gone) is marked failed by the next worker that starts a trial, and Optuna's
RetryHeartbeatStaleTrialCallback queues it again with the same parameters and run directory, so the worker that
takes it resumes that run from its last completed epoch. The run directories must then be on a filesystem that
every worker sees (the search's --dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    import optuna

MAX_RETRIES = 3  # a trial whose workers keep dying is queued again at most this often


def is_shared(url: str | None) -> TypeGuard[str]:
    return bool(url)


def shown(url: str) -> str:
    """The storage URL with its password hidden, for messages and tune.html."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(study_dir: Path, url: str | None, heartbeat_s: float) -> str | optuna.storages.RDBStorage:
    """The Optuna storage of the search: study_dir/study.db, or the database at `url` with heartbeats."""
    import optuna

    if not is_shared(url):
        return f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if heartbeat_s <= 0:
        raise ImgtrainError(f"--heartbeat must be a positive number of seconds (got {heartbeat_s:g})")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4 (since 2.9, and what we need)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=max(1, round(heartbeat_s)),
                grace_period=max(2, round(2 * heartbeat_s)),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )
    except ImportError as err:  # Optuna's wrapper of the driver's ModuleNotFoundError
        missing = getattr(err.__cause__, "name", None) or "the database driver"
        hint = "psycopg[binary]" if missing == "psycopg" else missing
        raise ImgtrainError(
            f"storage {shown(url)} needs the database driver {missing!r}: pip install {hint} (or imgtrain[postgres])"
        ) from err
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors for a URL or server it cannot use
        cause = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ImgtrainError(f"cannot open the study storage {shown(url)}: {cause}") from err


@contextlib.contextmanager
def one_worker(study_dir: Path, url: str | None) -> Iterator[None]:
    """With SQLite, one `imgtrain tune` process per search: a second would take the first one's running trial for a
    killed one. A shared storage lets any number of workers in."""
    if is_shared(url):
        yield
        return
    with open(study_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ImgtrainError(
                f"another imgtrain tune is running the search in {study_dir}; wait for it to end, "
                "choose another --name, or put the study on a database server (--storage) for "
                "several workers"
            ) from err
        yield
