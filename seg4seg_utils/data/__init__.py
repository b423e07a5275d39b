"""Layer 1, data: what a model is trained and judged on.

Sample tables on disk (:mod:`.records`), generated phantoms (:mod:`.phantoms`), the four injected failure
cases (:mod:`.inject`), prepared real datasets (:mod:`.real_data`) and the failure taxonomy (:mod:`.taxonomy`).
Imports only the package's foundation (``config``, ``seeding``, ``kernels``, ``stats``), never a layer above.
"""
