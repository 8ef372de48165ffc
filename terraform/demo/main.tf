# The Isthmus demo through Terraform: the same topology `isthmus demo up` brings up, on loopback.
#   cd terraform/demo && eval "$(./setup)" && terraform init && terraform apply
# Region us-east: east-1 (us-east-1a, us-east-1b) and east-2 (us-east-1c); region eu-west: west-1
# (eu-west-1a). Every cluster peers with every other, exports echo.demo to every peer; west-1 also
# exports hello.demo (it runs only there), east-1 fails echo.demo over to eu-west, and east-1's
# route rules for echo.demo tag every answer and mark the requests that leave for eu-west.

terraform {
  required_version = ">= 1.0"
  required_providers {
    isthmus = {
      source  = "isthmus.local/isthmus/isthmus"
      version = "0.1.0"
    }
  }
}

variable "dir" {
  description = "Where the demo keeps its PKI, configs, data and logs (default: .demo beside this file)."
  type        = string
  default     = null
}

variable "backend" {
  description = "Each cluster's registry backend: sqlite or etcd."
  type        = string
  default     = "sqlite"
}

variable "isthmus_bin" {
  description = "The isthmus executable (default: isthmus on PATH, else <repo>/.venv/bin/isthmus)."
  type        = string
  default     = null
}

variable "echo_failover" {
  description = "The regions east-1 tries for echo.demo, in order ([] declares no failover policy)."
  type        = list(string)
  default     = ["us-east", "eu-west"]
}

provider "isthmus" {
  isthmus_bin = var.isthmus_bin
}

locals {
  dir = coalesce(var.dir, "${abspath(path.module)}/.demo")
  clusters = {
    "east-1" = { region = "us-east", zones = ["us-east-1a", "us-east-1b"] }
    "east-2" = { region = "us-east", zones = ["us-east-1c"] }
    "west-1" = { region = "eu-west", zones = ["eu-west-1a"] }
  }
  # Full mesh: registering links both clusters, so one peering per pair.
  peerings = {
    "east-1/east-2" = { cluster = "east-1", peer = "east-2" }
    "east-1/west-1" = { cluster = "east-1", peer = "west-1" }
    "east-2/west-1" = { cluster = "east-2", peer = "west-1" }
  }
  exports = {
    "east-1/echo.demo"  = { cluster = "east-1", service = "echo.demo" }
    "east-2/echo.demo"  = { cluster = "east-2", service = "echo.demo" }
    "west-1/echo.demo"  = { cluster = "west-1", service = "echo.demo" }
    "west-1/hello.demo" = { cluster = "west-1", service = "hello.demo" }
  }
}

resource "isthmus_cluster" "this" {
  for_each = local.clusters
  name     = each.key
  dir      = local.dir
  backend  = var.backend
  region   = each.value.region
  zones    = each.value.zones
}

resource "isthmus_peering" "mesh" {
  for_each = local.peerings
  dir      = local.dir
  cluster  = isthmus_cluster.this[each.value.cluster].name
  peer     = isthmus_cluster.this[each.value.peer].name
}

resource "isthmus_service_export" "demo" {
  for_each = local.exports
  dir      = local.dir
  cluster  = isthmus_cluster.this[each.value.cluster].name
  service  = each.value.service
  to       = ["*"]
  # Exports stream to peers: link first, so the first catalog a peer sees already has them.
  depends_on = [isthmus_peering.mesh]
}

resource "isthmus_failover_policy" "echo_east1" {
  count    = length(var.echo_failover) > 0 ? 1 : 0
  dir      = local.dir
  cluster  = isthmus_cluster.this["east-1"].name
  service  = "echo.demo"
  failover = var.echo_failover
}

# Route rules, tried in order (the `[[routes."echo.demo"]]` tables of a cluster config, as JSON).
# East-1's control plane checks them before storing them: a bad rule fails the apply, naming the rule.
resource "isthmus_route_rules" "echo_east1" {
  dir     = local.dir
  cluster = isthmus_cluster.this["east-1"].name
  service = "echo.demo"
  rules = jsonencode([
    {
      name             = "tag"
      match            = { path_prefix = "/" }
      response_headers = { add = { "x-isthmus-route" = "echo-tag" } }
      # Only on calls that leave east-1 for a gateway in eu-west (failover to west-1).
      when_leaving_for = {
        region          = "eu-west"
        request_headers = { add = { "x-isthmus-region" = "eu-west" } }
      }
    },
  ])
}

output "dir" {
  description = "The demo directory (`isthmus demo status --dir` it)."
  value       = local.dir
}

output "outbound" {
  description = "Each cluster's outbound listener: where applications send requests."
  value       = { for name, c in isthmus_cluster.this : name => c.outbound }
}

output "configs" {
  description = "Each cluster's TOML config, for `isthmus ... --config`."
  value       = { for name, c in isthmus_cluster.this : name => c.config }
}

output "cross_region_curl" {
  description = "A request from east-1 (us-east) to hello.demo, which runs only in west-1 (eu-west)."
  # try(): `terraform import` of east-1 evaluates outputs while east-1 is not yet in the state.
  value = try("curl -s -H 'Host: hello.demo' http://${isthmus_cluster.this["east-1"].outbound}/", null)
}
