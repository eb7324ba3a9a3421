"""The ADS server: snapshots served to Envoy over gRPC, in both xDS variants."""
