"""Reading a study: counts, best trials, failures, the results command line, retrain."""
