"""Reading the YAML file: schema, file search, YAML, ``--set`` overrides, pins, validation, algorithms.

Empty on purpose: import the modules (``hparam_joblib.config._load``, ``._schema``, ...).
"""
