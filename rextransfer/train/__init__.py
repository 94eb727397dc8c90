"""One fine-tuning run: run.py orchestrates, loop.py trains, rundir.py writes the run folder,
distributed.py places processes, metrics.py counts, inference.py uses a finished run."""
