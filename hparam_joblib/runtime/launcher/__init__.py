"""The launcher: create the study, start the loops, supervise them, show progress, summarise."""
