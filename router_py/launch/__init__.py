"""Launching: the launcher command, its child processes, the model source and env-backed flags."""
