"""What every process shares (logs, metrics, health checks, dates in words): it imports no app.

The apps and the wiring in mailportal/ import it, never the other way round.
"""
