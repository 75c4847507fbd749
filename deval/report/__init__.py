"""Reports of run summaries: terminal (rich) tables and charts."""
