# Least privilege: one security group per inventory group (plus the
# bastion); each ingress rule names its source group or the operator CIDR.
locals {
  groups = ["rabbitmq", "redis", "workers", "api"]

  # Service ports: to which group, on which port, from which group.
  service_rules = {
    amqp_from_workers       = { to = "rabbitmq", port = 5672, from = "workers" }
    amqp_from_api           = { to = "rabbitmq", port = 5672, from = "api" }
    management_from_workers = { to = "rabbitmq", port = 15672, from = "workers" }
    management_from_api     = { to = "rabbitmq", port = 15672, from = "api" }
    epmd_among_brokers      = { to = "rabbitmq", port = 4369, from = "rabbitmq" }
    erlang_among_brokers    = { to = "rabbitmq", port = 25672, from = "rabbitmq" }
    redis_from_workers      = { to = "redis", port = 6379, from = "workers" }
    redis_from_api          = { to = "redis", port = 6379, from = "api" }
  }
}

resource "aws_security_group" "bastion" {
  name        = "${local.name}-bastion"
  description = "SSH bastion of ${local.name}: SSH from the operator only"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-bastion", Role = "bastion" })
}

resource "aws_security_group" "group" {
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
}

resource "aws_vpc_security_group_ingress_rule" "ssh_from_bastion" {
  for_each = aws_security_group.group

  security_group_id            = each.value.id
  description                  = "SSH from the bastion"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.bastion.id
}

resource "aws_vpc_security_group_ingress_rule" "service" {
  for_each = local.service_rules

  security_group_id            = aws_security_group.group[each.value.to].id
  description                  = "${each.key} (${each.value.port}/tcp)"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.group[each.value.from].id
}

resource "aws_vpc_security_group_ingress_rule" "api_from_operator" {
  security_group_id = aws_security_group.group["api"].id
  description       = "API from the operator"
  ip_protocol       = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
  cidr_ipv4         = var.operator_cidr
}

# Egress of the bastion: SSH onwards into the VPC only.
resource "aws_vpc_security_group_egress_rule" "bastion_to_vpc" {
  security_group_id = aws_security_group.bastion.id
  description       = "SSH onwards inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = var.vpc_cidr
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
}
