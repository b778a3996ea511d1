"""Scripts that print figures (speed, memory, soak, fuzz) and the code they share; never imported by the service."""
