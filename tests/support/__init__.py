"""What the tests share: sites, snapshots, waiting, processes, a Kubernetes API, stream drivers."""
