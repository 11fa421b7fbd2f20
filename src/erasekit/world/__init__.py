"""The Shapes world: erasekit's embedded, offline text-to-image world."""
