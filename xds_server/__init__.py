"""The control plane's serving side, in layers, each importing only those below it:

- `ads/`: the xDS protocol (streams, nonces, ACK/NACK; state of the world and delta);
- `operations/`: what operators use (metrics, health, inspection, the xDS port's TLS);
- `process/`: the control plane and the assembly of `serve` (and of Kubernetes mode);
- `local/`: running it all on one machine (the demo, a local Envoy, sample backends, an
  ADS client);
- `cli.py`: the `staticsite-xds` command, which only parses its arguments.
"""
