"""Benchmark tasks: protocols that turn a backbone (through its embeddings or images) into scores.

``get_task("fov-mlp")`` returns the task's config with the protocol defaults; ``list_tasks()``
names them all. Task modules are registered lazily (``TASKS``), so importing this package does not
import any task's dependencies; a plugin adds tasks through the ``ocbench.tasks`` entry point or
``ocbench --plugin MODULE``. A task on single cells subclasses :class:`CellTask`
(:mod:`ocbench.tasks.cell_task`), whose :class:`CellSelection` settings choose and cut the cells.
"""

from ocbench.tasks.base import TASKS, Task, TaskConfig, TaskResult, get_task, get_task_class, list_tasks, register_task
from ocbench.tasks.cell_task import CellSelection, CellTask
from ocbench.tasks.context import Progress, RunContext

__all__ = [
    "TASKS",
    "Task",
    "TaskConfig",
    "TaskResult",
    "CellTask",
    "CellSelection",
    "RunContext",
    "Progress",
    "get_task",
    "get_task_class",
    "list_tasks",
    "register_task",
]
