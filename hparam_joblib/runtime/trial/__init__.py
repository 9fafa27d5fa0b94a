"""The warm trial process and its worker-side handle. Imports no Optuna (keep it that way)."""
