"""Running a plan: Ray, the executor, sessions, progress, the stage registry."""
