"""The local multi-cluster demo: its topology, its sample services, and the orchestrator that brings
it up and down on loopback (`isthmus demo up|status|down`)."""
