"""What operators use: Prometheus metrics, health, inspection of the connected Envoys, and the
xDS port's TLS."""
