"""Learning from search: ``ponder learn`` (:func:`learn`) and the :class:`Task` it needs.

* :mod:`ponder.learn.task`: the :class:`Task` protocol and :class:`CountdownTask`.
* :mod:`ponder.learn.data`: search trees -> policy and value training examples.
* :mod:`ponder.learn.loop`: the round loop (search, train, evaluate, keep the best).
"""

from ponder.learn.data import tree_examples
from ponder.learn.loop import LearnConfig, evaluate, format_table, learn
from ponder.learn.task import CountdownTask, Task

__all__ = ["CountdownTask", "LearnConfig", "Task", "evaluate", "format_table", "learn", "tree_examples"]
