"""The Optuna search shared by foreach workers: storage, study, worker loop, heartbeats, journal."""
