"""``python -m hparam_joblib``: the results command line (same as ``hparam-joblib``)."""

from __future__ import annotations

from hparam_joblib.results._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
