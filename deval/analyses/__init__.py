"""The analyses: profile, sweep, calibration, diversity. Each drives a backend, writes a run directory and
returns a summary for a report."""
