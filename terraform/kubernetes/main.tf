# One Isthmus cluster on Kubernetes: a namespace, the cluster's certificates as Secrets, its TOML
# config as a ConfigMap, the control plane and gateway Deployments, a LoadBalancer Service for the
# east-west (mTLS) port, internal Services, a ServiceMonitor, and one Job per peering token.

locals {
  common_labels = {
    "app.kubernetes.io/name"       = "isthmus"
    "app.kubernetes.io/part-of"    = "isthmus"
    "app.kubernetes.io/managed-by" = "terraform"
    "isthmus.dev/cluster"          = var.cluster_name
  }
  base_labels = merge(var.labels, local.common_labels)
  control_labels = {
    "app.kubernetes.io/name"      = "isthmus"
    "app.kubernetes.io/component" = "control-plane"
    "isthmus.dev/cluster"         = var.cluster_name
  }
  gateway_labels = {
    "app.kubernetes.io/name"      = "isthmus"
    "app.kubernetes.io/component" = "gateway"
    "isthmus.dev/cluster"         = var.cluster_name
  }
  metrics_labels = {
    "isthmus.dev/metrics" = "true"
    "isthmus.dev/cluster" = var.cluster_name
  }

  config_dir = "/etc/isthmus/config"
  pki_mount  = "/etc/isthmus/pki"
  data_dir   = "/var/lib/isthmus"
  cluster_ca = "${var.pki_dir}/clusters/${var.cluster_name}"

  control_host = "isthmus-control.${var.namespace}.svc.cluster.local"
  registry_url = var.registry_url != "" ? var.registry_url : "sqlite:///${local.data_dir}/registry.db"
  # Peers redeem tokens against this address: the LoadBalancer's, unless given.
  lb_ingress = try(kubernetes_service_v1.eastwest.status[0].load_balancer[0].ingress[0], {})
  advertised_eastwest = coalesce(
    var.advertised_eastwest,
    "${coalesce(lookup(local.lb_ingress, "hostname", ""), lookup(local.lb_ingress, "ip", ""), "pending")}:${var.ports.eastwest}",
  )

  # The same cluster TOML for both roles, but for the addresses: each process binds its own ports on
  # every interface and reaches the control plane through its Service.
  toml_head    = <<-EOT
    trust_domain = "${var.trust_domain}"

    [cluster]
    name = "${var.cluster_name}"
    region = "${var.region}"
    zones = [${join(", ", [for z in var.zones : "\"${z}\""])}]
    data_dir = "${local.data_dir}"

    [pki]
    dir = "${local.pki_mount}"

    [registry]
    url = "${local.registry_url}"
  EOT
  control_toml = <<-EOT
    ${local.toml_head}
    [gateway]
    eastwest = "${local.advertised_eastwest}"
    outbound = "0.0.0.0:${var.ports.outbound}"
    admin = "0.0.0.0:${var.ports.admin}"

    [control]
    api = "0.0.0.0:${var.ports.control}"
    federation = "0.0.0.0:${var.ports.control + 1}"
  EOT
  gateway_toml = <<-EOT
    ${local.toml_head}
    [gateway]
    eastwest = "0.0.0.0:${var.ports.eastwest}"
    outbound = "0.0.0.0:${var.ports.outbound}"
    admin = "0.0.0.0:${var.ports.admin}"

    [control]
    api = "${local.control_host}:${var.ports.control}"
    federation = "${local.control_host}:${var.ports.control + 1}"
  EOT
}

resource "kubernetes_namespace_v1" "this" {
  metadata {
    name   = var.namespace
    labels = local.base_labels
  }
}

# -- certificates (made offline by `isthmus certs`; private keys never leave these Secrets) ----------

resource "kubernetes_secret_v1" "cluster_ca" {
  metadata {
    name      = "isthmus-${var.cluster_name}-ca"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.base_labels
  }
  type = "Opaque"
  data = {
    "bundle.pem" = file("${var.pki_dir}/bundle.pem")
    "ca.crt"     = file("${local.cluster_ca}/ca.crt")
    "ca.key"     = file("${local.cluster_ca}/ca.key")
  }
}

resource "kubernetes_secret_v1" "identity" {
  for_each = toset(["gateway", "control"])
  metadata {
    name      = "isthmus-${var.cluster_name}-${each.key}"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.base_labels
  }
  type = "Opaque"
  data = {
    "cert.pem"  = file("${local.cluster_ca}/identities/${each.key}/cert.pem")
    "key.pem"   = file("${local.cluster_ca}/identities/${each.key}/key.pem")
    "chain.pem" = file("${local.cluster_ca}/identities/${each.key}/chain.pem")
  }
}

resource "kubernetes_secret_v1" "peer_tokens" {
  metadata {
    name      = "isthmus-${var.cluster_name}-peer-tokens"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.base_labels
  }
  type = "Opaque"
  data = var.peer_tokens
}

# -- the cluster TOML ---------------------------------------------------------------------------------

resource "kubernetes_config_map_v1" "config" {
  metadata {
    name      = "isthmus-${var.cluster_name}-config"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.base_labels
  }
  data = {
    "control.toml" = local.control_toml
    "gateway.toml" = local.gateway_toml
  }
}

# -- control plane ------------------------------------------------------------------------------------

resource "kubernetes_deployment_v1" "control" {
  metadata {
    name      = "isthmus-control"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = merge(local.base_labels, local.control_labels)
  }
  spec {
    replicas = 1 # the registry has one writer per cluster; with SQLite it lives in this pod
    selector {
      match_labels = local.control_labels
    }
    strategy {
      type = "Recreate"
    }
    template {
      metadata {
        labels = merge(local.base_labels, local.control_labels)
        annotations = {
          "isthmus.dev/config-sha256" = sha256(local.control_toml)
        }
      }
      spec {
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          fs_group        = 10001
        }
        container {
          name  = "control"
          image = var.image
          args  = ["control", "--config", "${local.config_dir}/control.toml"]
          port {
            name           = "api"
            container_port = var.ports.control
            protocol       = "TCP"
          }
          port {
            name           = "federation"
            container_port = var.ports.control + 1
            protocol       = "TCP"
          }
          readiness_probe {
            tcp_socket {
              port = "api"
            }
            period_seconds = 5
          }
          liveness_probe {
            tcp_socket {
              port = "api"
            }
            initial_delay_seconds = 10
            period_seconds        = 10
          }
          resources {
            requests = { cpu = "100m", memory = "128Mi" }
            limits   = { memory = "512Mi" }
          }
          volume_mount {
            name       = "config"
            mount_path = local.config_dir
            read_only  = true
          }
          volume_mount {
            name       = "pki"
            mount_path = local.pki_mount
            read_only  = true
          }
          volume_mount {
            name       = "data"
            mount_path = local.data_dir
          }
        }
        volume {
          name = "config"
          config_map {
            name = kubernetes_config_map_v1.config.metadata[0].name
          }
        }
        volume {
          name = "pki"
          projected {
            default_mode = "0440" # readable by the pod user through fs_group, by no one else
            sources {
              secret {
                name = kubernetes_secret_v1.cluster_ca.metadata[0].name
                items {
                  key  = "bundle.pem"
                  path = "bundle.pem"
                }
                items {
                  key  = "ca.crt"
                  path = "clusters/${var.cluster_name}/ca.crt"
                }
                items {
                  key  = "ca.key"
                  path = "clusters/${var.cluster_name}/ca.key"
                }
              }
            }
            sources {
              secret {
                name = kubernetes_secret_v1.identity["control"].metadata[0].name
                items {
                  key  = "cert.pem"
                  path = "clusters/${var.cluster_name}/identities/control/cert.pem"
                }
                items {
                  key  = "key.pem"
                  path = "clusters/${var.cluster_name}/identities/control/key.pem"
                }
                items {
                  key  = "chain.pem"
                  path = "clusters/${var.cluster_name}/identities/control/chain.pem"
                }
              }
            }
          }
        }
        volume {
          name = "data"
          empty_dir {}
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "control" {
  metadata {
    name      = "isthmus-control"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = merge(local.base_labels, local.control_labels)
  }
  spec {
    type     = "ClusterIP"
    selector = local.control_labels
    port {
      name        = "api"
      port        = var.ports.control
      target_port = "api"
      protocol    = "TCP"
    }
    port {
      name        = "federation"
      port        = var.ports.control + 1
      target_port = "federation"
      protocol    = "TCP"
    }
  }
}

# -- gateways -----------------------------------------------------------------------------------------

resource "kubernetes_deployment_v1" "gateway" {
  metadata {
    name      = "isthmus-gateway"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = merge(local.base_labels, local.gateway_labels)
  }
  spec {
    replicas = var.gateway_replicas
    selector {
      match_labels = local.gateway_labels
    }
    template {
      metadata {
        labels = merge(local.base_labels, local.gateway_labels)
        annotations = {
          "isthmus.dev/config-sha256" = sha256(local.gateway_toml)
        }
      }
      spec {
        termination_grace_period_seconds = 30 # SIGTERM drains in-flight requests
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          fs_group        = 10001
        }
        container {
          name  = "gateway"
          image = var.image
          args  = ["gateway", "--config", "${local.config_dir}/gateway.toml"]
          port {
            name           = "eastwest"
            container_port = var.ports.eastwest
            protocol       = "TCP"
          }
          port {
            name           = "outbound"
            container_port = var.ports.outbound
            protocol       = "TCP"
          }
          port {
            name           = "admin"
            container_port = var.ports.admin
            protocol       = "TCP"
          }
          readiness_probe {
            tcp_socket {
              port = "eastwest"
            }
            period_seconds = 5
          }
          liveness_probe {
            tcp_socket {
              port = "admin"
            }
            initial_delay_seconds = 10
            period_seconds        = 10
          }
          resources {
            requests = { cpu = "250m", memory = "128Mi" }
            limits   = { memory = "512Mi" }
          }
          volume_mount {
            name       = "config"
            mount_path = local.config_dir
            read_only  = true
          }
          volume_mount {
            name       = "pki"
            mount_path = local.pki_mount
            read_only  = true
          }
          volume_mount {
            name       = "data"
            mount_path = local.data_dir
          }
        }
        volume {
          name = "config"
          config_map {
            name = kubernetes_config_map_v1.config.metadata[0].name
          }
        }
        volume {
          name = "pki"
          projected {
            default_mode = "0440" # readable by the pod user through fs_group, by no one else
            sources {
              secret {
                name = kubernetes_secret_v1.cluster_ca.metadata[0].name
                items {
                  key  = "bundle.pem"
                  path = "bundle.pem"
                }
                items {
                  key  = "ca.crt"
                  path = "clusters/${var.cluster_name}/ca.crt"
                }
              }
            }
            sources {
              secret {
                name = kubernetes_secret_v1.identity["gateway"].metadata[0].name
                items {
                  key  = "cert.pem"
                  path = "clusters/${var.cluster_name}/identities/gateway/cert.pem"
                }
                items {
                  key  = "key.pem"
                  path = "clusters/${var.cluster_name}/identities/gateway/key.pem"
                }
                items {
                  key  = "chain.pem"
                  path = "clusters/${var.cluster_name}/identities/gateway/chain.pem"
                }
              }
            }
          }
        }
        volume {
          name = "data" # the last-known-good catalog cache
          empty_dir {}
        }
      }
    }
  }
}

# The east-west crossing: peers' gateways and control planes connect here (mutual TLS end to end).
resource "kubernetes_service_v1" "eastwest" {
  metadata {
    name      = "isthmus-eastwest"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = merge(local.base_labels, local.gateway_labels)
  }
  spec {
    type                    = "LoadBalancer"
    external_traffic_policy = "Local"
    selector                = local.gateway_labels
    port {
      name        = "eastwest"
      port        = var.ports.eastwest
      target_port = "eastwest"
      protocol    = "TCP"
    }
  }
}

# In-cluster: applications send to the outbound port; Prometheus scrapes the admin port.
resource "kubernetes_service_v1" "gateway" {
  metadata {
    name      = "isthmus-gateway"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = merge(local.base_labels, local.gateway_labels, local.metrics_labels)
  }
  spec {
    type     = "ClusterIP"
    selector = local.gateway_labels
    port {
      name        = "outbound"
      port        = var.ports.outbound
      target_port = "outbound"
      protocol    = "TCP"
    }
    port {
      name        = "admin"
      port        = var.ports.admin
      target_port = "admin"
      protocol    = "TCP"
    }
  }
}

resource "kubernetes_manifest" "service_monitor" {
  count = var.service_monitor ? 1 : 0
  manifest = {
    apiVersion = "monitoring.coreos.com/v1"
    kind       = "ServiceMonitor"
    metadata = {
      name      = "isthmus-${var.cluster_name}"
      namespace = kubernetes_namespace_v1.this.metadata[0].name
      labels    = local.base_labels
    }
    spec = {
      selector = {
        matchLabels = local.metrics_labels
      }
      endpoints = [
        {
          port     = "admin"
          path     = "/metrics"
          interval = "15s"
        },
      ]
    }
  }
}

# -- peering: redeem each peer's token against this cluster's control plane ---------------------------

resource "kubernetes_job_v1" "register_peer" {
  for_each = nonsensitive(toset(keys(var.peer_tokens)))
  metadata {
    name      = "isthmus-register-${each.key}"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    labels    = local.base_labels
  }
  spec {
    backoff_limit = 6
    template {
      metadata {
        labels = local.base_labels
      }
      spec {
        restart_policy = "OnFailure"
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          fs_group        = 10001
        }
        container {
          name    = "register"
          image   = var.image
          command = ["sh", "-c", "exec isthmus cluster register --token \"$PEER_TOKEN\" --config ${local.config_dir}/gateway.toml"]
          env {
            name = "PEER_TOKEN"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.peer_tokens.metadata[0].name
                key  = each.key
              }
            }
          }
          volume_mount {
            name       = "config"
            mount_path = local.config_dir
            read_only  = true
          }
          volume_mount {
            name       = "pki"
            mount_path = local.pki_mount
            read_only  = true
          }
        }
        volume {
          name = "config"
          config_map {
            name = kubernetes_config_map_v1.config.metadata[0].name
          }
        }
        volume {
          name = "pki"
          projected {
            default_mode = "0440" # readable by the pod user through fs_group, by no one else
            sources {
              secret {
                name = kubernetes_secret_v1.cluster_ca.metadata[0].name
                items {
                  key  = "bundle.pem"
                  path = "bundle.pem"
                }
              }
            }
            sources {
              secret {
                name = kubernetes_secret_v1.identity["control"].metadata[0].name
                items {
                  key  = "cert.pem"
                  path = "clusters/${var.cluster_name}/identities/control/cert.pem"
                }
                items {
                  key  = "key.pem"
                  path = "clusters/${var.cluster_name}/identities/control/key.pem"
                }
                items {
                  key  = "chain.pem"
                  path = "clusters/${var.cluster_name}/identities/control/chain.pem"
                }
              }
            }
          }
        }
      }
    }
  }
  wait_for_completion = true
  timeouts {
    create = "5m"
  }
  depends_on = [kubernetes_deployment_v1.control]
}
