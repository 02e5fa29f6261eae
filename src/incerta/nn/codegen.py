"""One thread at a time through e3nn's code generation.

e3nn writes its layers' code with torch.fx, and a copy of such a layer traces it again; fx's
symbolic tracing patches module-level state while it runs, so two threads building or copying
models at once fail (``CURRENT_PATCHER is None``: seen with two mlearn trainings checked in one
process). Building a potential, copying one (loading, export, the training's weight average)
hold :data:`CODEGEN_LOCK`, so loads from several threads are safe. A model running in one thread
while another builds or loads one is not: fx's tracing patches every module call of the process
while it runs (``module is not installed as a submodule``); use processes for that.
"""

import threading

#: re-entrant: a copy of a potential may build one
CODEGEN_LOCK = threading.RLock()
