"""The headline benchmark: every method on every Shapes scenario (`erasekit bench`)."""
