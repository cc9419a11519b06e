"""The front door: auth, routing with canary weights, proxy to replicas, the console."""
