output "namespace" {
  description = "The namespace Isthmus runs in."
  value       = kubernetes_namespace_v1.this.metadata[0].name
}

output "eastwest_address" {
  description = "host:port peers reach this cluster's east-west gateway at (put it in peering tokens)."
  value       = local.advertised_eastwest
}

output "outbound_service" {
  description = "Where in-cluster applications send requests (Host: name.namespace of the service)."
  value       = "${kubernetes_service_v1.gateway.metadata[0].name}.${var.namespace}.svc.cluster.local:${var.ports.outbound}"
}

output "control_service" {
  description = "The control plane's API inside the cluster."
  value       = "${local.control_host}:${var.ports.control}"
}

output "issue_token_command" {
  description = "How to issue a peering token on this cluster for a peer named PEER."
  value       = "kubectl -n ${var.namespace} exec deploy/isthmus-control -- isthmus cluster token --for PEER --config ${local.config_dir}/control.toml"
}
