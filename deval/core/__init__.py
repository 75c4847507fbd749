"""What a measurement is, with no I/O beyond reading the shipped task files: tasks, valid sets, item tries,
sampling and filters, the backend protocol, metrics, exact models, summary and verdict. Imports nothing else of deval."""
