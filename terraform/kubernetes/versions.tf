# Isthmus on a real Kubernetes cluster: one module instance per Isthmus cluster.
terraform {
  required_version = ">= 1.0"
  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.23"
    }
  }
}
