"""Terraform provider for the local Isthmus demo (`isthmus.local/isthmus/isthmus`).

Resources `isthmus_cluster`, `isthmus_peering`, `isthmus_service_export`, `isthmus_failover_policy`
and `isthmus_route_rules` act through the `isthmus` command line of the project's own virtualenv.
Lives in its own virtualenv (`.venv-tf`) because the `tf` framework pins protobuf < 6; must not
import Isthmus itself.
"""
