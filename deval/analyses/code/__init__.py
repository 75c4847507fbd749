"""`deval code`: HumanEval pass@k, Δpass and solution diversity, every candidate run in a sandbox."""
