"""The worker loops: where they run (loky, Dask), what each runs, how they start, slots and GPU leases."""
