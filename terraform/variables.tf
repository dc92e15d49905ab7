variable "project" {
  description = "Project tag of every resource; the Ansible inventory selects hosts by it."
  type        = string
  default     = "celery-kit"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.project))
    error_message = "project must be 2-31 characters: lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "environment" {
  description = "Environment tag (e.g. dev, staging, prod); two deployments in one account differ by project or environment."
  type        = string
  default     = "dev"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.environment))
    error_message = "environment must be 2-21 characters: lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy in."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like eu-west-1."
  }
}

variable "operator_cidr" {
  description = "CIDR allowed to reach the bastion (SSH) and the API. No default: it must be your own address range, never the whole internet."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.operator_cidr)) && !contains(["0.0.0.0/0", "::/0"], var.operator_cidr)
    error_message = "operator_cidr must be a valid IPv4 CIDR such as 203.0.113.7/32, and not 0.0.0.0/0."
  }
}

variable "vpc_id" {
  description = "Existing VPC to deploy into; null creates a new VPC with vpc_cidr."
  type        = string
  default     = null
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when vpc_id is null (also used to carve subnets in an existing VPC)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger."
  }
}

variable "az_count" {
  description = "Availability zones to spread subnets and hosts over (2 to 4; the region must have that many). 3 by default, so the 3 RabbitMQ nodes sit in 3 zones and the cluster survives the loss of one; in a region with only 2 zones set 2 (the cluster then survives the loss of one node, not of a zone). Changing it on a deployment moves, i.e. replaces, the hosts whose zone changes."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "az_count must be between 2 and 4."
  }
}

variable "hosts" {
  description = "Per inventory group: how many instances and of which type. rabbitmq: 1 (a single broker) or 3 and more (a cluster, spread over the zones), never 2; redis: 1 (one server) or 3 and more (a primary, replicas and Redis Sentinel on each, failing over when the primary is lost), never 2; monitoring (Prometheus, Alertmanager): 0 or 1; by default 3 rabbitmq, 3 redis, 2 workers, 1 api, 1 monitoring."
  type = object({
    rabbitmq   = optional(object({ count = optional(number, 3), instance_type = optional(string, "t3.medium") }), {})
    redis      = optional(object({ count = optional(number, 3), instance_type = optional(string, "t3.small") }), {})
    workers    = optional(object({ count = optional(number, 2), instance_type = optional(string, "t3.small") }), {})
    api        = optional(object({ count = optional(number, 1), instance_type = optional(string, "t3.micro") }), {})
    monitoring = optional(object({ count = optional(number, 1), instance_type = optional(string, "t3.small") }), {})
  })
  default = {}

  validation {
    condition = alltrue([
      var.hosts.rabbitmq.count >= 1, var.hosts.redis.count >= 1,
      var.hosts.workers.count >= 1, var.hosts.api.count >= 1,
      var.hosts.rabbitmq.count <= 9, var.hosts.workers.count <= 50,
      var.hosts.monitoring.count >= 0, var.hosts.monitoring.count <= 1,
    ])
    error_message = "Each group needs at least one host (monitoring: 0 or 1); at most 9 rabbitmq and 50 workers."
  }

  validation {
    condition     = var.hosts.redis.count != 2
    error_message = "hosts.redis.count must be 1, or 3 and more, not 2: Redis Sentinel needs a majority of its Sentinels (2 of 3) to promote a replica, so with 2 the one left after a host is lost can never fail over."
  }

  validation {
    condition     = var.hosts.rabbitmq.count != 2
    error_message = "hosts.rabbitmq.count must be 1, or 3 and more, not 2: quorum queues need a majority of their nodes, so with 2 either one stopping stops every queue, which is less available than 1 node."
  }
}

variable "worker_groups" {
  description = "More groups of worker hosts besides hosts.workers, each with its own count and instance type, so worker pools scale apart: { reports = { count = 2, instance_type = \"c6i.large\" } }. Their hosts are workers like the others (same security group, inventory group workers) and also form the inventory group workers_<name>, which a worker pool names as its hosts. hosts.workers form workers_default."
  type = map(object({
    count         = optional(number, 1)
    instance_type = optional(string, "t3.small")
  }))
  default = {}

  validation {
    condition     = alltrue([for name, group in var.worker_groups : can(regex("^[a-z][a-z0-9]{0,19}$", name)) && name != "default"])
    error_message = "worker_groups names must be lower-case letters and digits (at most 20, a letter first), other than \"default\" (the name of hosts.workers): they become inventory groups workers_<name>."
  }

  validation {
    condition     = alltrue([for group in var.worker_groups : group.count >= 1 && group.count <= 50])
    error_message = "Each of worker_groups needs 1 to 50 hosts."
  }
}

variable "bastion_instance_type" {
  description = "Instance type of the SSH bastion."
  type        = string
  default     = "t3.nano"
}

variable "ami_id" {
  description = "AMI for every host; null looks up the newest official Debian 13 (amd64) image. Read when a host is created: a later change (or a newer Debian image) leaves running hosts alone; replace one deliberately with terraform apply -replace."
  type        = string
  default     = null
}

variable "key_name" {
  description = "EC2 key pair for SSH (the bastion and, through it, every host)."
  type        = string
}

variable "root_volume_size" {
  description = "Root volume size in GiB (gp3, encrypted)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size must be between 8 and 1024 GiB."
  }
}

variable "api_port" {
  description = "Port of the sample API on the api hosts."
  type        = number
  default     = 8000
}

variable "tls" {
  description = "Whether the deployment runs with TLS (make deploy TLS=0 turns it off, and sets this to false): the security groups then open AMQP on 5672 and RabbitMQ's metrics on 15692 instead of 5671 and 15691."
  type        = bool
  default     = true
}

variable "detailed_monitoring" {
  description = "CloudWatch detailed (1-minute) monitoring of the instances; basic 5-minute monitoring is always on. Costs extra per instance."
  type        = bool
  default     = false
}

variable "flow_logs" {
  description = "VPC flow logs (accepted and rejected traffic) to CloudWatch Logs, for the VPC the kit creates (not for an existing vpc_id). Billed by CloudWatch Logs per GB."
  type        = bool
  default     = true
}

variable "flow_log_retention_days" {
  description = "Days CloudWatch Logs keeps the VPC flow logs (one of the values CloudWatch Logs accepts)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}
