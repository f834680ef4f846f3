"""Sweeps: specs, the stage DAG, executors (in-process and Ray Tune/Train), and the MLflow recorder.
Importing this package does not import Ray; only the Ray executor does."""
