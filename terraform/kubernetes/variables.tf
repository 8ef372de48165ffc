variable "cluster_name" {
  description = "The Isthmus cluster name (a DNS-1123 label), e.g. east-1."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cluster_name))
    error_message = "The cluster_name must be a DNS-1123 label: lower-case letters, digits and '-', 1-63 characters."
  }
}

variable "region" {
  description = "The cluster's region, e.g. us-east (failover priority is computed from region/zone)."
  type        = string
}

variable "zones" {
  description = "The cluster's zones, e.g. [\"us-east-1a\", \"us-east-1b\"]."
  type        = list(string)
  validation {
    condition     = length(var.zones) > 0
    error_message = "The zones list must name at least one zone."
  }
}

variable "trust_domain" {
  description = "The mesh's SPIFFE trust domain."
  type        = string
  default     = "mesh.example"
}

variable "namespace" {
  description = "The Kubernetes namespace this module creates and deploys into."
  type        = string
  default     = "isthmus"
}

variable "image" {
  description = "The Isthmus container image (built from terraform/kubernetes/Dockerfile)."
  type        = string
  default     = "isthmus:0.1.0"
}

variable "pki_dir" {
  description = "A PKI directory made by `isthmus certs` holding bundle.pem and clusters/<cluster_name>/ (CA and the gateway and control identities)."
  type        = string
}

variable "registry_url" {
  description = "The registry backend (etcd://host:port[,host:port] or consul://host:port); empty: SQLite in the control plane's data volume (one replica, data lost with the pod)."
  type        = string
  default     = ""
}

variable "gateway_replicas" {
  description = "How many gateway pods (each serves the east-west, outbound and admin ports)."
  type        = number
  default     = 2
}

variable "ports" {
  description = "Container and Service ports."
  type = object({
    eastwest = number
    outbound = number
    admin    = number
    control  = number
  })
  default = {
    eastwest = 15443
    outbound = 15001
    admin    = 15000
    control  = 15010
  }
}

variable "advertised_eastwest" {
  description = "host:port peers reach the east-west gateway at (default: the LoadBalancer's ingress address and the east-west port)."
  type        = string
  default     = null
}

variable "service_monitor" {
  description = "Declare a Prometheus Operator ServiceMonitor for the gateways' admin /metrics (needs the monitoring.coreos.com CRDs)."
  type        = bool
  default     = true
}

variable "peer_tokens" {
  description = "Peering tokens to redeem, by peer cluster name (from `isthmus cluster token --for <cluster_name>` on each peer): one Job per peer registers it."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "labels" {
  description = "Extra labels for every object."
  type        = map(string)
  default     = {}
}
