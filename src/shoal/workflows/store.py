"""A workflow's files in its run folder, and the round checkpoint.

    run_dir/
      models/global_round_0000.safetensors   initial global model
      models/global_round_0003.safetensors   global model after round 3 (the last
                                             few rounds' are kept: see prune_models)
      models/global_final.safetensors        (+ global_final.keras with a model hook)
      server_state/round_0003.safetensors    a server update's state after round 3, if it
                                             has one (kept for the rounds models are kept)
      checkpoint.json                        {"round": 3, "model": "models/...", "xxh3_128": ...}
                                             (+ "state", "state_xxh3_128" with a state)
      metrics.jsonl                          one line per completed round
      tensorboard/                           event files

Every file is written atomically (temporary file, fsync, rename), so after a
crash each file is either complete or absent. The checkpoint names the last
completed round; a server restarted mid-job resumes at the next round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal import checksum
from shoal.arrays import load_arrays, read_header, sync_file, write_arrays
from shoal.errors import ArrayFormatError

__all__ = ["Checkpoint", "RoundStore", "atomic_write_bytes"]

logger = logging.getLogger(__name__)

_ROUND_FILE = re.compile(r"^global_round_(\d{4,})\.safetensors$")
_STATE_FILE = re.compile(r"^round_(\d{4,})\.safetensors$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Checkpoint:
    """The last completed round and the global model it produced."""

    #: Last completed round (0: only the initial model exists).
    round: int
    #: The global model after that round, relative to the run folder.
    model: str
    #: Hex XXH3-128 checksum of the model file (``shoal.checksum``).
    checksum: str
    #: The server update's state after that round, relative to the run
    #: folder, and its checksum; None when the update keeps no state.
    state: str | None = None
    state_checksum: str | None = None


class RoundStore:
    """Models, metrics and the checkpoint of one workflow run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.models_dir = self.run_dir / "models"
        self.checkpoint_path = self.run_dir / "checkpoint.json"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tensorboard_dir = self.run_dir / "tensorboard"
        self.state_dir = self.run_dir / "server_state"
        #: Whether a state file may exist: a run without state (FedAvg)
        #: then never looks for one.
        self._states = self.state_dir.is_dir()
        self._digests: dict[Path, str] = {}
        #: A file the next model is written over (see adopt_spare); one a
        #: crash left behind is of no use.
        self._spare: Path | None = None
        self.spare_path.unlink(missing_ok=True)

    def model_path(self, round: int) -> Path:
        """Where the global model after ``round`` lives (round 0: the initial one)."""
        return self.models_dir / f"global_round_{round:04d}.safetensors"

    def final_path(self, suffix: str = ".safetensors") -> Path:
        return self.models_dir / f"global_final{suffix}"

    @property
    def spare_path(self) -> Path:
        # Hidden: a job's download leaves it out.
        return self.models_dir / ".spare.safetensors"

    def adopt_spare(self, path: Path) -> None:
        """Keep ``path``, a file the caller is done with and that nothing
        reads or maps any more (a result already aggregated), for the next
        :meth:`write_model` to write over: its pages are in the page cache
        already, a new file's are fresh memory (see ``arrays.write_arrays``).
        Replaces the spare kept before; a file that cannot be moved is left."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, self.spare_path)
        except OSError:
            return
        self._spare = self.spare_path

    def discard_spare(self) -> None:
        """Remove the spare no write took (a run that ended or failed)."""
        self._spare = None
        self.spare_path.unlink(missing_ok=True)

    def write_model(
        self,
        round: int,
        params: Mapping[str, np.ndarray],
        *,
        final: bool = False,
        durable: bool = True,
    ) -> Path:
        """Save the global model after ``round`` atomically; returns its path.

        ``durable=False`` leaves the flush to disk to :meth:`sync_model`, which
        must run before a checkpoint names the file.
        """
        path = self.final_path() if final else self.model_path(round)
        spare, self._spare = self._spare, None
        written = write_arrays(
            path, params, metadata={"round": str(round)}, durable=durable, reuse=spare
        )
        # Checksummed while writing: the checkpoint and every transfer reuse it.
        self._digests[path] = written.checksum
        return path

    def sync_model(self, path: Path) -> None:
        """Flush a model written with ``durable=False`` to disk."""
        sync_file(path)

    def sync_state(self, path: Path) -> None:
        """Flush a state written with ``durable=False`` to disk."""
        sync_file(path)

    def model_checksum(self, path: Path) -> str:
        """The checksum of a model file this store wrote (read back only if unknown)."""
        digest = self._digests.get(path)
        if digest is None:
            digest = self._digests[path] = checksum.of_file(path)
        return digest

    def state_path(self, round: int) -> Path:
        """Where a server update's state after ``round`` lives."""
        return self.state_dir / f"round_{round:04d}.safetensors"

    def write_state(
        self, round: int, state: Mapping[str, Any], *, durable: bool = True
    ) -> Path | None:
        """Save a server update's state after ``round`` (arrays as arrays,
        JSON scalars in the file's metadata); None, and no file, when it is
        empty. Written before the round's model: a model file on disk then
        always has its state beside it (see :meth:`load_checkpoint`)."""
        if not state:
            if self._states:
                # One a crashed try of this round left.
                self.state_path(round).unlink(missing_ok=True)
            return None
        path = self.state_path(round)
        self._states = True
        arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
        metadata = {"round": str(round), "scalars": json.dumps(scalars, allow_nan=False)}
        written = write_arrays(path, arrays, metadata=metadata, durable=durable)
        self._digests[path] = written.checksum
        return path

    def load_state(self, ckpt: Checkpoint) -> dict[str, Any]:
        """The server update's state the checkpoint names (``{}`` if none), in memory."""
        if ckpt.state is None:
            return {}
        path = self.run_dir / ckpt.state
        with open(path, "rb") as f:
            header, _ = read_header(f, os.fstat(f.fileno()).st_size)
        state: dict[str, Any] = dict(load_arrays(path, mmap=False))
        state.update(json.loads(header.metadata.get("scalars", "{}")))
        return state

    def prune_models(self, *, keep: int, latest: int) -> list[Path]:
        """Remove the round models before the last ``keep`` up to round
        ``latest`` (which a checkpoint must already name); the initial model
        (round 0) stays. Returns what was removed.

        Besides the disk: on the bench VM a page cache that grew by a model
        every round cost the workflow ~0.2 CPU-s a round at 100 MiB; pages
        of a removed model are reused (bench/transfer.py).
        """
        removed = []
        # A round's state goes with its model: a fallback to that model
        # (load_checkpoint) needs it.
        folders = [(self.models_dir, _ROUND_FILE)]
        if self._states:
            folders.append((self.state_dir, _STATE_FILE))
        for folder, pattern in folders:
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                m = pattern.match(p.name)
                if m and 0 < int(m.group(1)) <= latest - keep:
                    p.unlink(missing_ok=True)
                    self._digests.pop(p, None)
                    removed.append(p)
        if removed:
            logger.debug("removed %s (keep_models=%d)", ", ".join(p.name for p in removed), keep)
        return removed

    def save_checkpoint(
        self, round: int, model_path: Path, state_path: Path | None = None
    ) -> Checkpoint:
        """Record ``round`` as completed with ``model_path`` as its global
        model (and ``state_path`` as the server update's state)."""
        ckpt = Checkpoint(
            round=round,
            model=model_path.relative_to(self.run_dir).as_posix(),
            checksum=self.model_checksum(model_path),
        )
        doc: dict[str, Any] = {
            "round": ckpt.round,
            "model": ckpt.model,
            checksum.ALGORITHM: ckpt.checksum,
        }
        if state_path is not None:
            ckpt = Checkpoint(
                round=round,
                model=ckpt.model,
                checksum=ckpt.checksum,
                state=state_path.relative_to(self.run_dir).as_posix(),
                state_checksum=self.model_checksum(state_path),
            )
            doc["state"] = ckpt.state
            doc[f"state_{checksum.ALGORITHM}"] = ckpt.state_checksum
        atomic_write_bytes(self.checkpoint_path, json.dumps(doc, allow_nan=False).encode())
        return ckpt

    def _state_of(self, rnd: int, doc: Mapping[str, Any] | None) -> tuple[str, str] | None:
        """Round ``rnd``'s state file and checksum: the one ``doc`` (a
        checkpoint) names, checked against it, or (``doc`` None: a fallback)
        whatever readable file is there. ValueError when it is unusable."""
        path = self.state_path(rnd)
        if doc is not None:
            name, digest = doc.get("state"), doc.get(f"state_{checksum.ALGORITHM}")
            if name is None and digest is None:
                return None
            if not isinstance(name, str) or not isinstance(digest, str):
                raise ValueError("state and its checksum must be strings")
            if (self.run_dir / name).resolve() != path.resolve():
                raise ValueError(f"state {name!r} is not round {rnd}'s state file")
            if not path.is_file() or checksum.of_file(path) != digest:
                raise ValueError(f"state {name!r} is missing or does not match its checksum")
        elif not path.exists():
            return None
        if not self._valid_model(path):
            raise ValueError(f"state {path.name!r} is unreadable")
        return path.relative_to(self.run_dir).as_posix(), self.model_checksum(path)

    def _valid_model(self, path: Path) -> bool:
        try:
            load_arrays(path)
        except ArrayFormatError as exc:
            logger.warning("ignoring unreadable model %s: %s", path, exc)
            return False
        return True

    def _read_checkpoint(self) -> Checkpoint:
        doc = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        rnd, model = doc.get("round"), doc.get("model")
        # Checkpoints of earlier builds hold a SHA-256 instead.
        algorithm = checksum.ALGORITHM if checksum.ALGORITHM in doc else "sha256"
        digest = doc.get(algorithm)
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
            raise ValueError(f"bad round {rnd!r}")
        if not isinstance(model, str) or not isinstance(digest, str):
            raise ValueError(f"model and {algorithm} must be strings")
        path = (self.run_dir / model).resolve()
        if (
            not path.is_relative_to(self.run_dir.resolve())
            or path != self.model_path(rnd).resolve()
        ):
            raise ValueError(f"model {model!r} is not round {rnd}'s model file")
        if not path.is_file():
            raise ValueError(f"model {model!r} is missing")
        if checksum.of_file(path, algorithm) != digest:
            raise ValueError(f"model {model!r} does not match its {algorithm}")
        if not self._valid_model(path):
            raise ValueError(f"model {model!r} is unreadable")
        if algorithm == checksum.ALGORITHM:
            self._digests[path] = digest
        state = self._state_of(rnd, doc)
        return Checkpoint(
            round=rnd,
            model=model,
            checksum=self.model_checksum(path),
            state=state[0] if state else None,
            state_checksum=state[1] if state else None,
        )

    def load_checkpoint(self) -> Checkpoint | None:
        """The checkpoint to resume from, or ``None`` to start from scratch.

        A corrupt or inconsistent checkpoint is logged and replaced by the
        latest readable ``global_round_NNNN`` file (each is written atomically
        and only after its round completed).
        """
        if self.checkpoint_path.exists():
            try:
                return self._read_checkpoint()
            except (OSError, ValueError) as exc:
                logger.warning(
                    "checkpoint %s is unusable (%s); falling back to the latest model file",
                    self.checkpoint_path,
                    exc,
                )
        rounds = []
        if self.models_dir.is_dir():
            for p in self.models_dir.iterdir():
                m = _ROUND_FILE.match(p.name)
                if m:
                    rounds.append((int(m.group(1)), p))
        for rnd, path in sorted(rounds, reverse=True):
            if not self._valid_model(path):
                continue
            try:
                state = self._state_of(rnd, None)
            except ValueError as exc:
                logger.warning("ignoring round %d: %s", rnd, exc)
                continue
            if self.checkpoint_path.exists():
                logger.warning("resuming from %s (round %d)", path, rnd)
            return Checkpoint(
                round=rnd,
                model=path.relative_to(self.run_dir).as_posix(),
                checksum=self.model_checksum(path),
                state=state[0] if state else None,
                state_checksum=state[1] if state else None,
            )
        return None

    def load_model(self, ckpt: Checkpoint) -> dict[str, np.ndarray]:
        """The checkpoint's global model, read into memory."""
        return load_arrays(self.run_dir / ckpt.model, mmap=False)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl and fsync it.

        Strict JSON: a NaN or Inf raises ValueError and nothing is written
        (the workflow drops such numbers before they get here)."""
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def trim_metrics(self, after_round: int) -> None:
        """Drop metrics lines of rounds after ``after_round`` (and torn lines):
        a round interrupted before its checkpoint is re-run, not counted twice."""
        if not self.metrics_path.exists():
            return
        kept: list[str] = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rnd = json.loads(line).get("round")
            except (ValueError, AttributeError):
                continue
            if isinstance(rnd, int) and rnd <= after_round:
                kept.append(line)
        atomic_write_bytes(self.metrics_path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
