# Least privilege: one security group per inventory group (plus the
# bastion); each ingress rule names its source group or the operator CIDR.
#
# Every rule explains itself twice: in its description (what the console's
# rule list shows) and in its tags Name and Purpose. The tags are there
# because moto (the kit's integration test, tests/terraform/moto-apply.sh) loses
# the description of rules whose source is a security group, while it keeps
# their tags; those rules ignore later changes of their description, so a
# plan against moto stays empty. Real AWS still gets every description when a
# rule is created (to change one, replace the rule: terraform apply -replace).
locals {
  groups = ["rabbitmq", "redis", "workers", "api", "monitoring"]

  # AMQP and RabbitMQ's metrics over TLS (the kit's default) or in the clear.
  # The management UI and API are reached through SSH tunnels only (README,
  # "Reaching the UIs"): no group opens them.
  amqp_port             = var.tls ? 5671 : 5672
  rabbitmq_metrics_port = var.tls ? 15691 : 15692

  # Service ports: to which group, on which port, from which group, and what.
  service_rules = {
    amqp_from_workers    = { to = "rabbitmq", port = local.amqp_port, from = "workers", what = "AMQP" }
    amqp_from_api        = { to = "rabbitmq", port = local.amqp_port, from = "api", what = "AMQP" }
    epmd_among_brokers   = { to = "rabbitmq", port = 4369, from = "rabbitmq", what = "Erlang port mapper (epmd)" }
    erlang_among_brokers = { to = "rabbitmq", port = 25672, from = "rabbitmq", what = "Erlang distribution" }
    redis_from_workers   = { to = "redis", port = 6379, from = "workers", what = "Redis" }
    redis_from_api       = { to = "redis", port = 6379, from = "api", what = "Redis" }
    # Several Redis hosts: replication to the replicas, and Redis Sentinel,
    # which the Sentinels use among themselves and every client asks for
    # the current primary.
    redis_among_redis        = { to = "redis", port = 6379, from = "redis", what = "Redis replication" }
    sentinel_among_redis     = { to = "redis", port = 26379, from = "redis", what = "Redis Sentinel" }
    sentinel_from_workers    = { to = "redis", port = 26379, from = "workers", what = "Redis Sentinel" }
    sentinel_from_api        = { to = "redis", port = 26379, from = "api", what = "Redis Sentinel" }
    sentinel_from_monitoring = { to = "redis", port = 26379, from = "monitoring", what = "Redis Sentinel (Flower)" }
    # The monitoring host scrapes the exporters and RabbitMQ's metrics.
    rabbitmq_metrics_from_monitoring = { to = "rabbitmq", port = local.rabbitmq_metrics_port, from = "monitoring", what = "RabbitMQ metrics" }
    redis_metrics_from_monitoring    = { to = "redis", port = 9121, from = "monitoring", what = "Redis exporter" }
    node_metrics_rabbitmq            = { to = "rabbitmq", port = 9100, from = "monitoring", what = "node exporter" }
    node_metrics_redis               = { to = "redis", port = 9100, from = "monitoring", what = "node exporter" }
    node_metrics_workers             = { to = "workers", port = 9100, from = "monitoring", what = "node exporter" }
    node_metrics_api                 = { to = "api", port = 9100, from = "monitoring", what = "node exporter" }
    # Flower, on the monitoring host, reads the workers' task events from the
    # broker (RabbitMQ, or Redis on a Redis-broker deployment).
    amqp_from_monitoring  = { to = "rabbitmq", port = local.amqp_port, from = "monitoring", what = "AMQP (Flower)" }
    redis_from_monitoring = { to = "redis", port = 6379, from = "monitoring", what = "Redis (Flower)" }
  }
}

resource "aws_security_group" "bastion" {
  name        = "${local.name}-bastion"
  description = "SSH bastion of ${local.name}: SSH from the operator only"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-bastion", Role = "bastion" })
}

resource "aws_security_group" "group" {
  #checkov:skip=CKV2_AWS_5:false positive: attached to aws_instance.host through vpc_security_group_ids = [aws_security_group.group[each.value.group].id], a for_each lookup checkov's graph does not resolve
  for_each = toset(local.groups)

  name        = "${local.name}-${each.key}"
  description = "${each.key} hosts of ${local.name}"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-${each.key}", Role = each.key })
}

resource "aws_vpc_security_group_ingress_rule" "bastion_ssh_from_operator" {
  security_group_id = aws_security_group.bastion.id
  description       = "SSH from the operator"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.operator_cidr
  tags              = merge(local.tags, { Name = "${local.name}-bastion-ssh-from-operator", Purpose = "SSH from the operator" })
}

resource "aws_vpc_security_group_ingress_rule" "ssh_from_bastion" {
  #checkov:skip=CKV_AWS_24:false positive: the source is the bastion's security group (referenced_security_group_id), not 0.0.0.0/0; checkov reads only cidr_ipv4/cidr_ipv6 on this resource type
  for_each = aws_security_group.group

  security_group_id            = each.value.id
  description                  = "SSH from the bastion"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.bastion.id
  tags                         = merge(local.tags, { Name = "${local.name}-${each.key}-ssh-from-bastion", Purpose = "SSH from the bastion" })

  lifecycle {
    ignore_changes = [description] # see the top of this file
  }
}

resource "aws_vpc_security_group_ingress_rule" "service" {
  for_each = local.service_rules

  security_group_id            = aws_security_group.group[each.value.to].id
  description                  = "${each.value.what} (${each.value.port}/tcp) from ${each.value.from}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.group[each.value.from].id
  tags = merge(local.tags, {
    Name    = "${local.name}-${replace(each.key, "_", "-")}"
    Purpose = "${each.value.what} (${each.value.port}/tcp) from ${each.value.from}"
  })

  lifecycle {
    ignore_changes = [description] # see the top of this file
  }
}

resource "aws_vpc_security_group_ingress_rule" "api_from_operator" {
  security_group_id = aws_security_group.group["api"].id
  description       = "API from the operator"
  ip_protocol       = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
  cidr_ipv4         = var.operator_cidr
  tags              = merge(local.tags, { Name = "${local.name}-api-from-operator", Purpose = "API from the operator" })
}

# Egress of the bastion: SSH onwards into the VPC only.
resource "aws_vpc_security_group_egress_rule" "bastion_to_vpc" {
  security_group_id = aws_security_group.bastion.id
  description       = "SSH onwards inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.vpc_cidr
  tags              = merge(local.tags, { Name = "${local.name}-bastion-ssh-to-vpc", Purpose = "SSH onwards inside the VPC" })
}

locals {
  # Egress of every host group: the VPC (other groups still filter their
  # ingress), and HTTP(S) for the Debian mirror and AWS APIs.
  egress_rules = {
    vpc   = { description = "Anything inside the VPC", protocol = "-1", port = null, cidr = var.vpc_cidr }
    https = { description = "HTTPS for packages and AWS APIs", protocol = "tcp", port = 443, cidr = "0.0.0.0/0" }
    http  = { description = "HTTP for the Debian mirror", protocol = "tcp", port = 80, cidr = "0.0.0.0/0" }
  }
  host_egress = {
    for pair in setproduct(local.groups, keys(local.egress_rules)) : "${pair[0]}-${pair[1]}" => merge(local.egress_rules[pair[1]], { group = pair[0] })
  }
}

resource "aws_vpc_security_group_egress_rule" "host" {
  for_each = local.host_egress

  security_group_id = aws_security_group.group[each.value.group].id
  description       = each.value.description
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
  tags              = merge(local.tags, { Name = "${local.name}-${each.key}-egress", Purpose = each.value.description })
}
