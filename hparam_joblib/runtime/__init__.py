"""The process model: the launcher (``launcher/``), the worker loops and their backends
(``loops/``), and the warm trial process (``trial/``); beside them the study-level rules both
sides share (failures, stop rules, run history, tracking, the launcher's lease).

Every ``__init__`` of this package is empty on purpose: a trial process imports
``runtime.trial`` and must not import Optuna.
"""
