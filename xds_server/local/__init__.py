"""Everything on one machine: the demo, a local Envoy gateway, sample backends, the control
plane as a child process, and an ADS client (for the tests and the benchmarks)."""
