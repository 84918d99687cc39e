"""What users run: the `trainflow` command, the pre-flight check, card contents and the dashboard."""
