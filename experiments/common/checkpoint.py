"""orbax checkpoints of the train state, with the latest one restored automatically.

A checkpoint holds the whole train state (step, parameters, optimiser state, model state, RNG)
plus a small JSON record (e.g. the training time so far). orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous checkpoint
intact; the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores ``(state, record)`` pairs in ``directory``."""

    def __init__(self, directory: str | Path, *, keep: int):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Saves asynchronously; a later save or :meth:`close` waits for it."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )

    def restore_latest(self, state: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest ``(state, record)``, placed like ``state`` (same shardings), or None."""
        step = self._manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
            ),
        )
        return restored.state, dict(restored.record)

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
